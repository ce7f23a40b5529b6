#!/usr/bin/env python3
"""Time and peak RSS of the table helpers, the JSON path (before) against the Arrow path (after).

Starts a sandbox (release build when there is one, ``--prerender``) with about ``--records``
records at system level and runs each mode in a fresh child process under ``/usr/bin/time -v``
(peak RSS: "Maximum resident set size"), one export each:

- ``raw``: ``for line in job.raw()``, the export alone (a baseline);
- ``pandas_json``: ``job.to_pandas(kinds=("output",))``, the old path (records parsed into
  dicts, ``pandas.json_normalize`` per type; the same code as before the Arrow path);
- ``pandas_arrow``: ``job.to_pandas()``, Arrow tables from the native decoder, ``to_pandas``;
- ``pandas_arrowdtype``: ``job.to_pandas(types_mapper=pandas.ArrowDtype)`` (Arrow-backed
  columns: no Python object per value);
- ``parquet_json``: ``job.write_parquet(dir, kinds=("output",))``, the old path (the whole
  export through pandas, then ``to_parquet`` per type);
- ``parquet_pyarrow``: ``job.write_parquet(dir, engine="pyarrow")``, the Arrow batches streamed
  into ``pyarrow.parquet.ParquetWriter`` on the Python thread (the route before the native
  writer);
- ``parquet_native``: ``job.write_parquet(dir)``, the library's own writer (decoded and encoded
  on its threads; no pyarrow);
- ``arrow``: ``job.to_arrow()`` (Arrow tables only).

Prints a Markdown table to stdout (and the numbers as JSON with ``--json``).

Usage: python bench_arrow.py [--records 100000] [--runs 1] [--modes raw,pandas_json,...]
       [--batch-rows N] [--sandbox PATH] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# The sandbox helpers of bindings/python/bench.py (beside this file).
from bench import RECORDS_PER_PATIENT, find_sandbox  # noqa: E402
from bench import start_sandbox as _start_sandbox  # noqa: E402

MODES = ("raw", "pandas_json", "pandas_arrow", "pandas_arrowdtype", "parquet_json",
         "parquet_pyarrow", "parquet_native", "arrow")


def start_sandbox(binary: Path, patients: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    """bench.py's sandbox (pre-rendered files); the base URL whose first poll has the manifest."""
    proc, root = _start_sandbox(binary, patients, tmp)
    return proc, f"{root}/x/polls=0/fhir"


def child(mode: str, url: str, out_dir: str, batch_rows: int) -> None:
    """One measurement, in this process: prints {"records", "seconds"} as JSON."""
    import fhirbulk

    rows = {"batch_rows": batch_rows} if batch_rows else {}  # 0: each call's default

    t0 = time.perf_counter()
    with fhirbulk.export(url) as job:
        if mode == "raw":
            n = sum(1 for _ in job.raw())
        elif mode == "pandas_json":
            n = sum(len(df) for df in job.to_pandas(kinds=("output",)).values())
        elif mode == "pandas_arrow":
            n = sum(len(df) for df in job.to_pandas(**rows).values())
        elif mode == "pandas_arrowdtype":
            import pandas as pd

            frames = job.to_pandas(types_mapper=pd.ArrowDtype, **rows)
            n = sum(len(df) for df in frames.values())
        elif mode == "parquet_json":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                n = sum(job.write_parquet(out_dir, kinds=("output",)).values())
        elif mode == "parquet_pyarrow":
            n = sum(job.write_parquet(out_dir, engine="pyarrow", **rows).values())
        elif mode == "parquet_native":
            n = sum(job.write_parquet(out_dir, **rows).values())
        elif mode == "arrow":
            n = sum(t.num_rows for t in job.to_arrow(**rows).values())
        else:
            raise SystemExit(f"unknown mode {mode}")
    seconds = time.perf_counter() - t0
    # (<dir>/<Type>.parquet for parquet_json, <dir>/<Type>/part-<n>.parquet for the others.)
    size = sum(p.stat().st_size for p in Path(out_dir).rglob("*.parquet")) if mode.startswith("parquet") else 0
    print(json.dumps({"records": n, "seconds": seconds, "parquet_bytes": size}))


_RSS = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


def measure(mode: str, url: str, tmp: Path, batch_rows: int) -> dict:
    out_dir = tmp / f"out-{mode}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    cmd = ["/usr/bin/time", "-v", sys.executable, __file__, "--child", mode, "--url", url,
           "--dir", str(out_dir), "--batch-rows", str(batch_rows)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{mode} failed:\n{p.stderr}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    m = _RSS.search(p.stderr)
    result["peak_rss_mb"] = int(m.group(1)) / 1024 if m else None
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000, help="about this many records")
    ap.add_argument("--runs", type=int, default=1, help="best of N runs (time; RSS of that run)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batch-rows", type=int, default=0,
                    help="batch_rows of the Arrow calls (default: each call's own)")
    ap.add_argument("--sandbox", help="the fhirbulk-sandbox binary")
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.url, args.dir, args.batch_rows)
        return 0
    if not Path("/usr/bin/time").is_file():
        sys.exit("needs /usr/bin/time (Debian: apt-get install time)")

    binary = find_sandbox(args.sandbox)
    tmp = Path(tempfile.mkdtemp(prefix="fhirbulk-bench-arrow-"))
    proc, url = start_sandbox(binary, max(1, int(args.records / RECORDS_PER_PATIENT)), tmp)
    results = {}
    try:
        print(f"sandbox: {binary}", file=sys.stderr)
        # A first export renders the sandbox's files (--prerender renders on the first request):
        # not part of any measurement.
        measure("raw", url, tmp, args.batch_rows)
        for mode in args.modes.split(","):
            best = None
            for _ in range(args.runs):
                r = measure(mode, url, tmp, args.batch_rows)
                if best is None or r["seconds"] < best["seconds"]:
                    best = r
            results[mode] = best
            print(f"{mode}: {best}", file=sys.stderr)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    print("| mode | records | seconds | peak RSS (MB) | Parquet MB |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        size = f"{r['parquet_bytes'] / 1e6:.1f}" if r["parquet_bytes"] else ""
        print(f"| {mode} | {r['records']:,} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {size} |")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
