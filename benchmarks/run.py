"""Run every benchmark figure and render benchmarks/RESULTS.md.

    python benchmarks/run.py --quick          # smoke run (seconds; CI runs this): tiny N, one run each
    python benchmarks/run.py                  # the full run; rewrites RESULTS.md and analysis.md
    python benchmarks/run.py --only fig3,fig4 # some figures
    python benchmarks/run.py --fig1-n 5000 --fig5-n 20000   # reduced sizes (RESULTS.md says so)

Each figure is its own script (figN_*.py, runnable alone with --quick/--json/-n …); this driver runs
them one after the other in subprocesses, prints what each prints, keeps their JSON in a results
directory and writes RESULTS.md and analysis.md from it (the full run writes benchmarks/RESULTS.md
and benchmarks/analysis.md; --quick writes neither unless --results / --analysis are given). The
analysis is generated from the same run's numbers (analysis_text.py): the targets, the comparisons
with the references, the load average beside each figure, the commit and whether the tree was
dirty. Nothing hand-written is pasted under new numbers.

Exit status: 0 when every figure ran (a reference skipped for a missing tool is not a failure),
1 when a figure failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import analysis_text
import common as C

FIGURES = [
    ("fig1", "fig1_end_to_end.py", "Figure 1: end-to-end throughput"),
    ("fig2", "fig2_submit.py", "Figure 2: submit rate"),
    ("fig3", "fig3_routing.py", "Figure 3: routing"),
    ("fig4", "fig4_latency.py", "Figure 4: online latency"),
    ("fig5", "fig5_offline_flush.py", "Figure 5: offline flush at scale"),
    ("fig6", "fig6_idle.py", "Figure 6: idle cost"),
    ("fig7", "fig7_scaleout.py", "Figure 7: spooler processes on one store"),
    ("fig8", "fig8_growth.py", "Figure 8: cost growth"),
    ("fig9", "fig9_startup.py", "Figure 9: start-up time"),
]
#: Figures a --quick run leaves out: figure 7 starts a private PostgreSQL cluster with fsync on.
NOT_QUICK = {"fig7"}


def git_state() -> tuple[str, bool | None]:
    """The commit measured and whether the tree had uncommitted changes (None: not a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=C.REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "benchmarks"],
            cwd=C.REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", None
    return commit, bool(dirty)


def test_postgres() -> dict[str, str]:
    """The suite's PostgreSQL test cluster (.ci/start-postgres: started or reused), as the
    environment figure 8 reads its server from; empty, with a note, when none can start."""
    proc = subprocess.run(["bash", str(C.REPO / ".ci" / "start-postgres")], capture_output=True, text=True)
    found = dict(
        word.split("=", 1)
        for line in proc.stdout.splitlines()
        if line.startswith("export ")
        for word in shlex.split(line.removeprefix("export "))
        if "=" in word
    )
    if proc.returncode or "POSTROOM_TEST_PG_URL" not in found:
        print(f"no PostgreSQL for figure 8: {proc.stderr.strip()}", flush=True)
        return {}
    return found


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny N, one run each (CI)")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated figure keys (fig1,…,fig9; fig7 runs only in a full run or when named)",
    )
    ap.add_argument("--out", type=Path, default=None, help="directory for the figures' JSON")
    ap.add_argument("--results", type=Path, default=None, help="where to write RESULTS.md")
    ap.add_argument("--analysis", type=Path, default=None, help="where to write analysis.md")
    ap.add_argument("--runs", type=int, default=None, help="repetitions for every figure")
    ap.add_argument("--fig1-n", type=int, default=None)
    ap.add_argument("--fig2-n", type=int, default=None)
    ap.add_argument("--fig5-n", type=int, default=None)
    ap.add_argument("--fig6-n", type=int, default=None)
    ap.add_argument("--fig6-window", type=float, default=None)
    ap.add_argument(
        "--render-from",
        type=Path,
        default=None,
        help="only write RESULTS.md again from a results directory of an earlier run (e.g. after editing analysis.md)",
    )
    ap.add_argument(
        "--snapshot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run a copy of src/postroom taken at the start (default: on for the full run, off for --quick)",
    )
    args = ap.parse_args()
    if args.snapshot is None:
        args.snapshot = not args.quick

    if args.render_from is not None:
        saved = json.loads((args.render_from / "run.json").read_text())
        records = [json.loads((args.render_from / f"{key}.json").read_text()) for key in saved["figures"]]
        for r in records:
            r.update(saved["extra"].get(r["key"], {}))
        path = args.results or C.HERE / "RESULTS.md"
        text = analysis_text.analysis(records, saved["info"])
        (args.analysis or C.HERE / "analysis.md").write_text(text)
        path.write_text(render(records, saved["info"], argparse.Namespace(**saved["args"]), saved["total"], text))
        print(f"wrote {path}")
        return 0

    only = {k.strip() for k in args.only.split(",") if k.strip()}
    out = args.out or Path(tempfile.mkdtemp(prefix="postroom-bench-results-"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not args.quick and not env.get("POSTROOM_TEST_PG_URL"):
        env.update(test_postgres())  # figure 8 measures both stores
    source = snapshot(out) if args.snapshot else None
    if source is not None:
        # Every figure (and every daemon it starts) imports this copy: edits to src/ during a long run
        # cannot mix two versions of the code in one measurement.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source["path"]), env.get("PYTHONPATH", "")) if p)
    results_path = args.results or (None if args.quick else C.HERE / "RESULTS.md")
    analysis_path = args.analysis or (None if args.quick else C.HERE / "analysis.md")
    started = time.time()
    info = C.machine()
    info["commit"], info["dirty"] = git_state()
    info["loadavg_start"] = loadavg()
    info["source"] = (
        f"snapshot of src/postroom, sha256 {source['digest']} ({source['files']} files)"
        if source
        else ("src/postroom as it was while running (no snapshot)")
    )
    print(
        f"postroom benchmarks{' (quick)' if args.quick else ''}: {info['nproc']} CPU(s), {info['cpu']}, "
        f"Python {info['python']}, {info['date']}; load {info['loadavg_start']}",
        flush=True,
    )

    records: list[dict[str, Any]] = []
    failed = False
    for key, script, title in FIGURES:
        if only and key not in only:
            continue
        if args.quick and key in NOT_QUICK and key not in only:
            continue
        json_path = out / f"{key}.json"
        json_path.unlink(missing_ok=True)
        cmd = [C.PY, str(C.HERE / script), "--json", str(json_path)]
        if args.quick:
            cmd.append("--quick")
        if args.runs:
            cmd += ["--runs", str(args.runs)]
        extra = {
            "fig1": ["-n", args.fig1_n],
            "fig2": ["-n", args.fig2_n],
            "fig5": ["-n", args.fig5_n],
            "fig6": ["-n", args.fig6_n],
        }.get(key)
        if extra and extra[1]:
            cmd += [extra[0], str(extra[1])]
        if key == "fig6" and args.fig6_window:
            cmd += ["--window", str(args.fig6_window)]
        if key == "fig5" and (out / "fig1.json").exists():
            cmd += ["--fig1-json", str(out / "fig1.json")]
        timeout = 120 if args.quick else 3600
        shown = " ".join(shlex.quote(c) for c in cmd).replace(str(C.REPO) + "/", "")
        load_before = loadavg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=C.REPO, env=env)
        try:
            text, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the script stops its sink, daemon and Postfix, and cleans up
            try:
                text, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                text, _ = proc.communicate()
            rc = -1
            text = (text or "") + f"\n(timed out after {timeout} s)"
        dt = time.perf_counter() - t0
        if rc == 0 and json_path.exists():
            data = json.loads(json_path.read_text())
            sys.stdout.write(text)
            print(f"-- {key} ok in {dt:.1f} s", flush=True)
        else:
            failed = True
            data = {"figure": title, "key": key, "error": f"exit status {rc}", "lines": [], "notes": []}
            sys.stdout.write(text)
            print(f"== {title}: FAILED (exit status {rc}) after {dt:.1f} s", flush=True)
        data["command"] = shown
        data["elapsed"] = dt
        data["loadavg"] = f"{load_before} → {loadavg()}"
        records.append(data)

    info["loadavg_end"] = loadavg()
    total = time.time() - started
    print(f"total {total:.1f} s", flush=True)
    saved_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    (out / "run.json").write_text(
        json.dumps(
            {
                "info": info,
                "args": saved_args,
                "total": total,
                "figures": [r["key"] for r in records if not r.get("error")],
                "extra": {r["key"]: {k: r[k] for k in ("command", "elapsed", "loadavg")} for r in records},
            },
            indent=2,
        )
    )
    text = analysis_text.analysis(records, info)
    if analysis_path is not None:
        analysis_path.write_text(text)
        print(f"wrote {analysis_path}", flush=True)
    if results_path is not None:
        results_path.write_text(render(records, info, args, total, text))
        print(f"wrote {results_path}", flush=True)
    if args.out is None and args.quick:
        shutil.rmtree(out, ignore_errors=True)  # a smoke run keeps nothing
    else:
        print(f"results in {out}", flush=True)
    return 1 if failed else 0


def snapshot(out: Path) -> dict[str, Any]:
    """Copy src/postroom into the results directory; returns its path and a digest of the sources."""
    src = C.REPO / "src" / "postroom"
    dest = out / "src-snapshot"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest / "postroom", ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    files = sorted(p for p in (dest / "postroom").rglob("*.py"))
    for p in files:
        digest.update(str(p.relative_to(dest)).encode() + b"\0" + p.read_bytes())
    check = subprocess.run(
        [C.PY, "-c", "import postroom, postroom.cli, postroom.session; print(postroom.__file__)"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(dest)),
    )
    if check.returncode != 0 or str(dest) not in check.stdout:
        raise SystemExit(f"the source snapshot does not import cleanly: {check.stderr.strip()[-1000:]}")
    return {"path": dest, "digest": digest.hexdigest()[:16], "files": len(files)}


# --- RESULTS.md -------------------------------------------------------------------------------------------


def yesno(v: Any) -> str:
    return "n/a" if v is None else ("**met**" if v else "**missed**")


def render(
    records: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace, total: float, analysis: str
) -> str:
    by = {r["key"]: r for r in records}
    cmdline = "python benchmarks/run.py" + "".join(
        f" {flag} {val}"
        for flag, val in (
            ("--quick", "" if args.quick else None),
            ("--only", args.only or None),
            ("--runs", args.runs),
            ("--fig1-n", args.fig1_n),
            ("--fig2-n", args.fig2_n),
            ("--fig5-n", args.fig5_n),
            ("--fig6-n", args.fig6_n),
            ("--fig6-window", args.fig6_window),
        )
        if val is not None
    ).replace("  ", " ")
    o: list[str] = []
    o.append("# postroom benchmarks — results\n")
    o.append(
        "Every figure is measured beside its reference in the same run on the same machine; rates are medians "
        "of the runs listed. Generated by `benchmarks/run.py` from the figures' JSON of one run; the *Analysis* "
        "section is `benchmarks/analysis.md`, generated from the same run. Hand-written investigations of earlier "
        "commits (profiles, the soak) are in `benchmarks/investigations.md`.\n"
    )
    o.append("## Machine and run\n")
    o.append("| | |\n|---|---|")
    rows = [
        ("CPU", f"{info['cpu']} — `nproc` = {info['nproc']}"),
        ("memory", info["memory"]),
        ("kernel", info["kernel"]),
        ("Python", info["python"]),
        ("SQLite", info["sqlite"]),
        ("aiosmtplib", info["aiosmtplib"]),
        ("Postfix", info["postfix"] or "not installed"),
        ("temp filesystem", info["tmp_filesystem"]),
        ("date", info["date"]),
        ("load average", f"{info['loadavg_start']} at the start, {info['loadavg_end']} at the end"),
        ("code measured", info.get("source", "")),
        (
            "commit",
            f"`{info.get('commit', 'unknown')}`"
            + {True: ", with uncommitted changes", False: ", clean tree", None: ""}[info.get("dirty")],
        ),
        ("command", f"`{cmdline}` ({total / 60:.1f} min)"),
    ]
    o += [f"| {k} | {v} |" for k, v in rows]
    o.append("")
    o.append(
        "The machine is shared (other work ran on it meanwhile; the load average before/after each figure is "
        "listed), so single runs vary by ±20% or more; medians and the same-run references are what to compare.\n"
    )

    o.append("## Targets\n")
    o.append("| figure | target | result |\n|---|---|---|")
    for r in records:
        for name, v in (r.get("targets") or {}).items():
            o.append(f"| {r['figure'].split(':')[0]} | {name} | {yesno(v)} |")
        if r.get("error"):
            o.append(f"| {r['figure'].split(':')[0]} | — | **failed to run** ({r['error']}) |")
    o.append("")

    for r in records:
        o.append(f"## {r['figure']}\n")
        command = r.get("command", "")
        if getattr(args, "out", None):
            command = command.replace(str(args.out), "RESULTS_DIR")
        command = command.replace(C.PY, "python")
        o.append(f"Command: `{command}` — {r.get('elapsed', 0):.0f} s, load {r.get('loadavg', '?')}\n")
        if r.get("error"):
            o.append(f"**Failed:** {r['error']}\n")
            continue
        o.append("```")
        o += r.get("lines", [])
        o.append("```")
        ratios = r.get("ratios") or {}
        if ratios:
            o.append("")
            o.append("Ratios: " + "; ".join(f"{k} = {C.fmt_ratio(v)}" for k, v in ratios.items()))
        for note in r.get("notes", []):
            o.append(f"\n> {note}")
        o.append("")
        o += figure_details(r)

    o.append("## Analysis\n")
    o.append(analysis.strip() + "\n")
    del by
    return "\n".join(o) + "\n"


def figure_details(r: dict[str, Any]) -> list[str]:
    key = r["key"]
    o: list[str] = []
    if key == "fig1":
        m = r.get("median", {})
        mx = r.get("median_extra", {})
        o.append(
            f"N = {r['n']}, {r['runs']} run(s); postroom config: {r.get('config')}. Medians (msg/s): "
            + ", ".join(f"{k} {C.fmt_rate(v)}" for k, v in m.items())
            + ". CPU per delivered message (ms): "
            + ", ".join(f"{k} {v:.2f}" for k, v in (r.get("median_cpu_ms") or {}).items() if v is not None)
            + f". Submitting side during the run {C.fmt_rate(mx.get('submit_rate'))} msg/s; spooler processes "
            f"{(mx.get('spooler_cpu_ms') or 0):.2f} ms CPU per message; spooler drain alone "
            f"{C.fmt_rate(mx.get('drain'))} msg/s.\n"
        )
    if key == "fig5":
        o.append(
            f"Queueing the {r['n']} messages took {C.median([s['queue_seconds'] for s in r.get('samples', [])]):.1f} s"
            " (not part of the figure).\n"
        )
    if key == "fig6":
        lo = r.get("loaded", [])
        if lo:
            o.append(
                "Windows measured: "
                + ", ".join(f"{x['cpu_seconds']:.2f} s CPU in {x['window']:.0f} s" for x in lo)
                + ".\n"
            )
    return o


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
