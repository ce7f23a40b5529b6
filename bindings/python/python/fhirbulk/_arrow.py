"""An export's resources as Arrow record batches, and the tables built on them.

The native library decodes each resource type into typed Arrow record batches (one schema per
FHIR R4 type, derived from the specification: nested structs and lists, one field per choice
type, decimals as their exact JSON text in utf8 columns with field metadata
``fhir.type=decimal``, and a ``_remainder`` utf8 column holding as JSON whatever the columns
cannot hold; schema metadata ``fhir.resourceType``).  This module hands those batches to
pyarrow without a copy, through the Arrow C Data Interface (``export_next_arrow_batch``,
``fhirbulk_arrow_schema``) and the C Stream Interface (``export_arrow_stream``), and builds
Tables, Polars and pandas frames on them (Parquet: ``_parquet``).

pyarrow (and polars, pandas) are imported only when one of these is called.
"""

from __future__ import annotations

import decimal
import importlib
import json
import queue
import re
import threading
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
    Union,
)

from ._abi import ffi, lib
from ._errors import ExportError, InvalidArgumentError, InvalidHandleError, ProtocolError

if TYPE_CHECKING:  # pragma: no cover
    import pandas
    import polars
    import pyarrow

    from ._export import Export

#: Rows per Arrow record batch unless told otherwise.
DEFAULT_ARROW_BATCH_ROWS = 65536
#: Rows per batch, and so per Parquet row group, of ``write_parquet(engine="pyarrow")``.  The
#: schemas are wide (a few hundred to a thousand leaf columns, most of them null), and while a
#: batch fills the library keeps it per type; 8192 rows keep that small (about 200 MB in all for
#: the sandbox's seven types, flat from 100k to 300k records) at the speed of larger batches.
DEFAULT_PARQUET_BATCH_ROWS = 8192
#: The column of what the typed columns do not hold (JSON text, null when nothing is left).
REMAINDER = "_remainder"

_TYPE_BUF = 256  # a resource type name (64 bytes hold every FHIR type)
_DECODE_ERROR = re.compile(r"file \d+ line \d+: ")
#: The error's name the library puts first in a stream's error text.
_NAMED_ERROR = re.compile(r"\[([a-z_]+)\] ")


def _need(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"this needs {module}: pip install 'fhirbulk[{extra}]' (or pip install {module})"
        ) from None


def _pyarrow() -> Any:
    return _need("pyarrow", "arrow")


def has_arrow() -> bool:
    """True when the bundled libfhirbulk was built with Arrow support (cargo feature ``arrow``,
    which the package's wheels always have)."""
    return bool(lib.fhirbulk_has_arrow())


def _check_arrow() -> None:
    if not lib.fhirbulk_has_arrow():
        raise InvalidArgumentError(
            "this libfhirbulk was built without Arrow support (cargo feature `arrow`); "
            "reinstall the package (pip install --force-reinstall fhirbulk)",
            code=int(lib.FHIRBULK_ERR_INVALID_ARGUMENT),
            name="invalid_argument",
        )


def _ptr(p: Any) -> int:
    return int(ffi.cast("uintptr_t", p))


def _type_name(resource_type: str) -> bytes:
    if not isinstance(resource_type, str) or not resource_type or "\0" in resource_type:
        raise ValueError(f"resource_type must be a FHIR resource type name, not {resource_type!r}")
    return resource_type.encode("utf-8")


def _rows(batch_rows: int) -> int:
    if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, not {batch_rows!r}")
    return batch_rows


def arrow_schema(resource_type: str) -> "pyarrow.Schema":
    """The Arrow schema of a FHIR R4 resource type: the same for every batch of every export
    (``fhirbulk_arrow_schema``).  One field per element in the specification's order (choice
    elements as one field per type, ``valueQuantity``, ``valueString``, ...), then
    ``_remainder``; schema metadata ``fhir.resourceType``, decimal fields with metadata
    ``fhir.type=decimal``.  A type FHIR R4 does not define has only ``id`` and the remainder."""
    from ._export import _error

    pa = _pyarrow()
    _check_arrow()
    c = ffi.new("struct ArrowSchema *")
    status = lib.fhirbulk_arrow_schema(_type_name(resource_type), c)
    if status != lib.FHIRBULK_OK:
        raise _error(status)
    return pa.Schema._import_from_c(_ptr(c))  # pyarrow moves it out (and releases it)


# --------------------------------------------------------------------------------------------
# Rows back into resources


def _converter(pa: Any, t: Any, metadata: Optional[Dict[bytes, bytes]], parse_float: Any) -> Any:
    """A function turning a value of ``to_pylist()`` of Arrow type ``t`` into its JSON value
    (absent struct members left out, decimals through ``parse_float``), or None when the
    value is already that."""
    if pa.types.is_struct(t):
        members = [
            (f.name, _converter(pa, f.type, f.metadata, parse_float)) for f in t
        ]

        def struct(d: Dict[str, Any]) -> Dict[str, Any]:
            out = {}
            for k, fn in members:
                v = d[k]
                if v is not None:
                    out[k] = fn(v) if fn is not None else v
            return out

        return struct
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = _converter(pa, t.value_type, t.value_field.metadata, parse_float)
        if item is None:
            return None  # a list of primitives: null items stay null (JSON null)
        return lambda items: [item(x) if x is not None else None for x in items]
    if metadata and metadata.get(b"fhir.type") == b"decimal":
        return parse_float
    return None


def _merge(target: Any, rem: Any) -> Any:
    """Put a remainder into a rebuilt value: objects key by key (``null`` sets a key to
    null), arrays position by position (``null`` keeps the item), anything else replaces.
    The same rules as the engine's ``fhirbulk::arrow::rebuild``."""
    if isinstance(target, dict) and isinstance(rem, dict):
        for k, v in rem.items():
            if v is not None and k in target:
                target[k] = _merge(target[k], v)
            else:
                target[k] = v
        return target
    if isinstance(target, list) and isinstance(rem, list):
        for i, v in enumerate(rem):
            if v is None:
                continue
            if i < len(target):
                target[i] = _merge(target[i], v) if target[i] is not None else v
            else:
                target.append(v)
        return target
    return rem


def rebuild_all(
    data: Union["pyarrow.RecordBatch", "pyarrow.Table"],
    *,
    parse_float: Callable[[str], Any] = decimal.Decimal,
) -> Iterator[Dict[str, Any]]:
    """Every row of a record batch or table of this package's schemas, rebuilt into its
    resource (see :func:`rebuild`), in row order."""
    pa = _pyarrow()
    schema = data.schema
    meta = schema.metadata or {}
    rtype = meta.get(b"fhir.resourceType")
    cols = []
    rem_values: Optional[List[Any]] = None
    for i, field in enumerate(schema):
        values = data.column(i).to_pylist()
        if field.name == REMAINDER:
            rem_values = values
            continue
        cols.append((field.name, _converter(pa, field.type, field.metadata, parse_float), values))
    head = {"resourceType": rtype.decode("utf-8")} if rtype is not None else {}
    for r in range(data.num_rows):
        obj = dict(head)
        for name, fn, values in cols:
            v = values[r]
            if v is not None:
                obj[name] = fn(v) if fn is not None else v
        if rem_values is not None:
            text = rem_values[r]
            if text is not None:
                obj = _merge(obj, json.loads(text, parse_float=parse_float))
        yield obj


def rebuild(
    data: Union["pyarrow.RecordBatch", "pyarrow.Table"],
    row: int,
    *,
    parse_float: Callable[[str], Any] = decimal.Decimal,
) -> Dict[str, Any]:
    """The resource of one row: its columns and its ``_remainder`` deep-merged, with
    ``resourceType`` from the schema's ``fhir.resourceType`` metadata; equal, as JSON, to the
    NDJSON line it was decoded from.

    Decimals (columns with field metadata ``fhir.type=decimal``, and numbers with a fraction
    or an exponent in the remainder) come as ``decimal.Decimal`` of their exact text
    (``Decimal("1.50")``), so compare with ``json.loads(line, parse_float=Decimal)``;
    ``parse_float=float`` gives floats.  ``row`` may be negative (from the end)."""
    n = data.num_rows
    if not isinstance(row, int) or isinstance(row, bool):
        raise TypeError(f"row must be an int, not {type(row).__name__}")
    if row < 0:
        row += n
    if not 0 <= row < n:
        raise IndexError(f"row {row} out of range for {n} rows")
    return next(rebuild_all(data.slice(row, 1), parse_float=parse_float))


# --------------------------------------------------------------------------------------------
# Batches from an export


def _check_open(job: "Export") -> None:
    if job._closed:
        raise InvalidHandleError(
            "the export is closed (close() ran or its with block was left): "
            "start a new export to read it as Arrow",
            code=int(lib.FHIRBULK_ERR_INVALID_HANDLE),
            name="invalid_handle",
        )


def arrow_reader(job: "Export", resource_type: str, batch_rows: int) -> "pyarrow.RecordBatchReader":
    """The C stream of one type's batches as a pyarrow RecordBatchReader (it owns the stream)."""
    from ._export import _error

    pa = _pyarrow()
    _check_arrow()
    name = _type_name(resource_type)
    rows = _rows(batch_rows)
    _check_open(job)
    s = ffi.new("struct ArrowArrayStream *")
    job._arrow_pulled = True
    status = lib.export_arrow_stream(job._h, name, rows, s)
    if status != lib.FHIRBULK_OK:
        raise _error(status)
    return pa.RecordBatchReader._import_from_c(_ptr(s))  # moved out: pyarrow releases it


def arrow_batches(
    job: "Export", resource_type: Optional[str], batch_rows: int
) -> Union[Iterator[Tuple[str, "pyarrow.RecordBatch"]], Iterator["pyarrow.RecordBatch"]]:
    pa = _pyarrow()
    _check_arrow()
    rows = _rows(batch_rows)
    if resource_type is None:
        _check_open(job)
        return _mixed_batches(job, pa, rows)
    reader = arrow_reader(job, resource_type, rows)
    return _type_batches(job, reader)


def _mixed_batches(job: "Export", pa: Any, rows: int) -> Iterator[Tuple[str, "pyarrow.RecordBatch"]]:
    """(type, batch) pairs from ``export_next_arrow_batch``, in the pull loop of the record
    iterators: a wait returns to Python every WAIT_SLICE_MS, so Ctrl-C is delivered."""
    from ._export import WAIT_SLICE_MS, _error

    array = ffi.new("struct ArrowArray *")
    schema = ffi.new("struct ArrowSchema *")
    tbuf = ffi.new("char[]", _TYPE_BUF)
    try:
        while True:
            if job._end is not None:
                return
            if job._closed:
                job._end = "cancelled"
                return
            job._consumer = threading.get_ident()
            job._arrow_pulled = True
            status = lib.export_next_arrow_batch(
                job._h, rows, WAIT_SLICE_MS, array, schema, tbuf, _TYPE_BUF
            )
            if status == lib.FHIRBULK_RECORD:
                name = ffi.string(tbuf).decode("utf-8", "replace")
                # pyarrow moves both structs out and releases them when the batch goes.
                batch = pa.RecordBatch._import_from_c(_ptr(array), _ptr(schema))
                if job._bar is not None:
                    job._update_bar(batch.num_rows)
                yield name, batch
                continue
            if status == lib.FHIRBULK_TIMEOUT:
                if job._bar is not None:
                    job._update_bar(0)
                continue
            if status == lib.FHIRBULK_END:
                job._end = "end"
            elif status == lib.FHIRBULK_CANCELLED or (
                status == lib.FHIRBULK_ERR_INVALID_HANDLE and job._closed
            ):
                job._end = "cancelled"
            else:
                job._end = "failed"
                job._close_bar()
                raise _error(status, job._h)
            job._close_bar()
            return
    except KeyboardInterrupt:
        job._interrupted()
        raise


def _type_batches(job: "Export", reader: Any) -> Iterator["pyarrow.RecordBatch"]:
    """One type's batches from its C stream.  The stream's ``get_next`` waits without a
    timeout, so it runs on a helper thread while this thread waits in slices of
    WAIT_SLICE_MS: Ctrl-C is delivered, cancels the export (which ends the wait) and frees it."""
    puller = _Puller(reader)
    try:
        while True:
            if job._closed:
                return
            batch = puller.next(job)
            if batch is None:
                return
            if job._bar is not None:
                job._update_bar(batch.num_rows)
            yield batch
    finally:
        puller.stop()
        reader.close()  # releases the C stream (no read is running: see _Puller)


class _Puller:
    """Reads a RecordBatchReader on one helper thread, a batch per request: the stream is
    read by one thread at a time, and never while it is released."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._requests: "queue.SimpleQueue[bool]" = queue.SimpleQueue()
        self._results: "queue.SimpleQueue[Tuple[str, Any]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None

    def _run(self) -> None:
        while self._requests.get():
            try:
                result: Tuple[str, Any] = ("batch", self._reader.read_next_batch())
            except StopIteration:
                result = ("end", None)
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                result = ("error", e)
            self._results.put(result)

    def next(self, job: "Export") -> Optional["pyarrow.RecordBatch"]:
        """The next batch, None at the end of the stream (or of the loop)."""
        from ._export import WAIT_SLICE_MS

        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="fhirbulk-arrow-stream", daemon=True
            )
            self._thread.start()
        job._consumer = threading.get_ident()
        self._requests.put(True)
        try:
            while True:
                try:
                    what, value = self._results.get(timeout=WAIT_SLICE_MS / 1000.0)
                    break
                except queue.Empty:
                    if job._bar is not None:
                        job._update_bar(0)
        except KeyboardInterrupt:
            # Cancel first: that ends the stream's wait, so the read returns; only then free
            # the export (and, in the caller, release the stream).
            try:
                job.cancel()
                self._results.get()
                job.close()
            except Exception:  # pragma: no cover - never mask the KeyboardInterrupt
                pass
            raise
        if what == "error":
            _stream_failed(job, value)  # raises, or the loop ends
            return None
        return value

    def stop(self) -> None:
        if self._thread is not None:
            self._requests.put(False)
            self._thread.join()
            self._thread = None


def _stream_failed(job: "Export", e: BaseException) -> None:
    """A stream's get_next failed: the end of the loop when the export was closed or
    cancelled meanwhile (as for the record iterators), the export's own failure as its
    ExportError, anything else as an ExportError with the stream's message."""
    from ._export import _error

    if job._closed:
        return None
    p = job._poll()
    if p.state == "cancelled":
        job._end = "cancelled"
        return None
    if p.state == "failed" and p.error_code:
        job._end = "failed"
        job._close_bar()
        raise _error(p.error_code, job._h) from e
    # The stream's errors carry only text (the C Stream Interface has no status codes): the
    # library starts it with the error's name in brackets, "[protocol] file N line M: ..." for
    # the decoder's own failure, a line that is not a resource of its file's type (a protocol
    # error, as export_next_arrow_batch returns it).
    text = str(e)
    if text.startswith("External error: "):
        text = text[len("External error: ") :]
    named = _NAMED_ERROR.match(text)
    if named:
        text = text[named.end() :]
        if named.group(1) == "cancelled":
            job._end = "cancelled"
            return None
    if (named and named.group(1) == "protocol") or _DECODE_ERROR.match(text):
        raise ProtocolError(
            text, code=int(lib.FHIRBULK_ERR_PROTOCOL), name="protocol"
        ) from e
    raise ExportError(f"the Arrow stream failed: {text}", name="arrow_stream") from e


# --------------------------------------------------------------------------------------------
# Tables


def to_arrow(
    job: "Export", resource_type: Optional[str], batch_rows: int
) -> Union["pyarrow.Table", Dict[str, "pyarrow.Table"]]:
    pa = _pyarrow()
    if resource_type is not None:
        schema = arrow_schema(resource_type)
        batches = list(arrow_batches(job, resource_type, batch_rows))
        return pa.Table.from_batches(batches, schema=schema)
    by_type: Dict[str, List[Any]] = {}
    for t, b in arrow_batches(job, None, batch_rows):
        by_type.setdefault(t, []).append(b)
    return {t: pa.Table.from_batches(bs) for t, bs in sorted(by_type.items())}


def to_polars(
    job: "Export", resource_type: Optional[str], batch_rows: int
) -> Union["polars.DataFrame", Dict[str, "polars.DataFrame"]]:
    pl = _need("polars", "polars")
    tables = to_arrow(job, resource_type, batch_rows)
    if not isinstance(tables, dict):
        return pl.from_arrow(tables)
    out = {}
    for t in list(tables):
        out[t] = pl.from_arrow(tables.pop(t))  # let each Table go once converted
    return out


def to_pandas(
    job: "Export", resource_type: Optional[str], batch_rows: int, **kwargs: Any
) -> Union["pandas.DataFrame", Dict[str, "pandas.DataFrame"]]:
    _need("pandas", "pandas")
    tables = to_arrow(job, resource_type, batch_rows)
    if not isinstance(tables, dict):
        return tables.to_pandas(**kwargs)
    out = {}
    for t in list(tables):
        out[t] = tables.pop(t).to_pandas(**kwargs)
    return out
