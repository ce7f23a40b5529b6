"""A session-wide sandbox Bulk Data server (fhirbulk-sandbox) on an ephemeral port."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
PATIENTS = 60
RECORDS_PER_FILE = 100


def sandbox_binary() -> Path:
    env = os.environ.get("FHIRBULK_SANDBOX_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    for profile in ("debug", "release"):
        p = target / profile / "fhirbulk-sandbox"
        if p.is_file():
            return p
    return target / "debug" / "fhirbulk-sandbox"


class Sandbox:
    def __init__(self, root: str, proc: subprocess.Popen) -> None:
        self.root = root
        self.proc = proc

    def url(self, scenario: Optional[str] = "polls=0") -> str:
        """The FHIR base URL, with a scenario prefix (``None`` for none)."""
        if scenario:
            return f"{self.root}/x/{scenario}/fhir"
        return f"{self.root}/fhir"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.root + path, timeout=10) as r:
            return json.load(r)

    def truth(self, **query: str) -> Dict[str, int]:
        """Exact counts per type the sandbox serves for a query (level, group, _type, ...);
        types with no records are left out, as an export delivers none of them."""
        counts = self._get("/_sandbox/truth?" + urllib.parse.urlencode(query))
        return {t: n for t, n in counts.items() if n}

    def truth_ids(self, **query: str) -> List[str]:
        """The sorted ``Type/id`` of every resource an export for the query delivers."""
        return self._get("/_sandbox/truth?" + urllib.parse.urlencode({**query, "ids": "1"}))

    def truth_attachments(self, **query: str) -> List[Dict[str, Any]]:
        """Every attachment of the DocumentReference and DiagnosticReport resources an export
        for the query delivers (``resource``, ``position``, ``path``, ``url``, ``contentType``,
        ``class``, ``size``, ``sha1`` of the true bytes, ``outcome``), whatever its scenario."""
        q = {**query, "attachments": "1"}
        return self._get("/_sandbox/truth?" + urllib.parse.urlencode(q))

    def requests(self) -> List[Dict[str, Any]]:
        return self._get("/_sandbox/requests")

    def deletes(self, status_url: str) -> List[Dict[str, Any]]:
        """DELETE requests the sandbox received for a job's status URL."""
        path = urllib.parse.unquote(urllib.parse.urlparse(status_url).path)
        return [r for r in self.requests() if r["method"] == "DELETE" and r["path"] == path]

    def wait_for_delete(self, status_url: str, timeout: float = 10.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.deletes(status_url)
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    binary = sandbox_binary()
    if not binary.is_file():
        pytest.fail(
            f"sandbox binary not found at {binary}: build it with "
            "`cargo build --features sandbox --bin fhirbulk-sandbox` or set FHIRBULK_SANDBOX_BIN"
        )
    port_file = tmp_path_factory.mktemp("sandbox") / "port"
    proc = subprocess.Popen(
        [
            str(binary),
            "--port", "0",
            "--port-file", str(port_file),
            "--patients", str(PATIENTS),
            "--records-per-file", str(RECORDS_PER_FILE),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                pytest.fail(f"fhirbulk-sandbox exited with {proc.returncode}")
            if time.monotonic() > deadline:
                pytest.fail("fhirbulk-sandbox did not write its port file within 30 s")
            time.sleep(0.02)
        port = int(port_file.read_text().strip())
        yield Sandbox(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.kill()
        proc.wait()


def pytest_report_header(config):
    import fhirbulk

    return [
        f"fhirbulk {fhirbulk.__version__} (ABI {fhirbulk.ABI_VERSION}) from {Path(fhirbulk.__file__).parent}",
        f"sandbox binary: {sandbox_binary()}",
    ]
