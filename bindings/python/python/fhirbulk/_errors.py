"""Exceptions: one class per fhirbulk status code, in a hierarchy you can catch broadly.

::

    ExportError                      any failure reported by fhirbulk
    ├── ConfigError (103)            invalid config (also a ValueError); the message names the key
    ├── UsageError                   the binding was used wrongly
    │   ├── InvalidArgumentError (100)
    │   ├── InvalidHandleError (101) the export was closed
    │   └── BusyError (102)          two threads iterating one export
    ├── InternalError (104)          a bug in fhirbulk
    ├── NetworkError (200)           connection refused/reset, DNS, TLS, broken transfer
    │   └── TimeoutError (201)       a request or read timed out (also builtins.TimeoutError's
    │                                 name, but not that class: catch fhirbulk.TimeoutError)
    ├── ProtocolError (202)          the server broke the Bulk Data protocol
    ├── AuthError (203)              authorization failed (token endpoint, foreign token origin)
    │   └── UnauthorizedError (301)  HTTP 401 (also an HttpError)
    └── HttpError (309)              an HTTP error status; subclasses per status:
        ├── BadRequestError (300)           400
        ├── UnauthorizedError (301)         401
        ├── ForbiddenError (302)            403
        ├── NotFoundError (303)             404 / 410 (e.g. unknown Group)
        ├── NotAcceptableError (304)        406
        ├── UnsupportedMediaTypeError (305) 415
        ├── UnprocessableError (306)        422 (unsupported parameter values)
        ├── ThrottledError (307)            429 after the retries ran out
        └── ServerError (308)               5xx after the retries ran out

Every exception carries ``code`` (the stable status number), ``name`` ("not_found", ...),
``http_status`` (int or None), ``url`` (without query), ``message`` and ``issues`` (the
server's OperationOutcome issues: dicts with ``severity``, ``code``, ``diagnostics``).
"""

from __future__ import annotations

import builtins
from typing import Any, Dict, List, Optional, Type


class ExportError(Exception):
    """A failure reported by fhirbulk, with the parts of the library's last error (``export_error_*``)."""

    code: int = 0
    name: str = "error"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[int] = None,
        name: Optional[str] = None,
        http_status: Optional[int] = None,
        url: Optional[str] = None,
        issues: Optional[List[Dict[str, Any]]] = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        if code is not None:
            self.code = code
        if name is not None:
            self.name = name
        self.http_status: Optional[int] = http_status
        self.url: Optional[str] = url
        self.issues: List[Dict[str, Any]] = list(issues or [])

    def __str__(self) -> str:
        s = self.message or self.name
        if self.url and self.url not in s:
            s = f"{s} ({self.url})"
        return s

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code}, name={self.name!r}, "
            f"http_status={self.http_status!r}, message={self.message!r})"
        )

    def __reduce__(self):  # picklable across processes (multiprocessing, concurrent.futures)
        return (
            _rebuild,
            (type(self), self.message, self.code, self.name, self.http_status, self.url, self.issues),
        )


def _rebuild(cls, message, code, name, http_status, url, issues):  # pragma: no cover - trivial
    return cls(message, code=code, name=name, http_status=http_status, url=url, issues=issues)


class ConfigError(ExportError, ValueError):
    """The config is not valid; the message names the key (status 103)."""

    code = 103
    name = "config"


class UsageError(ExportError):
    """The binding was used in a way the library refuses."""


class InvalidArgumentError(UsageError):
    code = 100
    name = "invalid_argument"


class InvalidHandleError(UsageError):
    """The export was already closed."""

    code = 101
    name = "invalid_handle"


class BusyError(UsageError):
    """Two threads pulled records from one export at the same time."""

    code = 102
    name = "busy"


class InternalError(ExportError):
    """A bug in fhirbulk (a caught panic)."""

    code = 104
    name = "internal"


class NetworkError(ExportError):
    """Connection refused or reset, DNS, TLS, a broken transfer (status 200)."""

    code = 200
    name = "network"


class TimeoutError(NetworkError):  # noqa: A001 - deliberately fhirbulk.TimeoutError
    """A request or a read timed out (status 201)."""

    code = 201
    name = "timeout_error"


class ProtocolError(ExportError):
    """The server broke the protocol: malformed manifest, wrong content type, ... (202)."""

    code = 202
    name = "protocol"


class AuthError(ExportError):
    """Authorization failed (status 203; 401 responses are UnauthorizedError)."""

    code = 203
    name = "auth"


class HttpError(ExportError):
    """An HTTP error status (309 for statuses without a class of their own)."""

    code = 309
    name = "http"


class BadRequestError(HttpError):
    code = 300
    name = "bad_request"


class UnauthorizedError(AuthError, HttpError):
    """HTTP 401 (OperationOutcome ``login`` / ``expired``)."""

    code = 301
    name = "unauthorized"


class ForbiddenError(HttpError):
    code = 302
    name = "forbidden"


class NotFoundError(HttpError):
    """HTTP 404 or 410 (an unknown Group, an expired job)."""

    code = 303
    name = "not_found"


class NotAcceptableError(HttpError):
    code = 304
    name = "not_acceptable"


class UnsupportedMediaTypeError(HttpError):
    code = 305
    name = "unsupported_media_type"


class UnprocessableError(HttpError):
    """HTTP 422: the server does not support a parameter value."""

    code = 306
    name = "unprocessable"


class ThrottledError(HttpError):
    """HTTP 429 after the retries ran out (at kick-off: an export of yours is running)."""

    code = 307
    name = "throttled"


class ServerError(HttpError):
    """HTTP 5xx after the retries ran out."""

    code = 308
    name = "server"


# Alias that does not shadow the builtin when imported with ``from fhirbulk import *``.
ExportTimeoutError = TimeoutError

ERROR_CLASSES: Dict[int, Type[ExportError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        InvalidHandleError,
        BusyError,
        ConfigError,
        InternalError,
        NetworkError,
        TimeoutError,
        ProtocolError,
        AuthError,
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        NotAcceptableError,
        UnsupportedMediaTypeError,
        UnprocessableError,
        ThrottledError,
        ServerError,
        HttpError,
    )
}


def error_from_parts(
    status: int,
    status_name: str,
    message: str,
    http_status: Optional[int] = None,
    url: Optional[str] = None,
    issues: Optional[List[Dict[str, Any]]] = None,
) -> ExportError:
    """Build the exception for ``status`` from the parts of the library's last error."""
    cls = ERROR_CLASSES.get(status) or ExportError
    return cls(
        message or status_name,
        code=status,
        name=status_name,
        http_status=http_status,
        url=url,
        issues=issues or [],
    )


__all__ = [c.__name__ for c in ERROR_CLASSES.values()] + [
    "ExportError",
    "UsageError",
    "ExportTimeoutError",
]
_ = builtins  # the builtin TimeoutError stays reachable as builtins.TimeoutError
