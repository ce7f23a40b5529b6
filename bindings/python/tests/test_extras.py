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


class RecordingBar:
    """A progress bar of one's own (``progress_bar=`` takes any object with update() and
    set_postfix_str(), as a tqdm bar has) that records every state it was shown in."""

    def __init__(self) -> None:
        self.total = None
        self.n = 0
        self.postfix = ""
        self.history = []  # (postfix, total, n) at each update
        self.refreshed = self.closed = False

    def update(self, n=1):
        self.n += n
        self.history.append((self.postfix, self.total, self.n))

    def set_postfix_str(self, s="", refresh=True):
        self.postfix = s

    def refresh(self):
        self.refreshed = True

    def close(self):  # never called: the caller's bar stays open
        self.closed = True


PREPARING = "sandbox-preparing"  # the sandbox's X-Progress text (scenario key progress=)
# Three 202 answers with X-Progress, about 0.3 s apart: the bar sees the preparation.
PREPARED = f"polls=3;retry_after=0;progress={PREPARING}"


def test_progress_bar_total_from_the_manifest_counts(sandbox):
    truth = sandbox.truth(level="group", group="g2", _type=TYPES)
    bar = RecordingBar()
    with fhirbulk.export(sandbox.url(PREPARED), group="g2", types=TYPES, poll_min_ms=300,
                         progress_bar=bar) as job:
        n = sum(1 for _ in job.raw())
        files = job.files
    assert n == sum(truth.values()) and all("count" in f for f in files)
    assert bar.total == n and bar.n == n
    # While the server prepared: its X-Progress text and no total; from the first file on:
    # the files, never that text again.
    first = next(i for i, h in enumerate(bar.history) if not h[0].startswith(("kicking_off", "waiting")))
    before, after = bar.history[:first], bar.history[first:]
    assert (f"waiting ({PREPARING})", None, 0) in before, bar.history
    assert all(h[1] is None and h[0] in ("kicking_off", "waiting", f"waiting ({PREPARING})")
               for h in before), before
    assert all(PREPARING not in h[0] and " files " in h[0] for h in after), after
    # The total as soon as the manifest's files are listed, then for good.
    totals = [h[1] for h in after]
    assert totals[-1] == n and set(totals[totals.index(n):]) == {n}, after
    assert bar.postfix == f"done files {len(files)}/{len(files)}"
    assert bar.refreshed and not bar.closed  # the caller's bar: refreshed at the end, left open


def test_progress_bar_without_counts_has_no_total(sandbox):
    truth = sandbox.truth(level="group", group="g2", _type=TYPES)
    bar = RecordingBar()
    # bad_count=null: every output entry's count is null, i.e. not given (job.files keeps the
    # null as the manifest had it).
    with fhirbulk.export(sandbox.url("polls=0;bad_count=null"), group="g2", types=TYPES,
                         progress_bar=bar) as job:
        n = sum(1 for _ in job.raw())
        files = job.files
    assert n == sum(truth.values()) and files and all(f.get("count") is None for f in files)
    assert bar.total is None and bar.n == n
    assert bar.history and all(h[1] is None for h in bar.history)
    assert bar.postfix == f"done files {len(files)}/{len(files)}"


def test_progress_bar_total_counts_error_records(sandbox):
    # The record iterators hand out error records too: they are in the total.
    bar = RecordingBar()
    with fhirbulk.export(sandbox.url("polls=0;errors"), group="g2", types=TYPES,
                         progress_bar=bar) as job:
        kinds = [r.kind for r in job.records()]
        files = job.files
    assert "error" in kinds and any(f["kind"] == "error" for f in files)
    assert bar.total == len(kinds) == sum(f["count"] for f in files) == bar.n


def test_progress_bar_total_of_arrow_rows(sandbox):
    pytest.importorskip("pyarrow")
    # Arrow decodes output resources only: the total is their count.
    bar = RecordingBar()
    with fhirbulk.export(sandbox.url("polls=0;errors"), group="g2", types=TYPES,
                         progress_bar=bar) as job:
        rows = sum(t.num_rows for t in job.to_arrow().values())
        files = job.files
    assert bar.total == rows == sum(f["count"] for f in files if f["kind"] == "output") == bar.n


def test_progress_bar_refuses_what_is_no_bar(sandbox):
    before = fhirbulk.live_handles()
    with pytest.raises(TypeError, match="progress_bar must be True, False or a tqdm bar"):
        fhirbulk.export(sandbox.url(), group="g2", progress_bar="yes")
    assert fhirbulk.live_handles() == before


def test_tqdm_bar_total_and_text(sandbox):
    tqdm = pytest.importorskip("tqdm")
    import io

    truth = sandbox.truth(level="group", group="g2", _type=TYPES)
    out = io.StringIO()
    bar = tqdm.tqdm(file=out, mininterval=0, desc="export")
    with fhirbulk.export(sandbox.url(PREPARED), group="g2", types=TYPES, poll_min_ms=300,
                         progress_bar=bar) as job:
        n = sum(1 for _ in job.raw())
    bar.close()
    assert n == sum(truth.values())
    assert bar.total == n and bar.n == n
    assert PREPARING not in bar.postfix and bar.postfix.startswith("done files ")
    screens = [s for s in out.getvalue().split("\r") if s.strip()]
    assert any(f"waiting ({PREPARING})" in s for s in screens), screens  # shown while it prepared
    assert PREPARING not in screens[-1] and f"{n}/{n}" in screens[-1], screens[-1]
