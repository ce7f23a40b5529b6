"""The typed keyword arguments: ExportOptions holds exactly the config keys the engine accepts,
and a type checker catches a misspelt option or a value of the wrong type."""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
import typing
from typing import Set

import pytest

import fhirbulk
from fhirbulk import _export
from fhirbulk._abi import ffi, lib

# export()'s parameters that are the binding's own, not config keys.
BINDING_PARAMETERS = {"group", "patient_level", "progress_bar", "batch_size", "loads"}


def engine_config_keys() -> Set[str]:
    """The keys the engine accepts, from the engine itself: its error for an unknown key lists
    them all ("unknown field `x`, expected one of `base_url`, `level`, ..."), so that neither
    this test nor ExportOptions is the only place that knows them."""
    out = ffi.new("FhirbulkExport **")
    config = b'{"base_url": "http://127.0.0.1:9/fhir", "zz_no_such_key": 1}'
    status = lib.export_start(config, out)
    assert status == lib.FHIRBULK_ERR_CONFIG, fhirbulk.status_name(status)
    message = _export._copy_text(lib.export_last_error, ffi.NULL)
    m = re.search(r"unknown field `zz_no_such_key`, expected one of (.*)", message)
    assert m, message
    keys = set(re.findall(r"`([^`]*)`", m.group(1)))
    assert {"base_url", "concurrency", "types"} <= keys, message
    return keys


def test_export_options_are_the_engine_config_keys():
    keys = engine_config_keys()
    typed = set(fhirbulk.ExportOptions.__annotations__)
    assert "base_url" not in typed  # export()'s first argument
    missing, unknown = keys - typed - {"base_url"}, typed - keys
    assert not missing, f"config keys the engine accepts that ExportOptions lacks: {sorted(missing)}"
    assert not unknown, f"ExportOptions keys the engine does not accept: {sorted(unknown)}"
    assert fhirbulk.ExportOptions.__optional_keys__ == frozenset(typed)  # total=False


@pytest.mark.parametrize("function", [fhirbulk.export, fhirbulk.build_config])
def test_every_config_key_is_a_parameter_or_a_typed_keyword(function):
    keys = engine_config_keys() - {"base_url"}
    params = inspect.signature(function).parameters
    explicit = {name for name, p in params.items() if p.kind is not p.VAR_KEYWORD} - {"base_url"}
    keywords = set(fhirbulk.ExportKeywords.__annotations__)
    # A key is either a parameter of its own or one of the typed **config keywords, never both
    # (PEP 692: a type checker refuses a TypedDict key that names a parameter).
    assert not explicit & keywords
    assert keys == (explicit & keys) | keywords
    assert explicit - keys <= BINDING_PARAMETERS, "a new parameter of export() that is no config key"
    assert explicit & keys == set(fhirbulk.ExportOptions.__annotations__) - keywords


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.Unpack is in typing from 3.11")
def test_the_annotations_resolve():
    # What editors and type checkers read must name real types (a typo in an annotation string
    # would otherwise only show in a type checker).
    hints = typing.get_type_hints(fhirbulk.ExportOptions)
    assert set(hints) == set(fhirbulk.ExportOptions.__annotations__)
    assert hints["concurrency"] == typing.Optional[int]
    assert hints["level"] == typing.Optional[typing.Literal["system", "patient", "group"]]
    for function in (fhirbulk.export, fhirbulk.build_config):
        h = typing.get_type_hints(function)
        assert h["config"] == typing.Unpack[fhirbulk.ExportKeywords]
        for name in ("level", "types", "since", "auth"):
            assert h[name] == hints[name], name


SNIPPET = '''\
import datetime as dt
import pathlib

import fhirbulk

url = "https://ehr.example.org/r4"
fhirbulk.export(url, group="g1", concurency=4)  # line 7: misspelt
fhirbulk.export(url, concurrency="4")  # line 8: a str for an int
fhirbulk.export(url, level="planet")  # line 9: not a level
fhirbulk.export(url, on_invalid_line="ignore")  # line 10: not a policy
fhirbulk.build_config(url, delete_on_cancle=False)  # line 11: misspelt
bad: fhirbulk.ExportOptions = {"typse": ["Patient"]}  # line 12: misspelt
fhirbulk.export(url, attachments="all")  # line 13: not an attachments mode

# All well-typed:
options: fhirbulk.ExportOptions = {"types": ["Patient"], "concurrency": 8, "level": "group",
                                   "group_id": "g1", "on_invalid_line": "skip"}
job = fhirbulk.export(url, **options)
fhirbulk.export(
    url, "g1", "Patient,Observation", dt.datetime(2024, 1, 1), "token",
    until=dt.date(2024, 6, 1), type_filters=["Observation?status=final"], elements="id",
    concurrency=8, retry_max_attempts=3, params={"vendor": ["a", "b"]}, headers={"X-A": "1"},
    ca_bundle=pathlib.Path("/etc/ca.pem"), resume=None, only_files=[0, 2], method="post",
    delete_on_cancel=False, progress_bar=True, batch_size=100,
    attachments="save", attachment_types=["DocumentReference"], attachment_content_types="text/*",
    attachment_max_bytes=1_000_000, attachment_dir="docs/",
)
for rec in job.records():
    info = rec.attachment
    size: int = len(rec.content or b"") + (info.size or 0 if info else 0)
    failed = rec.attachment_error
    reason: str = failed.message if failed else ""
fetched: int = job.progress.attachments_fetched + job.progress.attachment_errors
fhirbulk.build_config(url, patient_level=True, token_origins=["https://files.example.org"])
'''


def test_a_type_checker_catches_misspelt_options(tmp_path):
    mypy_api = pytest.importorskip("mypy.api", reason="mypy not installed (run-tests.sh tries to)")
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    stdout, stderr, status = mypy_api.run([
        str(path), "--no-error-summary", "--show-error-codes", "--no-incremental",
        "--cache-dir", str(tmp_path / "cache"), "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
    ])
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert status == 1 and lines == [7, 8, 9, 10, 11, 12, 13], textwrap.indent(stdout + stderr, "  ")
    text = "\n".join(errors)
    assert '"concurency"' in text and '"delete_on_cancle"' in text and '"typse"' in text, text
