"""A real DICOMweb server for the tests: Debian's Orthanc with its DICOMweb plugin.

Each server is our own process on 127.0.0.1 (never the system service), with a temporary
storage folder, a free HTTP port and the DICOM (DIMSE) server off. Tests that use the
fixtures skip cleanly when Orthanc or its DICOMweb plugin is not installed
(``apt-get install orthanc orthanc-dicomweb``).

Import the fixtures into a test module with ``from orthanc import orthanc, orthanc_auth``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ORTHANC = Path(os.environ.get("COVID_ATTENTION_ORTHANC", "/usr/sbin/Orthanc"))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_TIMEOUT_S = 30.0
AUTH_USER = "alice"
AUTH_PASSWORD = "s3cret-Pa55word-never-shown"  # tests assert this string never appears in output


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OrthancServer:
    """One running Orthanc: its REST root ``url``, its DICOMweb root ``dicomweb_url``."""

    folder: Path
    port: int
    users: dict[str, str] = field(default_factory=dict)
    # PEM with key and self-signed certificate: HTTPS. Debian's Orthanc 1.10 crashes on its
    # first HTTPS request under OpenSSL 3, so the TLS test uses its own small server.
    certificate: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.certificate else 'http'}://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    @property
    def verify(self) -> bool | str:
        """The CA file that verifies this server (its own certificate), or True."""
        return str(self.certificate.with_name("cert.pem")) if self.certificate else True

    def start(self) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until ``/system`` answers."""
        import requests

        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "covid-attention-tests",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,
            "DicomPort": _free_port(),  # unused (DIMSE is off) but never the default 4242
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "SaveJobs": False,
            "HttpThreadsCount": 4,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if self.certificate is not None:
            config.update(SslEnabled=True, SslCertificate=str(self.certificate))
        config_path = self.folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(
            [str(ORTHANC), str(config_path)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.process.returncode}): {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1, verify=self.verify).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {START_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        """Terminate, wait, and kill if it does not stop."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, n_chars: int = 2000) -> str:
        try:
            return (self.folder / "orthanc.log").read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------- REST helpers

    def rest(self, method: str, path: str, **kwargs):
        import requests

        response = requests.request(method, f"{self.url}{path}", auth=self.auth, timeout=30, verify=self.verify, **kwargs)
        response.raise_for_status()
        return response

    def upload_folder(self, folder: Path) -> int:
        """POST every .dcm file of ``folder`` to Orthanc's ``/instances``; returns how many."""
        files = sorted(Path(folder).glob("*.dcm"))
        for path in files:
            self.rest("POST", "/instances", data=path.read_bytes(), headers={"Content-Type": "application/dicom"})
        return len(files)

    def instance_count(self) -> int:
        return int(self.rest("GET", "/statistics").json()["CountInstances"])

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """Orthanc's tags (simplified) of every instance in a study."""
        found = self.rest("POST", "/tools/lookup", data=study_uid).json()
        studies = [item["ID"] for item in found if item["Type"] == "Study"]
        if not studies:
            return []
        return self.rest("GET", f"/studies/{studies[0]}/instances?expand").json()

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.rest("GET", f"/instances/{orthanc_id}/file").content


def orthanc_available() -> bool:
    return ORTHANC.is_file() and os.access(ORTHANC, os.X_OK) and DICOMWEB_PLUGIN.is_file()


def self_signed_pem(folder: Path) -> Path:
    """A PEM holding a new RSA key and a self-signed certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    both = folder / "orthanc.pem"
    both.write_text(key.read_text() + cert.read_text())
    return both


def start_orthanc(folder: Path, users: dict[str, str] | None = None, certificate: Path | None = None) -> OrthancServer:
    """Start a server in ``folder`` (retrying on another port if the chosen one was taken)."""
    if not orthanc_available():
        pytest.skip(f"Orthanc with DICOMweb not installed ({ORTHANC}, {DICOMWEB_PLUGIN}): apt-get install orthanc orthanc-dicomweb")
    error: Exception | None = None
    for attempt in range(3):
        server = OrthancServer(folder / f"run{attempt}", _free_port(), dict(users or {}), certificate)
        try:
            return server.start()
        except RuntimeError as exc:  # the free port may have been taken in between
            error = exc
    raise RuntimeError(f"Orthanc could not be started: {error}")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[OrthancServer]:
    """An Orthanc without authentication, for one test module."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def orthanc_auth(tmp_path_factory) -> Iterator[OrthancServer]:
    """An Orthanc with HTTP basic authentication (user ``alice``, :data:`AUTH_PASSWORD`)."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-auth"), {AUTH_USER: AUTH_PASSWORD})
    try:
        yield server
    finally:
        server.stop()
