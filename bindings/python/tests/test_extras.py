"""Optional helpers: NDJSON files always; pandas / parquet / tqdm only when importable."""

from __future__ import annotations

import json
import warnings

import pytest

import fhirbulk

TYPES = "Patient,Observation,Condition"


def test_write_ndjson(sandbox, tmp_path):
    truth = sandbox.truth(level="group", group="g2", _type=TYPES)
    with fhirbulk.export(sandbox.url(), group="g2", types=TYPES) as job:
        written = job.write_ndjson(tmp_path / "out")
    assert written == {f"{t}.ndjson": n for t, n in truth.items() if n}
    for name, n in written.items():
        lines = (tmp_path / "out" / name).read_bytes().splitlines()
        assert len(lines) == n
        assert {json.loads(line)["resourceType"] for line in lines} == {name.split(".")[0]}


def test_to_pandas(sandbox):
    pd = pytest.importorskip("pandas")
    truth = sandbox.truth(level="group", group="g2", _type=TYPES)
    with fhirbulk.export(sandbox.url(), group="g2", types=TYPES) as job:
        frames = job.to_pandas()
    assert {t: len(df) for t, df in frames.items()} == {t: n for t, n in truth.items() if n}
    assert all(isinstance(df, pd.DataFrame) for df in frames.values())
    # On Arrow (see test_arrow.py): the type's schema as columns, one row per resource.
    assert frames["Patient"]["id"].is_unique
    assert "id" in frames["Observation"].columns and "_remainder" in frames["Observation"].columns


def test_write_parquet(sandbox, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    truth = sandbox.truth(level="group", group="g2", _type=TYPES)
    with fhirbulk.export(sandbox.url(), group="g2", types=TYPES) as job:
        written = job.write_parquet(tmp_path / "pq")
    assert written == {t: n for t, n in truth.items() if n}
    df = pd.read_parquet(tmp_path / "pq" / "Observation")  # the type's dataset directory
    assert len(df) == truth["Observation"] and df["id"].is_unique


def test_progress_bar(sandbox):
    try:
        import tqdm  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="tqdm"):
            job = fhirbulk.export(sandbox.url(), group="g2", types=["Patient"], progress_bar=True)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            job = fhirbulk.export(sandbox.url(), group="g2", types=["Patient"], progress_bar=True)
    with job:
        n = sum(1 for _ in job.raw())
    assert n == sandbox.truth(level="group", group="g2", _type="Patient")["Patient"]
