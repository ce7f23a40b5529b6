#!/usr/bin/env python3
"""Export clinical documents with the fhirbulk Python package: the DocumentReference and
DiagnosticReport resources and the documents (PDF, text, ...) their attachments link by URL,
written as a self-contained directory.

    usage: python export_documents.py BASE_URL OUT_DIR [GROUP_ID] [MAX_ATTEMPTS]

    BASE_URL  FHIR server base, e.g. http://127.0.0.1:8080/fhir
    OUT_DIR   where <Type>.ndjson and attachments/<Type>.<id>.<n>.<ext> go; each record's
              attachment url names its document's file there (relative)
    GROUP_ID  export one Group; omit or "-" for a system-level export
    MAX_ATTEMPTS  attempts per request, the first included (default 6): a document server
              that answers 500 is given up on sooner with fewer

Install first: pip install ./bindings/python   (from the repository root)
"""

import collections
import hashlib
import os
import sys

import fhirbulk

if len(sys.argv) < 3:
    sys.exit(__doc__)
base_url, out_dir = sys.argv[1], sys.argv[2]
group = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None
max_attempts = int(sys.argv[4]) if len(sys.argv) > 4 else None

counts: "collections.Counter[str]" = collections.Counter()
ndjson = {}  # file name -> open file
try:
    os.makedirs(out_dir, exist_ok=True)
    with fhirbulk.export(base_url, group=group, types=["DocumentReference", "DiagnosticReport"],
                         attachments="save", attachment_max_bytes=50 << 20,
                         retry_max_attempts=max_attempts) as job, \
            open(os.path.join(out_dir, "failed-documents.txt"), "w") as failures:
        for rec in job.records():
            if rec.kind == "attachment":  # a document, right before the record that links it
                info = rec.attachment
                path = os.path.join(out_dir, info.file)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(rec.content)
                counts["documents"] += 1
                counts["document bytes"] += len(rec.content)
                print(f"{info.resource:<40} {info.content_type or '?':<20} {info.size:>9,}  "
                      f"sha1 {hashlib.sha1(rec.content).hexdigest()[:12]}")
                continue
            failed = rec.attachment_error
            if failed is not None:  # an attachment that could not be fetched
                counts["documents failed"] += 1
                failures.write(f"{failed.resource} {failed.path}: {failed.message}\n")
                continue
            name = rec.resource_type + ("" if rec.kind == "output" else "." + rec.kind) + ".ndjson"
            if name not in ndjson:
                ndjson[name] = open(os.path.join(out_dir, name), "wb")
            ndjson[name].write(rec.raw + b"\n")  # its attachment url: the document's file
            counts[rec.kind] += 1
        progress = job.progress
    for what, n in sorted(counts.items()):
        print(f"{what:<20} {n:>12,}")
    print(f"fetched {progress.attachments_fetched:,}, failed {progress.attachment_errors:,}")
except fhirbulk.ExportError as e:
    print(f"export failed: {type(e).__name__} ({e.code} {e.name}, HTTP {e.http_status}): {e}",
          file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:
    sys.exit(130)  # leaving the `with` block cancelled the export and DELETEd the server's job
finally:
    for f in ndjson.values():
        f.close()
