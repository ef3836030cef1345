"""Figure 8 — cost growth: what one delivered message costs as the queue deepens, as recipients per
message grow and as messages grow, on SQLite and on PostgreSQL.

Every case delivers a probe of B messages over the `smtp` transport to `smtp-sink` with one
`Session.deliver()` pass in this process and reports the wall time per message (and per recipient,
and MB/s), so a cost that grows with the queue or the message shows up as a ratio to the smallest
case of the same run:

  * queue depth, due: D real messages queued and due *behind* the probe (submitted after it), so
    the probe is claimed first and the D are what the claim has to get past (D = 1k, 10k, 100k);
  * queue depth, waiting: D messages waiting for a retry an hour from now, older than the probe
    (ahead of it in submit order). They are inserted as bare queue rows with plain SQL, as
    claim_depth.py does: the claim reads only the queue columns, and 100k submits would cost
    minutes of set-up for nothing the figure measures;
  * recipients per message: 1, 10 and 100 recipients (one SMTP transaction each);
  * message size: 1 KiB and 1 MiB bodies (target: 1 MiB messages at >= 50 MB/s).

PostgreSQL is measured when --pg-url (or POSTROOM_TEST_PG_URL) names a server; each case gets a
fresh schema. The test server of the suite runs with fsync off (figure 7 measures with it on).
Sized for a 2-core machine: the full figure takes a few minutes, --quick a few seconds (SQLite
only unless --pg-url is given, small D and B).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from typing import Any

import common as C
from tests.store.pgutil import temp_schema

WAIT_SECONDS = 3600.0
KIB = ("x" * 78 + "\n") * 13
MIB = ("y" * 1023 + "\n") * 1024
#: Growth of the per-message cost from the smallest to the largest case still called "flat".
FLAT = 1.25


@contextlib.contextmanager
def store_settings(backend: str, pg_url: str | None) -> Iterator[dict[str, Any]]:
    """The profile settings for a fresh store: the profile's own SQLite file, or a new schema."""
    if backend == "sqlite":
        yield {}
        return
    assert pg_url is not None
    with temp_schema("fig8", pg_url) as url:
        yield {"store": url}


def load_waiting(session: Any, settings: dict[str, Any], depth: int) -> None:
    """`depth` bare queue rows waiting for a retry, older than anything submitted after them."""
    now = time.time()
    rows = [("queued", now - 86400 + i * 0.001, now + WAIT_SECONDS, "retry") for i in range(depth)]
    if "store" not in settings:
        db = sqlite3.connect(session.profile.store_path)
        db.executemany(
            "INSERT INTO messages (queue_state, submit_time, next_attempt, wait_kind) VALUES (?, ?, ?, ?)", rows
        )
        db.commit()
        db.close()
        return
    import psycopg

    with psycopg.connect(settings["store"], autocommit=True) as conn:
        with (
            conn.cursor() as cur,
            cur.copy("COPY messages (queue_state, submit_time, next_attempt, wait_kind) FROM STDIN") as cp,
        ):
            for row in rows:
                cp.write_row(row)
        conn.execute("ANALYZE messages")


def submit(session: Any, n: int, recipients: int = 1, body: str = KIB) -> None:
    for first in range(0, n, 500):
        session.submit_many(
            [
                session.create_message(f"fig8 {i}", body).to(*(f"r{i}-{k}@sink.test" for k in range(recipients)))
                for i in range(first, min(n, first + 500))
            ]
        )


def probe(
    sink_port: int, backend: str, pg_url: str | None, b: int, *, due: int = 0, waiting: int = 0, **message: Any
) -> dict[str, Any]:
    """Deliver b messages in one pass with `due` queued behind them or `waiting` ahead of them."""
    import postroom

    with C.workdir("fig8") as work, store_settings(backend, pg_url) as settings:
        prof = C.make_profile(work / "profile", smtp_port=sink_port, connections=2, concurrency=4, settings=settings)
        with postroom.logon(prof) as session:
            if waiting:
                load_waiting(session, settings, waiting)
            submit(session, b, **message)
            if due:
                submit(session, due)
            t0 = time.perf_counter()
            summary = session.deliver(limit=b)
            seconds = time.perf_counter() - t0
    recipients = int(message.get("recipients", 1))
    if summary.delivered != b * recipients:
        raise RuntimeError(f"fig8: {summary.delivered} of {b * recipients} recipients delivered in the probe")
    size = len(str(message.get("body", KIB)).encode())
    return {
        "ms_per_message": seconds * 1000 / b,
        "us_per_recipient": seconds * 1e6 / (b * recipients),
        "mb_per_second": b * size / seconds / 1e6,
        "rate": b / seconds,
    }


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument(
        "--pg-url", default=None, help="also measure PostgreSQL (default: $POSTROOM_TEST_PG_URL, not in --quick)"
    )
    ap.add_argument("-b", type=int, default=None, help="messages in each probe (default 300; --quick 10)")
    args = ap.parse_args()
    pg_url = args.pg_url or (None if args.quick else os.environ.get("POSTROOM_TEST_PG_URL"))
    b = args.b or (10 if args.quick else 300)
    runs = args.runs or 1
    depths = (100, 1000) if args.quick else (1_000, 10_000, 100_000)
    fanouts = (1, 10, 100)
    sizes = {"1 KiB": (KIB, b), "1 MiB": (MIB, max(2, b // 10))}
    backends = ["sqlite"] + (["postgresql"] if pg_url else [])
    result: dict[str, Any] = {
        "figure": "Figure 8: cost growth",
        "key": "fig8",
        "probe": b,
        "runs": runs,
        "backends": backends,
        "notes": [],
        "lines": [],
    }
    if not pg_url:
        result["notes"].append("PostgreSQL not measured (no --pg-url / POSTROOM_TEST_PG_URL, or --quick)")
    cases: dict[str, dict[str, list[dict[str, Any]]]] = {be: {} for be in backends}

    def record(backend: str, name: str, value: dict[str, Any]) -> None:
        cases[backend].setdefault(name, []).append(value)

    with C.Sink.start() as sink:
        result["sink"] = sink.kind
        for r in range(runs):
            for backend in backends:
                C.log(f"fig8 run {r + 1}/{runs} on {backend}")
                for d in depths:
                    record(backend, f"due {d}", probe(sink.port, backend, pg_url, b, due=d))
                    record(backend, f"waiting {d}", probe(sink.port, backend, pg_url, b, waiting=d))
                for k in fanouts:
                    m = max(2, b // k) if k > 1 else b
                    record(backend, f"recipients {k}", probe(sink.port, backend, pg_url, m, recipients=k))
                for label, (body, m) in sizes.items():
                    record(backend, f"size {label}", probe(sink.port, backend, pg_url, m, body=body))

    med: dict[str, dict[str, dict[str, float]]] = {
        be: {name: {k: C.median([x[k] for x in xs]) for k in xs[0]} for name, xs in d.items()}
        for be, d in cases.items()
    }
    growth: list[str] = []
    flat: dict[str, bool] = {}
    mib_rate: dict[str, float] = {}
    lines = [f"probe of {b} messages (fewer with 10+ recipients or 1 MiB), one deliver() pass each; {runs} run(s)"]
    for be in backends:
        m = med[be]
        lines.append(f"{be}:")
        for kind in ("due", "waiting"):
            costs = [m[f"{kind} {d}"]["ms_per_message"] for d in depths]
            ratio = costs[-1] / costs[0] if costs[0] else float("nan")
            flat[f"{be} {kind}"] = ratio <= FLAT
            lines.append(
                f"  queue depth, {kind:<8}"
                + "".join(f"{d:>9,}: {c:7.2f} ms/msg" for d, c in zip(depths, costs, strict=True))
                + f"   growth {ratio:.2f}×"
            )
            growth.append(
                f"On {be}, a delivered message cost {costs[0]:.2f} ms with {depths[0]:,} {kind} and "
                f"{costs[-1]:.2f} ms with {depths[-1]:,} ({ratio:.2f}×; flat means ≤ {FLAT}×)."
            )
        per_rcpt = [m[f"recipients {k}"]["us_per_recipient"] for k in fanouts]
        lines.append(
            "  recipients/message"
            + "".join(f"{k:>9}: {c:7.0f} µs/rcpt" for k, c in zip(fanouts, per_rcpt, strict=True))
            + f"   per-recipient cost 100 vs 1: {per_rcpt[-1] / per_rcpt[0]:.2f}×"
        )
        growth.append(
            f"On {be}, a recipient cost {per_rcpt[0]:.0f} µs alone in its message and {per_rcpt[-1]:.0f} µs as one "
            f"of 100 ({per_rcpt[-1] / per_rcpt[0]:.2f}×)."
        )
        small, large = m["size 1 KiB"], m["size 1 MiB"]
        mib_rate[be] = large["mb_per_second"]
        lines.append(
            f"  message size       1 KiB: {small['ms_per_message']:7.2f} ms/msg"
            f"   1 MiB: {large['ms_per_message']:7.2f} ms/msg = {large['mb_per_second']:.1f} MB/s"
        )
        growth.append(
            f"On {be}, a 1 MiB message took {large['ms_per_message']:.1f} ms ({large['mb_per_second']:.1f} MB/s) "
            f"against {small['ms_per_message']:.2f} ms for 1 KiB."
        )
    result.update(cases=cases, median=med, growth=growth, depths=list(depths))
    result["targets"] = {
        f"flat in queue depth ({kind}, {be}; ≤ {FLAT}×)": ok for (key, ok) in flat.items() for be, kind in [key.split()]
    }
    result["targets"].update({f"1 MiB messages >= 50 MB/s ({be})": rate >= 50 for be, rate in mib_rate.items()})
    result["lines"] = lines
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
