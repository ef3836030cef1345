"""Figure 3 — routing: recipient routing decisions per second with 1, 10, 100 and 1,000 transports.

`postroom.spooler.routing.Router` is used directly (the function the spooler and `postroom route`
call). The transports, in transport order, register:
  * every transport: its own address type `XT<i>` and its own provider UID;
  * transport 0: also SMTP; the middle one: also FAX and X400; the last one: the wildcard (any type)
    (with 1 transport, that one does all of these).
The recipients (200,000 per run; the same pseudo-random mix for every size) are:
  45% SMTP, 10% FAX, 10% X400, 10% the own type of a random transport, 15% the UID of a random
  transport (routed in the UID pass first), 10% an address type no transport names (only the
  wildcard takes it).

Three workloads, each reported for every size:
  * mixed: the mix above as (address type, UID) pairs — what the spooler asks per recipient;
  * recipients: the same mix as `Recipient` objects, so the UID is parsed out of PR_ENTRYID the
    way the spooler does it (`router.offers(r.address_type, r.provider_uid)`);
  * cold: a new Router per run and every recipient with its own (unregistered) UID, so no answer
    is ever reused: the cost of computing an answer.
The targets are judged on "recipients", the spooler's real path; "mixed" is an answer-cache hit.
Flatness: the spread (max/min − 1) of each workload's rates across the four sizes. The sizes are
measured round-robin, and the garbage collector is off while a loop is timed (as `timeit` does).
"""

from __future__ import annotations

import gc
import random
import sys
import time
from typing import Any

import common as C

SIZES = (1, 10, 100, 1000)


def build(t: int) -> tuple[list[tuple[str, Any]], list[bytes]]:
    from postroom.transports.spi import Registration

    rnd = random.Random(t)
    uids = [rnd.randbytes(16) for _ in range(t)]
    transports = []
    for i in range(t):
        types = [f"XT{i}"]
        if i == 0:
            types.append("SMTP")
        if i == t // 2:
            types += ["FAX", "X400"]
        # The last transport takes any type (with one transport, that one covers everything).
        reg = Registration.any(uids=[uids[i]]) if i == t - 1 else Registration.of(*types, uids=[uids[i]])
        transports.append((f"t{i}", reg))
    return transports, uids


def mix(count: int, t: int, uids: list[bytes], seed: int = 7) -> list[tuple[str, bytes | None]]:
    rnd = random.Random(seed)
    out: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        x = rnd.random()
        if x < 0.45:
            out.append(("SMTP", None))
        elif x < 0.55:
            out.append(("FAX", None))
        elif x < 0.65:
            out.append(("X400", None))
        elif x < 0.75:
            out.append((f"XT{rnd.randrange(t)}", None))
        elif x < 0.90:
            out.append(("EX", uids[rnd.randrange(t)]))
        else:
            out.append(("NOSUCHTYPE", None))
    return out


def as_recipients(pairs: list[tuple[str, bytes | None]]) -> list[Any]:
    from postroom.mapi import tags as T
    from postroom.mapi.entryid import encode_one_off
    from postroom.mapi.message import Recipient

    out = []
    for n, (adrtype, uid) in enumerate(pairs):
        if uid is None:
            entry_id = encode_one_off(f"r{n}", adrtype, f"r{n}@example.test")
        else:
            entry_id = b"\0\0\0\0" + uid + n.to_bytes(8, "little")  # a provider's own entry ID
        out.append(
            Recipient(props={T.PR_ADDRTYPE: adrtype, T.PR_EMAIL_ADDRESS: f"r{n}@example.test", T.PR_ENTRYID: entry_id})
        )
    return out


def rate_pairs(router: Any, pairs: list[tuple[str, bytes | None]]) -> float:
    offers = router.offers
    gc.collect()
    gc.disable()  # as timeit does: a collection of the whole heap is not routing's cost
    try:
        t0 = time.perf_counter()
        for adrtype, uid in pairs:
            offers(adrtype, uid)
        return len(pairs) / (time.perf_counter() - t0)
    finally:
        gc.enable()


def rate_recipients(router: Any, recips: list[Any]) -> float:
    offers = router.offers
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for r in recips:
            offers(r.address_type, r.provider_uid)
        return len(recips) / (time.perf_counter() - t0)
    finally:
        gc.enable()


def main() -> int:
    from postroom.spooler.routing import Router

    ap = C.arg_parser(__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=None, help="recipients per run (default 200000; --quick 20000)")
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 200_000)
    runs = args.runs or (1 if args.quick else 5)
    result: dict[str, Any] = {"figure": "Figure 3: routing", "key": "fig3", "n": n, "runs": runs, "notes": []}
    samples: dict[str, dict[str, list[float]]] = {w: {} for w in ("mixed", "recipients", "cold")}
    checks: dict[int, dict[str, int]] = {}
    prepared = {}
    for t in SIZES:
        transports, uids = build(t)
        pairs = mix(n, t, uids)
        recips = as_recipients(pairs[: max(1, n // 4)])
        cold_rnd = random.Random(99)
        cold = [("SMTP", cold_rnd.randbytes(16)) for _ in range(n)]
        router = Router(transports)
        # Sanity: every recipient kind gets the offers the rules say.
        empty = sum(1 for a, u in pairs[:2000] if not router.offers(a, u))
        checks[t] = {"without_offer_in_first_2000": empty, "offers_for_SMTP": len(router.offers("SMTP", None))}
        rate_pairs(router, pairs)  # warm-up: every distinct answer computed once
        rate_recipients(router, recips)
        prepared[t] = (transports, pairs, recips, cold, router)
        for w in samples:
            samples[w][str(t)] = []
    # Round-robin over the sizes, so that noise from other work on the machine hits them all alike.
    for r in range(runs):
        for t in SIZES:
            transports, pairs, recips, cold, router = prepared[t]
            samples["mixed"][str(t)].append(rate_pairs(router, pairs))
            samples["recipients"][str(t)].append(rate_recipients(router, recips))
            samples["cold"][str(t)].append(rate_pairs(Router(transports), cold))
        C.log(f"fig3 run {r + 1}/{runs} done")
    med = {w: {t: C.median(v) for t, v in d.items()} for w, d in samples.items()}
    flat = {w: max(d.values()) / min(d.values()) - 1 for w, d in med.items()}
    result.update(samples=samples, median=med, spread=flat, checks=checks)
    # Judged on the spooler's real path (issue 17): Recipient objects whose UID is parsed out of
    # PR_ENTRYID, as the spooler asks; "mixed" hits the Router's answer cache and is shown, not judged.
    result["targets"] = {
        ">= 1,000,000 recipients/s at every size (recipients, the spooler's path)": min(med["recipients"].values())
        >= 1_000_000,
        "within 10% from 1 to 1,000 transports (recipients)": flat["recipients"] <= 0.10,
    }
    header = f"{'workload':<12}" + "".join(f"{str(t) + ' transport' + ('s' if t > 1 else ''):>16}" for t in SIZES)
    rows = [
        f"{w:<12}" + "".join(f"{med[w][str(t)]:>16,.0f}" for t in SIZES) + f"   spread {flat[w] * 100:.1f}%"
        for w in samples
    ]
    result["lines"] = [
        f"{n:,} recipients per run (recipients workload: {max(1, n // 4):,}); decisions/s, median of {runs}",
        header,
        *rows,
        "reference: the same mix at 1 transport (ratio 1000/1 transports: "
        + ", ".join(f"{w} {med[w]['1000'] / med[w]['1']:.2f}×" for w in samples)
        + ")",
    ]
    C.emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
