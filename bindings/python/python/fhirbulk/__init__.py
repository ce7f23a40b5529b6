"""fhirbulk: a FHIR Bulk Data ($export) client.

The export engine is the bundled native library ``libfhirbulk`` (Rust, C ABI); this package
is a thin Python layer over its C functions::

    import fhirbulk

    with fhirbulk.export("https://ehr.example.org/r4", group="g1",
                         types=["Patient", "Observation"]) as job:
        for resource in job:          # parsed dicts; job.raw() gives bytes lines
            ...
        print(job.progress, job.manifest["transactionTime"])

The config keys are keyword arguments, typed for editors and type checkers
(:class:`ExportOptions`, a ``TypedDict`` of every key; ``progress_bar=True`` shows a tqdm bar
with the manifest's record count as its total).

Errors are raised as :class:`ExportError` subclasses (see :mod:`fhirbulk._errors` for the
hierarchy), each with ``code``, ``name``, ``http_status``, ``url``, ``message`` and the
server's OperationOutcome ``issues``.

Clinical documents: ``attachments="save"`` (or ``"inline"``) fetches the documents
DocumentReference and DiagnosticReport link by URL; ``job.records()`` gives each as a record
of kind ``"attachment"`` with its bytes in ``record.content`` and its :class:`Attachment`
description in ``record.attachment``, before the record that links it.

Tables: ``job.to_arrow()``, ``job.to_polars()``, ``job.to_pandas()``, ``job.arrow_batches()``
and ``job.arrow_reader(type)`` read the export as typed Arrow record batches decoded by the
native library (pyarrow needed); :func:`arrow_schema` gives a type's schema and :func:`rebuild`
a row's resource.  ``job.write_parquet(dir)`` has the native library write the export as a
Parquet dataset, ``<dir>/<Type>/part-<n>.parquet`` (no pyarrow needed; :func:`has_parquet`).
"""

from __future__ import annotations

from ._abi import ABI_VERSION, check_abi
from ._arrow import DEFAULT_ARROW_BATCH_ROWS, arrow_schema, has_arrow, rebuild, rebuild_all
from ._errors import (
    AuthError,
    BadRequestError,
    BusyError,
    ConfigError,
    ExportError,
    ExportTimeoutError,
    ForbiddenError,
    HttpError,
    InternalError,
    InvalidArgumentError,
    InvalidHandleError,
    NetworkError,
    NotAcceptableError,
    NotFoundError,
    ProtocolError,
    ServerError,
    ThrottledError,
    TimeoutError,
    UnauthorizedError,
    UnprocessableError,
    UnsupportedMediaTypeError,
    UsageError,
)
from ._export import (
    ATTACHMENT_ERROR_EXTENSION,
    DEFAULT_BATCH_SIZE,
    Attachment,
    AttachmentError,
    Event,
    Export,
    ExportKeywords,
    ExportOptions,
    Progress,
    ProgressBar,
    Record,
    build_config,
    export,
    library_version,
    live_handles,
    set_max_downloads,
    status_name,
)
from ._parquet import has_parquet

__version__ = library_version()

__all__ = [
    "ABI_VERSION",
    "ATTACHMENT_ERROR_EXTENSION",
    "Attachment",
    "AttachmentError",
    "AuthError",
    "BadRequestError",
    "BusyError",
    "ConfigError",
    "DEFAULT_ARROW_BATCH_ROWS",
    "DEFAULT_BATCH_SIZE",
    "Event",
    "Export",
    "ExportError",
    "ExportKeywords",
    "ExportOptions",
    "ExportTimeoutError",
    "ForbiddenError",
    "HttpError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidHandleError",
    "NetworkError",
    "NotAcceptableError",
    "NotFoundError",
    "Progress",
    "ProgressBar",
    "ProtocolError",
    "Record",
    "ServerError",
    "ThrottledError",
    "UnauthorizedError",
    "UnprocessableError",
    "UnsupportedMediaTypeError",
    "UsageError",
    "arrow_schema",
    "build_config",
    "check_abi",
    "export",
    "has_arrow",
    "has_parquet",
    "library_version",
    "live_handles",
    "rebuild",
    "rebuild_all",
    "set_max_downloads",
    "status_name",
]
