#!/usr/bin/env python3
"""bench/tables_bench.py: from an export to typed tables, side by side (bench/run.py runs it).

    PYTHON bench/tables_bench.py --base URL --local DIR [--out DIR]

PYTHON has ``fhirbulk`` (built with Arrow), ``pyarrow`` and, optionally, ``duckdb``. URL is a
FHIR base URL (a system-level export of it is run through the binding); DIR holds the NDJSON
files of the same export on local disk (one resource type per file). Each measurement runs in
a fresh process, so its peak RSS is its own:

  fhirbulk_arrow          for t, b in job.arrow_batches(): ...   export -> typed Arrow batches
  fhirbulk_parquet        job.write_parquet(out)                  export -> Parquet per type
  pyarrow_read_json       pyarrow.json.read_json(file), each file  local NDJSON -> Arrow
  pyarrow_parquet         read_json + pyarrow.parquet.write_table  local NDJSON -> Parquet
  duckdb_parquet          COPY (read_json_auto(file)) TO parquet  local NDJSON -> Parquet
  duckdb_arrow            read_json_auto(file) -> Arrow, each file local NDJSON -> Arrow

The fhirbulk figures include the download; the others start from files already on disk (the
two-step route adds the download on top). Prints one JSON object: each measurement's
``seconds``, ``rows`` and ``maxrss_mb``; skipped ones are absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CODE = {
    "fhirbulk_arrow": """
import fhirbulk
rows = 0
with fhirbulk.export(BASE) as job:
    for _, b in job.arrow_batches(batch_rows=8192):
        rows += b.num_rows
""",
    "fhirbulk_parquet": """
import fhirbulk
with fhirbulk.export(BASE) as job:
    rows = sum(job.write_parquet(OUT).values())
""",
    "pyarrow_read_json": """
import glob, pyarrow.json as pj
rows = sum(pj.read_json(f).num_rows for f in sorted(glob.glob(LOCAL + "/*.ndjson")))
""",
    "pyarrow_parquet": """
import glob, os, pyarrow.json as pj, pyarrow.parquet as pq
rows, failed = 0, []
for i, f in enumerate(sorted(glob.glob(LOCAL + "/*.ndjson"))):
    t = pj.read_json(f)
    try:
        pq.write_table(t, os.path.join(OUT, f"{i}.parquet"))
    except Exception as e:  # pyarrow 26's read_json makes an invalid table of some files
        failed.append(f"{os.path.basename(f)}: {str(e)[:80]}")
        continue
    rows += t.num_rows
EXTRA["failed_files"] = failed
""",
    "duckdb_parquet": """
import glob, os, duckdb
rows = 0
for i, f in enumerate(sorted(glob.glob(LOCAL + "/*.ndjson"))):
    dest = os.path.join(OUT, f"{i}.parquet")
    duckdb.sql(f"copy (select * from read_json_auto('{f}', maximum_object_size=100000000)) "
               f"to '{dest}' (format parquet)")
    rows += duckdb.sql(f"select count(*) from '{dest}'").fetchall()[0][0]
""",
    "duckdb_arrow": """
import glob, duckdb
rows = 0
for f in sorted(glob.glob(LOCAL + "/*.ndjson")):
    rel = duckdb.sql(f"select * from read_json_auto('{f}', maximum_object_size=100000000)")
    rows += rel.to_arrow_table().num_rows
""",
}


def measure(name: str, base: str, local: str) -> dict | None:
    with tempfile.TemporaryDirectory() as out:
        prelude = f"BASE, LOCAL, OUT = {base!r}, {local!r}, {out!r}\n"
        timer = (
            "import time, resource, json\nEXTRA = {}\nt0 = time.perf_counter()\n"
            + CODE[name]
            + "\nprint(json.dumps({'seconds': time.perf_counter() - t0, 'rows': rows,"
            " 'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **EXTRA}))\n"
        )
        p = subprocess.run([sys.executable, "-c", prelude + timer], capture_output=True, text=True)
        if p.returncode != 0:
            print(f"[tables] {name} skipped: {p.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return None
        return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--local", required=True)
    ap.add_argument("--only", help="comma-separated measurements (default: all)")
    a = ap.parse_args()
    res = {}
    names = [n for n in CODE if not a.only or n in a.only.split(",")]
    for name in names:
        r = measure(name, a.base, a.local)
        if r is not None:
            res[name] = r
            print(f"[tables] {name}: {r['seconds']:.2f} s, {r['rows']:,} rows, "
                  f"{r['maxrss_mb']:.0f} MB", file=sys.stderr)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
