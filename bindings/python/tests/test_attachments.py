"""Clinical documents (config ``attachments``): the documents DocumentReference and
DiagnosticReport link by URL, fetched by the library, checked against the sandbox's truth
(``/_sandbox/truth?attachments=1``: every attachment, its true bytes' SHA-1 and what fetching
it gives)."""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
from typing import Any, Dict, List, Tuple

import pytest

import fhirbulk

TYPES = "DocumentReference,DiagnosticReport"
FAILURES = ("missing", "forbidden", "server_error", "hash_mismatch")
# 500s fail fast; the sandbox's 503 with Retry-After: 0 (a document served on the second try)
# still succeeds.
FAST_RETRIES = dict(retry_max_attempts=2, retry_backoff_min_ms=10, retry_backoff_max_ms=20)


def at_path(resource: Dict[str, Any], path: str) -> Any:
    """The element at ``content[0].attachment`` / ``presentedForm[1]`` of a resource."""
    node: Any = resource
    for part in path.split("."):
        m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?", part)
        assert m, path
        node = node[m.group(1)]
        if m.group(2) is not None:
            node = node[int(m.group(2))]
    return node


def key(entry: Dict[str, Any]) -> Tuple[str, int]:
    return entry["resource"], entry["position"]


@pytest.fixture(scope="module")
def truth(sandbox) -> List[Dict[str, Any]]:
    entries = sandbox.truth_attachments(level="system", _type=TYPES)
    outcomes = collections.Counter(e["outcome"] for e in entries)
    # The sandbox has every kind of document for 20 patients; the session's has more.
    assert all(outcomes[o] for o in ("ok", "inline", "large") + FAILURES), outcomes
    # ok: on another origin (12), served only as a FHIR Binary (13), a 503 then the document (18).
    assert {12, 13, 18} <= {e["class"] for e in entries if e["outcome"] == "ok"}
    return entries


def test_save_mode_delivers_each_document_before_its_record(sandbox, truth):
    ok = {key(e): e for e in truth if e["outcome"] == "ok"}
    failed = {key(e): e for e in truth if e["outcome"] in FAILURES + ("large",)}
    documents: Dict[Tuple[str, int], fhirbulk.Record] = {}
    errors: Dict[Tuple[str, int], List[fhirbulk.AttachmentError]] = collections.defaultdict(list)
    delivered: List[str] = []
    # Per file: its attachment and error records not yet followed by their record.  Files
    # download in parallel and each document is a chunk of its own, so another file's records
    # may come in between; within a file, a record's documents come right before it.
    pending: Dict[int, List[fhirbulk.Record]] = collections.defaultdict(list)
    with fhirbulk.export(sandbox.url(), types=TYPES, attachments="save",
                         attachment_max_bytes=1_000_000, **FAST_RETRIES) as job:
        for rec in job.records():
            if rec.kind == "attachment":
                info = rec.attachment
                assert isinstance(info, fhirbulk.Attachment) and rec.attachment_error is None
                assert isinstance(rec.content, bytes)
                assert key(vars(info)) not in documents, f"two records for {info}"
                documents[key(vars(info))] = rec
                pending[rec.file_index].append(rec)
                continue
            err = rec.attachment_error
            if err is not None:
                assert rec.kind == "error" and rec.content is None and rec.attachment is None
                errors[(err.resource, err.position)].append(err)
                pending[rec.file_index].append(rec)
                continue
            assert rec.content is None and rec.attachment is None
            if rec.kind != "output":
                continue
            resource = rec.json()
            name = f"{resource['resourceType']}/{resource['id']}"
            delivered.append(name)
            # The documents (and failures) of a record come right before it, with its place.
            for before in pending.pop(rec.file_index, []):
                about = before.attachment or before.attachment_error
                assert about is not None and about.resource == name, (about, name)
                assert before.line == rec.line
                # A document has its record's type; an error record the engine's own type
                # for its error records (OperationOutcome) or its record's.
                assert before.resource_type == rec.resource_type or (
                    before.kind == "error" and before.resource_type == "OperationOutcome")
                linked = at_path(resource, about.path)
                if before.kind == "attachment":
                    assert linked["url"] == about.file  # rewritten to the document's file
                else:
                    assert linked["url"] == failed[key(vars(about))]["url"]  # left as it was
        progress = job.progress
    assert not any(pending.values()), "attachment records after the last record of their file"

    # Every ok document exactly once, with its true bytes.
    assert set(documents) == set(ok)
    for k, rec in documents.items():
        info, want, content = rec.attachment, ok[k], rec.content
        assert hashlib.sha1(content).hexdigest() == want["sha1"], k
        assert len(content) == info.size == want["size"], k
        assert info.hash == base64.b64encode(hashlib.sha1(content).digest()).decode(), k
        assert info.path == want["path"] and info.content_type == want["contentType"], k
        assert info.file.startswith("attachments/") and info.file.startswith("attachments/" + k[0].replace("/", "."))
    assert len({r.attachment.file for r in documents.values()}) == len(documents)
    # Every failure exactly one error record naming its resource and attachment.
    assert set(errors) == set(failed)
    for k, errs in errors.items():
        assert len(errs) == 1, (k, errs)
        err = errs[0]
        assert err.path == failed[k]["path"] and err.message and k[0] in err.message, err
    by_outcome = collections.Counter(failed[k]["outcome"] for k in errors)
    assert all(by_outcome[o] for o in FAILURES + ("large",)), by_outcome
    assert (progress.attachments_fetched, progress.attachment_errors) == (len(ok), len(failed))
    assert progress.state == "done"
    # And every resource once: documents are records of their own, not instead of any.
    assert sorted(delivered) == sandbox.truth_ids(level="system", _type=TYPES)


def test_inline_mode_puts_the_documents_in_the_records(sandbox, truth):
    # The default attachment_max_bytes (16 MiB): the large documents come too.
    ok = {key(e): e for e in truth if e["outcome"] in ("ok", "large")}
    inline = {key(e): e for e in truth if e["outcome"] == "inline"}
    failed = {key(e): e for e in truth if e["outcome"] in FAILURES}
    resources: Dict[str, Dict[str, Any]] = {}
    errors = []
    with fhirbulk.export(sandbox.url(), types=TYPES, attachments="inline", **FAST_RETRIES) as job:
        for rec in job.records():
            assert rec.kind != "attachment" and rec.content is None
            if rec.attachment_error is not None:
                errors.append(rec.attachment_error)
            elif rec.kind == "output":
                r = rec.json()
                resources[f"{r['resourceType']}/{r['id']}"] = r
        progress = job.progress
    for k, want in {**ok, **inline}.items():
        attachment = at_path(resources[k[0]], want["path"])
        data = base64.b64decode(attachment["data"], validate=True)
        assert hashlib.sha1(data).hexdigest() == want["sha1"], k
        assert attachment.get("size", len(data)) == len(data) == want["size"], k
    for k, want in failed.items():
        assert "data" not in at_path(resources[k[0]], want["path"]), k
    assert sorted((e.resource, e.position) for e in errors) == sorted(failed)
    assert (progress.attachments_fetched, progress.attachment_errors) == (len(ok), len(failed))
    assert sorted(resources) == sandbox.truth_ids(level="system", _type=TYPES)


def test_content_types_select_the_documents(sandbox, truth):
    texts = {key(e) for e in truth if e["outcome"] == "ok" and e["contentType"].startswith("text/")}
    assert texts
    with fhirbulk.export(sandbox.url(), types=TYPES, attachments="save",
                         attachment_content_types="text/*", **FAST_RETRIES) as job:
        got = {(r.attachment.resource, r.attachment.position): r.content
               for r in job.records() if r.kind == "attachment"}
        progress = job.progress
    assert set(got) == texts
    assert progress.attachments_fetched == len(texts)
    want = {key(e): e["sha1"] for e in truth}
    assert all(hashlib.sha1(c).hexdigest() == want[k] for k, c in got.items())


def test_write_ndjson_saves_the_documents_where_the_records_point(sandbox, truth, tmp_path):
    ok = {key(e): e for e in truth if e["outcome"] == "ok"}
    with fhirbulk.export(sandbox.url(), types="DocumentReference", attachments="save",
                         attachment_dir="docs/", attachment_max_bytes=1_000_000,
                         **FAST_RETRIES) as job:
        written = job.write_ndjson(tmp_path)
    saved = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "docs").iterdir())
    assert saved == sorted(k for k in written if k.startswith("docs/"))
    want = {e["resource"]: e for e in ok.values() if e["resource"].startswith("DocumentReference/")}
    assert len(saved) == sum(1 for k in ok if k[0].startswith("DocumentReference/")) > 0
    linked = 0
    with open(tmp_path / "DocumentReference.ndjson", "rb") as f:
        for line in f:
            r = json.loads(line)
            for item in r.get("content", []):
                url = item["attachment"].get("url", "")
                if url.startswith("docs/"):
                    data = (tmp_path / url).read_bytes()
                    sha1 = hashlib.sha1(data).hexdigest()
                    assert any(e["sha1"] == sha1 for e in ok.values()
                               if e["resource"] == f"DocumentReference/{r['id']}"), url
                    linked += 1
    assert linked == len(saved) and want
    assert not any(k.endswith(".attachment.ndjson") for k in written)


def test_attachment_options_speak_python(sandbox):
    cfg = fhirbulk.build_config("https://ehr.example.org/r4", attachments="save",
                                attachment_types="DocumentReference, DiagnosticReport",
                                attachment_content_types="application/pdf,text/*")
    assert cfg["attachment_types"] == ["DocumentReference", "DiagnosticReport"]
    assert cfg["attachment_content_types"] == ["application/pdf", "text/*"]
    with pytest.raises(fhirbulk.ConfigError) as e:
        fhirbulk.export(sandbox.url(), attachments="all")
    assert str(e.value) == "invalid config: option 'attachments' must be 'none', 'inline' or 'save', not 'all'"
    with pytest.raises(fhirbulk.ConfigError) as e:
        fhirbulk.export(sandbox.url(), attachment_max_bytes="1MB")
    assert str(e.value) == "invalid config: option 'attachment_max_bytes' must be an int, not the str '1MB'"
    with pytest.raises(fhirbulk.ConfigError, match="attachment_max_bytes"):
        fhirbulk.export(sandbox.url(), attachment_max_bytes=0)
    with pytest.raises(fhirbulk.ConfigError, match="attachment_types"):
        fhirbulk.export(sandbox.url(), attachments="save", attachment_types=["Observation"])
    with pytest.raises(fhirbulk.ConfigError, match="attachment_content_types"):
        fhirbulk.export(sandbox.url(), attachment_content_types=["pdf"])
    with pytest.raises(fhirbulk.ConfigError, match="attachment_dir"):
        fhirbulk.export(sandbox.url(), attachments="save", attachment_dir="../up/")
    with pytest.raises(fhirbulk.ConfigError, match="unknown option 'attachment'.*did you mean 'attachments'"):
        fhirbulk.export(sandbox.url(), attachment="save")


def test_without_attachments_the_records_are_as_the_server_wrote_them(sandbox, truth):
    by_url = [e for e in truth if e["outcome"] != "inline"]
    with fhirbulk.export(sandbox.url(), types=TYPES) as job:
        kinds = collections.Counter(r.kind for r in job.records())
        progress = job.progress
    assert set(kinds) == {"output"}, kinds
    assert (progress.attachments_fetched, progress.attachment_errors) == (0, 0)
    assert by_url


def test_record_and_progress_types():
    rec = fhirbulk.Record("attachment", "DocumentReference", 0, 1,
                          b'{"resource":"DocumentReference/1","position":0,"path":"content[0].attachment",'
                          b'"url":"Binary/x","contentType":"application/pdf","size":3,"hash":"h",'
                          b'"file":"attachments/DocumentReference.1.0.pdf","more":1}', b"%PD")
    assert rec.attachment == fhirbulk.Attachment(
        "DocumentReference/1", 0, "content[0].attachment", "Binary/x", "application/pdf", 3, "h",
        "attachments/DocumentReference.1.0.pdf", {"more": 1})
    assert "content=<3 bytes>" in repr(rec)
    assert rec != fhirbulk.Record(rec.kind, rec.resource_type, 0, 1, rec.raw, b"%PDF")
    outcome = {
        "resourceType": "OperationOutcome",
        "extension": [{"url": fhirbulk.ATTACHMENT_ERROR_EXTENSION, "extension": [
            {"url": "resource", "valueString": "DiagnosticReport/7"},
            {"url": "position", "valueInteger": 1},
            {"url": "path", "valueString": "presentedForm[1]"},
            {"url": "url", "valueString": "Binary/y"}]}],
        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "gone",
                   "details": {"text": "HTTP 404"}}],
    }
    err = fhirbulk.Record("error", "DiagnosticReport", 2, 5, json.dumps(outcome).encode()).attachment_error
    assert err == fhirbulk.AttachmentError("DiagnosticReport/7", 1, "presentedForm[1]", "Binary/y",
                                           "gone", "not-found", 404)
    plain = fhirbulk.Record("error", "Patient", 0, 1, b'{"resourceType":"OperationOutcome","issue":[]}')
    assert plain.attachment_error is None and plain.attachment is None and plain.content is None
    p = fhirbulk.Progress("done", None, 0, 0, 0, 0, 0, 0, 0, None, 0, None)
    assert (p.attachments_fetched, p.attachment_errors) == (0, 0)


def test_checkpoint_between_a_document_and_its_record(sandbox, truth):
    ok = {key(e) for e in truth if e["outcome"] == "ok"}
    failed = {key(e) for e in truth if e["outcome"] in FAILURES + ("large",)}
    options = dict(types=TYPES, attachments="save", attachment_max_bytes=1_000_000, **FAST_RETRIES)
    got: List[fhirbulk.Record] = []
    with fhirbulk.export(sandbox.url(), batch_size=7, delete_on_cancel=False, **options) as job:
        for rec in job.records():
            got.append(rec)
            if rec.kind == "attachment" and sum(r.kind == "attachment" for r in got) == len(ok) // 2:
                break  # a document handed out, its record not yet
        cp = job.checkpoint()
    assert cp and got[-1].kind == "attachment"
    with fhirbulk.export(sandbox.url(), resume=cp, **options) as job:
        got += list(job.records())
    documents = [(r.attachment.resource, r.attachment.position) for r in got if r.kind == "attachment"]
    errors = [(e.resource, e.position) for e in (r.attachment_error for r in got) if e]
    assert sorted(documents) == sorted(ok) and sorted(errors) == sorted(failed)
    truth_sha1 = {key(e): e["sha1"] for e in truth}
    assert all(hashlib.sha1(r.content).hexdigest() == truth_sha1[(r.attachment.resource, r.attachment.position)]
               for r in got if r.kind == "attachment")
    ids = sorted(f"{r.resource_type}/{r.json()['id']}" for r in got if r.kind == "output")
    assert ids == sandbox.truth_ids(level="system", _type=TYPES)


def test_example_export_documents(sandbox, truth, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    example = REPO / "examples" / "python" / "export_documents.py"
    out = subprocess.run([sys.executable, str(example), sandbox.url(), str(tmp_path), "-", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ok = [e for e in truth if e["outcome"] in ("ok", "large")]  # its limit is 50 MiB
    failed = [e for e in truth if e["outcome"] in FAILURES]
    assert f"fetched {len(ok):,}, failed {len(failed):,}" in out.stdout, out.stdout
    files = sorted((tmp_path / "attachments").iterdir())
    assert sorted(hashlib.sha1(p.read_bytes()).hexdigest() for p in files) == sorted(e["sha1"] for e in ok)
    assert len((tmp_path / "failed-documents.txt").read_text().splitlines()) == len(failed)
    lines = sum(1 for t in ("DocumentReference", "DiagnosticReport")
                for _ in open(tmp_path / f"{t}.ndjson", "rb"))
    assert lines == len(sandbox.truth_ids(level="system", _type=TYPES))
