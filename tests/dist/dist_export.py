"""make test-dist: export with the installed wheel and write every output record to a file.

    python dist_export.py BASE_URL GROUP TYPES OUT
"""

import os
import sys

import fhirbulk

base_url, group, types, out = sys.argv[1:5]
n = 0
with fhirbulk.export(base_url, group=group, types=types) as job, open(out, "wb") as f:
    for r in job.records():
        if r.kind == "output":
            f.write(r.raw + b"\n")
            n += 1
print(f"fhirbulk {fhirbulk.__version__}: {n} records; package {os.path.dirname(fhirbulk.__file__)}")
