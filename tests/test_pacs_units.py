"""PACS pieces that need no server: URLs, credentials, cache, error sentences, STOW answers."""

from __future__ import annotations

import os
import time

import pytest
import requests

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.pacs import (
    SeriesCache,
    parse_series_url,
    parse_study_url,
    redact,
    series_ref,
)
from napari_covid_attention.pacs.auth import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    BasicAuth,
    BearerAuth,
    auth_from_env,
)
from napari_covid_attention.pacs.cache import cache_key
from napari_covid_attention.pacs.client import _store_result, date_range
from napari_covid_attention.pacs.errors import pacs_error

STUDY = "1.2.840.113619.2.55.3.604688119"
SERIES = "1.2.840.113619.2.55.3.604688119.1"


def test_parse_series_url():
    url = f"https://pacs.example.org:8443/dcm4chee-arc/aets/DCM4CHEE/rs/studies/{STUDY}/series/{SERIES}"
    assert parse_series_url(url) == ("https://pacs.example.org:8443/dcm4chee-arc/aets/DCM4CHEE/rs", STUDY, SERIES)
    assert parse_series_url(f"http://127.0.0.1:8042/dicom-web/studies/{STUDY}/series/{SERIES}/") == (
        "http://127.0.0.1:8042/dicom-web", STUDY, SERIES,
    )
    assert parse_series_url(f"http://h/studies/{STUDY}/series/{SERIES}")[0] == "http://h"
    ref = series_ref(f"http://bob:pw%40x@h:80/dw/studies/{STUDY}/series/{SERIES}?token=abc")
    assert ref.base_url == "http://h:80/dw" and ref.credentials == ("bob", "pw@x")
    assert "pw" not in repr(ref) and "pw" not in str(ref) and "abc" not in ref.url
    for bad in ("http://h/dicom-web", f"http://h/studies/{STUDY}", "ftp://h/studies/1/series/2", "/tmp/scan", "http:///x"):
        with pytest.raises(UserFacingError):
            parse_series_url(bad)
    assert parse_study_url("http://h/dicom-web/") == ("http://h/dicom-web", None)
    assert parse_study_url(f"http://h/dicom-web/studies/{STUDY}") == ("http://h/dicom-web", STUDY)


def test_redact_removes_credentials_and_query():
    assert redact("https://u:p@h:1/a/b?access_token=t") == "https://h:1/a/b"
    assert redact("http://[::1]:8042/x") == "http://[::1]:8042/x"


def test_auth_precedence():
    auth, source = auth_from_env(("u", "p"), {TOKEN_ENV: "t"})
    assert isinstance(auth, BasicAuth) and source == "url"
    auth, source = auth_from_env(None, {TOKEN_ENV: "t", USER_ENV: "u", PASSWORD_ENV: "p"})
    assert isinstance(auth, BearerAuth) and source == "token" and "t" not in repr(auth).replace("BearerAuth", "")
    auth, source = auth_from_env(None, {USER_ENV: "u", PASSWORD_ENV: "p"})
    assert (auth.username, auth.password, source) == ("u", "p", "basic") and "p" not in repr(auth).replace("BasicAuth", "")
    assert auth_from_env(None, {}) == (None, "netrc")
    with pytest.raises(UserFacingError, match=PASSWORD_ENV):
        auth_from_env(None, {USER_ENV: "u"})


def test_date_range():
    assert date_range("20200101-20201231") == "20200101-20201231"
    assert date_range("2020.01.01-") == "20200101-"
    assert date_range("-20201231") == "-20201231"
    assert date_range(None) is None
    for bad in ("2020", "20200101 20201231", "-", "20201231-20200101", "2020010120201231"):
        with pytest.raises(UserFacingError):
            date_range(bad)


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response._content = b"<html>server internals, perhaps an echo of secrets</html>"
    return requests.HTTPError(f"{status} for url", response=response)


@pytest.mark.parametrize(("status", "expected"), [
    (401, "refused the credentials (401)"),
    (403, "does not allow this user to search for studies (403)"),
    (404, "has no study 1.2 (404)"),
    (500, "server error (500)"),
    (503, "busy or unavailable (503)"),
    (418, "HTTP 418"),
])
def test_http_errors_are_one_sentence(status, expected):
    error = pacs_error(_http_error(status), "http://h/dw", "search for studies", "study 1.2", "basic", 30)
    message = str(error)
    assert expected in message and message.startswith("The PACS at http://h/dw ") and message.endswith(".")
    assert "secrets" not in message and error.status == status


def _fill(folder, n_bytes: int) -> None:
    (folder / "0.dcm").write_bytes(b"\0" * n_bytes)


def test_cache_entries_are_complete_or_absent_and_capped(tmp_path):
    cache = SeriesCache(tmp_path / "cache", max_bytes=2500)
    keys = [cache_key("http://h/dw", STUDY, f"{SERIES}.{i}") for i in range(3)]
    assert len(set(keys)) == 3 and all(STUDY not in k for k in keys)
    with pytest.raises(RuntimeError), cache.writing(keys[0], {}) as folder:
        _fill(folder, 1000)
        raise RuntimeError("download failed half way")
    assert cache.series_folder(keys[0]) is None and os.listdir(cache.root) == []
    for i, key in enumerate(keys[:2]):
        with cache.writing(key, {"n": i}) as folder:
            _fill(folder, 1000)
        os.utime(cache.root / key / "entry.json", (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.series_folder(keys[0]) is not None  # a hit makes it the most recently used
    assert cache.info(keys[0])["n"] == 0 and cache.info(keys[0])["size_bytes"] == 1000
    with cache.writing(keys[2], {}) as folder:  # over the cap: the least recently used goes
        _fill(folder, 1000)
    assert cache.series_folder(keys[1]) is None
    assert cache.series_folder(keys[0]) is not None and cache.series_folder(keys[2]) is not None
    big = cache_key("http://h/dw", STUDY, "9.9")
    with cache.writing(big, {}) as folder:  # one entry above the cap is kept (it is in use)
        _fill(folder, 5000)
    assert cache.series_folder(big) is not None and [e.key for e in cache.entries()] == [big]


def test_a_second_writer_of_the_same_series_keeps_the_first_copy(tmp_path):
    cache = SeriesCache(tmp_path, max_bytes=10**6)
    key = cache_key("http://h", "1", "2")
    with cache.writing(key, {"who": "second"}) as late:
        _fill(late, 10)
        with cache.writing(key, {"who": "first"}) as early:
            _fill(early, 10)
    assert cache.info(key)["who"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == [key]


def test_store_result_reads_failures():
    from pydicom.dataset import Dataset

    sent = []
    for uid in ("1.1", "1.2"):
        ds = Dataset()
        ds.SOPInstanceUID = uid
        sent.append(ds)
    ok = Dataset()
    ok.ReferencedSOPInstanceUID = "1.1"
    bad = Dataset()
    bad.ReferencedSOPInstanceUID, bad.FailureReason = "1.2", 0xA700
    answer = Dataset()
    answer.ReferencedSOPSequence = [ok]
    answer.FailedSOPSequence = [bad]
    result = _store_result(answer, sent)
    assert result.stored == ("1.1",) and result.failed == (("1.2", "A700"),)
    assert _store_result(Dataset(), sent).stored == ("1.1", "1.2")


def test_pacs_imports_neither_qt_nor_napari():
    from test_imports import _gui_modules_loaded_by

    assert _gui_modules_loaded_by("napari_covid_attention.pacs") == []
