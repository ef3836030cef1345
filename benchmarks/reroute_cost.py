"""What a change of routing costs with N messages waiting (issue 13, spooler/reroute.py).

N messages wait offline for transport `a` (an SQLite profile, recording transports, no network).
Measured: a logon whose routing is unchanged (it only compares the routing's signature with the
store's), `order set b a` moving all N waiting recipients, and the same change back. The queue is
filled with SQL after one real pass, so filling it takes seconds, not minutes.

    python benchmarks/reroute_cost.py            # N = 20,000
    python benchmarks/reroute_cost.py -n 2000
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

import postroom  # noqa: E402
from postroom.profile import Profile  # noqa: E402

from support.profiles import make_profile  # noqa: E402  (registers the "recording" kind)


def fill(profile: Profile, n: int) -> None:
    """One real message waiting for `a`, then n - 1 copies of its queue rows."""
    with postroom.logon(profile) as session:
        session.create_message("m0").to("u0@x.test").submit()
        session.deliver()
    db = sqlite3.connect(profile.store_path)
    with db:
        (mid,) = db.execute("SELECT id FROM messages WHERE queue_state IS NOT NULL").fetchone()
        cols = [r[1] for r in db.execute("PRAGMA table_info(messages)") if r[1] != "id"]
        rcols = [r[1] for r in db.execute("PRAGMA table_info(recipients)") if r[1] != "message_id"]
        for _ in range(n - 1):
            new = db.execute(
                f"INSERT INTO messages ({', '.join(cols)}) SELECT {', '.join(cols)} FROM messages WHERE id=?", (mid,)
            ).lastrowid
            db.execute(
                f"INSERT INTO recipients (message_id, {', '.join(rcols)}) "
                f"SELECT ?, {', '.join(rcols)} FROM recipients WHERE message_id=?",
                (new, mid),
            )
    db.close()


def timed(label: str, fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    took = time.perf_counter() - start
    print(f"{label:<48} {took * 1000:9.1f} ms")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        profile = make_profile(Path(tmp) / "p", ("a", {"address_types": ["SMTP"]}), ("b", {"address_types": ["SMTP"]}))
        profile.set_mode("offline")
        profile.save()
        fill(profile, args.n)
        session = postroom.logon(profile.directory)
        try:
            print(f"{args.n} messages waiting for a; {len(session.queue())} in the queue")
            timed("logon, routing unchanged (logon included)", session.enum_adr_types)
            timed("routing unchanged: the signature check alone", session.engine.runtime.place_waiting)
            timed("order set b a: move every waiting recipient", lambda: session.set_transport_order(["b", "a"]))
            timed("order set a b: and back", lambda: session.set_transport_order(["a", "b"]))
            assert {q.waiting_transports for q in session.queue()} == {("a",)}
        finally:
            session.close()


if __name__ == "__main__":
    main()
