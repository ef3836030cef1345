"""Statements and commits per delivered message: what one spooler pass asks of the store (issue 17).

N messages (1 KiB, one recipient) are submitted in batches, then one `Session.deliver()` pass
drains them in this process while the store counts every statement and commit it runs
(postroom/store/stats.py). Two transports: the benchmark `stamp` transport (local, nearly free,
so the store's cost is all there is) and `smtp` to a sink on loopback. The rate of the drain is
printed beside the counts; it is the spooler alone, not figure 1's end to end.

Figure 1 calls `drain_costs()` and adds `cost_lines()` to its output; alone:

    python benchmarks/statement_count.py [-n 2000] [--pg-url postgresql://…] [--json FILE]
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common as C
import stamp_transport  # noqa: F401  (registers the "stamp" transport kind)
from tests.store.pgutil import temp_schema

from postroom.spooler.spooler import DEFAULT_CONCURRENCY


def drain_cost(
    n: int, work: Path, *, sink_port: int | None = None, store_url: str | None = None, concurrency: int = 8
) -> dict[str, Any]:
    """Submit n messages, then drain them with one deliver() pass while counting statements.

    With `sink_port` the messages go out over smtp to that sink, else through the stamp transport;
    `store_url` puts the store on PostgreSQL (one fresh schema in the URL's search_path)."""
    import postroom

    services: list[tuple[str, str, dict[str, Any]]] = []
    if sink_port is None:
        services.append(("stamp", "local", {"file": str(work / "stamps"), "address_types": ["SMTP"]}))
    settings: dict[str, Any] = {"store": store_url} if store_url else {}
    prof = C.make_profile(
        work / "profile-count", smtp_port=sink_port, concurrency=concurrency, settings=settings, services=services
    )
    with postroom.logon(prof) as session:
        C.submit_batches(session, n, 1000)
        counts = session.engine.store.count_statements()
        statements0, commits0 = counts.snapshot()
        t0 = time.perf_counter()
        summary = session.deliver()
        seconds = time.perf_counter() - t0
        statements1, commits1 = counts.snapshot()
    if summary.delivered != n:
        raise RuntimeError(f"statement count: {summary.delivered} of {n} delivered in the pass")
    return {
        "transport": "smtp" if sink_port is not None else "stamp",
        "store": "postgresql" if store_url else "sqlite",
        "n": n,
        "concurrency": concurrency,
        "statements_per_message": (statements1 - statements0) / n,
        "commits_per_message": (commits1 - commits0) / n,
        "rate": n / seconds,
    }


@contextlib.contextmanager
def fresh_schema(pg_url: str | None) -> Iterator[str | None]:
    """A new, empty schema on the server (the URL of a store in it), dropped afterwards."""
    if pg_url is None:
        yield None
        return
    with temp_schema("stmtcount", pg_url) as url:
        yield url


def drain_costs(
    n: int, sink_port: int | None, pg_url: str | None = None, concurrency: int = DEFAULT_CONCURRENCY
) -> list[dict[str, Any]]:
    """The local transport, then smtp when a sink is given; each in a fresh work directory (and a
    fresh schema on the PostgreSQL server of `pg_url`, if given)."""
    out = []
    for port in (None, sink_port) if sink_port is not None else (None,):
        with C.workdir("statement-count") as work, fresh_schema(pg_url) as url:
            out.append(drain_cost(n, work, sink_port=port, store_url=url, concurrency=concurrency))
    return out


def cost_lines(costs: list[dict[str, Any]]) -> list[str]:
    """One line per measured drain, for figure 1's output."""
    return [
        f"store cost, drain of {c['n']} via {c['transport']:<5} on {c['store']:<10} "
        f"(spooler_concurrency {c['concurrency']}): "
        f"{c['statements_per_message']:.2f} statements and {c['commits_per_message']:.3f} commits per "
        f"delivered message (target <= 6 and <= 0.05); {c['rate']:,.0f} msg/s"
        for c in costs
    ]


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per drain (default 2000; --quick 200)")
    ap.add_argument("--pg-url", default=None, help="also measure a PostgreSQL store (a postgresql:// URL)")
    ap.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help=f"spooler_concurrency; repeat for several (default {DEFAULT_CONCURRENCY}, the spooler's)",
    )
    args = ap.parse_args()
    n = args.n or (200 if args.quick else 2000)
    costs: list[dict[str, Any]] = []
    with C.Sink.start() as sink:
        for concurrency in args.concurrency or [DEFAULT_CONCURRENCY]:
            costs += drain_costs(n, sink.port, None, concurrency)
            if args.pg_url:
                costs += drain_costs(n, sink.port, args.pg_url, concurrency)
    result = {"figure": "Store statements and commits per delivered message", "key": "statements", "n": n}
    result["costs"] = costs
    result["lines"] = cost_lines(costs)
    result["notes"] = []
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
