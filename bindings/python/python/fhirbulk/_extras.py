"""Optional helpers on the record iterators: NDJSON files per resource type, and the JSON path
to pandas and Parquet (``pandas.json_normalize``), which the Arrow path (``_arrow``) replaced
for output resources and which stays for ``to_pandas(kinds=...)`` (the only table path that
includes error and deleted records) and the deprecated ``write_parquet(kinds=...)``.

pandas and pyarrow are imported only when one of these is called.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import pandas

    from ._export import Export


def _need(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"this needs {module}: pip install 'fhirbulk[{extra}]' (or pip install {module})"
        ) from None


def _grouped(job: "Export", kinds: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    by_type: Dict[str, List[Dict[str, Any]]] = {}
    loads = job._loads
    for rec in job.records():
        if rec.kind in kinds:
            by_type.setdefault(rec.resource_type, []).append(loads(rec.raw))
    return by_type


def to_pandas_json(job: "Export", *, kinds: Sequence[str] = ("output",)) -> "Dict[str, pandas.DataFrame]":
    pd = _need("pandas", "pandas")
    return {
        ty: pd.json_normalize(rows) for ty, rows in sorted(_grouped(job, kinds).items())
    }


def _file_name(kind: str, ty: str) -> str:
    safe = "".join(c for c in ty if c.isalnum() or c in "_-") or "unknown"
    return f"{safe}.ndjson" if kind == "output" else f"{safe}.{kind}.ndjson"


def _document_path(directory: Union[str, "os.PathLike[str]"], name: str) -> str:
    """Where a saved document goes: its ``file`` (``attachments/DocumentReference.1.0.pdf``,
    the relative URL its record now names) under ``directory``, never outside it."""
    root = os.path.abspath(directory)
    path = os.path.abspath(os.path.join(root, name))
    if not name or os.path.isabs(name) or os.path.commonpath([root, path]) != root or path == root:
        raise ValueError(f"write_ndjson: an attachment's file {name!r} is not a relative path")
    return path


def write_ndjson(job: "Export", directory: Union[str, "os.PathLike[str]"]) -> Dict[str, int]:
    os.makedirs(directory, exist_ok=True)
    files: Dict[str, Any] = {}
    counts: Dict[str, int] = {}
    try:
        for rec in job.records():
            if rec.kind == "attachment":
                # attachments="save": the document goes where its record's url now points.
                info = rec.attachment
                name = info.file if info is not None and info.file else ""
                path = _document_path(directory, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as doc:
                    doc.write(rec.content or b"")
                counts[name.replace(os.sep, "/")] = 1
                continue
            name = _file_name(rec.kind, rec.resource_type)
            f = files.get(name)
            if f is None:
                f = files[name] = open(os.path.join(directory, name), "wb")
                counts[name] = 0
            f.write(rec.raw)
            f.write(b"\n")
            counts[name] += 1
    finally:
        for f in files.values():
            f.close()
    return counts


def _flatten_for_parquet(df: "pandas.DataFrame") -> "pandas.DataFrame":
    # json_normalize flattens nested objects into dotted columns; what remains nested is
    # lists (of codings, identifiers, ...), whose element shapes vary between rows.  Store
    # those as JSON text so that every table has a stable, flat schema.
    for col in df.columns:
        if df[col].dtype == object:
            if df[col].map(lambda v: isinstance(v, (list, dict))).any():
                df[col] = df[col].map(
                    lambda v: json.dumps(v, separators=(",", ":"))
                    if isinstance(v, (list, dict))
                    else (None if v is None or v != v else str(v))
                )
    return df


def write_parquet_json(
    job: "Export", directory: Union[str, "os.PathLike[str]"], *, kinds: Sequence[str] = ("output",)
) -> Dict[str, int]:
    _need("pyarrow", "parquet")
    frames = to_pandas_json(job, kinds=kinds)
    os.makedirs(directory, exist_ok=True)
    counts: Dict[str, int] = {}
    for ty, df in frames.items():
        name = _file_name("output", ty).replace(".ndjson", ".parquet")
        _flatten_for_parquet(df).to_parquet(os.path.join(directory, name), index=False)
        counts[name] = len(df)
    return counts
