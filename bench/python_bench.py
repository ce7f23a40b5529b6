#!/usr/bin/env python3
"""bench/python_bench.py: the Python part of the benchmark (bench/run.py runs it).

    PYTHON bench/python_bench.py --base URL --local DIR [--runs N] [--batch-size N]

PYTHON is an interpreter with the ``fhirbulk`` package installed.  URL is a FHIR base URL;
this script runs a system-level export (``[base]/$export``, every type) of it through the
binding.  DIR holds the NDJSON files (``*.ndjson``) of the same export, already on local
disk.  Best of N runs (default 1), it measures:

  raw               for line in job.raw(): ...         the whole export over HTTP, bytes lines
  parsed            for resource in job: ...           the same, parsed into dicts
  local_lines       for line in f: ...                 the files in DIR, binary mode
  local_json_loads  for line in f: json.loads(line)    the usual way to read NDJSON

and prints one JSON object to stdout (everything else goes to stderr):

  {"raw": {...}, "parsed": {...}, "local_lines": {...}, "local_json_loads": {...},
   "parsed_vs_json_loads": parsed records/s divided by local_json_loads records/s}

Each measurement has ``records``, ``bytes`` (NDJSON bytes, newlines included), ``seconds``
(wall), ``records_per_s``, ``cpu_seconds`` (the whole process: for raw and parsed that
includes the library's download threads) and ``thread_cpu_seconds`` (the iterating thread
only: the binding's own cost).  raw and parsed also give ``first_record_seconds``.  The HTTP
figures include kick-off and status polling: point URL at a server that answers the first
status poll with the manifest (with the sandbox, ``{root}/x/polls=0/fhir``), or the poll
interval shows up in them.

Exits 1 when the records counted over HTTP (raw or parsed) differ from those in DIR, 2 on
bad arguments.  The functions are importable: bindings/python/bench.py starts a sandbox and
calls :func:`download` and :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

#: A measured function returns (records, bytes, extra fields).
Measured = Callable[[], Tuple[int, int, Dict[str, Any]]]


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Measuring


def measure(fn: Measured) -> Dict[str, Any]:
    t0, c0, tc0 = time.perf_counter(), time.process_time(), time.thread_time()
    records, nbytes, extra = fn()
    seconds = time.perf_counter() - t0
    cpu, tcpu = time.process_time() - c0, time.thread_time() - tc0
    out = {
        "records": records,
        "bytes": nbytes,
        "seconds": round(seconds, 6),
        "records_per_s": round(records / seconds, 1) if seconds > 0 else 0.0,
        "cpu_seconds": round(cpu, 6),
        "thread_cpu_seconds": round(tcpu, 6),
    }
    out.update(extra)
    return out


def best_of(runs: int, name: str, fn: Measured) -> Dict[str, Any]:
    """The run with the shortest wall time of ``runs``."""
    best: Optional[Dict[str, Any]] = None
    for i in range(runs):
        m = measure(fn)
        log(f"  {name:<17} run {i + 1}/{runs}: {m['records']:>10,} records {m['seconds']:8.3f} s"
            f" {m['records_per_s']:>12,.0f} records/s")
        if best is None or m["seconds"] < best["seconds"]:
            best = m
    assert best is not None
    return best


# --------------------------------------------------------------------------------------------
# The four loops.  Each counts with enumerate (no Python-level statement per record) so that
# what is measured is the iteration itself; all four count the same way.


def http(base: str, parsed: bool, batch_size: Optional[int] = None) -> Measured:
    """The whole export through the binding: ``job.raw()`` lines, or (``parsed``) dicts."""

    def fn() -> Tuple[int, int, Dict[str, Any]]:
        import fhirbulk

        opts = {"batch_size": batch_size} if batch_size else {}
        t0 = time.perf_counter()
        n = 0
        with fhirbulk.export(base, level="system", **opts) as job:
            it = iter(job) if parsed else job.raw()
            first = next(it, None)
            t_first = time.perf_counter() - t0
            if first is not None:
                for n, _record in enumerate(it, 2):
                    pass
                n = max(n, 1)
            nbytes = job.progress.bytes
        return n, nbytes, {"first_record_seconds": round(t_first, 6)}

    return fn


def local_lines(paths: Sequence[Path]) -> Measured:
    def fn() -> Tuple[int, int, Dict[str, Any]]:
        total = nbytes = 0
        for p in paths:
            n = 0
            with open(p, "rb") as f:
                for n, _line in enumerate(f, 1):
                    pass
                nbytes += f.tell()
            total += n
        return total, nbytes, {}

    return fn


def local_json_loads(paths: Sequence[Path]) -> Measured:
    def fn() -> Tuple[int, int, Dict[str, Any]]:
        loads = json.loads
        total = nbytes = 0
        for p in paths:
            n = 0
            with open(p, "rb") as f:
                for n, line in enumerate(f, 1):
                    loads(line)
                nbytes += f.tell()
            total += n
        return total, nbytes, {}

    return fn


def ndjson_files(directory: "os.PathLike[str] | str") -> List[Path]:
    return sorted(Path(directory).glob("*.ndjson"))


def run(base: str, local: "os.PathLike[str] | str", runs: int = 1,
        batch_size: Optional[int] = None) -> Dict[str, Any]:
    """Measure all four; the dict this script prints."""
    paths = ndjson_files(local)
    if not paths:
        raise FileNotFoundError(f"no *.ndjson files in {local}")
    size = sum(p.stat().st_size for p in paths)
    log(f"python_bench: {sys.executable} (Python {sys.version.split()[0]}), base {base}, "
        f"{len(paths)} local files ({size / 1e6:.1f} MB), best of {runs}"
        + (f", batch_size {batch_size}" if batch_size else ""))
    out: Dict[str, Any] = {}
    # The local baselines first: they also bring DIR into the page cache.
    out["local_lines"] = best_of(runs, "local_lines", local_lines(paths))
    out["local_json_loads"] = best_of(runs, "local_json_loads", local_json_loads(paths))
    out["raw"] = best_of(runs, "raw", http(base, False, batch_size))
    out["parsed"] = best_of(runs, "parsed", http(base, True, batch_size))
    jl = out["local_json_loads"]["records_per_s"]
    out["parsed_vs_json_loads"] = round(out["parsed"]["records_per_s"] / jl, 4) if jl else None
    return {k: out[k] for k in ("raw", "parsed", "local_lines", "local_json_loads",
                                "parsed_vs_json_loads")}


def counts_match(result: Dict[str, Any]) -> bool:
    expected = result["local_lines"]["records"]
    return all(result[k]["records"] == expected for k in ("raw", "parsed", "local_json_loads"))


# --------------------------------------------------------------------------------------------
# Getting DIR: a plain system-level export with urllib (no fhirbulk), for callers that have no
# local copy yet (bindings/python/bench.py, the binding's tests).


def download(base: str, directory: "os.PathLike[str] | str", timeout: float = 600.0) -> List[Path]:
    """Kick off ``[base]/$export``, poll until the manifest, and download every output file
    to ``directory/NNNN.ndjson``.  Returns the paths."""
    headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
    req = urllib.request.Request(base.rstrip("/") + "/$export", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        status_url = urllib.parse.urljoin(r.url, r.headers["Content-Location"])
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(urllib.request.Request(status_url, headers=headers),
                                    timeout=60) as r:
            if r.status == 200:
                manifest = json.load(r)
                break
            wait = r.headers.get("Retry-After", "1")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the export at {base} did not complete within {timeout} s")
        time.sleep(min(float(wait) if wait.isdigit() else 1.0, 5.0))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    accept = {"Accept": "application/fhir+ndjson"}
    for i, f in enumerate(manifest.get("output", [])):
        p = out / f"{i:04d}.ndjson"
        with urllib.request.urlopen(urllib.request.Request(f["url"], headers=accept),
                                    timeout=120) as r, open(p, "wb") as w:
            shutil.copyfileobj(r, w, 1 << 20)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------


def print_table(result: Dict[str, Any]) -> None:
    log(f"  {'':<17} {'records':>10} {'MB':>8} {'seconds':>8} {'records/s':>12}"
        f" {'CPU s':>7} {'thread CPU ns/rec':>18}")
    for k in ("raw", "parsed", "local_lines", "local_json_loads"):
        m = result[k]
        per = m["thread_cpu_seconds"] / m["records"] * 1e9 if m["records"] else 0.0
        log(f"  {k:<17} {m['records']:>10,} {m['bytes'] / 1e6:>8.1f} {m['seconds']:>8.3f}"
            f" {m['records_per_s']:>12,.0f} {m['cpu_seconds']:>7.2f} {per:>18,.0f}")
    log(f"  parsed / local_json_loads: {result['parsed_vs_json_loads']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description="Python part of the fhirbulk benchmark: prints one JSON object to stdout.")
    ap.add_argument("--base", required=True, help="FHIR base URL (a system-level export is run)")
    ap.add_argument("--local", required=True, help="directory with the same export's *.ndjson")
    ap.add_argument("--runs", type=int, default=1, help="best of N runs (default 1)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="records per native call (default: the binding's)")
    args = ap.parse_args(argv)
    if args.runs < 1 or (args.batch_size is not None and args.batch_size < 1):
        ap.error("--runs and --batch-size must be positive")
    try:
        import fhirbulk  # noqa: F401  (fail early, with a clear message)
    except ImportError as e:
        log(f"python_bench: cannot import fhirbulk with {sys.executable}: {e}")
        return 2
    try:
        result = run(args.base, args.local, args.runs, args.batch_size)
    except FileNotFoundError as e:
        log(f"python_bench: {e}")
        return 2
    print_table(result)
    print(json.dumps(result), flush=True)
    if not counts_match(result):
        log("python_bench: record counts differ: "
            + ", ".join(f"{k} {result[k]['records']}" for k in
                        ("raw", "parsed", "local_lines", "local_json_loads")))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
