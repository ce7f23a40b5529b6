"""An export written as a Parquet dataset, ``<dir>/<Type>/part-<n>.parquet``.

The default engine is the native library's writer (``export_write_parquet``): the library
decodes the NDJSON into typed Arrow batches and encodes them into Parquet parts on up to 4
threads of its own, with bounded memory, and this module only calls it in 200 ms turns (so
Ctrl-C is delivered).  No pyarrow is needed to write.  ``engine="pyarrow"`` writes the same
layout with ``pyarrow.parquet.ParquetWriter`` from the Arrow batches (one part per type), for
the writer options only pyarrow has.

Both engines share the directory rules: a directory that holds parts already is refused unless
``overwrite=True`` (then its parts are removed first); a part is ``.part-<n>.parquet.inprogress``
until closed; and a write that fails, is cancelled or interrupted leaves no part at all, so a
dataset that is there is complete.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from ._abi import ffi, lib
from ._errors import ExportError, InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from ._export import Export

#: The compressions of the native writer.
COMPRESSIONS = ("snappy", "zstd", "none")

_PART = re.compile(r"^part-\d+\.parquet$")
_IN_PROGRESS = re.compile(r"^\.part-\d+\.parquet\.inprogress$")
_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{0,63}$")
_SUMMARY_BUF = 16384  # 12 types take ~600 bytes; grown when the summary does not fit


def has_parquet() -> bool:
    """True when the bundled libfhirbulk was built with its Parquet writer (cargo feature
    ``parquet``, which the package's wheels always have): ``write_parquet`` then needs no
    pyarrow."""
    return bool(lib.fhirbulk_has_parquet())


# --------------------------------------------------------------------------------------------
# The dataset directory


def _type_dirs(directory: str):
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            yield e.path


def _part_files(directory: str):
    """The part files (closed, and in progress) in the type directories of ``directory``."""
    for d in _type_dirs(directory):
        try:
            names = os.listdir(d)
        except OSError:  # pragma: no cover - removed meanwhile
            continue
        for n in names:
            if _PART.match(n) or _IN_PROGRESS.match(n):
                yield os.path.join(d, n)


def _has_parts(directory: str) -> bool:
    """What the library refuses without ``overwrite``: a ``*.parquet`` or
    ``*.parquet.inprogress`` file in a subdirectory of ``directory``."""
    for d in _type_dirs(directory):
        try:
            if any(n.endswith((".parquet", ".parquet.inprogress")) for n in os.listdir(d)):
                return True
        except OSError:  # pragma: no cover
            continue
    return False


def _remove_parts(directory: str) -> None:
    """Remove every part of a write that did not complete (the library has removed the parts
    in progress; the closed ones are ours: the directory held none before, or ``overwrite``
    removed them), then the type directories left empty."""
    for p in list(_part_files(directory)):
        try:
            os.remove(p)
        except OSError:  # pragma: no cover - best effort; the original error matters more
            pass
    for d in list(_type_dirs(directory)):
        try:
            os.rmdir(d)  # only when empty
        except OSError:
            pass


def _prepare_directory(directory: Union[str, "os.PathLike[str]"], overwrite: bool) -> str:
    """The directory as an absolute path, created if missing; FileExistsError when it holds
    parts and not ``overwrite`` (which removes them)."""
    try:
        path = os.fsdecode(os.fspath(directory))
    except TypeError:
        raise TypeError(
            f"write_parquet: directory must be a str or os.PathLike, not {type(directory).__name__}"
        ) from None
    if not path or "\0" in path:
        raise ValueError(f"write_parquet: directory must be a path, not {path!r}")
    path = os.path.abspath(path)
    if _has_parts(path):
        if not overwrite:
            raise FileExistsError(
                errno.EEXIST,
                "write_parquet: the directory holds Parquet parts already; choose another "
                "directory, or pass overwrite=True to replace them",
                path,
            )
        _remove_parts(path)
    os.makedirs(path, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Options


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"write_parquet: {name} must be True or False, not {value!r}")
    return value


def _check_count(name: str, value: Any, high: int) -> Optional[int]:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"write_parquet: {name} must be an int or None, not {type(value).__name__}")
    if not 1 <= value <= high:
        raise ValueError(f"write_parquet: {name} must be from 1 to {high}, not {value}")
    return value


def native_options(
    *,
    compression: Any,
    overwrite: Any,
    threads: Any,
    row_group_rows: Any,
    part_bytes: Any,
    max_open_parts: Any,
    batch_rows: Any,
) -> Dict[str, Any]:
    """The ``options_json`` object of ``export_write_parquet``, checked here so that a mistake
    is a TypeError or ValueError naming the keyword."""
    if not isinstance(compression, str):
        raise TypeError(
            f"write_parquet: compression must be one of {', '.join(map(repr, COMPRESSIONS))}, "
            f"not {compression!r}"
        )
    c = compression.lower()
    if c not in COMPRESSIONS:
        raise ValueError(
            f"write_parquet: compression must be one of {', '.join(map(repr, COMPRESSIONS))} "
            f"(engine='pyarrow' has more), not {compression!r}"
        )
    opts: Dict[str, Any] = {"compression": c, "overwrite": _check_bool("overwrite", overwrite)}
    for name, value, high in (
        ("threads", threads, 4),
        ("row_group_rows", row_group_rows, 1 << 30),
        ("part_bytes", part_bytes, (1 << 64) - 1),
        ("max_open_parts", max_open_parts, 1024),
        ("batch_rows", batch_rows, 1 << 20),
    ):
        v = _check_count(name, value, high)
        if v is not None:
            opts[name] = v
    return opts


# --------------------------------------------------------------------------------------------
# The native writer


def _records_read(job: "Export") -> bool:
    """Whether records of the export were pulled (the record iterators, Arrow batches)."""
    return job._gen > 0 or job._arrow_pulled or job._end is not None


def _summary(job: "Export", buf: Any, size: int, dir_b: bytes, opts_b: bytes) -> str:
    """The summary of the call that returned FHIRBULK_END, in ``buf``; when it did not fit (the
    call returns a status, not the summary's length), another call gives it again into a
    larger buffer."""
    while True:
        text = ffi.string(buf)
        if len(text) < size - 1:
            return text.decode("utf-8")
        size *= 4
        buf = ffi.new("char[]", size)
        status = lib.export_write_parquet(job._h, dir_b, opts_b, 0, buf, size)
        if status != lib.FHIRBULK_END:  # pragma: no cover - the library keeps the summary
            from ._export import _error

            raise _error(status, job._h)


def write_native(job: "Export", directory: Union[str, "os.PathLike[str]"], options: Dict[str, Any]) -> Dict[str, int]:
    from ._arrow import _check_open
    from ._export import WAIT_SLICE_MS, _error

    _check_open(job)
    if not lib.fhirbulk_has_parquet():
        raise InvalidArgumentError(
            "this libfhirbulk was built without its Parquet writer (cargo feature `parquet`): "
            "use write_parquet(..., engine='pyarrow'), or reinstall the package "
            "(pip install --force-reinstall fhirbulk)",
            code=int(lib.FHIRBULK_ERR_INVALID_ARGUMENT),
            name="invalid_argument",
        )
    if _records_read(job):
        raise InvalidArgumentError(
            "write_parquet: records of this export were read already (they would be missing "
            "from the dataset): write a new export",
            code=int(lib.FHIRBULK_ERR_INVALID_ARGUMENT),
            name="invalid_argument",
        )
    path = _prepare_directory(directory, options["overwrite"])
    try:
        dir_b = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"write_parquet: the library needs a UTF-8 directory name, not {path!r}") from None
    opts_b = json.dumps(options).encode("utf-8")
    tick = job._parquet_tick() if job._bar is not None else None
    buf = ffi.new("char[]", _SUMMARY_BUF)
    written = False
    # Whether the library took the directory: until then, a refusal (a directory that got parts
    # from elsewhere since the check above) must not remove anything.
    accepted = False
    try:
        job._consumer = threading.get_ident()
        while True:
            if job._closed:
                status = lib.FHIRBULK_CANCELLED
            else:
                status = lib.export_write_parquet(
                    job._h, dir_b, opts_b, WAIT_SLICE_MS, buf, _SUMMARY_BUF
                )
            if status in (lib.FHIRBULK_TIMEOUT, lib.FHIRBULK_END):
                accepted = True
            if status == lib.FHIRBULK_TIMEOUT:
                if tick is not None:
                    tick()
                continue
            if status == lib.FHIRBULK_END:
                summary = json.loads(_summary(job, buf, _SUMMARY_BUF, dir_b, opts_b))
                written = True
                job._end = "end"
                if tick is not None:
                    tick()
                job._close_bar()
                job._parquet = summary
                return {t: int(v["rows"]) for t, v in sorted(summary.get("types", {}).items())}
            if status == lib.FHIRBULK_CANCELLED or (
                status == lib.FHIRBULK_ERR_INVALID_HANDLE and job._closed
            ):
                job._end = "cancelled"
                job._close_bar()
                raise ExportError(
                    "write_parquet: the export was cancelled or closed before it completed; "
                    "no part was left",
                    code=int(lib.FHIRBULK_CANCELLED),
                    name="cancelled",
                )
            err = _error(status, job._h)
            if status not in (lib.FHIRBULK_ERR_INVALID_ARGUMENT, lib.FHIRBULK_ERR_BUSY):
                accepted = True
                job._end = "failed"  # records were consumed: the export is spent
            job._close_bar()
            raise err
    except KeyboardInterrupt:
        # Cancel and free the export (as the record loops do): freeing it removes the
        # library's parts in progress before this returns.
        accepted = True
        job._interrupted()
        raise
    finally:
        if not written and accepted:
            _remove_parts(path)


# --------------------------------------------------------------------------------------------
# The pyarrow engine


def write_pyarrow(
    job: "Export",
    directory: Union[str, "os.PathLike[str]"],
    *,
    overwrite: bool,
    batch_rows: int,
    **writer_kwargs: Any,
) -> Dict[str, int]:
    """The same layout from the Arrow batches, one part per type written by
    ``pyarrow.parquet.ParquetWriter`` (one row group per batch)."""
    from ._arrow import _need, arrow_batches

    pq = _need("pyarrow.parquet", "parquet")
    _check_bool("overwrite", overwrite)
    path = _prepare_directory(directory, overwrite)
    writers: Dict[str, Any] = {}
    parts: Dict[str, Any] = {}
    counts: Dict[str, int] = {}
    done = False
    try:
        for t, batch in arrow_batches(job, None, batch_rows):
            w = writers.get(t)
            if w is None:
                if not _TYPE.match(t):
                    raise ExportError(f"write_parquet: {t!r} is not a resource type", name="protocol")
                d = os.path.join(path, t)
                os.makedirs(d, exist_ok=True)
                parts[t] = (
                    os.path.join(d, ".part-00000.parquet.inprogress"),
                    os.path.join(d, "part-00000.parquet"),
                )
                w = writers[t] = pq.ParquetWriter(parts[t][0], batch.schema, **writer_kwargs)
                counts[t] = 0
            w.write_batch(batch)
            counts[t] += batch.num_rows
            del batch
        if job._end == "end":
            for w in writers.values():
                w.close()
            for tmp, final in parts.values():
                os.replace(tmp, final)
            done = True
    finally:
        if not done:
            for w in writers.values():
                try:
                    w.close()
                except Exception:  # pragma: no cover - the original error matters more
                    pass
            _remove_parts(path)
    if not done:
        # Cancelled or closed before the end: nothing complete to report.
        raise ExportError(
            f"write_parquet: the export ended before completing ({job._end}); no part was left",
            code=int(lib.FHIRBULK_CANCELLED),
            name=str(job._end or "closed"),
        )
    return dict(sorted(counts.items()))
