"""PacsClient against a real Orthanc (DICOMweb plugin) holding the real 30-slice chest CT.

Search (QIDO), retrieval (WADO) into the cache and through the file reader, cache hits
without HTTP, cancel, and the one-sentence errors with no credential anywhere. Skips
when Orthanc or the real series is absent.
"""

from __future__ import annotations

import logging
import re
import socket
import threading

import numpy as np
import pytest
from orthanc import AUTH_PASSWORD, AUTH_USER, orthanc, orthanc_auth, self_signed_pem, start_orthanc  # noqa: F401

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.jobs import run_to_end
from napari_covid_attention.pacs import PacsClient, PacsError, SeriesCache
from napari_covid_attention.pacs.auth import CA_BUNDLE_ENV, PASSWORD_ENV, TOKEN_ENV, USER_ENV
from napari_covid_attention.pacs.cache import ENTRY_FILE


def one_sentence(message: str) -> bool:
    """One line, ends with a full stop, no second sentence (UIDs and IPs hold dots, not '. X')."""
    return "\n" not in message and message.endswith(".") and not re.search(r"[.!?]\s+[A-Z]", message)


@pytest.fixture(autouse=True)
def no_pacs_env(monkeypatch, tmp_path):
    for name in (USER_ENV, PASSWORD_ENV, TOKEN_ENV, CA_BUNDLE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # never the tester's own ~/.netrc


@pytest.fixture(scope="module")
def stored_series(orthanc, chest_series_dir):  # noqa: F811
    """Orthanc holding the real series; (study UID, series UID)."""
    import pydicom

    orthanc.upload_folder(chest_series_dir)
    first = pydicom.dcmread(next(iter(sorted(chest_series_dir.glob("*.dcm")))), stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.PatientID)


@pytest.fixture
def client(orthanc, tmp_path):  # noqa: F811
    with PacsClient(orthanc.dicomweb_url, cache=SeriesCache(tmp_path / "cache")) as made:
        yield made


def count_requests(client: PacsClient) -> list[str]:
    seen: list[str] = []
    client.session.hooks["response"].append(lambda response, *a, **k: seen.append(response.url))
    return seen


def test_search_finds_the_study_by_patient_and_modality(client, stored_series):
    study, series, patient = stored_series
    found = client.search_studies(patient_id=patient, modality="CT")
    assert [s.study_uid for s in found] == [study]
    assert found[0].n_instances == 30 and "CT" in found[0].modalities
    assert client.search_studies(patient_id=patient, modality="MR") == []
    assert client.search_studies(patient_id="nobody") == []
    assert [s.study_uid for s in client.search_studies(date=f"{found[0].study_date}-")] == [study]
    assert client.search_studies(date="19000101-19001231") == []
    listed = client.search_series(study, modality="CT")
    assert [s.series_uid for s in listed] == [series]
    assert listed[0].n_instances == 30
    assert listed[0].url == f"{orthanc_url(client)}/studies/{study}/series/{series}"


def orthanc_url(client: PacsClient) -> str:
    return client.base_url


def test_bad_date_is_one_sentence(client):
    for text in ("2020", "20201231-20200101", "yesterday"):
        with pytest.raises(UserFacingError) as caught:
            client.search_studies(date=text)
        assert one_sentence(str(caught.value))


def test_retrieve_equals_the_files_and_reopens_from_the_cache(orthanc, client, stored_series, chest_series_dir, tmp_path):  # noqa: F811
    study, series, _ = stored_series
    steps = []
    volume = run_to_end(client.retrieve(study, series), steps.append)
    local = load_ct(chest_series_dir)
    assert np.array_equal(volume.hu, local.hu) and volume.hu.dtype == local.hu.dtype
    assert np.allclose(volume.affine, local.affine)
    assert volume.warnings == local.warnings
    assert volume.identity == local.identity  # corrections made on either are found on the other
    assert [s.step for s in steps] == list(range(31)) and {s.total for s in steps} == {30}
    assert {s.phase for s in steps} == {"retrieve"}

    # a new client (a new session of the user) opens it again without any request, even offline
    again = PacsClient(orthanc.dicomweb_url, cache=SeriesCache(tmp_path / "cache"))
    seen = count_requests(again)
    cached = run_to_end(again.retrieve(study, series))
    assert seen == []
    assert np.array_equal(cached.hu, local.hu)
    assert again.cached_folder(study, series) is not None


def test_cancel_leaves_no_complete_cache_entry(client, stored_series):
    study, series, _ = stored_series
    job = client.retrieve(study, series)
    for _ in range(6):  # start + 5 instances
        next(job)
    job.close()  # what a napari worker's Cancel does
    root = client.cache.root
    assert client.cached_folder(study, series) is None
    assert client.cache.entries() == []
    assert [p for p in root.iterdir()] == []  # the partial download is gone, not just hidden
    # the next retrieval starts afresh and completes
    volume = run_to_end(client.retrieve(study, series))
    assert volume.shape[0] == 30 and len(client.cache.entries()) == 1
    assert (client.cache.entries()[0].folder / ENTRY_FILE).is_file()


def test_missing_series_and_wrong_path_are_one_sentence(client, orthanc, stored_series, tmp_path):  # noqa: F811
    study, _, _ = stored_series
    with pytest.raises(PacsError) as caught:
        run_to_end(client.retrieve(study, "1.2.3.4"))
    assert one_sentence(str(caught.value)) and "1.2.3.4" in str(caught.value)
    assert client.cache.entries() == []
    wrong = PacsClient(f"{orthanc.url}/not-dicom-web", cache=SeriesCache(tmp_path / "c2"))
    with pytest.raises(PacsError) as caught:
        wrong.search_studies()
    assert "(404)" in str(caught.value) and one_sentence(str(caught.value))


def test_stopped_server_is_one_sentence_and_quick(tmp_path):
    import time

    server = start_orthanc(tmp_path / "short-lived")
    url = server.dicomweb_url
    server.stop()
    client = PacsClient(url, cache=SeriesCache(tmp_path / "cache"))
    started = time.perf_counter()
    with pytest.raises(PacsError) as caught:
        client.search_studies()
    assert time.perf_counter() - started < 5  # no retries with back-off
    message = str(caught.value)
    assert one_sentence(message) and "cannot be reached" in message and url in message


def test_timeout_is_one_sentence(tmp_path):
    """A server that accepts the connection but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        client = PacsClient(f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web", timeout_s=0.5, cache=SeriesCache(tmp_path))
        with pytest.raises(PacsError) as caught:
            client.search_studies()
        assert "did not answer within 0.5 s" in str(caught.value) and one_sentence(str(caught.value))
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


# ---------------------------------------------------------------------- authentication


@pytest.fixture
def everything_logged(caplog):
    caplog.set_level(logging.DEBUG)  # dicomweb_client, urllib3, requests and ours, all of it
    return caplog


def test_wrong_password_is_one_sentence_and_never_shown(orthanc_auth, monkeypatch, tmp_path, everything_logged, capfd):  # noqa: F811
    wrong = "Wrong-" + AUTH_PASSWORD
    monkeypatch.setenv(USER_ENV, AUTH_USER)
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    client = PacsClient(orthanc_auth.dicomweb_url, cache=SeriesCache(tmp_path))
    with pytest.raises(PacsError) as caught:
        client.search_studies()
    message = str(caught.value)
    assert message == (
        f"The PACS at {orthanc_auth.dicomweb_url} refused the credentials (401): check {USER_ENV} and {PASSWORD_ENV}."
    )
    out, err = capfd.readouterr()
    shown = "\n".join([message, repr(caught.value), repr(client), repr(client.session.auth), everything_logged.text, out, err])
    assert wrong not in shown and AUTH_PASSWORD not in shown
    # no credentials at all: the hint names every way to give them
    monkeypatch.delenv(USER_ENV)
    with pytest.raises(PacsError) as caught:
        PacsClient(orthanc_auth.dicomweb_url, cache=SeriesCache(tmp_path)).search_studies()
    assert "(401)" in str(caught.value) and "~/.netrc" in str(caught.value) and one_sentence(str(caught.value))


def test_basic_auth_from_env_works_and_is_never_logged(orthanc_auth, chest_series_dir, monkeypatch, tmp_path, everything_logged, capfd):  # noqa: F811
    monkeypatch.setenv(USER_ENV, AUTH_USER)
    monkeypatch.setenv(PASSWORD_ENV, AUTH_PASSWORD)
    orthanc_auth.upload_folder(chest_series_dir)
    client = PacsClient(orthanc_auth.dicomweb_url, cache=SeriesCache(tmp_path))
    (study,) = client.search_studies(modality="CT")
    (series,) = client.search_series(study.study_uid)
    volume = run_to_end(client.retrieve(study.study_uid, series.series_uid))
    assert volume.shape[0] == 30
    out, err = capfd.readouterr()
    assert AUTH_PASSWORD not in everything_logged.text + out + err + repr(client.session.auth)
    assert AUTH_PASSWORD not in volume.source_path


def test_netrc_is_used_when_no_env_credentials(orthanc_auth, monkeypatch, tmp_path):  # noqa: F811
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {AUTH_USER} password {AUTH_PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    client = PacsClient(orthanc_auth.dicomweb_url, cache=SeriesCache(tmp_path / "cache"))
    assert client.session.auth is None and client.auth_source == "netrc"
    client.search_studies()  # no 401


def test_credentials_in_the_url_are_used_and_never_shown(orthanc_auth, tmp_path, everything_logged):  # noqa: F811
    host = orthanc_auth.dicomweb_url.replace("http://", f"http://{AUTH_USER}:{AUTH_PASSWORD}@")
    client = PacsClient(host, cache=SeriesCache(tmp_path))
    assert client.base_url == orthanc_auth.dicomweb_url
    client.search_studies()
    bad = PacsClient(host.replace(AUTH_PASSWORD, "nope"), cache=SeriesCache(tmp_path))
    with pytest.raises(PacsError) as caught:
        bad.search_studies()
    assert "nope" not in str(caught.value) and AUTH_USER not in str(caught.value)
    assert AUTH_PASSWORD not in everything_logged.text + repr(client)


def test_token_refused_names_the_token_variable(orthanc_auth, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv(TOKEN_ENV, "tok-123-secret")
    client = PacsClient(orthanc_auth.dicomweb_url, cache=SeriesCache(tmp_path))
    sent = []
    client.session.hooks["response"].append(lambda r, *a, **k: sent.append(r.request.headers.get("Authorization")))
    with pytest.raises(PacsError) as caught:
        client.search_studies()
    assert sent == ["Bearer tok-123-secret"]
    assert TOKEN_ENV in str(caught.value) and "tok-123-secret" not in str(caught.value)


def test_tls_is_verified_and_the_ca_bundle_is_honoured(monkeypatch, tmp_path):
    """A real TLS handshake with a self-signed certificate (a tiny HTTPS QIDO stand-in:
    Debian's Orthanc 1.10 crashes on its first HTTPS request under OpenSSL 3)."""
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pem = self_signed_pem(tmp_path)

    class Qido(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Qido)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    try:
        with pytest.raises(PacsError) as caught:
            PacsClient(url, cache=SeriesCache(tmp_path / "c")).search_studies()
        assert CA_BUNDLE_ENV in str(caught.value) and one_sentence(str(caught.value))
        monkeypatch.setenv(CA_BUNDLE_ENV, str(pem.with_name("cert.pem")))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "key.pem"))  # must not override ours
        assert PacsClient(url, cache=SeriesCache(tmp_path / "c")).search_studies() == []
        monkeypatch.setenv(CA_BUNDLE_ENV, str(tmp_path / "missing.pem"))
        with pytest.raises(UserFacingError) as caught:
            PacsClient(url, cache=SeriesCache(tmp_path / "c"))
        assert one_sentence(str(caught.value))
    finally:
        httpd.shutdown()
        httpd.server_close()
