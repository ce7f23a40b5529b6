"""Arrow tables (issue 18): record batches decoded by the native library, imported without a
copy; every resource rebuilds from its row; readers for DuckDB and Polars; pandas on Arrow;
stable schemas; streams safe after close().  (Parquet: test_parquet.py.)"""

from __future__ import annotations

import collections
import os
import decimal
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import fhirbulk

pa = pytest.importorskip("pyarrow")

TYPES = ["Patient", "Observation"]


def ndjson_resources(url, **kwargs):
    """Every output resource of an export by "Type/id", read as NDJSON records (decimals as
    Decimal, as rebuild gives them), failing on a repeated id."""
    out = {}
    with fhirbulk.export(url, **kwargs) as job:
        for rec in job.records():
            if rec.kind != "output":
                continue
            r = json.loads(rec.raw, parse_float=decimal.Decimal)
            key = f"{rec.resource_type}/{r['id']}"
            assert key not in out, f"{key} twice"
            out[key] = r
    return out


def rebuilt(pairs):
    """(type, batch-or-table) pairs into {"Type/id": resource}, failing on a repeated id."""
    out = {}
    for t, data in pairs:
        for r in fhirbulk.rebuild_all(data):
            assert r["resourceType"] == t
            key = f"{t}/{r['id']}"
            assert key not in out, f"{key} twice"
            out[key] = r
    return out


def assert_same_resources(got, want):
    assert collections.Counter(k.split("/")[0] for k in got) == collections.Counter(
        k.split("/")[0] for k in want
    )
    assert set(got) == set(want)
    bad = [k for k in want if got[k] != want[k]]
    assert not bad, f"{len(bad)} resources differ, e.g. {bad[0]}: {got[bad[0]]} != {want[bad[0]]}"


# ---- schemas ------------------------------------------------------------------------------


def test_the_binding_has_the_arrow_c_structs():
    # The build backend hands cffi the header's Arrow C Data / Stream Interface structs.
    from fhirbulk._abi import ffi, lib

    ptr = ffi.sizeof("void *")
    assert ffi.sizeof("struct ArrowSchema") == 3 * ptr + 2 * 8 + 4 * ptr
    assert ffi.sizeof("struct ArrowArray") == 5 * 8 + 5 * ptr
    assert ffi.sizeof("struct ArrowArrayStream") == 5 * ptr
    assert lib.ARROW_FLAG_NULLABLE == 2 and fhirbulk.has_arrow()


def test_arrow_schema():
    assert fhirbulk.has_arrow()
    s = fhirbulk.arrow_schema("Observation")
    assert isinstance(s, pa.Schema)
    assert s.metadata[b"fhir.resourceType"] == b"Observation"
    assert s.names[0] == "id" and s.names[-1] == "_remainder"
    assert s.field("_remainder").type == pa.utf8()
    # Choice types as separate fields; decimals as utf8 with fhir.type=decimal.
    assert {"valueQuantity", "valueString", "valueInteger", "effectiveDateTime"} <= set(s.names)
    value = s.field("valueQuantity").type.field("value")
    assert value.type == pa.utf8() and value.metadata[b"fhir.type"] == b"decimal"
    assert pa.types.is_list(s.field("component").type)
    # The same schema every time; a type FHIR R4 lacks has only id and the remainder.
    assert fhirbulk.arrow_schema("Observation").equals(s, check_metadata=True)
    assert fhirbulk.arrow_schema("NotAFhirType").names == ["id", "_remainder"]
    for bad in ("", "Pat\0ient", None):
        with pytest.raises(ValueError):
            fhirbulk.arrow_schema(bad)


def test_schemas_are_stable_across_exports(sandbox):
    def schemas():
        seen = {}
        with fhirbulk.export(sandbox.url()) as job:
            for t, b in job.arrow_batches(batch_rows=40):
                assert b.schema.equals(fhirbulk.arrow_schema(t), check_metadata=True), t
                seen.setdefault(t, b.schema)
                assert seen[t].equals(b.schema, check_metadata=True), t
        return seen

    first, second = schemas(), schemas()
    assert set(first) == set(second) and len(first) >= 5
    for t in first:
        assert first[t].equals(second[t], check_metadata=True), t


# ---- rows back into resources ----------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["polls=0", "polls=0;contained_first"])
def test_every_resource_rebuilds_from_its_row(sandbox, scenario):
    # Exact multiset of ids, semantic equality with the NDJSON of a second export.
    # contained_first gives every resource a member no column holds (the remainder).
    want = ndjson_resources(sandbox.url(scenario))
    assert len(want) > 400
    remainders = 0
    pairs = []
    with fhirbulk.export(sandbox.url(scenario)) as job:
        for t, b in job.arrow_batches(batch_rows=37):
            assert isinstance(b, pa.RecordBatch) and 0 < b.num_rows <= 37
            remainders += b.num_rows - b.column("_remainder").null_count
            pairs.append((t, b))
    assert_same_resources(rebuilt(pairs), want)
    if "contained_first" in scenario:
        assert remainders == len(want)
        assert all(r["contained"][0]["id"] == "sandbox-contained" for r in rebuilt(pairs).values())


def test_rebuild_merges_the_remainder():
    # Rows made by hand in the engine's layout: what the columns could not hold is in
    # _remainder, shaped like the resource (arrays by position, null where the columns have it).
    schema = fhirbulk.arrow_schema("Patient")
    extension = {"extension": [{"url": "u", "valueString": "x"}]}
    resources = [
        {"resourceType": "Patient", "id": "p1", "active": "yes",  # wrong JSON type
         "name": [{"family": "Doe", "given": ["A", None], "_given": [None, extension]}],
         "unknownElement": {"a": [1, 2.50]}, "birthDate": None, "link": []},
        {"resourceType": "Patient", "id": "p2", "name": [{}, {"family": "X"}]},
        {"resourceType": "Patient"},
    ]
    rows = [
        {"id": "p1", "name": [{"family": "Doe", "given": ["A", None]}], "link": [],
         "_remainder": json.dumps({"active": "yes", "name": [{"_given": [None, extension]}],
                                   "unknownElement": {"a": [1, 2.50]}, "birthDate": None})},
        {"id": "p2", "name": [{}, {"family": "X"}]},
        {},
    ]
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    want = [json.loads(json.dumps(r), parse_float=decimal.Decimal) for r in resources]
    assert list(fhirbulk.rebuild_all(batch)) == want
    assert fhirbulk.rebuild(batch, 1) == want[1]
    assert fhirbulk.rebuild(pa.Table.from_batches([batch]), -1) == want[2]
    with pytest.raises(IndexError):
        fhirbulk.rebuild(batch, 3)


def test_rebuild_decimals_keep_their_text():
    schema = fhirbulk.arrow_schema("Observation")
    batch = pa.RecordBatch.from_pylist(
        [{"id": "o1", "valueQuantity": {"value": "1.50", "unit": "mg"},
          "component": [{"valueQuantity": {"value": "1e-7"}}, {"valueInteger": 3}]}],
        schema=schema,
    )
    r = fhirbulk.rebuild(batch, 0)
    assert r["valueQuantity"]["value"] == decimal.Decimal("1.50")
    assert str(r["valueQuantity"]["value"]) == "1.50"  # precision kept
    assert r["component"] == [
        {"valueQuantity": {"value": decimal.Decimal("1e-7")}},
        {"valueInteger": 3},
    ]
    assert fhirbulk.rebuild(batch, 0, parse_float=float)["valueQuantity"]["value"] == 1.5


# ---- batches ----------------------------------------------------------------------------------


def test_arrow_batches_are_bounded(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    sizes = collections.defaultdict(list)
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        for t, b in job.arrow_batches(batch_rows=25):
            sizes[t].append(b.num_rows)
        assert job.progress.state == "done"
    assert {t: sum(s) for t, s in sizes.items()} == truth
    threads = min(os.cpu_count() or 1, 4)  # the engine's decode threads
    for t, s in sizes.items():
        # A type's batch comes when it is full; at the end each decode thread hands out
        # what it holds, so up to one short batch per thread.
        assert all(0 < n <= 25 for n in s), (t, s)
        assert sum(1 for n in s if n < 25) <= threads, (t, s)
        assert -(-truth[t] // 25) <= len(s) <= -(-truth[t] // 25) + threads, (t, s)


def test_arrow_batches_of_one_type_then_the_other(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        obs = list(job.arrow_batches("Observation", batch_rows=30))
        # The Patient batches that came meanwhile were held for their own stream.
        pats = list(job.arrow_batches("Patient"))
    assert all(isinstance(b, pa.RecordBatch) and 0 < b.num_rows <= 30 for b in obs + pats)
    assert sum(b.num_rows for b in obs) == truth["Observation"]
    assert sum(b.num_rows for b in pats) == truth["Patient"]
    assert rebuilt([("Observation", b) for b in obs] + [("Patient", b) for b in pats]) == (
        ndjson_resources(sandbox.url(), group="g1", types=TYPES)
    )


def test_records_read_as_arrow_are_not_seen_by_the_record_iterators(sandbox):
    with fhirbulk.export(sandbox.url(), group="g2", types=TYPES) as job:
        rows = sum(b.num_rows for _, b in job.arrow_batches())
        assert list(job) == [] and list(job.raw()) == []
    assert rows == sum(sandbox.truth(level="group", group="g2", _type=",".join(TYPES)).values())


def test_error_and_deleted_records_are_not_in_arrow(sandbox):
    url = sandbox.url("polls=0;errors;deleted=3")
    since = "2000-01-01T00:00:00Z"  # the sandbox lists deletions for incremental exports
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES), _since=since)
    with fhirbulk.export(url, group="g1", types=TYPES, since=since) as job:
        tables = job.to_arrow()
        kinds = collections.Counter(f["kind"] for f in job.files)
    assert kinds["error"] and kinds["deleted"]
    assert {t: tb.num_rows for t, tb in tables.items()} == truth


def test_a_line_of_another_type_fails_with_a_protocol_error(sandbox):
    # long_line: each output file gets a Basic resource line (not of its file's type).
    url = sandbox.url("polls=0;long_line=300")
    with fhirbulk.export(url, group="g1", types=["Patient"]) as job:
        with pytest.raises(fhirbulk.ProtocolError, match=r"file \d+ line \d+: .*Basic"):
            list(job.arrow_batches())
    with fhirbulk.export(url, group="g1", types=["Patient"]) as job:
        with pytest.raises(fhirbulk.ProtocolError, match=r"file \d+ line \d+: .*Basic"):
            list(job.arrow_batches("Patient"))


def test_bad_arguments():
    job = fhirbulk.export("http://127.0.0.1:9/fhir", retry_max_attempts=1)
    with job:
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError):
                job.arrow_batches(batch_rows=bad)
            with pytest.raises(ValueError):
                job.arrow_reader("Patient", batch_rows=bad)
        with pytest.raises(ValueError):
            job.arrow_reader("")


# ---- tables ----------------------------------------------------------------------------------


def test_to_arrow(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        tables = job.to_arrow()
    assert sorted(tables) == sorted(truth)
    assert {t: tb.num_rows for t, tb in tables.items()} == truth
    assert all(isinstance(tb, pa.Table) for tb in tables.values())
    assert tables["Patient"].schema.equals(fhirbulk.arrow_schema("Patient"), check_metadata=True)
    assert rebuilt(tables.items()) == ndjson_resources(sandbox.url(), group="g1", types=TYPES)

    with fhirbulk.export(sandbox.url(), group="g1", types=["Patient"]) as job:
        patients = job.to_arrow("Patient")
    assert patients.num_rows == truth["Patient"]
    # A type with no rows: an empty table in its schema.
    with fhirbulk.export(sandbox.url(), group="g1", types=["Patient"]) as job:
        none = job.to_arrow("Condition")
    assert none.num_rows == 0 and none.schema.equals(fhirbulk.arrow_schema("Condition"))


def test_to_pandas_on_arrow(sandbox):
    pd = pytest.importorskip("pandas")
    truth = sandbox.truth(level="group", group="g2", _type=",".join(TYPES))
    with fhirbulk.export(sandbox.url(), group="g2", types=TYPES) as job:
        frames = job.to_pandas()
    assert {t: len(df) for t, df in frames.items()} == truth
    assert all(isinstance(df, pd.DataFrame) for df in frames.values())
    obs = frames["Observation"]
    assert list(obs.columns) == fhirbulk.arrow_schema("Observation").names
    assert obs["id"].is_unique and obs["status"].notna().all()
    first = obs["valueQuantity"].dropna().iloc[0]
    assert isinstance(first, dict) and isinstance(first["value"], str)  # the decimal's text
    decimal.Decimal(first["value"])
    with fhirbulk.export(sandbox.url(), group="g2", types=["Patient"]) as job:
        pats = job.to_pandas("Patient", types_mapper=pd.ArrowDtype)
    assert len(pats) == truth["Patient"] and isinstance(pats["id"].dtype, pd.ArrowDtype)


def test_to_pandas_kinds_keeps_the_json_path(sandbox):
    pd = pytest.importorskip("pandas")
    url = sandbox.url("polls=0;errors")
    with fhirbulk.export(url, group="g2", types=TYPES) as job:
        frames = job.to_pandas(kinds=("output", "error"))
    assert "OperationOutcome" in frames
    assert (frames["Patient"]["resourceType"] == "Patient").all()
    assert any("." in c for c in frames["Observation"].columns)  # json_normalize's columns
    with fhirbulk.export(url, group="g2", types=TYPES) as job:
        pats = job.to_pandas("Patient", kinds=("output",))
    assert isinstance(pats, pd.DataFrame) and len(pats) == len(frames["Patient"])


# ---- readers: DuckDB, Polars -----------------------------------------------------------------


def test_arrow_reader(sandbox):
    truth = sandbox.truth(level="group", group="g1", _type="Observation")
    with fhirbulk.export(sandbox.url(), group="g1", types=["Observation"]) as job:
        reader = job.arrow_reader("Observation", batch_rows=50)
        assert isinstance(reader, pa.RecordBatchReader)
        assert reader.schema.equals(fhirbulk.arrow_schema("Observation"), check_metadata=True)
        table = reader.read_all()
    assert table.num_rows == truth["Observation"]


def test_arrow_reader_with_duckdb(sandbox):
    duckdb = pytest.importorskip("duckdb")
    truth = sandbox.truth(level="group", group="g1", _type="Observation")
    with fhirbulk.export(sandbox.url(), group="g1", types=["Observation"]) as job:
        reader = job.arrow_reader("Observation", batch_rows=50)  # noqa: F841 - used by the SQL
        con = duckdb.connect()
        [(rows, ids, units)] = con.execute(
            "select count(*), count(distinct id), count(distinct valueQuantity.unit) from reader"
        ).fetchall()
    assert rows == ids == truth["Observation"] and units >= 1


def test_arrow_reader_with_polars(sandbox):
    pl = pytest.importorskip("polars")
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    with fhirbulk.export(sandbox.url(), group="g1", types=["Observation"]) as job:
        df = pl.from_arrow(job.arrow_reader("Observation", batch_rows=50))
    assert isinstance(df, pl.DataFrame) and df.height == truth["Observation"]
    assert df["id"].n_unique() == df.height
    assert df.select(pl.col("valueQuantity").struct.field("unit")).drop_nulls().height > 0
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        frames = job.to_polars()
    assert {t: f.height for t, f in frames.items()} == truth
    with fhirbulk.export(sandbox.url(), group="g1", types=["Patient"]) as job:
        assert job.to_polars("Patient").height == truth["Patient"]


# ---- lifetime: close, cancel, Ctrl-C ---------------------------------------------------------


def test_a_stream_used_after_close_raises_a_clear_error(sandbox):
    job = fhirbulk.export(sandbox.url(), group="g1", types=TYPES)
    reader = job.arrow_reader("Patient", batch_rows=10)
    assert reader.read_next_batch().num_rows == 10
    job.close()
    with pytest.raises(pa.ArrowException, match="freed"):
        reader.read_next_batch()
    reader.close()
    # New Arrow reads of a closed export say so.
    for call in (lambda: job.arrow_reader("Patient"), job.arrow_batches, job.to_arrow):
        with pytest.raises(fhirbulk.InvalidHandleError, match="closed"):
            call()


@pytest.mark.parametrize("resource_type", [None, "Observation"])
def test_close_in_the_loop_body_ends_the_arrow_loop(sandbox, resource_type):
    base = fhirbulk.live_handles()
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        it = job.arrow_batches(resource_type, batch_rows=10)
        seen = 0
        for _ in it:
            seen += 1
            job.close()
        assert seen == 1 and list(it) == [] and fhirbulk.live_handles() == base


@pytest.mark.parametrize("resource_type", [None, "Observation"])
def test_cancel_from_another_thread_ends_the_arrow_loop(sandbox, resource_type):
    with fhirbulk.export(sandbox.url("polls=0;slow=2000"), group="g1", types=TYPES) as job:
        timer = threading.Timer(0.5, job.cancel)
        timer.start()
        t0 = time.monotonic()
        try:
            rows = sum(
                (b if resource_type else b[1]).num_rows
                for b in job.arrow_batches(resource_type)
            )
        finally:
            timer.cancel()
        assert time.monotonic() - t0 < 5
        assert job.cancelled
    assert rows < sum(sandbox.truth(level="group", group="g1", _type=",".join(TYPES)).values())


CHILD = textwrap.dedent(
    """
    import json, sys, time
    import fhirbulk
    with fhirbulk.export(sys.argv[1], group="g1") as job:
        while job.checkpoint() is None:
            time.sleep(0.01)
        print(json.dumps({"status_url": job.checkpoint()["status_url"]}), flush=True)
        for batch in job.arrow_batches(None if sys.argv[2] == "-" else sys.argv[2]):
            pass
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("resource_type", ["-", "Observation"])
def test_ctrl_c_in_an_arrow_loop_cancels_and_deletes_the_job(sandbox, tmp_path, resource_type):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), sandbox.url("polls=0;slow=1000"), resource_type],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status_url = json.loads(proc.stdout.readline())["status_url"]
        time.sleep(0.3)  # the child now waits for its first batch
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err, err
    assert "finished" not in out and proc.returncode != 0
    assert elapsed < 5, elapsed
    assert sandbox.wait_for_delete(status_url, timeout=5), "no DELETE of the job after Ctrl-C"
