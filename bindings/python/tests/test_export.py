"""Full exports against the sandbox over real HTTP: exact counts, raw vs parsed, records."""

from __future__ import annotations

import collections
import datetime as dt
import json
import time

import pytest

import fhirbulk

TYPES = ["Patient", "Observation"]


def counts(resources):
    return dict(collections.Counter(r["resourceType"] for r in resources))


def test_group_export_exact_counts(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        got = counts(job)
        progress = job.progress
        manifest = job.manifest
        files = job.files
    assert got == truth
    assert sum(truth.values()) > 2 * 100  # several files per type
    assert progress.state == "done"
    assert progress.records == sum(truth.values())
    assert progress.files_done == progress.files_total == len(files) > 2
    assert progress.error is None and progress.error_code == 0 and progress.http_status is None
    assert isinstance(manifest, dict) and "transactionTime" in manifest
    assert sum(f["count"] for f in files) == sum(truth.values())
    assert {f["type"] for f in files} == set(TYPES)
    assert job.closed and not job.cancelled


@pytest.mark.parametrize(
    "kwargs,query",
    [
        (dict(), dict(level="system")),
        (dict(patient_level=True, types="Patient,Condition"), dict(level="patient", _type="Patient,Condition")),
        (dict(level="patient", types=["Encounter"]), dict(level="patient", _type="Encounter")),
        (dict(group="g2"), dict(level="group", group="g2")),
    ],
)
def test_levels_exact_counts(sandbox, kwargs, query):
    with fhirbulk.export(sandbox.url(), **kwargs) as job:
        got = collections.Counter(r.resource_type for r in job.records())
    assert dict(got) == sandbox.truth(**query)


def test_raw_and_parsed_give_the_same(sandbox):
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        raw = list(job.raw())
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        parsed = list(job)
    assert all(isinstance(line, bytes) and not line.endswith(b"\n") for line in raw)
    key = lambda r: (r["resourceType"], r["id"])  # noqa: E731 - files download concurrently
    assert sorted((json.loads(line) for line in raw), key=key) == sorted(parsed, key=key)
    assert len(raw) == len({key(r) for r in parsed})


def test_records_carry_file_and_line(sandbox):
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        records = list(job.records())
        files = job.files
    assert records
    by_file = collections.defaultdict(list)
    for rec in records:
        assert rec.kind == "output"
        resource = rec.json()
        assert resource["resourceType"] == rec.resource_type
        assert files[rec.file_index]["type"] == rec.resource_type
        by_file[rec.file_index].append(rec.line)
    for index, lines in by_file.items():
        assert lines == list(range(1, files[index]["count"] + 1))
    assert "Record(kind='output'" in repr(records[0])


def test_error_and_deleted_records(sandbox):
    since = "2000-01-01T00:00:00Z"  # the sandbox lists deletions for incremental exports
    with fhirbulk.export(sandbox.url("polls=0;errors;deleted=3"), group="g1", types=TYPES,
                         since=since) as job:
        kinds = collections.Counter((r.kind, r.resource_type) for r in job.records())
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES), _since=since)
    assert kinds[("output", "Patient")] == truth["Patient"]
    assert any(kind == "error" for kind, _ in kinds)
    assert kinds[("deleted", "Bundle")] == 3


def test_break_and_continue_hands_out_every_record_once(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    seen = []
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES, batch_size=64) as job:
        for i, line in enumerate(job.raw()):
            seen.append(json.loads(line))
            if i == 9:
                break
        assert job.progress.records == 10  # what the loop got, not the batch pulled
        for i, resource in enumerate(job):
            seen.append(resource)
            if i == 99:
                break
        for i, rec in enumerate(job.records()):
            seen.append(rec.json())
            if i == 50:
                break
        seen.extend(job)  # the rest
        assert list(job) == [] and list(job.raw()) == []
    assert counts(seen) == truth
    assert len({(r["resourceType"], r["id"]) for r in seen}) == len(seen)


def test_records_after_switching_forms_mid_batch(sandbox):
    # records() picked up part-way through a batch pulled by another loop: each record's
    # metadata (file, line, type, kind) must belong to its own line.
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        reference = {(r.file_index, r.line): r for r in job.records()}
    got = []
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES, batch_size=40) as job:
        while True:
            n = len(got)
            for i, resource in enumerate(job):  # parsed: 7 records of a fresh batch
                got.append((None, resource))
                if i == 6:
                    break
            for i, rec in enumerate(job.records()):  # then records from the same batch
                got.append((rec, rec.json()))
                if i == 12:
                    break
            for i, line in enumerate(job.raw()):
                got.append((None, json.loads(line)))
                if i == 4:
                    break
            if len(got) == n:
                break
    assert len(got) == len(reference)
    records = [rec for rec, _ in got if rec is not None]
    assert len(records) > 13
    for rec, resource in got:
        if rec is not None:
            ref = reference[(rec.file_index, rec.line)]
            assert rec == ref and resource == ref.json()

def test_interleaved_iterators(sandbox):
    truth = sandbox.truth(level="group", group="g2")
    with fhirbulk.export(sandbox.url(), group="g2", batch_size=10) as job:
        a, b, c = iter(job), job.raw(), job.records()
        seen = []
        while True:
            got = [next(a, None), next(b, None), next(c, None)]
            if got == [None, None, None]:
                break
            for item in got:
                if isinstance(item, bytes):
                    seen.append(json.loads(item))
                elif isinstance(item, fhirbulk.Record):
                    seen.append(item.json())
                elif item is not None:
                    seen.append(item)
    assert counts(seen) == truth
    assert len({(r["resourceType"], r["id"]) for r in seen}) == len(seen)


def test_config_is_built_from_keywords(sandbox):
    since = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    cfg = fhirbulk.build_config(
        sandbox.url(), group="g1", types="Patient, Observation", since=since, auth="tok",
        concurrency=2, type_filters="Observation?status=final", until=None,
    )
    assert cfg == {
        "base_url": sandbox.url(),
        "level": "group",
        "group_id": "g1",
        "types": ["Patient", "Observation"],
        "since": "2020-01-02T03:04:05+00:00",
        "auth": {"type": "bearer", "token": "tok"},
        "concurrency": 2,
        "type_filters": ["Observation?status=final"],
    }
    assert fhirbulk.build_config("http://x/fhir") == {"base_url": "http://x/fhir"}
    assert fhirbulk.build_config("http://x/fhir", patient_level=True)["level"] == "patient"
    assert fhirbulk.build_config("http://x/fhir", since=dt.date(2021, 5, 6))["since"] == "2021-05-06T00:00:00Z"
    with pytest.raises(fhirbulk.ConfigError):
        fhirbulk.build_config("http://x/fhir", level="system", patient_level=True)


def test_since_datetime_reaches_the_server(sandbox):
    since = dt.datetime(2021, 6, 1, tzinfo=dt.timezone.utc)
    truth = sandbox.truth(level="group", group="g1", _type="Observation", _since=since.isoformat())
    with fhirbulk.export(sandbox.url("polls=0;progress=since-test"), group="g1", types=["Observation"],
                         since=since, concurrency=2, method="get") as job:
        got = counts(job)
    assert got == truth
    kickoffs = [r for r in sandbox.requests()
                if r["path"].startswith("/x/polls=0;progress=since-test/") and r["path"].endswith("$export")]
    assert dict(kickoffs[-1]["query"])["_since"] == "2021-06-01T00:00:00+00:00"


def test_progress_before_and_after(sandbox):
    with fhirbulk.export(sandbox.url("polls=2;retry_after=0;progress=Working"), group="g2",
                         poll_min_ms=50) as job:
        first = job.progress
        assert isinstance(first, fhirbulk.Progress)
        assert first.state in ("kicking_off", "waiting", "downloading", "done")
        assert job.manifest is None or "output" in job.manifest
        n = sum(1 for _ in job.raw())
        last = job.progress
    assert last.state == "done" and last.finished and last.records == n
    assert last.polls >= 3
    assert job.progress == last  # kept after close
    assert job.checkpoint() is None  # closed


def test_custom_loads_and_small_batches(sandbox):
    truth = sandbox.truth(level="group", group="g2", _type="Patient")
    with fhirbulk.export(sandbox.url(), group="g2", types=["Patient"], batch_size=7,
                         loads=lambda line: ("parsed", json.loads(line))) as job:
        items = list(job)
    assert len(items) == truth["Patient"]
    assert all(tag == "parsed" and r["resourceType"] == "Patient" for tag, r in items)


def test_checkpoint_and_resume(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type="Patient,Observation")
    first = []
    # delete_on_cancel=False: leaving the `with` early must not DELETE the job to be resumed
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES, batch_size=16,
                         delete_on_cancel=False) as job:
        for rec in job.records():
            first.append(rec.json())
            if len(first) == 40:
                break
        cp = job.checkpoint()
    assert cp and cp["status_url"]
    with fhirbulk.export(sandbox.url(), resume=cp) as job:
        rest = list(job)
    both = first + rest
    assert counts(both) == truth
    assert len({(r["resourceType"], r["id"]) for r in both}) == len(both)


def test_each_file_read_by_an_export_of_its_own(sandbox):
    # A distributed reader: the driver takes the manifest and nothing else (manifest_only);
    # then one export per file (only_files), no new kick-off, every record once.
    truth = sandbox.truth(level="group", group="g1", _type="Patient,Observation")
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES, manifest_only=True) as job:
        assert list(job.raw()) == [], "a manifest_only export delivers no record"
        assert job.progress.bytes == 0, job.progress
        cp = job.checkpoint()
        assert cp["manifest_complete"] and not cp.get("next_page")
        files = job.files
    assert len(files) >= 2
    seen = []
    for k in reversed(range(len(files))):
        with fhirbulk.export(sandbox.url(), resume=cp, resume_files=json.dumps(files),
                             only_files=[k], delete_on_cancel=False) as task:
            for rec in task.records():
                assert rec.file_index == k
                seen.append(rec.json())
    assert counts(seen) == truth
    assert len({(r["resourceType"], r["id"]) for r in seen}) == len(seen)
    with pytest.raises(fhirbulk.ConfigError, match="only_files is given without resume"):
        with fhirbulk.export(sandbox.url(), only_files=[0]):
            pass


def test_version_and_status_names():
    assert fhirbulk.__version__ == fhirbulk.library_version()
    assert fhirbulk.status_name(303) == "not_found"
    assert fhirbulk.status_name(2) == "end"


def test_abi_check_raises_importerror_on_mismatch():
    v = fhirbulk.ABI_VERSION
    assert v == 3
    fhirbulk.check_abi(v, v)
    with pytest.raises(ImportError, match="ABI version mismatch"):
        fhirbulk.check_abi(v + 1, v)
    with pytest.raises(ImportError):
        fhirbulk.check_abi(v, v, expected=v + 1)


@pytest.mark.parametrize(
    "lines",
    [
        [b'{"a":1}', b'{"b":[1,2,{"c":null}]}', b'{"u":"\\u00e9\\ud83d\\ude00 \xc3\xa9"}'],
        [b'{"a":1}, {"b":2}', b'{"c":3}'],  # two values on one line
        [b'{"a":[{"b":1}', b'{"c":2}]}'],  # one value over two lines
        [b'{"a":1} ', b'{"b":2}'],  # trailing whitespace
        [b' {"a":1}', b'{"b":2}'],  # leading whitespace
        [b'{"a":1}\r', b'{"b":2}'],
        [b'{"a":NaN}', b'{"b":1e400}', b'{"c":12345678901234567890}'],
        [b'{"a":1', b'{"b":2}'],  # invalid
        [b'{"a":"\xff"}'],  # invalid UTF-8
        [b'\xef\xbb\xbf{"a":1}'],  # BOM
    ],
)
def test_batch_parser_matches_json_loads_line_by_line(lines):
    from fhirbulk._export import _parse_batch

    data = b"".join(line + b"\n" for line in lines)
    try:
        expected = [json.loads(line) for line in lines]
    except ValueError:
        expected = None
    got = _parse_batch(data, len(lines))
    if got is not None:  # None means: fall back to json.loads line by line
        assert expected is not None and repr(got) == repr(expected)


@pytest.mark.parametrize(
    "lines,ok",
    [
        ([b'{"a":1}', b"{}", b'{"b":"\xc3\xa9"}'], True),
        ([b"{}"], True),
        ([b'{"a":1}\n{"b":2}'], False),  # the lengths do not cover the buffer
    ],
)
def test_split_lines_by_record_lengths(lines, ok):
    from fhirbulk._abi import ffi
    from fhirbulk._export import _split_lines

    data = b"".join(line + b"\n" for line in lines)
    records = ffi.new("FhirbulkRecord[]", len(lines))
    for i, line in enumerate(lines):
        records[i].len = len(line) - (0 if ok else 1)
    got = _split_lines(data, records, len(lines))
    assert got == (tuple(lines) if ok else None)
    assert _split_lines(data[:-1] + b" ", records, len(lines)) is None  # no final newline

def test_line_by_line_fallback_gives_the_same(sandbox, monkeypatch):
    import fhirbulk._export as ex

    truth = sandbox.truth(level="group", group="g2")
    monkeypatch.setattr(ex, "_parse_batch", lambda data, count: None)
    with fhirbulk.export(sandbox.url(), group="g2", batch_size=50) as job:
        got = list(job)
    assert counts(got) == truth
    assert len({(r["resourceType"], r["id"]) for r in got}) == len(got)


def test_example_export_summary(sandbox):
    import subprocess
    import sys

    from conftest import REPO

    example = REPO / "examples" / "python" / "export_summary.py"
    out = subprocess.run([sys.executable, str(example), sandbox.url(), "g1", "Patient,Observation"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    truth = sandbox.truth(level="group", group="g1", _type="Patient,Observation")
    for ty, n in truth.items():
        assert any(line.split()[:3] == [ty, "output", f"{n:,}"] for line in out.stdout.splitlines())
    failed = subprocess.run([sys.executable, str(example), sandbox.url("kickoff=404;polls=0")],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "NotFoundError" in failed.stderr and "sandbox forced 404" in failed.stderr


def test_warnings_and_long_waits_show_in_the_progress(sandbox):
    import time

    truth = sandbox.truth(level="group", group="g1", _type="Patient")
    # A manifest that lists a file twice: downloaded once, and said.
    with fhirbulk.export(sandbox.url("polls=0;dup_entry"), group="g1", types=["Patient"]) as job:
        assert sum(1 for _ in job.raw()) == truth["Patient"]
        assert job.progress.warnings >= 1
        assert any("more than once" in w for w in job.warnings), job.warnings
    assert any("more than once" in w for w in job.warnings), "kept after close"
    # The file request is throttled with Retry-After: 3: the wait shows while it lasts.
    with fhirbulk.export(
        sandbox.url("polls=0;file_error=429:1;error_retry_after=3"),
        group="g1",
        types=["Patient"],
        poll_max_ms=10_000,
    ) as job:
        seen = None
        t0 = time.time()
        while seen is None and time.time() - t0 < 10:
            p = job.progress
            if p.wait_until:
                seen = p
            time.sleep(0.02)
        assert seen is not None, "a wait of 3 s shows"
        assert "429" in seen.wait_reason
        assert seen.wait_until - time.time() <= 3.5  # and it ends when it says (below)
        assert sum(1 for _ in job.raw()) == truth["Patient"]
        assert job.progress.wait_until is None


def test_iterating_a_closed_export_raises(sandbox):
    # Like a closed file: never zero records in silence.
    with fhirbulk.export(sandbox.url(), group="g1", types="Patient") as job:
        n = sum(1 for _ in job.raw())
    assert n == sum(sandbox.truth(level="group", group="g1", _type="Patient").values())
    for start in (lambda: iter(job), job.raw, job.records):
        with pytest.raises(ValueError, match="closed export"):
            for _ in start():
                pass
    early = fhirbulk.export(sandbox.url(), group="g1", types="Patient")
    early.close()
    with pytest.raises(ValueError, match="iterate inside its with block"):
        list(early)


def test_a_star_import_shadows_no_builtin():
    ns: dict = {}
    exec("from fhirbulk import *", ns)
    assert "TimeoutError" not in ns, "fhirbulk.TimeoutError would hide builtins.TimeoutError"
    assert ns["ExportTimeoutError"] is fhirbulk.TimeoutError
    import builtins

    shadowed = [k for k in ns if k != "__builtins__" and hasattr(builtins, k)]
    assert shadowed == [], shadowed


def test_config_errors_speak_python(sandbox):
    with pytest.raises(fhirbulk.ConfigError) as e:
        fhirbulk.export(sandbox.url(), concurency=4)
    assert str(e.value).startswith("invalid config: unknown option 'concurency' (did you mean 'concurrency'?)"), e.value
    assert "`" not in str(e.value) and "line 1" not in str(e.value)
    with pytest.raises(fhirbulk.ConfigError) as e:
        fhirbulk.export(sandbox.url(), concurrency="4")
    assert str(e.value) == "invalid config: option 'concurrency' must be an int, not the str '4'", e.value
    with pytest.raises(fhirbulk.ConfigError) as e:
        fhirbulk.export(sandbox.url(), lenient="yes")
    assert "option 'lenient' must be a bool (True or False)" in str(e.value), e.value
    with pytest.raises(fhirbulk.ConfigError) as e:
        fhirbulk.export(sandbox.url(), on_invalid_line="ignore")
    assert str(e.value) == "invalid config: option 'on_invalid_line' must be 'fail' or 'skip', not 'ignore'"
    # The library's own checks keep their words (they name the key already).
    with pytest.raises(fhirbulk.ConfigError, match="poll_min_ms"):
        fhirbulk.export(sandbox.url(), poll_min_ms=500, poll_max_ms=100)
