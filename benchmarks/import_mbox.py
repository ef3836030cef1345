"""Import of a large mbox (issue 20): messages per second, and peak RSS against the mbox's size.

    python benchmarks/import_mbox.py            # 10,000 messages
    python benchmarks/import_mbox.py -n 1000 --json

Writes an mbox of N messages of about 4 KB each (every tenth with a 40 KB attachment), runs
`postroom import` on it in a fresh profile as a user would (a subprocess), and reports the
rate and the peak RSS of that process (getrusage of the child). The import is streamed (the
mbox is indexed once, each message read, converted and committed on its own), so the peak RSS
stays that of one message however long the mbox is: run it with -n 1000 and -n 10000 and compare.
"""

from __future__ import annotations

import argparse
import base64
import json
import mailbox
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_mbox(path: Path, n: int) -> int:
    box = mailbox.mbox(str(path))
    filler = ("The quick brown fox jumps over the lazy dog. " * 80).encode()
    blob = base64.encodebytes(os.urandom(30_000))
    for i in range(n):
        if i % 10 == 9:
            body = (
                b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\n"
                + filler
                + b"\n--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n"
                + b'Content-Disposition: attachment; filename="a.bin"\n\n'
                + blob
                + b"--b--\n"
            )
        else:
            body = b"Content-Type: text/plain\n\n" + filler + b"\n"
        head = f"From: sender{i}@example.org\nTo: you@example.org\nSubject: message {i}\nMessage-ID: <{i}@bench>\n"
        box.add(head.encode() + body)
        if i % 1000 == 999:
            box.flush()
    box.flush()
    box.close()
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10_000, help="messages in the mbox (default 10,000)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="postroom-import-") as tmp:
        root = Path(tmp)
        size = make_mbox(root / "big.mbox", args.n)
        profile = root / "profile"
        env = {**os.environ, "POSTROOM_DEBUG": ""}
        subprocess.run(
            [sys.executable, "-m", "postroom", "--profile", str(profile), "init"],
            check=True,
            env=env,
            capture_output=True,
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "postroom", "--profile", str(profile), "--json", "import", str(root / "big.mbox")],
            check=True,
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        report = json.loads(done.stdout)
        result = {
            "messages": args.n,
            "mbox_mib": round(size / 2**20, 1),
            "imported": report["imported"],
            "seconds": round(elapsed, 2),
            "msg_per_s": round(report["imported"] / elapsed, 1),
            "peak_rss_mib": round(max(peak_kib, before) / 1024, 1),
        }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"import of {result['messages']} messages ({result['mbox_mib']} MiB mbox): {result['msg_per_s']} msg/s "
            f"({result['seconds']} s), peak RSS {result['peak_rss_mib']} MiB"
        )


if __name__ == "__main__":
    main()
