#!/usr/bin/env python3
"""Run a FHIR Bulk Data export with the fhirbulk Python package and print records per type.

    usage: python export_summary.py BASE_URL [GROUP_ID] [TYPES]

    BASE_URL  FHIR server base, e.g. http://127.0.0.1:8080/fhir
    GROUP_ID  export one Group; omit or "-" for a system-level export
    TYPES     comma-separated resource types (_type), e.g. Patient,Observation

Install first: pip install ./bindings/python   (from the repository root)
"""

import collections
import sys

import fhirbulk

if len(sys.argv) < 2:
    sys.exit(__doc__)
base_url = sys.argv[1]
group = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
types = sys.argv[3] if len(sys.argv) > 3 else None

try:
    # The five lines that matter:
    with fhirbulk.export(base_url, group=group, types=types) as job:
        counts = collections.Counter((r.kind, r.resource_type) for r in job.records())
    for (kind, resource_type), n in sorted(counts.items()):
        print(f"{resource_type:<24} {kind:<8} {n:>10,}")
    print(f"{'total':<33} {sum(counts.values()):>10,}  ({job.progress.files_total} files)")
except fhirbulk.ExportError as e:
    print(f"export failed: {type(e).__name__} ({e.code} {e.name}, HTTP {e.http_status}): {e}",
          file=sys.stderr)
    for issue in e.issues:
        print(f"  {issue.get('severity')} {issue.get('code')}: {issue.get('diagnostics')}",
              file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:
    sys.exit(130)  # leaving the `with` block cancelled the export and DELETEd the server's job
