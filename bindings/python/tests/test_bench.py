"""bench/python_bench.py (the Python part of the project's benchmark) on a tiny export, so that
the script keeps working: its JSON shape, and counts that match the local copy."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "bench" / "python_bench.py"
MODES = ("raw", "parsed", "local_lines", "local_json_loads")
FIELDS = ("records", "bytes", "seconds", "records_per_s", "cpu_seconds", "thread_cpu_seconds")

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason=f"no {SCRIPT} (not a source checkout)")


def load_bench():
    spec = importlib.util.spec_from_file_location("python_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local_copy(sandbox, tmp_path_factory):
    """The system-level export's NDJSON files, downloaded with plain urllib."""
    directory = tmp_path_factory.mktemp("bench-local")
    paths = load_bench().download(sandbox.url(), directory)
    assert len(paths) > 1
    return directory


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


def test_python_bench_prints_one_json_object(sandbox, local_copy):
    out = run_script("--base", sandbox.url(), "--local", str(local_copy), "--runs", "2",
                     "--batch-size", "64")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # stdout is exactly one JSON object
    assert set(result) == {*MODES, "parsed_vs_json_loads"}
    total = sum(sandbox.truth(level="system").values())
    assert 100 < total < 5000  # a tiny export
    size = sum(p.stat().st_size for p in local_copy.glob("*.ndjson"))
    for mode in MODES:
        m = result[mode]
        assert set(FIELDS) <= set(m), mode
        assert m["records"] == total and m["bytes"] == size, (mode, m)
        assert m["seconds"] > 0 and m["records_per_s"] > 0 and m["cpu_seconds"] >= 0
    assert result["raw"]["first_record_seconds"] <= result["raw"]["seconds"]
    assert result["parsed_vs_json_loads"] == pytest.approx(
        result["parsed"]["records_per_s"] / result["local_json_loads"]["records_per_s"], rel=1e-3)


def test_python_bench_fails_when_counts_differ(sandbox, local_copy, tmp_path):
    # A local copy that lacks a file: the export's counts no longer match it.
    files = sorted(local_copy.glob("*.ndjson"))
    for p in files[1:]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    out = run_script("--base", sandbox.url(), "--local", str(tmp_path))
    assert out.returncode == 1
    assert json.loads(out.stdout)["raw"]["records"] > json.loads(out.stdout)["local_lines"]["records"]
    assert "record counts differ" in out.stderr
    empty = run_script("--base", sandbox.url(), "--local", str(tmp_path / "none"))
    assert empty.returncode == 2 and "no *.ndjson files" in empty.stderr
