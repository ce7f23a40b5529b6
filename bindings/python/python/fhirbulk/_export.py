"""The export object: a thin, idiomatic wrapper over the fhirbulk C ABI.

All the work (kick-off, polling, downloads, retries, auth) happens in the native library on
background threads.  This module only pulls records in batches of up to ``batch_size`` with
``export_next_batch`` and turns each batch into Python objects with a few C-level calls: raw
lines with one ``struct`` unpack, parsed resources with one pass of ``json``'s C scanner.
"""

from __future__ import annotations

import collections
import datetime as _dt
import difflib
import itertools
import json
import os
import re
import struct
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from operator import length_hint
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Collection,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
    TypedDict,
    Union,
)

from ._abi import ffi, lib
from ._arrow import DEFAULT_ARROW_BATCH_ROWS, DEFAULT_PARQUET_BATCH_ROWS
from ._errors import ConfigError, ExportError, error_from_parts

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import polars
    import pyarrow

# ``**config: Unpack[ExportKeywords]`` types the keyword arguments for editors and type checkers
# (PEP 692).  typing has Unpack from Python 3.11 on; before that it is in typing_extensions,
# which is not a dependency of this package and need not be one: the annotations here are never
# evaluated at run time (``from __future__ import annotations``), and every type checker ships
# typing_extensions' stubs, so it is imported only while type checking.  The runtime
# dependencies stay cffi alone.
if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Unpack

#: Records pulled per ``export_next_batch`` call.
DEFAULT_BATCH_SIZE = 4096
#: A blocked pull returns to Python this often, so Ctrl-C is delivered promptly.
WAIT_SLICE_MS = 200

_OK = lib.FHIRBULK_OK
_RECORD = lib.FHIRBULK_RECORD
_END = lib.FHIRBULK_END
_TIMEOUT = lib.FHIRBULK_TIMEOUT
_CANCELLED = lib.FHIRBULK_CANCELLED
_INVALID_HANDLE = lib.FHIRBULK_ERR_INVALID_HANDLE

_STATES = {
    lib.FHIRBULK_STATE_KICKING_OFF: "kicking_off",
    lib.FHIRBULK_STATE_WAITING: "waiting",
    lib.FHIRBULK_STATE_DOWNLOADING: "downloading",
    lib.FHIRBULK_STATE_DONE: "done",
    lib.FHIRBULK_STATE_FAILED: "failed",
    lib.FHIRBULK_STATE_CANCELLED: "cancelled",
}
_KINDS = {
    lib.FHIRBULK_KIND_OUTPUT: "output",
    lib.FHIRBULK_KIND_ERROR: "error",
    lib.FHIRBULK_KIND_DELETED: "deleted",
    lib.FHIRBULK_KIND_ATTACHMENT: "attachment",
}
_KIND_ATTACHMENT = lib.FHIRBULK_KIND_ATTACHMENT
#: The extension an attachment's error record (an OperationOutcome) carries.
ATTACHMENT_ERROR_EXTENSION = "https://fhirbulk.dev/fhir/StructureDefinition/attachment-error"

# Handles alive in this process (started and not yet freed); see live_handles().
_live_lock = threading.Lock()
_live = 0


def live_handles() -> int:
    """How many native export handles are alive (started and not yet freed) in this process."""
    return _live


def _free_handle(free: Callable[[Any], int], handle: Any) -> None:
    # Runs once per handle: from close(), from the garbage collector, or at interpreter exit.
    global _live
    free(handle)
    with _live_lock:
        _live -= 1


def status_name(status: int) -> str:
    """The library's stable name of a status code ("record", "not_found", ...)."""
    return ffi.string(lib.fhirbulk_status_name(status)).decode("ascii", "replace")


def set_max_downloads(n: int) -> None:
    """Cap the files downloading at once over all exports of the process (0: the default, 32).

    The exports of a process share the engine's threads: at most 8 control threads, one timer
    for the exports waiting between polls (a waiting export holds no thread) and at most
    ``n`` download threads. Each export still downloads at most its ``concurrency`` files at
    once.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > 0xFFFFFFFF:
        raise ValueError(f"set_max_downloads: n must be an int from 0 to 2**32-1, not {n!r}")
    lib.fhirbulk_set_max_downloads(n)


def library_version() -> str:
    """The version of the bundled native library."""
    return ffi.string(lib.fhirbulk_version()).decode("ascii", "replace")


def _copy_text(fn: Callable[[Any, Any, int], int], handle: Any) -> str:
    """Call an snprintf-style text getter, growing the buffer until the text fits."""
    size = 4096
    while True:
        buf = ffi.new("char[]", size)
        n = fn(handle, buf, size)
        if n < size:
            return ffi.buffer(buf, n)[:].decode("utf-8", "replace")
        size = n + 1  # it grew (or was larger than the first guess): ask again


def _error(status: int, handle: Any = ffi.NULL) -> ExportError:
    """The exception for ``status`` from the library's last error (the handle's, else this
    thread's), read with its structured calls (``export_error_*``): no JSON is parsed."""
    name = status_name(status)
    code = int(lib.export_error_code(handle))
    if code != status:
        return error_from_parts(status, name, f"fhirbulk: {name} (status {status})")

    def issue_field(i: int, field: int) -> str:
        return _copy_text(lambda h, buf, n: lib.export_error_issue(h, i, field, buf, n), handle)

    issues: List[Dict[str, str]] = []
    for i in range(min(int(lib.export_error_issue_count(handle)), 1000)):
        issue = {
            "severity": issue_field(i, lib.FHIRBULK_ISSUE_SEVERITY),
            "code": issue_field(i, lib.FHIRBULK_ISSUE_CODE),
        }
        for key, field in (("diagnostics", lib.FHIRBULK_ISSUE_DIAGNOSTICS), ("details", lib.FHIRBULK_ISSUE_DETAILS)):
            text = issue_field(i, field)
            if text:
                issue[key] = text
        issues.append(issue)
    return error_from_parts(
        status,
        name,
        _copy_text(lib.export_error_message, handle),
        http_status=int(lib.export_error_http_status(handle)) or None,
        url=_copy_text(lib.export_error_url, handle) or None,
        issues=issues,
    )


# --------------------------------------------------------------------------------------------
# Config


def _instant(value: Union[str, _dt.datetime, _dt.date]) -> str:
    """A FHIR instant. Naive datetimes are taken as local time; dates as midnight UTC."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.astimezone()  # local time, made explicit
        return value.isoformat()
    if isinstance(value, _dt.date):
        return f"{value.isoformat()}T00:00:00Z"
    return value


def _plain(value: Any) -> Any:
    """Make a config value JSON-serialisable: paths to str, datetimes to instants, tuples to lists."""
    if isinstance(value, (_dt.datetime, _dt.date)):
        return _instant(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def _str_list(name: str, value: Union[str, Iterable[str]]) -> List[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [str(v) for v in value]
    except TypeError:
        raise ConfigError(f"invalid config: '{name}' must be a string or a list of strings") from None


# The engine's config keys as typed keyword arguments (README "Config keys"; src/config.rs).
# tests/test_typing.py checks that these keys are exactly the ones the engine accepts.

#: ``level``: which ``$export`` operation is kicked off.
Level = Literal["system", "patient", "group"]
#: A FHIR instant (``"2024-01-01T00:00:00Z"``) or a datetime (naive: local time) or a date
#: (midnight UTC).
Instant = Union[str, _dt.datetime, _dt.date]
#: A list of strings, or one comma-separated string.
StrList = Union[str, Collection[str]]


class ExportKeywords(TypedDict, total=False):
    """The engine config keys that :func:`export` and :func:`build_config` take as ``**config``
    keyword arguments: every key of the README's config table but ``base_url``, ``level``,
    ``types``, ``since`` and ``auth``, which are parameters of their own (see
    :class:`ExportOptions` for all of them).  A ``None`` value leaves the key out (the engine's
    default applies).  Unknown keys and values of the wrong type raise :class:`ConfigError`
    at run time too."""

    group_id: Optional[str]
    """The Group id (``level="group"``); the same as ``group=``."""
    output_format: Optional[str]
    """``_outputFormat``, e.g. ``"application/fhir+ndjson"``."""
    until: Optional[Instant]
    """``_until`` (Bulk Data v3): a FHIR instant or a datetime."""
    elements: Optional[StrList]
    """``_elements``."""
    type_filters: Optional[StrList]
    """``_typeFilter`` queries such as ``"Observation?status=final"`` (one string: one query)."""
    include_associated_data: Optional[StrList]
    """``includeAssociatedData`` values."""
    organize_output_by: Optional[str]
    """``organizeOutputBy`` (v3), e.g. ``"Patient"``."""
    allow_partial_manifests: Optional[bool]
    """``allowPartialManifests`` (v3): files listed while the job still runs are downloaded at
    once.  Default False."""
    patients: Optional[StrList]
    """``patient`` references (``"Patient/123"`` or ``"123"``); forces POST."""
    method: Optional[Literal["auto", "get", "post"]]
    """How the kick-off is sent: ``"auto"`` (default: GET, POST when ``patients`` is given),
    ``"get"`` or ``"post"`` (a FHIR ``Parameters`` body)."""
    lenient: Optional[bool]
    """Send ``Prefer: handling=lenient``.  Default False."""
    separate_export_status: Optional[bool]
    """Ask for v3 ``separate-export-status`` (job status in ``X-Export-Status``).  Default False."""
    params: Optional[Mapping[str, Union[str, Sequence[str]]]]
    """Kick-off parameters the engine does not know (vendor parameters): ``{"name": "value"}``
    or ``{"name": ["v1", "v2"]}`` (repeated).  Names the engine sends itself are refused."""
    headers: Optional[Mapping[str, str]]
    """Extra headers sent on every request to the FHIR server (not to other hosts)."""
    token_origins: Optional[StrList]
    """Origins (``"https://files.example.org"``) besides the FHIR server's that may receive the
    access token for file downloads."""
    allow_insecure_http: Optional[bool]
    """Allow plain ``http://`` to hosts that are not loopback (and redirects from https to
    http).  Default False: the Bulk Data IG requires TLS."""
    ca_bundle: Optional[Union[str, "os.PathLike[str]"]]
    """PEM file of extra CA certificates trusted besides the system store."""
    client_cert: Optional[Union[str, "os.PathLike[str]"]]
    """PEM file with a client certificate chain and private key (mutual TLS)."""
    concurrency: Optional[int]
    """Files downloaded at once, 1-64.  Default 4."""
    buffer_chunks: Optional[int]
    """Chunks of records buffered between the downloaders and the consumer (bounds memory).
    Default 16."""
    chunk_bytes: Optional[int]
    """Target size of one chunk of lines.  Default 65536."""
    max_line_bytes: Optional[int]
    """A longer NDJSON line is invalid (see ``on_invalid_line``).  Default 64 MiB."""
    connect_timeout_ms: Optional[int]
    """TCP/TLS connect timeout.  Default 10000."""
    request_timeout_ms: Optional[int]
    """Timeout of kick-off, status, manifest-page and DELETE requests.  Default 60000."""
    read_timeout_ms: Optional[int]
    """A file download receiving nothing for this long is stalled and resumed.  Default 120000."""
    min_bytes_per_s: Optional[int]
    """A file download receiving less than this over ``stall_window_ms`` is stalled and resumed;
    0 turns the check off.  Default 1024."""
    stall_window_ms: Optional[int]
    """The window of ``min_bytes_per_s``.  Default 60000."""
    poll_min_ms: Optional[int]
    """Shortest wait between status polls.  Default 1000."""
    poll_max_ms: Optional[int]
    """Longest wait between status polls; a larger ``Retry-After`` is clamped to it.
    Default 600000."""
    poll_backoff_max_ms: Optional[int]
    """Cap of the backoff between polls when the server sends no ``Retry-After``.  Default 30000."""
    retry_max_attempts: Optional[int]
    """Attempts per request (the first included) on retryable failures (429, 503, other 5xx,
    connection errors, timeouts, broken transfers).  Default 6."""
    retry_max_wait_ms: Optional[int]
    """Total time one request may spend waiting between its attempts.  Default 600000."""
    retry_backoff_min_ms: Optional[int]
    """First backoff step when the server sends no ``Retry-After``.  Default 500."""
    retry_backoff_max_ms: Optional[int]
    """Cap of the backoff between attempts.  Default 30000."""
    on_invalid_line: Optional[Literal["fail", "skip"]]
    """An NDJSON line that is not a JSON object: ``"fail"`` the export (default), or ``"skip"``
    it and deliver an error record (an OperationOutcome naming file and line) in its place."""
    validate_json: Optional[bool]
    """Parse every line fully in the download threads instead of the cheap shape check.
    Default False."""
    resume: Optional[Union[Mapping[str, Any], str]]
    """A checkpoint (:meth:`Export.checkpoint`) to continue from: no new kick-off, no record
    delivered twice."""
    resume_files: Optional[Union[Sequence[Mapping[str, Any]], str]]
    """The file list of the export ``resume`` continues (:attr:`Export.files`, or a string of
    its JSON or NDJSON); without it the manifest is fetched again."""
    only_files: Optional[Collection[int]]
    """With ``resume``: read only these files of the checkpoint's export (their indexes in
    :attr:`Export.files`)."""
    manifest_only: Optional[bool]
    """Take the manifest and download nothing: the export ends (done, no records) once the
    whole manifest arrived.  Default False."""
    delete_on_cancel: Optional[bool]
    """DELETE the server's job when the export is cancelled or freed unfinished.  Default True."""
    delete_on_complete: Optional[bool]
    """DELETE the server's job after a completed export, so it can free the files.
    Default False."""
    event_queue_size: Optional[int]
    """Events kept for :meth:`Export.events`; when nobody reads them the oldest are dropped
    (counted in :attr:`Export.events_dropped`).  0 turns events off.  Default 1000."""
    read_capability_statement: Optional[bool]
    """Read the server's CapabilityStatement before the kick-off, for the ``capability``
    event (its software and FHIR version).  Never fatal.  Default False."""
    attachments: Optional[Literal["none", "inline", "save"]]
    """The documents the attachments of ``attachment_types`` link by ``url``:
    ``"none"`` (default) leaves the records as the server wrote them; ``"inline"`` fetches
    each and delivers the record with it in ``attachment.data`` (base64), ``size`` and
    ``hash`` filled; ``"save"`` delivers each document as a record of kind ``"attachment"``
    (:attr:`Record.content`, :attr:`Record.attachment`) before the record that links it
    (right before it in its file's order), whose ``url`` becomes ``attachment_dir`` + the
    file name.  A document that cannot be fetched gives an error record
    (:attr:`Record.attachment_error`) in that place, its record unchanged."""
    attachment_types: Optional[StrList]
    """The resource types whose attachments are resolved.  Default
    ``["DocumentReference", "DiagnosticReport"]``."""
    attachment_content_types: Optional[StrList]
    """Only documents of these media types are fetched (``"application/pdf"``,
    ``"text/*"``); empty (default): all."""
    attachment_max_bytes: Optional[int]
    """A larger document is not fetched (an error record says so).  Default 16 MiB."""
    attachment_dir: Optional[str]
    """``"save"``: the relative directory written into the rewritten URLs, ending in ``/``.
    Default ``"attachments/"``."""


class ExportOptions(ExportKeywords, total=False):
    """Every engine config key but ``base_url``, typed: the keyword arguments of
    :func:`export` and :func:`build_config` (``level``, ``types``, ``since`` and ``auth`` are
    their own parameters there; the rest is :class:`ExportKeywords`).  Annotate a dict of
    options with it to have them checked, then pass it on::

        options: fhirbulk.ExportOptions = {"types": ["Patient"], "concurrency": 8}
        fhirbulk.export(url, **options)

    The keys are those of the README's config table; a test keeps them equal to the keys the
    engine accepts."""

    level: Optional[Level]
    """``"system"`` (``[base]/$export``, the default), ``"patient"`` (``Patient/$export``) or
    ``"group"`` (``Group/[id]/$export``); inferred from ``group`` / ``patient_level``."""
    types: Optional[Union[str, Iterable[str]]]
    """``_type``: resource types, a list or one comma-separated string."""
    since: Optional[Instant]
    """``_since``: a FHIR instant or a datetime."""
    auth: Optional[Union[str, Mapping[str, Any]]]
    """A bearer token (a string), or the README's ``auth`` object (SMART Backend Services:
    ``{"type": "client_credentials", "client_id": ..., "private_key": {"file": ...}}``)."""


def build_config(
    base_url: str,
    *,
    group: Optional[str] = None,
    types: Optional[Union[str, Iterable[str]]] = None,
    since: Optional[Instant] = None,
    auth: Optional[Union[str, Mapping[str, Any]]] = None,
    level: Optional[Level] = None,
    patient_level: bool = False,
    **config: Unpack[ExportKeywords],
) -> Dict[str, Any]:
    """The JSON config (a dict) that :func:`export` hands to the library.

    ``level`` is inferred when not given: ``group`` given -> ``"group"``,
    ``patient_level=True`` -> ``"patient"``, otherwise the library's default ``"system"``.
    ``auth`` may be a string (a static bearer token) or the README's ``auth`` object.
    ``since`` / ``until`` may be datetimes.  Other keyword arguments are config keys of the
    README's table (typed: :class:`ExportKeywords`), passed through unchanged (``None`` values
    are left out), so an unknown key fails with :class:`ConfigError` naming it.
    """
    cfg: Dict[str, Any] = {"base_url": base_url}
    if level is None:
        if group is not None or config.get("group_id") is not None:
            level = "group"
        elif patient_level:
            level = "patient"
    elif patient_level and level != "patient":
        raise ConfigError(f"invalid config: patient_level=True conflicts with level={level!r}")
    if level is not None:
        cfg["level"] = level
    if group is not None:
        if config.get("group_id") not in (None, group):
            raise ConfigError("invalid config: 'group' and 'group_id' disagree")
        cfg["group_id"] = group
    if types is not None:
        cfg["types"] = _str_list("types", types)
    if since is not None:
        cfg["since"] = _instant(since)
    if auth is not None:
        cfg["auth"] = {"type": "bearer", "token": auth} if isinstance(auth, str) else dict(auth)
    for key, value in config.items():
        if value is not None:
            cfg[key] = value
    for key in (
        "elements", "type_filters", "include_associated_data", "patients", "token_origins",
        "attachment_types", "attachment_content_types",
    ):
        if isinstance(cfg.get(key), str):
            cfg[key] = [cfg[key]] if key in ("type_filters",) else _str_list(key, cfg[key])
    return _plain(cfg)


_UNKNOWN_KEY = re.compile(r"unknown field `([^`]*)`, expected one of (.*?)(?: at line \d+ column \d+)?$")
_BAD_TYPE = re.compile(r"^(?:invalid config: )?([\w.\[\]]+): invalid type: (.*?), expected (.*?)(?: at line \d+ column \d+)?$")
_BAD_VARIANT = re.compile(r"^(?:invalid config: )?([\w.\[\]]+): unknown variant `([^`]*)`, expected (.*?)(?: at line \d+ column \d+)?$")
_PY_TYPES = {
    "usize": "an int", "u64": "an int", "u32": "an int", "u16": "an int", "i64": "an int",
    "a boolean": "a bool (True or False)", "a string": "a str", "a sequence": "a list of str",
    "a map": "a dict",
}


def _in_python_terms(e: ConfigError) -> ConfigError:
    """The library's config error for keyword arguments: the option named as the keyword, the
    nearest known name for a misspelt one, Python type names, no positions in the JSON this
    module wrote."""
    msg = e.message
    m = _UNKNOWN_KEY.search(msg)
    if m:
        known = re.findall(r"`([^`]*)`", m.group(2))
        near = difflib.get_close_matches(m.group(1), known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        text = (
            f"invalid config: unknown option {m.group(1)!r}{hint}; the options are the README's "
            "config keys (fhirbulk.ExportOptions)"
        )
        return ConfigError(text, code=e.code, name=e.name)
    m = _BAD_VARIANT.match(msg)
    if m:
        key, got, want = m.groups()
        names = [repr(n) for n in re.findall(r"`([^`]*)`", want)]
        choices = (", ".join(names[:-1]) + " or " + names[-1]) if len(names) > 1 else (names or [want])[0]
        text = f"invalid config: option {key!r} must be {choices}, not {got!r}"
        return ConfigError(text, code=e.code, name=e.name)
    m = _BAD_TYPE.match(msg)
    if m:
        key, got, want = m.groups()
        want = _PY_TYPES.get(want, want)
        got = re.sub(r'^string "(.*)"$', r"the str '\1'", got)
        got = re.sub(r"^integer `(.*)`$", r"the int \1", got)
        got = re.sub(r"^boolean `(.*)`$", r"the bool \1", got).replace("`true`", "True").replace("`false`", "False")
        text = f"invalid config: option {key!r} must be {want}, not {got}"
        return ConfigError(text, code=e.code, name=e.name)
    cleaned = re.sub(r" at line \d+ column \d+$", "", msg)
    if cleaned != msg:
        return ConfigError(cleaned, code=e.code, name=e.name)
    return e


# --------------------------------------------------------------------------------------------
# Progress, records


@dataclass(frozen=True)
class Progress:
    """A snapshot of an export's progress (``export_poll``)."""

    #: "kicking_off", "waiting" (the server prepares the files), "downloading", "done"
    #: (every file downloaded; records may still wait to be pulled), "failed", "cancelled".
    state: str
    #: The server's last ``X-Progress`` text, if any.
    server_progress: Optional[str]
    files_total: int
    files_done: int
    #: NDJSON bytes received (after decompression).
    bytes: int
    #: Records handed out by the iteration so far.
    records: int
    #: Status requests made.
    polls: int
    #: Attempts repeated after retryable failures.
    retries: int
    #: Invalid lines skipped (``on_invalid_line="skip"``).
    invalid_lines: int
    #: The failure's status name ("not_found", ...) once ``state == "failed"``, else None.
    error: Optional[str]
    #: The failure's status code (0 when none).
    error_code: int
    #: HTTP status of the failed response, if any.
    http_status: Optional[int]
    #: Warnings so far (see :attr:`Export.warnings`).
    warnings: int = 0
    #: While the export waits more than 2 s (a Retry-After, a backoff, between status
    #: polls): when the wait ends (Unix time in seconds), else None.
    wait_until: Optional[float] = None
    #: What that wait is for (what the server answered), else None.
    wait_reason: Optional[str] = None
    #: Documents fetched for attachments (``attachments="inline"`` or ``"save"``).
    attachments_fetched: int = 0
    #: Attachments that could not be fetched, each delivered as an error record.
    attachment_errors: int = 0

    @property
    def finished(self) -> bool:
        """True once the export is done, failed or cancelled."""
        return self.state in ("done", "failed", "cancelled")


@dataclass(frozen=True)
class Event:
    """One event of an export (:meth:`Export.events`; README, "Events"): what the engine did,
    when.  URLs are without their query; no token, secret or record is ever in an event."""

    #: 1 for the export's first event, then one more each (a gap: events were dropped).
    seq: int
    #: When it happened (UTC, millisecond precision).
    time: _dt.datetime
    #: "kickoff", "status", "manifest", "file_started", "file_completed", "retry", "token",
    #: "warning", ..., and last "completed", "failed" or "cancelled".
    type: str
    #: The type's fields, e.g. ``index``, ``url``, ``lines`` and ``bytes`` of ``file_completed``.
    fields: Dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def to_dict(self) -> Dict[str, Any]:
        """The event as the library gave it: ``{"seq", "time", "type", **fields}``."""
        return {"seq": self.seq, "time": self.time.isoformat().replace("+00:00", "Z"), "type": self.type, **self.fields}

    @classmethod
    def _parse(cls, text: str) -> "Event":
        d = json.loads(text)
        seq = int(d.pop("seq", 0))
        t = str(d.pop("time", "1970-01-01T00:00:00Z"))
        time = _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        return cls(seq, time, str(d.pop("type", "")), d)


@dataclass(frozen=True)
class Attachment:
    """A document fetched for an attachment (``attachments="save"``): the description an
    ``"attachment"`` record carries (:attr:`Record.attachment`); its bytes are
    :attr:`Record.content`."""

    #: The resource that links it, ``"DocumentReference/123"``.
    resource: str
    #: Its position among that record's attachments (from 0).
    position: int
    #: Where in the record, ``"content[0].attachment"``.
    path: str
    #: The URL it was fetched from (without its query).
    url: str
    #: Its media type, e.g. ``"application/pdf"``, if known.
    content_type: Optional[str]
    #: Its length in bytes.
    size: Optional[int]
    #: Its SHA-1, base64 (as FHIR's ``Attachment.hash``).
    hash: Optional[str]
    #: The relative path the record's ``url`` now names (``attachment_dir`` + file name),
    #: ``"attachments/DocumentReference.123.0.pdf"``: where to store :attr:`Record.content`.
    file: Optional[str]
    #: The description's other fields, if any.
    extra: Dict[str, Any]

    @classmethod
    def _parse(cls, d: Mapping[str, Any]) -> "Attachment":
        d = dict(d)

        def opt_int(v: Any) -> Optional[int]:
            return v if isinstance(v, int) and not isinstance(v, bool) else None

        def opt_str(v: Any) -> Optional[str]:
            return v if isinstance(v, str) else None

        return cls(
            resource=str(d.pop("resource", "")),
            position=opt_int(d.pop("position", 0)) or 0,
            path=str(d.pop("path", "")),
            url=str(d.pop("url", "")),
            content_type=opt_str(d.pop("contentType", None)),
            size=opt_int(d.pop("size", None)),
            hash=opt_str(d.pop("hash", None)),
            file=opt_str(d.pop("file", None)),
            extra=d,
        )


@dataclass(frozen=True)
class AttachmentError:
    """An attachment that could not be fetched (missing, forbidden, a server error, a hash
    or size that does not match, larger than ``attachment_max_bytes``, ...): what its error
    record (an OperationOutcome) says (:attr:`Record.attachment_error`)."""

    #: The resource that links it, ``"DocumentReference/123"``.
    resource: str
    #: Its position among that record's attachments (from 0).
    position: int
    #: Where in the record, ``"content[0].attachment"``.
    path: str
    #: The URL it was to be fetched from (without its query).
    url: str
    #: Why, the issue's ``diagnostics``.
    message: str
    #: The issue's ``code`` (``"not-found"``, ``"forbidden"``, ``"too-costly"``, ...).
    code: Optional[str]
    #: The HTTP status of the failed response, if any.
    http_status: Optional[int]

    @classmethod
    def _parse(cls, outcome: Any) -> Optional["AttachmentError"]:
        if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
            return None
        ext = next(
            (
                e for e in outcome.get("extension") or ()
                if isinstance(e, dict) and e.get("url") == ATTACHMENT_ERROR_EXTENSION
            ),
            None,
        )
        if ext is None:
            return None
        parts: Dict[str, Any] = {}
        for sub in ext.get("extension") or ():
            if isinstance(sub, dict) and isinstance(sub.get("url"), str):
                value = next((v for k, v in sub.items() if k.startswith("value")), None)
                parts[sub["url"]] = value
        issues = outcome.get("issue") or [{}]
        issue = issues[0] if isinstance(issues[0], dict) else {}
        details = issue.get("details")
        text = details.get("text") if isinstance(details, dict) else None
        m = re.match(r"HTTP (\d{3})$", text) if isinstance(text, str) else None
        position = parts.get("position")
        return cls(
            resource=str(parts.get("resource") or ""),
            position=position if isinstance(position, int) and not isinstance(position, bool) else 0,
            path=str(parts.get("path") or ""),
            url=str(parts.get("url") or ""),
            message=str(issue.get("diagnostics") or ""),
            code=issue.get("code") if isinstance(issue.get("code"), str) else None,
            http_status=int(m.group(1)) if m else None,
        )


class Record:
    """One record with where it came from (from :meth:`Export.records`)."""

    __slots__ = ("kind", "resource_type", "file_index", "line", "raw", "content")

    def __init__(
        self,
        kind: str,
        resource_type: str,
        file_index: int,
        line: int,
        raw: bytes,
        content: Optional[bytes] = None,
    ) -> None:
        #: "output", "error" (an OperationOutcome from an error file, or for an attachment
        #: that could not be fetched), "deleted", or "attachment" (a document, with
        #: ``attachments="save"``).
        self.kind = kind
        #: The manifest's type for the file (or the line's own resourceType); an attachment:
        #: that of the record that links it.
        self.resource_type = resource_type
        #: Index into :attr:`Export.files` (an attachment: of the record that links it).
        self.file_index = file_index
        #: 1-based line number in that file (an attachment: of the record that links it).
        self.line = line
        #: The JSON text, without the newline (an attachment: its description).
        self.raw = raw
        #: An attachment record's document, its bytes (a copy: it outlives the native batch);
        #: None for every other kind.
        self.content = content

    def json(self) -> Dict[str, Any]:
        """The parsed resource (an attachment record: its description as the library wrote
        it, see :attr:`attachment`)."""
        return json.loads(self.raw)

    @property
    def attachment(self) -> Optional[Attachment]:
        """An attachment record's description (resource, position, path, url, content type,
        size, hash, file), else None."""
        if self.kind != "attachment":
            return None
        return Attachment._parse(json.loads(self.raw))

    @property
    def attachment_error(self) -> Optional[AttachmentError]:
        """For the error record of an attachment that could not be fetched: which one and
        why; None for every other record."""
        if self.kind != "error" or ATTACHMENT_ERROR_EXTENSION.encode() not in self.raw:
            return None
        try:
            return AttachmentError._parse(json.loads(self.raw))
        except ValueError:
            return None

    def __repr__(self) -> str:
        content = "" if self.content is None else f", content=<{len(self.content)} bytes>"
        return (
            f"Record(kind={self.kind!r}, resource_type={self.resource_type!r}, "
            f"file_index={self.file_index}, line={self.line}, raw=<{len(self.raw)} bytes>{content})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# Reading a batch

# FhirbulkRecord as machine words: a batch's records array, read through a memoryview cast to
# 64-bit ("Q") or 32-bit ("I") words, gives a field of every record as one strided slice.
_REC_SIZE: int = ffi.sizeof("FhirbulkRecord")
_REC_FIELDS = dict(ffi.typeof("FhirbulkRecord").fields)


def _field(name: str, width: int) -> Optional[Tuple[int, int]]:
    """(first word, stride) of a record field in words of ``width`` bytes, or None."""
    f = _REC_FIELDS[name]
    if f.offset % width or _REC_SIZE % width or ffi.sizeof(f.type) != width:
        return None  # pragma: no cover - not on any platform the header supports
    return f.offset // width, _REC_SIZE // width


_F_LEN = _field("len", 8)
_F_TYPE = _field("resource_type", 8)
_F_KIND = _field("kind", 4)
_F_FILE = _field("file_index", 4)
_F_LINE = _field("line", 8)


def _words(records: Any, count: int, width: int) -> memoryview:
    """The batch's records array (native memory) as words of ``width`` bytes."""
    return memoryview(ffi.buffer(records, count * _REC_SIZE)).cast("Q" if width == 8 else "I")


def _column(words: memoryview, field: Optional[Tuple[int, int]]) -> List[int]:
    assert field is not None
    first, stride = field
    return words[first::stride].tolist()


def _split_lines(data: Any, records: Any, count: int) -> Optional[Tuple[bytes, ...]]:
    """The batch's ``count`` records as bytes (without their newlines), in one struct unpack.

    ``data`` is the batch buffer (each record followed by a newline), ``records`` the record
    views, which give every record's length.  ``bytes.split`` would look for the newlines
    with a byte-by-byte loop (CPython does not use memchr there), which cost more than all
    the rest the binding does per record; the lengths are known, so a ``struct`` format
    ``b"<len>sx<len>sx..."`` cuts the buffer into bytes objects directly, with no copy of the
    whole buffer first.  None when the buffer is not exactly those records and newlines
    (never expected).
    """
    if _F_LEN is None:  # pragma: no cover
        return None
    lens = _column(_words(records, count, 8), _F_LEN)
    n = len(data)
    if sum(lens) + count != n or data[n - 1 : n] != b"\n":
        return None
    return struct.Struct(b"%dsx" * count % tuple(lens)).unpack_from(data)


# The C scanner behind json.loads' default decoder (an attribute typeshed does not list).
_scan_once: Callable[[str, int], Any] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _parse_batch(data: Any, count: int) -> Optional[List[Any]]:
    """Parse a batch buffer (``count`` JSON texts, each followed by a newline) in one pass.

    ``data`` is ``bytes`` or any buffer (the native batch buffer, decoded without a copy to
    ``bytes`` first).  Gives exactly what ``[json.loads(line) for line in lines]`` gives,
    about 10-20% faster (no Python-level call per record), or None whenever that is not
    certain (a line that does not hold exactly one JSON value, invalid UTF-8, ...), so that
    the caller falls back to ``json.loads`` line by line and its errors.
    """
    try:
        text = str(data, "utf-8")
    except UnicodeDecodeError:
        return None
    out: List[Any] = []
    append = out.append
    scan = _scan_once
    pos, end_of_text = 0, len(text)
    try:
        while pos < end_of_text:
            obj, end = scan(text, pos)
            if text[end] != "\n":  # trailing text or whitespace on the line: let json.loads judge
                return None
            append(obj)
            pos = end + 1
    except (StopIteration, ValueError, IndexError, RecursionError):
        return None
    return out if len(out) == count else None


# --------------------------------------------------------------------------------------------
# The export


class Export:
    """A running bulk export: iterate it for records; use it as a context manager.

    Create it with :func:`fhirbulk.export`.  Iterating gives parsed resources (dicts);
    :meth:`raw` gives the lines as bytes, :meth:`records` :class:`Record` objects.  All three
    read one stream: each record is handed out once, and a loop left with ``break`` can be
    continued by a new loop.  Leaving the ``with`` block, :meth:`close`, Ctrl-C during a pull,
    or dropping the last reference cancel an unfinished export (the library then DELETEs the
    server's job unless ``delete_on_cancel=False``) and free the native handle.

    Not thread-safe for iteration (one consuming thread at a time); :meth:`cancel`,
    :attr:`progress`, :attr:`manifest` and :attr:`files` may be used from any thread.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress_bar: Union[bool, ProgressBar] = False,
        loads: Optional[Callable[[Union[str, bytes]], Any]] = None,
    ) -> None:
        global _live
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be a positive integer")
        # Checked before the export starts.  Never bool() a bar: tqdm's raises without a total.
        if not (progress_bar is None or isinstance(progress_bar, bool) or _is_bar(progress_bar)):
            raise TypeError(
                "progress_bar must be True, False or a tqdm bar (an object with update() and "
                f"set_postfix_str()), not {type(progress_bar).__name__}"
            )
        self._batch_size = batch_size
        self._loads = loads or json.loads
        self._closed = False
        self._end: Optional[str] = None  # "end" | "cancelled" | "failed" once the stream ended
        self._final: Dict[str, Any] = {}  # snapshots kept when the handle is freed
        try:
            text = json.dumps(_plain(dict(config)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"invalid config: not JSON-serialisable: {e}") from None
        out = ffi.new("FhirbulkExport **")
        status = lib.export_start(text.encode("utf-8"), out)
        if status != _OK:
            err = _error(status)
            if isinstance(err, ConfigError):
                err = _in_python_terms(err)
            raise err from None
        self._h = out[0]
        with _live_lock:
            _live += 1
        # Frees the handle exactly once: close(), garbage collection, or interpreter exit.
        self._finalizer = weakref.finalize(self, _free_handle, lib.export_free, self._h)
        self._batch = ffi.new("FhirbulkBatch *")
        # The pending records of the last batch: an iterator over its records in one of
        # three forms (_kind): "bytes" lines, "text" lines, or "obj" parsed resources.  Every
        # loop over the export reads it, so nothing is repeated or lost between loops; the
        # position in the batch is always count - length_hint(_it).
        self._it: Iterator[Any] = iter(())
        self._kind = "bytes"
        self._gen = 0  # bumped whenever self._it is replaced
        self._count = 0  # records in the last batch
        # The last batch's lines as bytes, made when needed from the native batch (self._batch),
        # which stays valid until the next pull or until close(), which empties these.
        self._blines: Optional[Sequence[bytes]] = None
        self._types: Dict[int, str] = {}
        self._consumer: Optional[int] = None  # the thread that last pulled a batch
        self._parquet: Optional[Dict[str, Any]] = None  # the summary of write_parquet
        self._arrow_pulled = False  # Arrow batches or a stream were taken
        # The progress bar: a tqdm bar this export made (closed at the end) or the caller's
        # (driven, left open).  Its total is the manifest's record counts, see _bar_total.
        self._bar: Any = None
        self._bar_owned = False
        self._bar_rows_only = False  # Arrow and Parquet count output rows only
        self._bar_files_seen = 0  # files read with export_files_json_from so far
        self._bar_counts: Dict[str, int] = {}  # kind -> sum of its files' counts
        self._bar_uncounted: Set[str] = set()  # kinds with a file that has no count
        self._attachment_mode = config.get("attachments") or "none"
        if progress_bar is True:
            self._bar, self._bar_owned = _make_bar(), True
        elif progress_bar is not None and progress_bar is not False:
            self._bar = progress_bar
        # Counts cannot be matched against what a resumed export delivers (records before the
        # checkpoint do not come again), and a manifest_only export delivers none.
        self._bar_sets_total = (
            self._bar is not None
            and getattr(self._bar, "total", None) is None
            and not config.get("resume")
            and not config.get("manifest_only")
        )

    # ---- context manager and lifetime ------------------------------------------------------

    def __enter__(self) -> "Export":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the export if it is unfinished, and free the native handle. Idempotent.
        A loop over the export ends at its next record."""
        if self._closed:
            return
        self._closed = True
        # An unfinished export is cancelled (the library DELETEs the server's job unless
        # delete_on_cancel=False; export_free would do the same).  Snapshots of the progress,
        # manifest and files stay readable after the handle is gone.
        lib.export_cancel(self._h)  # no effect on an export that ended
        try:
            self._final = {
                "progress": self._poll(),
                "manifest": self._manifest(),
                "files": self._files(),
                "warnings": self._warnings(),
            }
        except Exception:  # pragma: no cover - snapshots are best effort
            pass
        self._close_bar()  # its last state, while the handle lives
        self._finalizer()  # export_free: joins the threads once the DELETE was sent
        if self._end is None:
            # Left before the end of the stream: "cancelled", or "closed" when every file
            # had already been downloaded (nothing was cancelled on the server).
            state = self._final.get("progress", _FINISHED).state
            self._end = "cancelled" if state == "cancelled" else "closed"
        # A loop over the export ends at its next record (the loop holds the pending records'
        # iterator), and nothing may read the native batch any more: it went with the handle.
        collections.deque(self._it, maxlen=0)
        self._it, self._count, self._blines = iter(()), 0, ()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the ``with`` block was left)."""
        return self._closed

    def cancel(self) -> None:
        """Cancel the export: stop downloads, DELETE the server's job (unless
        ``delete_on_cancel=False``) and wake a blocked pull, which then ends the iteration.
        Any thread; no effect once the export ended.  A loop over the export ends at its next
        record: records already pulled but not yet handed out are dropped."""
        if not self._closed:
            lib.export_cancel(self._h)
            if (
                self._end is None
                and self._consumer == threading.get_ident()
                and self._poll().state == "cancelled"
            ):
                # Called from the iterating thread (e.g. in the loop body): drop the rest of
                # the pulled batch.  From another thread, the loop ends after that batch.
                collections.deque(self._it, maxlen=0)

    @property
    def cancelled(self) -> bool:
        """True when the export was cancelled (:meth:`cancel`, Ctrl-C, leaving ``with`` early)."""
        return self.progress.state == "cancelled"

    # ---- iteration -------------------------------------------------------------------------

    def _check_open(self) -> None:
        """Like a closed file: iterating a closed export raises instead of giving no record."""
        if self._closed:
            raise ValueError(
                f"fhirbulk: iteration over a closed export ({self._end or 'closed'}): iterate inside "
                "its with block, before close(); start a new export (or resume its checkpoint) "
                "to read it again"
            )

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        """The resources, parsed (``json.loads``, or the ``loads`` given to :func:`export`).

        Raises ValueError once the export is closed (after its ``with`` block or
        :meth:`close`), as a closed file does."""
        self._check_open()
        if self._loads is json.loads:
            # Each batch is parsed in one pass with json's C scanner (see _parse_batch).
            return itertools.chain.from_iterable(self._stream("obj"))
        return map(self._loads, itertools.chain.from_iterable(self._stream("text")))

    def raw(self) -> Iterator[bytes]:
        """The NDJSON lines as ``bytes`` (no newline): the fastest way through an export."""
        self._check_open()
        return itertools.chain.from_iterable(self._stream("bytes"))

    def records(self) -> Iterator[Record]:
        """:class:`Record` objects: kind, resource type, file index, line number and raw bytes
        (and, for the documents of ``attachments="save"``, :attr:`Record.content`: the only
        form that gives their bytes; the other two forms give their descriptions only)."""
        self._check_open()
        return itertools.chain.from_iterable(self._stream("records"))

    def _stream(self, want: str) -> Iterator[Iterator[Any]]:
        # Yields the pending records; itertools.chain drains them at C speed and then asks
        # for more, which is when the next batch is pulled.
        try:
            while True:
                gen = self._gen
                if want == "records":
                    yield self._pending_records()
                else:
                    yield self._pending(want)
                # Another loop over this export may have replaced the pending records meanwhile
                # (a new batch, or the rest of one in another form): hand those out first.
                if self._gen == gen and not self._pull("bytes" if want == "records" else want):
                    return
        except KeyboardInterrupt:
            self._interrupted()
            raise

    def _byte_lines(self) -> Sequence[bytes]:
        """The last batch's records as bytes lines (made once, when first needed)."""
        if self._blines is None:
            batch, count = self._batch, self._count
            data = ffi.buffer(batch.data, batch.data_len)
            lines: Optional[Sequence[bytes]] = _split_lines(data, batch.records, count)
            if lines is None:  # never expected; use the per-record views
                recs = batch.records
                lines = [ffi.buffer(recs[i].data, recs[i].len)[:] for i in range(count)]
            self._blines = lines
        return self._blines

    def _pending(self, want: str) -> Iterator[Any]:
        """The pending records in the form ``want`` ("bytes", "text" or "obj")."""
        kind = self._kind
        if want == kind:
            return self._it
        if want == "obj":
            return map(json.loads, self._it)  # parsed lazily; the cursor stays in self._it
        remaining = length_hint(self._it)
        collections.deque(self._it, maxlen=0)
        rest: Sequence[Any] = self._byte_lines()[self._count - remaining :] if remaining else ()
        if want == "text":
            try:
                rest = [b.decode("utf-8") for b in rest]
            except UnicodeDecodeError:
                want = "bytes"  # json.loads reports the bad line itself
        self._it = iter(rest)
        self._kind = want
        self._gen += 1
        return self._it

    def _pending_records(self) -> Iterator[Record]:
        it = self._pending("bytes")
        remaining = length_hint(it)
        if not remaining:
            return it
        # Read the metadata of the pending records now, while the native batch is valid (the
        # loop body may close the export): one strided slice per field.
        count = self._count
        recs = self._batch.records
        if None in (_F_TYPE, _F_KIND, _F_FILE, _F_LINE):  # pragma: no cover - 32-bit
            rows = [recs[i] for i in range(count - remaining, count)]
            ptrs = [int(ffi.cast("uintptr_t", r.resource_type)) for r in rows]
            kinds = [r.kind for r in rows]
            files = [r.file_index for r in rows]
            lines = [r.line for r in rows]
        else:
            w8, w4 = _words(recs, count, 8), _words(recs, count, 4)
            skip = count - remaining
            ptrs = _column(w8, _F_TYPE)[skip:]
            kinds = _column(w4, _F_KIND)[skip:]
            files = _column(w4, _F_FILE)[skip:]
            lines = _column(w8, _F_LINE)[skip:]
        types = self._types
        for p in set(ptrs):
            if p not in types:
                r = recs[count - remaining + ptrs.index(p)]
                types[p] = ffi.string(r.resource_type, r.resource_type_len).decode("utf-8", "replace")
        kind_names = [_KINDS.get(k, str(k)) for k in kinds]
        type_names = [types[p] for p in ptrs]
        if _KIND_ATTACHMENT not in kinds:
            return map(Record, kind_names, type_names, files, lines, it)
        # Documents (attachments="save"): their bytes are copied now, while the native batch
        # is valid; every other record has none.
        skip = count - remaining
        contents: List[Optional[bytes]] = [
            ffi.buffer(recs[skip + i].content, recs[skip + i].content_len)[:]
            if k == _KIND_ATTACHMENT and recs[skip + i].content != ffi.NULL
            else (b"" if k == _KIND_ATTACHMENT else None)
            for i, k in enumerate(kinds)
        ]
        return map(Record, kind_names, type_names, files, lines, it, contents)

    def _pull(self, want: str) -> bool:
        """Pull the next batch into the pending records; False at the end of the stream."""
        if self._end is not None:
            return False
        if self._closed:
            self._end = "cancelled"
            return False
        h, batch, size = self._h, self._batch, self._batch_size
        self._consumer = threading.get_ident()
        while True:
            status = lib.export_next_batch(h, size, WAIT_SLICE_MS, batch)
            if status == _RECORD:
                break
            if status == _TIMEOUT:
                if self._bar is not None:
                    self._update_bar(0)
                continue
            if status == _END:
                self._end = "end"
            elif status == _CANCELLED or (status == _INVALID_HANDLE and self._closed):
                self._end = "cancelled"
            else:
                self._end = "failed"
                self._close_bar()
                raise _error(status, h)
            self._close_bar()
            return False
        count = batch.count
        data = ffi.buffer(batch.data, batch.data_len)  # native memory, valid until the next pull
        self._count, self._blines, self._types = count, None, {}
        items: Optional[Sequence[Any]] = None
        kind = want
        if want == "obj":
            items = _parse_batch(data, count)
            if items is None:
                kind = "text"  # parse line by line: json.loads then reports any bad line
        if kind == "text":
            try:
                texts = str(data, "utf-8").split("\n")
                if texts and not texts[-1]:
                    texts.pop()
                if len(texts) != count:
                    texts = [b.decode("utf-8") for b in self._byte_lines()]
                items = texts
            except UnicodeDecodeError:
                kind = "bytes"
        if kind == "bytes":
            items = self._byte_lines()
        self._it = iter(items or ())
        self._kind = kind
        self._gen += 1
        if self._bar is not None:
            self._update_bar(count)
        return True

    def _interrupted(self) -> None:
        # Ctrl-C during a pull: cancel (the library DELETEs the server's job) and free now,
        # so that the process can exit at once with the server told.
        try:
            self.cancel()
            self.close()
        except Exception:  # pragma: no cover - never mask the KeyboardInterrupt
            pass

    # ---- state -----------------------------------------------------------------------------

    def _poll(self) -> Progress:
        p = ffi.new("FhirbulkProgress *")
        status = lib.export_poll(self._h, p)
        if status != _OK:
            raise _error(status)
        text = ffi.string(p.server_progress).decode("utf-8", "replace")
        return Progress(
            state=_STATES.get(p.state, str(p.state)),
            server_progress=text or None,
            files_total=p.files_total,
            files_done=p.files_done,
            bytes=p.bytes_downloaded,
            # The library counts a batch when it hands it over; count what the loop got.
            records=max(0, p.records_delivered - length_hint(self._it)),
            polls=p.polls,
            retries=p.retries,
            invalid_lines=p.invalid_lines,
            error=status_name(p.error) if p.error else None,
            error_code=p.error,
            http_status=p.http_status or None,
            warnings=p.warnings,
            wait_until=p.wait_until_ms / 1000.0 if p.wait_until_ms else None,
            wait_reason=ffi.string(p.wait_reason).decode("utf-8", "replace") or None,
            attachments_fetched=p.attachments_fetched,
            attachment_errors=p.attachment_errors,
        )

    @property
    def progress(self) -> Progress:
        """A :class:`Progress` snapshot (never blocks; any thread)."""
        if self._closed:
            return self._final.get("progress", _FINISHED)
        return self._poll()

    def _manifest(self) -> Optional[Dict[str, Any]]:
        text = _copy_text(lib.export_manifest, self._h)
        return json.loads(text) if text else None

    @property
    def manifest(self) -> Optional[Dict[str, Any]]:
        """The manifest (pages merged) once the server sent it, else None.  Its
        ``transactionTime`` is the ``since`` of the next incremental export."""
        if self._closed:
            return self._final.get("manifest")
        return self._manifest()

    def _warnings(self) -> List[str]:
        text = _copy_text(lib.export_warnings_json, self._h)
        return json.loads(text) if text else []

    @property
    def warnings(self) -> List[str]:
        """What the engine noticed and worked around, oldest first (at most 100): a manifest
        listing a file twice, a ``count`` that is not a number, a ``Retry-After`` clamped, a
        ``transactionTime`` that is not an instant, ..."""
        if self._closed:
            return list(self._final.get("warnings", []))
        return self._warnings()

    def events(self, timeout: Optional[float] = 0.0) -> Iterator[Event]:
        """The export's events (README, "Events"), oldest first: the kick-off, status polls,
        the manifest, each file started and completed, retries, tokens (never their value),
        warnings, and last how it ended (``completed``, ``failed`` or ``cancelled``).

        Each next event is waited for up to ``timeout`` seconds: the default 0 gives the events
        there are now (between records, say); ``None`` waits until the export's last event (on
        a thread of its own, while another iterates the records).  Any thread; each event goes
        to one reader.  The engine keeps the latest ``event_queue_size`` (default 1000) and
        drops the oldest when nobody reads them (:attr:`events_dropped`); the export never
        waits for its events."""
        ms = -1 if timeout is None else max(0, min(int(timeout * 1000), 0x7FFFFFFF))
        size = 4096
        while True:
            if self._closed:
                raise ValueError("events of a closed export")
            buf = ffi.new("char[]", size)
            out_len = ffi.new("size_t *")
            status = lib.export_next_event(self._h, ms, buf, size, out_len)
            if status == lib.FHIRBULK_RECORD:
                yield Event._parse(ffi.buffer(buf, out_len[0])[:].decode("utf-8", "replace"))
            elif status == lib.FHIRBULK_ERR_INVALID_ARGUMENT and out_len[0] >= size:
                size = out_len[0] + 1  # the event stays queued: again with room for it
            elif status in (lib.FHIRBULK_END, lib.FHIRBULK_TIMEOUT):
                return
            else:
                raise _error(status)

    @property
    def events_dropped(self) -> int:
        """Events the engine dropped because nobody read them in time."""
        if self._closed:
            return 0
        return int(lib.export_events_dropped(self._h))

    def _files(self) -> List[Dict[str, Any]]:
        text = _copy_text(lib.export_files_json, self._h)
        return json.loads(text) if text else []

    @property
    def files(self) -> List[Dict[str, Any]]:
        """The files known so far, in file-index order: dicts with index, kind, type, url, count."""
        if self._closed:
            return list(self._final.get("files", []))
        return self._files()

    def checkpoint(self) -> Optional[Dict[str, Any]]:
        """What has been received so far, as a dict to store with the records you processed;
        pass it later as ``resume=`` to continue without a new kick-off and without a repeated
        record.  Take it between records, on the iterating thread.  None before the kick-off
        was answered or after :meth:`close`."""
        if self._closed:
            return None
        # This binding hands a batch's records out one by one: the records of the last batch
        # not yet handed out must not count as received.
        pending = length_hint(self._it) if self._count else 0
        text = _copy_text(
            lambda h, buf, n: lib.export_checkpoint_unread(h, pending, buf, n), self._h
        )
        if not text:
            return None
        return json.loads(text)

    def __repr__(self) -> str:
        if self._closed:
            return f"<fhirbulk.Export closed ({self._end})>"
        p = self._poll()
        return f"<fhirbulk.Export {p.state} files {p.files_done}/{p.files_total} records {p.records}>"

    # ---- Arrow: typed tables (pyarrow, polars, pandas imported lazily) ---------------------

    def arrow_batches(
        self, resource_type: Optional[str] = None, *, batch_rows: int = DEFAULT_ARROW_BATCH_ROWS
    ) -> "Union[Iterator[Tuple[str, pyarrow.RecordBatch]], Iterator[pyarrow.RecordBatch]]":
        """The rest of the export's output resources as ``pyarrow.RecordBatch`` objects
        decoded by the native library, imported without a copy.  Needs pyarrow.

        ``resource_type=None``: ``(type, batch)`` pairs, each batch of one type with at most
        ``batch_rows`` rows, in the order they fill (``export_next_arrow_batch``); memory is
        one filling batch per type.  With a type: that type's batches only, from its Arrow C
        stream (``export_arrow_stream``); the batches of *other* types that come meanwhile are
        held in memory for their own streams, so export only the types you read
        (``types=[...]``) or read all with ``resource_type=None``.

        Every batch has the schema :func:`fhirbulk.arrow_schema` gives for its type;
        :func:`fhirbulk.rebuild` turns a row back into its resource.  Error and deleted records
        are not decoded (read them with :meth:`records` on another export).  Records read as
        Arrow are not seen by the record iterators (``for r in job``, :meth:`raw`,
        :meth:`records`), and the reverse: read one export one way.  The first Arrow call's
        ``batch_rows`` applies to the rest of the export.  :meth:`checkpoint` counts records
        the library decoded, including rows of batches still filling: resume from checkpoints
        only with the record iterators.  Ctrl-C during a wait cancels and frees the export,
        as for the record iterators; :meth:`cancel` or :meth:`close` end the loop.
        """
        from ._arrow import arrow_batches

        return arrow_batches(self, resource_type, batch_rows)

    def arrow_reader(
        self, resource_type: str, *, batch_rows: int = DEFAULT_ARROW_BATCH_ROWS
    ) -> "pyarrow.RecordBatchReader":
        """One resource type's batches as a ``pyarrow.RecordBatchReader`` over the library's
        Arrow C stream (``export_arrow_stream``), for DuckDB
        (``duckdb.sql("select count(*) from reader")``), Polars (``pl.from_arrow(reader)``),
        ``reader.read_all()``, ...  Needs pyarrow.

        The reader owns the stream and reads it on whatever thread the consumer uses; a read
        waits for the export without returning to Python, so Ctrl-C is delivered only when a
        batch (or the end) comes; :meth:`cancel` from another thread ends the wait with an
        error.  After :meth:`close` the reader stays safe: reading it raises an error saying
        the export was freed.  The notes of :meth:`arrow_batches` apply (other types' batches
        are held; records read as Arrow are not seen by the record iterators)."""
        from ._arrow import arrow_reader

        return arrow_reader(self, resource_type, batch_rows)

    def to_arrow(
        self, resource_type: Optional[str] = None, *, batch_rows: int = DEFAULT_ARROW_BATCH_ROWS
    ) -> "Union[pyarrow.Table, Dict[str, pyarrow.Table]]":
        """The rest of the export as ``pyarrow.Table``: for one ``resource_type`` its table
        (with its schema even when it had no rows), else ``{type: Table}`` for the types that
        had rows.  Needs pyarrow.  See :meth:`arrow_batches`."""
        from ._arrow import to_arrow

        return to_arrow(self, resource_type, batch_rows)

    def to_polars(
        self, resource_type: Optional[str] = None, *, batch_rows: int = DEFAULT_ARROW_BATCH_ROWS
    ) -> "Union[polars.DataFrame, Dict[str, polars.DataFrame]]":
        """:meth:`to_arrow` as ``polars.DataFrame`` (one, or ``{type: DataFrame}``); nested
        elements are Polars structs and lists.  Needs polars and pyarrow."""
        from ._arrow import to_polars

        return to_polars(self, resource_type, batch_rows)

    def to_pandas(
        self,
        resource_type: Optional[str] = None,
        *,
        kinds: Optional[Sequence[str]] = None,
        batch_rows: int = DEFAULT_ARROW_BATCH_ROWS,
        **to_pandas_kwargs: Any,
    ) -> "Union[pandas.DataFrame, Dict[str, pandas.DataFrame]]":
        """:meth:`to_arrow` as pandas: ``table.to_pandas(**to_pandas_kwargs)`` (one DataFrame,
        or ``{type: DataFrame}``).  Columns are the schema's top-level elements; nested
        elements are dicts and lists, decimals their exact text; pass
        ``types_mapper=pandas.ArrowDtype`` for Arrow-backed columns.  Needs pandas and pyarrow.

        ``kinds=(...)`` selects the old JSON path instead: ``pandas.json_normalize`` of the
        records of those kinds (``"output"``, ``"error"``, ``"deleted"``), flat dotted columns,
        ``{type: DataFrame}`` (or one type's DataFrame), the whole export parsed into Python
        dicts first.  It is the only table path that includes error and deleted records."""
        if kinds is not None:
            if to_pandas_kwargs:
                raise TypeError("to_pandas(kinds=...) takes no to_pandas keyword arguments")
            from ._extras import to_pandas_json

            frames = to_pandas_json(self, kinds=kinds)
            if resource_type is None:
                return frames
            if resource_type in frames:
                return frames[resource_type]
            import pandas as pd

            return pd.DataFrame()
        from ._arrow import to_pandas

        return to_pandas(self, resource_type, batch_rows, **to_pandas_kwargs)

    def write_parquet(
        self,
        directory: Union[str, "os.PathLike[str]"],
        *,
        compression: str = "snappy",
        overwrite: bool = False,
        threads: Optional[int] = None,
        row_group_rows: Optional[int] = None,
        part_bytes: Optional[int] = None,
        max_open_parts: Optional[int] = None,
        batch_rows: Optional[int] = None,
        engine: str = "native",
        kinds: Optional[Sequence[str]] = None,
        **writer_kwargs: Any,
    ) -> Dict[str, int]:
        """Write the export's output resources as a Parquet dataset, one table per resource
        type: ``<directory>/<Type>/part-<n>.parquet``, in the Arrow schema of
        :func:`fhirbulk.arrow_schema` (nested structs and lists; schema and field metadata
        kept, so :func:`fhirbulk.rebuild` works on what pyarrow reads back).  Returns rows per
        resource type, sorted by type.  Error and deleted records are not written
        (:attr:`parquet_summary` counts them as ``skipped``).

        Read a type back with ``pandas.read_parquet(f"{directory}/Patient")``,
        ``pyarrow.dataset.dataset(f"{directory}/Patient")``,
        ``polars.read_parquet(f"{directory}/Patient/*.parquet")`` or DuckDB's
        ``read_parquet('{directory}/Patient/*.parquet')``.

        ``engine="native"`` (the default): the library's own writer (``export_write_parquet``)
        decodes and encodes on up to ``threads`` (1-4, default the cores) threads of its own
        with bounded memory (a few open parts and a filling batch per type and thread), and
        needs no pyarrow.  ``compression``: ``"snappy"``, ``"zstd"`` or ``"none"``;
        ``row_group_rows`` (65536), ``part_bytes`` (512 MiB: a part is closed at that size and
        the next begun), ``max_open_parts`` (per thread, 4), ``batch_rows`` (2048): the
        library's defaults when None.

        ``engine="pyarrow"`` writes the same layout (one part per type) with
        ``pyarrow.parquet.ParquetWriter`` from :meth:`arrow_batches`, one row group per batch
        of ``batch_rows`` (8192), ``compression`` and ``writer_kwargs`` passed to the writer
        (``compression="gzip"``, ``compression_level=...``, ``use_dictionary=...``): for the
        options only pyarrow has, or a libfhirbulk built without its Parquet writer
        (:func:`fhirbulk.has_parquet`).  It was the only route before the native writer and
        stays because it is small (the same directory rules on :meth:`arrow_batches`), but it
        needs pyarrow, encodes on the Python thread and takes more memory (2.6 s and 310 MB
        against 1.9 s and 250 MB for 100k records in the README's measurement): use the native
        engine otherwise.

        A directory that holds parts already raises :class:`FileExistsError` unless
        ``overwrite=True``, which removes them first.  Parts are written as
        ``.part-<n>.parquet.inprogress`` and renamed when closed, and a write that fails, is
        cancelled (:meth:`cancel`, :meth:`close` from another thread: :class:`ExportError`
        named ``"cancelled"``) or interrupted (Ctrl-C cancels and frees the export, as in the
        record loops) leaves no part: a dataset that is there is complete.  Read an export one
        way: records already read with the iterators or as Arrow would be missing, so that is
        refused.  Bad options raise TypeError or ValueError naming the keyword.

        Deprecated: ``kinds=(...)`` writes the old way (the whole export through pandas
        ``json_normalize`` into memory, ``<directory>/<Type>.parquet``, nested lists as JSON
        text) and returns rows per file name."""
        if kinds is not None:
            warnings.warn(
                "write_parquet(kinds=...) is deprecated: it reads the whole export into memory "
                "through pandas.json_normalize; write_parquet(directory) writes typed Parquet "
                "datasets (output resources only) in the native library",
                DeprecationWarning,
                stacklevel=2,
            )
            given = [
                name
                for name, value, default in (
                    ("compression", compression, "snappy"),
                    ("overwrite", overwrite, False),
                    ("threads", threads, None),
                    ("row_group_rows", row_group_rows, None),
                    ("part_bytes", part_bytes, None),
                    ("max_open_parts", max_open_parts, None),
                    ("batch_rows", batch_rows, None),
                    ("engine", engine, "native"),
                )
                if value != default
            ] + sorted(writer_kwargs)
            if given:
                raise TypeError(f"write_parquet(kinds=...) takes no other options: {', '.join(given)}")
            from ._extras import write_parquet_json

            return write_parquet_json(self, directory, kinds=kinds)
        if engine == "native":
            if writer_kwargs:
                raise TypeError(
                    "write_parquet() got unexpected keyword argument(s) "
                    f"{', '.join(map(repr, sorted(writer_kwargs)))} (ParquetWriter arguments "
                    "need engine='pyarrow')"
                )
            from ._parquet import native_options, write_native

            options = native_options(
                compression=compression,
                overwrite=overwrite,
                threads=threads,
                row_group_rows=row_group_rows,
                part_bytes=part_bytes,
                max_open_parts=max_open_parts,
                batch_rows=batch_rows,
            )
            return write_native(self, directory, options)
        if engine == "pyarrow":
            native_only = [
                name
                for name, value in (
                    ("threads", threads),
                    ("row_group_rows", row_group_rows),
                    ("part_bytes", part_bytes),
                    ("max_open_parts", max_open_parts),
                )
                if value is not None
            ]
            if native_only:
                raise TypeError(
                    f"write_parquet(engine='pyarrow') takes no {', '.join(native_only)} "
                    "(options of engine='native')"
                )
            from ._arrow import _rows
            from ._parquet import write_pyarrow

            rows = DEFAULT_PARQUET_BATCH_ROWS if batch_rows is None else _rows(batch_rows)
            return write_pyarrow(
                self, directory, overwrite=overwrite, batch_rows=rows,
                compression=compression, **writer_kwargs,
            )
        raise ValueError(f"write_parquet: engine must be 'native' or 'pyarrow', not {engine!r}")

    @property
    def parquet_summary(self) -> Optional[Dict[str, Any]]:
        """What the last native :meth:`write_parquet` wrote, once it completed:
        ``{"types": {"Patient": {"parts": 1, "rows": 300}, ...}, "skipped": N}`` (``skipped``:
        error, deleted and attachment records, which are not written), else None."""
        return self._parquet

    def _parquet_tick(self) -> Callable[[], None]:
        """Moves the progress bar by the records the library took since the last tick."""
        self._bar_rows_only = True  # the bar's total: output records (only they are written)
        last = [0]

        def tick() -> None:
            try:
                n = self._poll().records
            except Exception:  # pragma: no cover - a progress bar must never break the export
                return
            self._update_bar(max(0, n - last[0]))
            last[0] = max(last[0], n)

        return tick

    # ---- other extras ------------------------------------------------------------------------

    def write_ndjson(self, directory: Union[str, "os.PathLike[str]"]) -> Dict[str, int]:
        """Write the rest of the export to ``<directory>/<Type>.ndjson`` (error records to
        ``<Type>.error.ndjson``, deletions to ``<Type>.deleted.ndjson``); returns records per
        file name.  With ``attachments="save"`` each document is written to
        ``<directory>/<file>`` (``attachments/DocumentReference.123.0.pdf``), the relative URL
        its record now names, so the directory is a self-contained export."""
        from ._extras import write_ndjson

        return write_ndjson(self, directory)

    # ---- progress bar ------------------------------------------------------------------------

    def _update_bar(self, n: int) -> None:
        """Moves the bar by ``n`` records and shows the export's state: while the server
        prepares the files (``kicking_off``, ``waiting``), its ``X-Progress`` text; from then on
        the files done, and a total once the manifest gave counts (see :meth:`_bar_total`)."""
        bar = self._bar
        try:
            p = self._poll()
            if self._bar_sets_total and p.state not in ("kicking_off", "waiting"):
                total = self._bar_total(p.files_total)
                if total is not None and not (self._bar_rows_only or self._arrow_pulled):
                    # Records the manifest does not count: the documents (save) and the error
                    # records of attachments that could not be fetched, known as they come.
                    total += p.attachment_errors
                    if self._attachment_mode == "save":
                        total += p.attachments_fetched
                if total != bar.total:
                    bar.total = total
            bar.set_postfix_str(_bar_postfix(p), refresh=False)
            bar.update(n)
        except Exception:  # pragma: no cover - a progress bar must never break the export
            pass

    def _bar_total(self, files_total: int) -> Optional[int]:
        """The records the manifest announces (its files' ``count``), or None unless every file
        the bar counts has one: output and error and deleted files for the record iterators,
        output files for Arrow and Parquet (``count`` is a hint: a bar may end off its total).
        Reads only the files not seen before (``export_files_json_from``), so following a large
        paged manifest costs its new files only."""
        if files_total > self._bar_files_seen:
            start = self._bar_files_seen
            text = _copy_text(lambda h, buf, n: lib.export_files_json_from(h, start, buf, n), self._h)
            for line in text.splitlines():
                if not line.strip():
                    continue
                f = json.loads(line)
                kind, count = f.get("kind", "output"), f.get("count")
                if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
                    self._bar_counts[kind] = self._bar_counts.get(kind, 0) + count
                else:
                    self._bar_uncounted.add(kind)
                self._bar_files_seen += 1
        kinds = ("output",) if self._bar_rows_only or self._arrow_pulled else ("output", "error", "deleted")
        if self._bar_uncounted.intersection(kinds) or not any(k in self._bar_counts for k in kinds):
            return None
        return sum(self._bar_counts.get(k, 0) for k in kinds)

    def _close_bar(self) -> None:
        """The bar's last state; a bar this export made is closed, the caller's left open."""
        if self._bar is None:
            return
        self._update_bar(0)
        bar, self._bar = self._bar, None
        try:
            if self._bar_owned:
                bar.close()
            elif callable(getattr(bar, "refresh", None)):
                bar.refresh()
        except Exception:  # pragma: no cover - a progress bar must never break the export
            pass


def _bar_postfix(p: Progress) -> str:
    """The bar's text: ``waiting (Processing: 40%)`` while the server prepares the files (its
    X-Progress), then ``downloading files 3/10``: the preparation text is the server's, and
    stale once the files are listed."""
    files = f"files {p.files_done}/{p.files_total}"
    if p.state in ("kicking_off", "waiting"):
        text = p.state + (f" ({p.server_progress})" if p.server_progress else "")
        # Partial manifests (allow_partial_manifests): files download while the job runs.
        return f"{text} {files}" if p.files_total else text
    return f"{p.state} {files}"


class ProgressBar(Protocol):
    """What ``progress_bar=`` takes besides True and False: a bar you made, such as
    ``tqdm.tqdm(file=..., desc=...)`` (or ``tqdm.auto``, ``tqdm.rich``), or any object with
    these two methods.  The export moves it by the records it hands out, sets its postfix
    (state, files, the server's X-Progress while it prepares), sets ``total`` to the
    manifest's record counts when the bar had none, refreshes it at the end and leaves it
    open: closing it is yours."""

    def update(self, n: int = ...) -> Any:
        ...

    def set_postfix_str(self, s: str = ..., refresh: bool = ...) -> Any:
        ...


def _is_bar(obj: Any) -> bool:
    return callable(getattr(obj, "update", None)) and callable(getattr(obj, "set_postfix_str", None))


_FINISHED = Progress("cancelled", None, 0, 0, 0, 0, 0, 0, 0, None, 0, None)


def _make_bar() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("progress_bar=True needs tqdm (pip install tqdm); no bar shown", stacklevel=3)
        return None
    return tqdm(unit=" records", unit_scale=True, desc="fhirbulk export")


def export(
    base_url: str,
    group: Optional[str] = None,
    types: Optional[Union[str, Iterable[str]]] = None,
    since: Optional[Instant] = None,
    auth: Optional[Union[str, Mapping[str, Any]]] = None,
    *,
    level: Optional[Level] = None,
    patient_level: bool = False,
    progress_bar: Union[bool, ProgressBar] = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    loads: Optional[Callable[[Union[str, bytes]], Any]] = None,
    **config: Unpack[ExportKeywords],
) -> Export:
    """Start a bulk export and return the running :class:`Export`.

    >>> with fhirbulk.export("https://ehr.example.org/r4", group="g1",
    ...                      types=["Patient", "Observation"]) as job:
    ...     for resource in job:
    ...         print(resource["resourceType"], resource["id"])

    Arguments: ``base_url`` the FHIR base URL; ``group`` a Group id (level "group");
    ``patient_level=True`` for ``Patient/$export``; ``types`` the ``_type`` list;
    ``since`` a datetime or FHIR instant; ``auth`` a bearer token string or an ``auth``
    object (see the README: SMART Backend Services).  Every other config key of the README's
    table is accepted as a keyword argument with the same name (``until``, ``type_filters``,
    ``concurrency``, ``delete_on_cancel``, ``resume``, ...).

    The keyword arguments are typed (:class:`ExportKeywords`; :class:`ExportOptions` for a
    dict of all of them), so editors complete them and type checkers check them.

    Binding options: ``progress_bar=True`` shows a tqdm bar when tqdm is installed (or pass
    a tqdm bar of your own, see :class:`ProgressBar`): records, with a total once the
    manifest gives every file's ``count``, the server's ``X-Progress`` text while it
    prepares the files and the files done once they download; ``batch_size`` records per
    native call; ``loads`` the JSON parser for iteration (e.g. ``orjson.loads``).

    Raises :class:`ConfigError` for an invalid config; failures of the export itself
    (HTTP errors with the server's OperationOutcome, network errors, ...) are raised by
    the iteration as :class:`ExportError` subclasses.
    """
    cfg = build_config(
        base_url,
        group=group,
        types=types,
        since=since,
        auth=auth,
        level=level,
        patient_level=patient_level,
        **config,
    )
    return Export(cfg, batch_size=batch_size, progress_bar=progress_bar, loads=loads)
