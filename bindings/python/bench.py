#!/usr/bin/env python3
"""Records per second through the Python binding, standalone: starts its own sandbox.

A thin wrapper around the project benchmark's Python part, bench/python_bench.py (which
bench/run.py runs against its own sandbox): this script starts the sandbox server (release
build when there is one; ``--prerender`` so that it serves from memory) with about
``--records`` records at system level, downloads that export once with urllib into a temporary
directory, and runs bench/python_bench.py's measurements (raw, parsed, local_lines,
local_json_loads) with them.  The table goes to stderr, the JSON object to stdout.

Usage: python bench.py [--records 1500000] [--runs 3] [--batch-size N] [--sandbox PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import python_bench  # noqa: E402  (bench/python_bench.py)

RECORDS_PER_PATIENT = 13  # sandbox system-level export: ~13 resources per patient


def find_sandbox(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("FHIRBULK_SANDBOX_BIN"):
        return Path(os.environ["FHIRBULK_SANDBOX_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    for profile in ("release", "debug"):
        p = target / profile / "fhirbulk-sandbox"
        if p.is_file():
            return p
    sys.exit("no fhirbulk-sandbox binary: cargo build --release --features sandbox --bin fhirbulk-sandbox")


def start_sandbox(binary: Path, patients: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    cmd = [str(binary), "--port", "0", "--port-file", str(port_file),
           "--patients", str(patients), "--records-per-file", "20000"]
    usage = subprocess.run([str(binary), "--help"], capture_output=True, text=True).stdout
    if "--prerender" in usage:
        cmd.append("--prerender")  # serve rendered files from memory: not the bottleneck
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("the sandbox did not start")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{int(port_file.read_text())}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_500_000, help="about this many records")
    ap.add_argument("--runs", type=int, default=3, help="best of N runs")
    ap.add_argument("--batch-size", type=int, default=None, help="records per native call")
    ap.add_argument("--sandbox", help="the fhirbulk-sandbox binary")
    args = ap.parse_args()

    binary = find_sandbox(args.sandbox)
    tmp = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-"))
    proc, root = start_sandbox(binary, max(1, int(args.records / RECORDS_PER_PATIENT)), tmp)
    try:
        # polls=0: the manifest comes with the first status poll, so that the figures hold no
        # poll interval.  The local copy comes from a plain export (the same files).
        base = f"{root}/x/polls=0/fhir"
        python_bench.log(f"sandbox: {binary}")
        python_bench.download(base, tmp / "local")
        result = python_bench.run(base, tmp / "local", args.runs, args.batch_size)
        python_bench.print_table(result)
        print(json.dumps(result), flush=True)
        return 0 if python_bench.counts_match(result) else 1
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
