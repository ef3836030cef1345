"""Figure 2 — submit rate: messages per second into the durable Outbox.

postroom: `session.create_message(subject, 1 KiB body).to(rcpt).submit()` one at a time (every
submit is its own durable commit: SQLite WAL, synchronous=FULL), and in batches with
`Session.submit_many(drafts)` (one durable commit per batch) of 100 and 1,000 messages. No spooler
runs meanwhile. If the Session API has no batch submit, the batch lines say so (a gap).

Reference, same run: Postfix's intake — smtp-source (1 and 8 sessions, connections reused) into
our own Postfix instance whose smtpd puts every message on hold, so the rate is "accepted and
safely in the queue" (Postfix fsyncs each queue file before its 250), without delivery competing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import common as C


def postroom_rate(n: int, batch: int | None) -> float:
    import postroom

    with C.workdir("fig2") as work:
        prof = C.make_profile(work / "profile")
        with postroom.logon(prof) as session:
            # One throw-away message first, so the store file, folders and caches exist.
            session.create_message("warm-up", C.BODY).to(C.RECIPIENT).submit()
            t0 = time.perf_counter()
            if batch is None:
                C.submit_one_at_a_time(session, n)
            else:
                C.submit_batches(session, n, batch)
            dt = time.perf_counter() - t0
            queued = len(session.queue()) - 1
        if queued != n:
            raise RuntimeError(f"expected {n} queued messages, found {queued}")
    return n / dt


def main() -> int:
    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 5000; --quick 200)")
    args = ap.parse_args()
    n = args.n or (200 if args.quick else 5_000)
    runs = args.runs or (1 if args.quick else 5)
    # Batches go faster: more messages, so that a run lasts long enough to time.
    nb100, nb1000 = (n, n) if args.quick else (n * 2, n * 4)
    result: dict[str, Any] = {"figure": "Figure 2: submit rate", "key": "fig2", "n": n, "runs": runs, "notes": []}
    samples: dict[str, list[float]] = {k: [] for k in ("one", "batch100", "batch1000", "postfix1", "postfix8")}

    import postroom

    with C.workdir("fig2-probe") as work, postroom.logon(C.make_profile(work / "p")) as probe:
        batching = C.has_submit_many(probe)
    if not batching:
        result["notes"].append("GAP: the Session API has no batch submit (submit_many); batch lines not measured")

    with C.optional_postfix(C.free_port(), result["notes"], "Postfix intake") as pf:
        for r in range(runs):
            C.log(f"fig2 round {r + 1}/{runs}")
            samples["one"].append(postroom_rate(n, None))
            if batching:
                samples["batch100"].append(postroom_rate(nb100, 100))
                samples["batch1000"].append(postroom_rate(nb1000, 1000))
            if pf is not None:
                for sessions in (1, 8):
                    samples[f"postfix{sessions}"].append(n / C.smtp_source(n, sessions, pf.hold_port))
                    if pf.queued() < n:
                        result["notes"].append(f"Postfix held only {pf.queued()} of {n} messages")
                    pf.delete_all()

    med = {k: (C.median(v) if v else None) for k, v in samples.items()}
    result["samples"], result["median"] = samples, med
    result["ratios"] = {
        "one/postfix-1": C.ratio(med["one"], med["postfix1"]),
        "one/postfix-8": C.ratio(med["one"], med["postfix8"]),
        "batch1000/postfix-8": C.ratio(med["batch1000"], med["postfix8"]),
    }
    result["targets"] = {
        "one at a time >= 2,000 msg/s": med["one"] >= 2000 if med["one"] else None,
        "batches >= 20,000 msg/s": (max(med["batch100"] or 0, med["batch1000"] or 0) >= 20000) if batching else False,
    }

    def line(label: str, key: str) -> str:
        return C.rate_line(label, 58, med[key], samples[key])

    result["lines"] = [
        f"N = {n} messages × 1 KiB, 1 recipient (batch runs: {nb100} and {nb1000} messages); median of {runs} run(s)",
        line("postroom submit(), one at a time, each durable", "one"),
        line("postroom submit_many(), batches of 100", "batch100"),
        line("postroom submit_many(), batches of 1,000", "batch1000"),
        line("Postfix intake: smtp-source -s 1 -d → smtpd → queue (hold)", "postfix1"),
        line("Postfix intake: smtp-source -s 8 -d → smtpd → queue (hold)", "postfix8"),
        f"one-at-a-time/Postfix(1 session) = {C.fmt_ratio(result['ratios']['one/postfix-1'])}   "
        f"one-at-a-time/Postfix(8) = {C.fmt_ratio(result['ratios']['one/postfix-8'])}   "
        f"batch-1000/Postfix(8) = {C.fmt_ratio(result['ratios']['batch1000/postfix-8'])}",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
