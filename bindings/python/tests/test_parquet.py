"""write_parquet: the native library writes the export as a Parquet dataset,
``<dir>/<Type>/part-<n>.parquet`` (no pyarrow needed to write); read back with pyarrow.dataset,
pandas, Polars and DuckDB (each where installed) it holds exactly the resources of the record
API; options, overwrite, failures, cancel and Ctrl-C leave no part; the pyarrow engine writes
the same layout."""

from __future__ import annotations

import collections
import decimal
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import fhirbulk

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


def ids_by_type(resources):
    """{"Type": Counter(ids)} of a {"Type/id": ...} map."""
    out = collections.defaultdict(collections.Counter)
    for k in resources:
        t, i = k.split("/", 1)
        out[t][i] += 1
    return dict(out)


def layout(directory: Path):
    """{type directory: sorted file names} of a dataset directory (hidden files included)."""
    return {
        d.name: sorted(f.name for f in d.iterdir())
        for d in sorted(directory.iterdir())
        if d.is_dir()
    }


def no_parts_left(directory: Path):
    """Nothing of a dataset under ``directory``: no part, no part in progress, no type directory."""
    if not directory.exists():
        return True
    return [p for p in directory.rglob("*")] == []


def read_dataset(directory: Path, resource_type: str):
    """One type's table through pyarrow.dataset (it passes over the hidden parts in progress)."""
    ds = pytest.importorskip("pyarrow.dataset")
    return ds.dataset(str(directory / resource_type), format="parquet").to_table()


# ---- the native writer -----------------------------------------------------------------------


def test_has_parquet():
    assert fhirbulk.has_parquet() is True
    assert "has_parquet" in fhirbulk.__all__


def test_write_parquet_every_type_with_exact_ids_and_resources(sandbox, tmp_path):
    pa = pytest.importorskip("pyarrow")
    truth = sandbox.truth(level="system")
    want = ndjson_resources(sandbox.url())
    out = tmp_path / "pq"
    with fhirbulk.export(sandbox.url()) as job:
        written = job.write_parquet(out)
        summary = job.parquet_summary
        assert job.progress.state == "done"
    assert written == dict(sorted(truth.items())) and list(written) == sorted(written)
    assert len(written) == 12
    assert summary["skipped"] == 0
    assert {t: v["rows"] for t, v in summary["types"].items()} == truth
    # <dir>/<Type>/part-<n>.parquet, one directory per type, no part in progress left.
    files = layout(out)
    assert sorted(files) == sorted(truth)
    for t, names in files.items():
        assert names and all(n.startswith("part-") and n.endswith(".parquet") for n in names), names
        assert len(names) == summary["types"][t]["parts"]
    got = {}
    for t in truth:
        table = read_dataset(out, t)
        # The schema and its metadata come back (fhir.resourceType, decimals' fhir.type).
        assert table.schema.equals(fhirbulk.arrow_schema(t)), t
        assert table.schema.metadata[b"fhir.resourceType"] == t.encode()
        assert isinstance(table, pa.Table) and table.num_rows == truth[t]
        for r in fhirbulk.rebuild_all(table):
            key = f"{t}/{r['id']}"
            assert key not in got, f"{key} twice"
            got[key] = r
    # The exact multiset of ids per type, and every resource equal to the record API's.
    assert ids_by_type(got) == ids_by_type(want)
    assert {t: sum(c.values()) for t, c in ids_by_type(got).items()} == truth
    bad = [k for k in want if got[k] != want[k]]
    assert not bad, f"{len(bad)} resources differ, e.g. {bad[0]}: {got[bad[0]]} != {want[bad[0]]}"


def test_write_parquet_needs_no_pyarrow(sandbox, tmp_path):
    # A process where pyarrow cannot be imported writes the dataset all the same.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pyarrow"] = None  # import pyarrow now fails
        import fhirbulk
        with fhirbulk.export(sys.argv[1], group="g1", types=["Patient", "Observation"]) as job:
            print(sum(job.write_parquet(sys.argv[2]).values()))
        assert "pyarrow.parquet" not in sys.modules
        """
    )
    p = subprocess.run([sys.executable, "-c", script, sandbox.url(), str(tmp_path / "pq")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    assert int(p.stdout) == sum(truth.values())
    assert sorted(layout(tmp_path / "pq")) == sorted(truth)


@pytest.mark.parametrize("reader", ["pandas", "polars", "duckdb"])
def test_the_dataset_reads_back(sandbox, tmp_path, reader):
    module = pytest.importorskip(reader)
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    want = ids_by_type(ndjson_resources(sandbox.url(), group="g1", types=TYPES))
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        assert job.write_parquet(tmp_path, threads=2, row_group_rows=50) == truth
    for t in truth:
        if reader == "pandas":
            pytest.importorskip("pyarrow")
            df = module.read_parquet(tmp_path / t)
            ids = list(df["id"])
            if t == "Observation":
                q = df["valueQuantity"].dropna().iloc[0]
                assert isinstance(q, dict) and decimal.Decimal(q["value"])  # the decimal's text
        elif reader == "polars":
            df = module.read_parquet(str(tmp_path / t / "*.parquet"))
            ids = df["id"].to_list()
            if t == "Observation":
                units = df.select(module.col("valueQuantity").struct.field("unit")).drop_nulls()
                assert units.height > 0
        else:
            con = module.connect()
            glob = str(tmp_path / t / "*.parquet")
            ids = [r[0] for r in con.execute(f"select id from read_parquet('{glob}')").fetchall()]
            if t == "Observation":
                [(n,)] = con.execute(
                    f"select count(valueQuantity.unit) from read_parquet('{glob}')"
                ).fetchall()
                assert n > 0
        assert collections.Counter(ids) == want[t], t


@pytest.mark.parametrize("compression", ["snappy", "zstd", "none"])
def test_compression_and_row_groups(sandbox, tmp_path, compression):
    pq = pytest.importorskip("pyarrow.parquet")
    truth = sandbox.truth(level="group", group="g2", _type="Observation")
    with fhirbulk.export(sandbox.url(), group="g2", types=["Observation"]) as job:
        written = job.write_parquet(
            tmp_path, compression=compression, row_group_rows=16, batch_rows=16, threads=1
        )
    assert written == truth
    # threads=1: one writer, one part per type.
    assert layout(tmp_path) == {"Observation": ["part-00000.parquet"]}
    meta = pq.ParquetFile(tmp_path / "Observation" / "part-00000.parquet").metadata
    assert meta.num_rows == truth["Observation"]
    assert meta.num_row_groups == -(-truth["Observation"] // 16)
    codecs = {meta.row_group(0).column(i).compression for i in range(meta.num_columns)}
    assert codecs == {{"none": "UNCOMPRESSED"}.get(compression, compression.upper())}


def test_part_bytes_splits_a_type_into_parts(sandbox, tmp_path):
    pytest.importorskip("pyarrow")
    truth = sandbox.truth(level="group", group="g1", _type="Observation")
    with fhirbulk.export(sandbox.url(), group="g1", types=["Observation"]) as job:
        assert job.write_parquet(tmp_path, part_bytes=1, row_group_rows=20, batch_rows=20,
                                 threads=1, max_open_parts=1) == truth
    parts = layout(tmp_path)["Observation"]
    assert len(parts) > 1 and len(parts) == job.parquet_summary["types"]["Observation"]["parts"]
    assert parts == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    assert read_dataset(tmp_path, "Observation").num_rows == truth["Observation"]


def test_overwrite_refused_then_allowed(sandbox, tmp_path):
    g1 = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    g2 = sandbox.truth(level="group", group="g2", _type="Patient")
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        assert job.write_parquet(tmp_path) == g1
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    with fhirbulk.export(sandbox.url(), group="g2", types=["Patient"]) as job:
        with pytest.raises(FileExistsError, match="overwrite=True") as e:
            job.write_parquet(tmp_path)
        assert e.value.filename == str(tmp_path)
        # Nothing was touched, and the export was not consumed: it can still be written.
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")} == before
        assert job.write_parquet(tmp_path, overwrite=True) == g2
    # The old parts are gone, Observation's with them.
    assert sorted(layout(tmp_path)) == ["Patient"]
    if g2["Patient"]:
        pytest.importorskip("pyarrow")
        assert read_dataset(tmp_path, "Patient").num_rows == g2["Patient"]


def test_a_failed_write_leaves_no_part(sandbox, tmp_path):
    # long_line: each output file gets a Basic resource line (not of its file's type).
    out = tmp_path / "pq"
    with fhirbulk.export(sandbox.url("polls=0;long_line=300"), group="g1", types=TYPES) as job:
        with pytest.raises(fhirbulk.ProtocolError, match=r"file \d+ line \d+: .*Basic"):
            job.write_parquet(out)
    assert no_parts_left(out)


def wait_for_part_in_progress(directory: Path, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(directory.glob("*/.part-*.parquet.inprogress")):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_cancel_or_close_from_another_thread_leaves_no_part(sandbox, tmp_path, how):
    out = tmp_path / "pq"
    seen = []
    # One file at a time, each slow: parts are in progress for seconds.
    with fhirbulk.export(sandbox.url("polls=0;slow=400"), concurrency=1) as job:

        def stop():
            seen.append(wait_for_part_in_progress(out))
            getattr(job, how)()

        t = threading.Thread(target=stop)
        t.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(fhirbulk.ExportError, match="cancelled or closed") as e:
                # Small batches: parts open as the first files come.
                job.write_parquet(out, batch_rows=10)
        finally:
            t.join()
        assert time.monotonic() - t0 < 15
        assert e.value.name == "cancelled"
        assert job.cancelled or job.closed
    assert seen == [True], "no part in progress to cancel"
    assert no_parts_left(out)


CHILD = textwrap.dedent(
    """
    import json, sys, time
    import fhirbulk
    with fhirbulk.export(sys.argv[1], concurrency=1) as job:
        while job.checkpoint() is None:
            time.sleep(0.01)
        print(json.dumps({"status_url": job.checkpoint()["status_url"]}), flush=True)
        job.write_parquet(sys.argv[2], batch_rows=10)
    print("finished", flush=True)
    """
)


def test_ctrl_c_stops_the_write_promptly_and_leaves_no_part(sandbox, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "pq"
    proc = subprocess.Popen(
        [sys.executable, str(script), sandbox.url("polls=0;slow=400"), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status_url = json.loads(proc.stdout.readline())["status_url"]
        assert wait_for_part_in_progress(out), "no part in progress to interrupt"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err, err
    assert proc.returncode != 0
    assert elapsed < 5, elapsed
    assert no_parts_left(out), list(out.rglob("*"))
    assert sandbox.wait_for_delete(status_url, timeout=5), "no DELETE of the job after Ctrl-C"


# ---- arguments -------------------------------------------------------------------------------


def test_bad_options_name_the_keyword(tmp_path):
    with fhirbulk.export("http://127.0.0.1:9/fhir", retry_max_attempts=1) as job:
        cases = [
            (ValueError, "compression", {"compression": "gzip"}),
            (TypeError, "compression", {"compression": None}),
            (TypeError, "overwrite", {"overwrite": "yes"}),
            (ValueError, "threads", {"threads": 0}),
            (ValueError, "threads", {"threads": 5}),
            (TypeError, "threads", {"threads": 1.5}),
            (TypeError, "threads", {"threads": True}),
            (ValueError, "row_group_rows", {"row_group_rows": 0}),
            (ValueError, "part_bytes", {"part_bytes": -1}),
            (ValueError, "max_open_parts", {"max_open_parts": 2000}),
            (TypeError, "batch_rows", {"batch_rows": "10"}),
            (ValueError, "engine", {"engine": "spark"}),
            (TypeError, "use_dictionary", {"use_dictionary": False}),  # a ParquetWriter argument
            (TypeError, "threads", {"engine": "pyarrow", "threads": 2}),
            (TypeError, "directory", {}),
        ]
        for exc, word, kwargs in cases:
            directory = None if word == "directory" else tmp_path / "x"
            with pytest.raises(exc, match=word):
                job.write_parquet(directory, **kwargs)
        with pytest.raises(ValueError, match="directory"):
            job.write_parquet("")
        with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="compression"):
            job.write_parquet(tmp_path / "x", kinds=("output",), compression="zstd")
    assert not (tmp_path / "x").exists()
    with pytest.raises(fhirbulk.InvalidHandleError, match="closed"):
        job.write_parquet(tmp_path / "y")


def test_an_export_read_already_is_refused(sandbox, tmp_path):
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        next(iter(job))
        with pytest.raises(fhirbulk.InvalidArgumentError, match="read already"):
            job.write_parquet(tmp_path / "a")
    pytest.importorskip("pyarrow")
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        next(iter(job.arrow_batches(batch_rows=10)))
        with pytest.raises(fhirbulk.InvalidArgumentError, match="read already"):
            job.write_parquet(tmp_path / "b")
    assert no_parts_left(tmp_path / "a") and no_parts_left(tmp_path / "b")


# ---- the pyarrow engine ----------------------------------------------------------------------


def test_the_pyarrow_engine_writes_the_same_layout(sandbox, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    truth = sandbox.truth(level="group", group="g1", _type=",".join(TYPES))
    want = ndjson_resources(sandbox.url(), group="g1", types=TYPES)
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        written = job.write_parquet(tmp_path, engine="pyarrow", compression="gzip", batch_rows=40)
    assert written == truth
    assert layout(tmp_path) == {t: ["part-00000.parquet"] for t in truth}
    got = {}
    for t in truth:
        meta = pq.ParquetFile(tmp_path / t / "part-00000.parquet").metadata
        assert meta.row_group(0).column(0).compression == "GZIP"
        assert meta.num_row_groups >= -(-truth[t] // 40)
        table = read_dataset(tmp_path, t)
        assert table.schema.equals(fhirbulk.arrow_schema(t))
        got.update({f"{t}/{r['id']}": r for r in fhirbulk.rebuild_all(table)})
    assert got == want
    # The same directory rules.
    with fhirbulk.export(sandbox.url(), group="g1", types=TYPES) as job:
        with pytest.raises(FileExistsError):
            job.write_parquet(tmp_path, engine="pyarrow")
    with fhirbulk.export(sandbox.url("polls=0;long_line=300"), group="g1", types=TYPES) as job:
        with pytest.raises(fhirbulk.ProtocolError):
            job.write_parquet(tmp_path / "bad", engine="pyarrow")
    assert no_parts_left(tmp_path / "bad")


def test_write_parquet_kinds_is_deprecated(sandbox, tmp_path):
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow.parquet")
    truth = sandbox.truth(level="group", group="g2", _type="Patient")
    with fhirbulk.export(sandbox.url(), group="g2", types=["Patient"]) as job:
        with pytest.warns(DeprecationWarning, match="kinds"):
            written = job.write_parquet(tmp_path / "old", kinds=("output",))
    assert written == {"Patient.parquet": truth["Patient"]}
    assert os.listdir(tmp_path / "old") == ["Patient.parquet"]
