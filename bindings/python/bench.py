#!/usr/bin/env python3
"""Records per second through the Python binding, next to plain Python reading the same NDJSON.

Starts the sandbox server (release build when there is one) with ~200k records at system
level, then measures, best of --runs:

  fhirbulk raw      for line in job.raw(): ...        (bytes lines, whole export over HTTP)
  fhirbulk parsed   for resource in job: ...          (dicts, json.loads)
  fhirbulk records  for rec in job.records(): ...     (Record objects with metadata)
  plain lines       for line in f: ...                (the same NDJSON from local files)
  plain json.loads  for line in f: json.loads(line)   (the usual way to read NDJSON)

The fhirbulk figures include the whole export (kick-off, status poll, concurrent downloads
from the sandbox, which generates the data on this same machine); the plain ones only read
files already on disk (page cache), which were downloaded once with urllib.  The CPU time of
the iterating thread shows the binding's own cost per record: downloads and NDJSON splitting
run on the library's native threads.

Usage: python bench.py [--records 200000] [--runs 3] [--sandbox PATH]
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
import urllib.request
from pathlib import Path

import fhirbulk

REPO = Path(__file__).resolve().parents[2]
RECORDS_PER_PATIENT = 8.6  # sandbox system-level export: ~8.6 resources per patient


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
    proc = subprocess.Popen(
        [str(binary), "--port", "0", "--port-file", str(port_file),
         "--patients", str(patients), "--records-per-file", "10000"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit("the sandbox did not start")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{int(port_file.read_text())}"


def best(runs: int, fn) -> tuple[float, int, float]:
    """Best wall time of `runs`, the records counted, and the calling thread's CPU time in
    that run (for fhirbulk: the binding's own cost; downloads run on native threads)."""
    runs_ = []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        n = fn()
        runs_.append((time.perf_counter() - t0, n, time.thread_time() - c0))
    return min(runs_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sandbox")
    args = ap.parse_args()

    binary = find_sandbox(args.sandbox)
    tmp = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-"))
    proc, root = start_sandbox(binary, max(1, int(args.records / RECORDS_PER_PATIENT)), tmp)
    base = f"{root}/x/polls=0/fhir"
    try:
        def run(mode: str) -> int:
            n = 0
            with fhirbulk.export(base) as job:
                if mode == "raw":
                    for _line in job.raw():
                        n += 1
                elif mode == "parsed":
                    for _resource in job:
                        n += 1
                else:
                    for _rec in job.records():
                        n += 1
            return n

        # Download the same NDJSON once, with urllib, for the plain-Python baseline.
        with fhirbulk.export(base) as job:
            for _ in job.raw():
                pass
            files = job.files
        paths = []
        for f in files:
            p = tmp / f"{f['index']:04d}.ndjson"
            with urllib.request.urlopen(f["url"]) as r, open(p, "wb") as out:
                shutil.copyfileobj(r, out, 1 << 20)
            paths.append(p)
        size = sum(p.stat().st_size for p in paths)

        def plain_lines() -> int:
            n = 0
            for p in paths:
                with open(p, "rb") as fh:
                    for _line in fh:
                        n += 1
            return n

        def plain_json() -> int:
            n = 0
            loads = json.loads
            for p in paths:
                with open(p, "rb") as fh:
                    for line in fh:
                        loads(line)
                        n += 1
            return n

        results = {}
        for name, fn in [
            ("fhirbulk raw", lambda: run("raw")),
            ("fhirbulk parsed", lambda: run("parsed")),
            ("fhirbulk records", lambda: run("records")),
            ("plain lines", plain_lines),
            ("plain json.loads", plain_json),
        ]:
            results[name] = best(args.runs, fn)

        total = results["plain lines"][1]
        print(f"fhirbulk {fhirbulk.__version__}, Python {sys.version.split()[0]}, "
              f"sandbox {binary.parent.name} build, {total:,} records in {len(paths)} files "
              f"({size / 1e6:.0f} MB), best of {args.runs}")
        for name, (secs, n, cpu) in results.items():
            if n != total:
                print(f"  WARNING: {name} saw {n:,} records, expected {total:,}")
            print(f"  {name:<18} {n / secs:>12,.0f} records/s  {secs:6.2f} s wall"
                  f"  {cpu / n * 1e9:7.0f} ns/record CPU of the iterating thread")
        rate = {k: v[1] / v[0] for k, v in results.items()}
        print(f"  ratio raw / plain lines:            {rate['fhirbulk raw'] / rate['plain lines']:.2f}")
        print(f"  ratio parsed / plain json.loads:    {rate['fhirbulk parsed'] / rate['plain json.loads']:.2f}")
        print(f"  ratio records / plain json.loads:   {rate['fhirbulk records'] / rate['plain json.loads']:.2f}")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
