"""Each error class, raised with the server's OperationOutcome."""

from __future__ import annotations

import pytest

import fhirbulk


@pytest.mark.parametrize(
    "status,cls,code,name,issue_code",
    [
        (400, fhirbulk.BadRequestError, 300, "bad_request", "invalid"),
        (401, fhirbulk.UnauthorizedError, 301, "unauthorized", "login"),
        (403, fhirbulk.ForbiddenError, 302, "forbidden", "forbidden"),
        (404, fhirbulk.NotFoundError, 303, "not_found", "not-found"),
        (406, fhirbulk.NotAcceptableError, 304, "not_acceptable", None),
        (415, fhirbulk.UnsupportedMediaTypeError, 305, "unsupported_media_type", None),
        (422, fhirbulk.UnprocessableError, 306, "unprocessable", None),
        (429, fhirbulk.ThrottledError, 307, "throttled", "throttled"),
        (500, fhirbulk.ServerError, 308, "server", "exception"),
        (418, fhirbulk.HttpError, 309, "http", None),
    ],
)
def test_kickoff_error_classes(sandbox, status, cls, code, name, issue_code):
    url = sandbox.url(f"kickoff={status};polls=0")
    with pytest.raises(cls) as info:
        with fhirbulk.export(url, group="g1", retry_max_attempts=1) as job:
            for _ in job:
                pass
    e = info.value
    assert type(e) is cls
    assert isinstance(e, fhirbulk.HttpError) and isinstance(e, fhirbulk.ExportError)
    assert (e.code, e.name, e.http_status) == (code, name, status)
    assert e.url and e.url.endswith("/Group/g1/$export") and "?" not in e.url
    assert f"HTTP {status}" in e.message and str(e).startswith(e.message)
    assert e.issues and e.issues[0]["severity"] == "error"
    assert e.issues[0]["diagnostics"] in (f"sandbox forced {status}",
                                          "an export is already running for this client")
    if issue_code:
        assert e.issues[0]["code"] == issue_code
    assert job.progress.state == "failed" and job.progress.error == name
    assert job.progress.http_status == status


def test_unauthorized_is_an_auth_error(sandbox):
    with pytest.raises(fhirbulk.AuthError) as info:
        list(fhirbulk.export(sandbox.url("kickoff=401;polls=0"), retry_max_attempts=1))
    assert isinstance(info.value, fhirbulk.UnauthorizedError)


def test_unknown_group_is_not_found(sandbox):
    with pytest.raises(fhirbulk.NotFoundError) as info:
        with fhirbulk.export(sandbox.url(), group="no-such-group") as job:
            list(job.raw())
    e = info.value
    assert e.http_status == 404
    assert any("no-such-group" in (i.get("diagnostics") or "") for i in e.issues)


def test_job_failure_during_polling(sandbox):
    with pytest.raises(fhirbulk.ServerError) as info:
        with fhirbulk.export(sandbox.url("poll=500"), group="g2", retry_max_attempts=1,
                             poll_min_ms=50) as job:
            list(job)
    assert info.value.http_status == 500 and info.value.issues


def test_unknown_config_key(sandbox):
    with pytest.raises(fhirbulk.ConfigError) as info:
        fhirbulk.export(sandbox.url(), group="g1", no_such_key=1)
    e = info.value
    assert isinstance(e, ValueError) and isinstance(e, fhirbulk.ExportError)
    assert (e.code, e.name, e.http_status) == (103, "config", None)
    assert "no_such_key" in e.message


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(concurrency=0), "concurrency"),
        (dict(level="planet"), "level"),
        (dict(method="PATCH"), "method"),
    ],
)
def test_invalid_config_values(sandbox, kwargs, needle):
    with pytest.raises(fhirbulk.ConfigError, match=needle):
        fhirbulk.export(sandbox.url(), **kwargs)


def test_bad_base_url_is_config_error():
    with pytest.raises(fhirbulk.ConfigError):
        fhirbulk.export("ftp://example.org/fhir")
    with pytest.raises(fhirbulk.ConfigError):
        fhirbulk.Export({"base_url": object()})


def test_connection_refused_is_network_error():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(fhirbulk.NetworkError) as info:
        with fhirbulk.export(f"http://127.0.0.1:{port}/fhir", retry_max_attempts=1,
                             connect_timeout_ms=2000) as job:
            list(job)
    assert info.value.code in (200, 201) and info.value.http_status is None


def test_protocol_error(sandbox):
    with pytest.raises(fhirbulk.ProtocolError) as info:
        with fhirbulk.export(sandbox.url("polls=0;bad_manifest"), group="g2", retry_max_attempts=1) as job:
            list(job)
    assert info.value.code == 202


def test_hierarchy():
    assert issubclass(fhirbulk.TimeoutError, fhirbulk.NetworkError)
    assert fhirbulk.ExportTimeoutError is fhirbulk.TimeoutError
    assert issubclass(fhirbulk.UnauthorizedError, fhirbulk.AuthError)
    assert issubclass(fhirbulk.UnauthorizedError, fhirbulk.HttpError)
    for cls in (fhirbulk.InvalidArgumentError, fhirbulk.InvalidHandleError, fhirbulk.BusyError):
        assert issubclass(cls, fhirbulk.UsageError)
    import pickle

    e = fhirbulk.NotFoundError("gone", code=303, name="not_found", http_status=404,
                               url="http://x/fhir", issues=[{"severity": "error", "code": "not-found"}])
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is fhirbulk.NotFoundError and e2.issues == e.issues and e2.http_status == 404
