"""The analysis of one benchmark run, written from that run's numbers (benchmarks/analysis.md).

Why generated: a hand-written analysis outlives the run it described, and pasted under new numbers
it says things they no longer show (issue 17, point 8). Everything here is computed from the
figures' JSON of one run: which targets were met, the comparisons with the references measured
beside them, the load average beside each figure, and the commit measured (and whether the tree
had uncommitted changes). Hand-written investigations (profiles, the soak) live in
investigations.md, each dated with the commit it measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import common as C

Record = dict[str, Any]


def busy(load: str, nproc: int) -> bool:
    """Whether a figure's load average ("a b c → d e f") says other work competed for the CPUs."""
    try:
        first = float(load.split()[0])
    except (ValueError, IndexError):
        return False
    return first >= 0.5 * nproc


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.0f}%"


def verdict(v: Any) -> str:
    return "n/a" if v is None else ("met" if v else "missed")


def fig1(r: Record) -> list[str]:
    med = r.get("median") or {}
    cpu = r.get("median_cpu_ms") or {}
    ratios = r.get("ratios") or {}
    w = r.get("workers", 1)
    default = f"postroom-w{w}"
    out = [
        f"postroom with --workers {w} delivered {C.fmt_rate(med.get(default))} msg/s end to end "
        f"(N = {r.get('n')}, median of {r.get('runs')}), {C.fmt_ratio(ratios.get('postroom/postfix'))} the Postfix "
        f"relay measured between its runs ({C.fmt_rate(med.get('postfix'))} msg/s) and "
        f"{C.fmt_ratio(ratios.get('postroom/smtplib'))} smtplib on one connection "
        f"({C.fmt_rate(med.get('smtplib'))} msg/s)."
    ]
    if w != 1 and med.get("postroom-w1"):
        out.append(
            f"One spooler process reached {C.fmt_rate(med.get('postroom-w1'))} msg/s: {w} processes are "
            f"{C.fmt_ratio(ratios.get(f'workers {w}/workers 1'))} of one."
        )
    if cpu.get(default) is not None and cpu.get("postfix") is not None:
        more = cpu[default] / cpu["postfix"] if cpu["postfix"] else None
        out.append(
            f"CPU per delivered message: postroom {cpu[default]:.2f} ms (its spooler processes "
            f"{(r.get('median_extra') or {}).get('spooler_cpu_ms') or 0:.2f} ms, the rest the submitting process), "
            f"Postfix {cpu['postfix']:.2f} ms summed over its daemons: postroom spends "
            f"{C.fmt_ratio(more)} Postfix's CPU per message."
        )
    drain = (r.get("median_extra") or {}).get("drain")
    share = C.ratio(med.get(default), drain)
    if drain and share is not None:
        out.append(
            f"The spooler alone drained a pre-filled queue at {C.fmt_rate(drain)} msg/s; end to end ran at "
            f"{pct(share)} of that"
            + (", submitting and delivering at once on the same store and CPUs." if share < 1 else ".")
        )
    costs = (r.get("statements") or {}).get("costs") or []
    for c in costs:
        out.append(
            f"The store ran {c['statements_per_message']:.2f} statements and {c['commits_per_message']:.3f} commits "
            f"per delivered message in a drain via {c['transport']} on {c['store']} (targets ≤ 6 and ≤ 0.05)."
        )
    if not costs:
        out.append("Statements and commits per message were not measured in this run (no statement counter).")
    return out


def fig2(r: Record) -> list[str]:
    med = r.get("median") or {}
    best = max((v for k, v in med.items() if k.startswith("batch") and v), default=None)
    return [
        f"Submitting one message at a time ran at {C.fmt_rate(med.get('one'))} msg/s; the best batched rate was "
        f"{C.fmt_rate(best)} msg/s ({pct(C.ratio(best, 20_000))} of the 20,000 msg/s goal)."
    ]


def fig3(r: Record) -> list[str]:
    med = r.get("median") or {}
    rec = med.get("recipients") or {}
    mixed = med.get("mixed") or {}
    spread = r.get("spread") or {}
    if not rec:
        return []
    low = min(rec.values())
    return [
        f"On the spooler's real path (`Recipient` objects, the UID parsed from PR_ENTRYID) routing ran at "
        f"{low / 1e6:.2f}–{max(rec.values()) / 1e6:.2f} M recipients/s from 1 to 1,000 transports (spread "
        f"{pct(spread.get('recipients'))}); {pct(low / 1e6)} of the 1 M/s goal. The cache-hit workload "
        f"(address type and UID pairs) reached {min(mixed.values()) / 1e6:.2f} M/s and is not what is judged."
    ]


def fig4(r: Record) -> list[str]:
    med = r.get("median") or {}
    floor = r.get("floor") or {}
    return [
        f"submit() to the transport: p50 {med.get('p50', float('nan')):.2f} ms, "
        f"p99 {med.get('p99', float('nan')):.2f} ms "
        f"(the bare wake-up floor: p50 {floor.get('p50', float('nan')):.2f} ms)."
    ]


def fig5(r: Record) -> list[str]:
    drain = r.get("drain_rate")
    return [
        f"One Send/Receive flushed {r.get('n')} offline messages at {C.fmt_rate(r.get('rate'))} msg/s, "
        f"{C.fmt_ratio(r.get('ratio_to_drain'))} the spooler's drain rate measured in the same run "
        f"({C.fmt_rate(drain)} msg/s); peak RSS {r.get('peak_mib', 0):.0f} MiB."
    ]


def fig6(r: Record) -> list[str]:
    out = []
    for x in r.get("sizes") or []:
        out.append(
            f"With {x['n']:,} waiting: the first pass over them took {x['first_pass_seconds']:.1f} s "
            f"({x['first_pass_cpu_seconds']:.1f} s CPU), then the idle daemon used {x['per_minute']:.3f} s CPU "
            "per minute "
            f"(an empty queue: {r.get('per_minute_empty', float('nan')):.3f})."
        )
    return out


def fig7(r: Record) -> list[str]:
    figs = r.get("figures") or {}
    out = []
    for name, f in figs.items():
        cpu = f.get("cpu_ms_per_message") or {}
        out.append(
            f"{name}: {C.fmt_rate(f.get('median'))} msg/s; CPU per message: spoolers "
            f"{cpu.get('spoolers', float('nan')):.2f} ms"
            + (f", PostgreSQL server {cpu['server']:.2f} ms" if cpu.get("server") is not None else "")
            + "."
        )
    base = (figs.get("postgresql-1") or {}).get("median")
    lite = (figs.get("sqlite-1") or {}).get("median")
    if base and lite:
        out.append(f"One PostgreSQL spooler (fsync on) is {C.fmt_ratio(base / lite)} one SQLite spooler (goal ≥ 0.9×).")
    return out


def fig8(r: Record) -> list[str]:
    out = []
    for line in r.get("growth") or []:
        out.append(line)
    return out


def fig9(r: Record) -> list[str]:
    med = r.get("median_ms") or {}
    return ["Start-up: " + ", ".join(f"{k} {v:.0f} ms" for k, v in med.items() if isinstance(v, (int, float))) + "."]


WRITERS: dict[str, Callable[[Record], list[str]]] = {
    "fig1": fig1,
    "fig2": fig2,
    "fig3": fig3,
    "fig4": fig4,
    "fig5": fig5,
    "fig6": fig6,
    "fig7": fig7,
    "fig8": fig8,
    "fig9": fig9,
}


def analysis(records: list[Record], info: dict[str, Any]) -> str:
    """analysis.md for one run: generated, never edited by hand."""
    nproc = int(info.get("nproc") or 1)
    o: list[str] = []
    commit = info.get("commit") or "unknown"
    dirty = info.get("dirty")
    o.append(
        f"Generated by `benchmarks/run.py` from the run of {info.get('date', '?')} on commit `{commit}`"
        + (" with uncommitted changes in the tree" if dirty else (" (a clean tree)" if dirty is not None else ""))
        + f"; {info.get('source', '')}. Do not edit: run the benchmarks again.\n"
    )
    met = [(r, k) for r in records for k, v in (r.get("targets") or {}).items() if v]
    missed = [(r, k) for r in records for k, v in (r.get("targets") or {}).items() if v is False]
    failed = [r for r in records if r.get("error")]
    o.append(
        f"{len(met)} target(s) met, {len(missed)} missed"
        + (f", {len(failed)} figure(s) failed to run" if failed else "")
        + (". Missed: " + "; ".join(f"{r['figure'].split(':')[0]} — {k}" for r, k in missed) if missed else "")
        + ".\n"
    )
    for r in records:
        o.append(f"### {r['figure']}\n")
        load = r.get("loadavg", "?")
        o.append(
            f"Load average {load}"
            + (
                " — other work competed for the CPUs; compare with the references of the same run."
                if busy(load, nproc)
                else "."
            )
            + "\n"
        )
        if r.get("error"):
            o.append(f"Did not run: {r['error']}.\n")
            continue
        text = WRITERS.get(r["key"], lambda _r: [])(r)
        if text:
            o.append(" ".join(text) + "\n")
        for k, v in (r.get("targets") or {}).items():
            o.append(f"- {k}: {verdict(v)}")
        o.append("")
    return "\n".join(o).rstrip() + "\n"
