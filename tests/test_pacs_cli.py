"""The CLI with a PACS: the ``pacs`` listing and ``diagnose`` on a DICOMweb series URL,
against a real Orthanc holding the real 30-slice chest CT (skips without either)."""

from __future__ import annotations

import csv

import pytest
from orthanc import AUTH_PASSWORD, AUTH_USER, orthanc, orthanc_auth  # noqa: F401

from napari_covid_attention.cli import main
from napari_covid_attention.pacs.auth import CA_BUNDLE_ENV, PASSWORD_ENV, TOKEN_ENV, USER_ENV


@pytest.fixture(autouse=True)
def no_pacs_env(monkeypatch, tmp_path):
    for name in (USER_ENV, PASSWORD_ENV, TOKEN_ENV, CA_BUNDLE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture(scope="module")
def series(orthanc, chest_series_dir):  # noqa: F811
    """(study UID, series UID, patient ID, series URL) of the real series stored in Orthanc."""
    import pydicom

    orthanc.upload_folder(chest_series_dir)
    first = pydicom.dcmread(sorted(chest_series_dir.glob("*.dcm"))[0], stop_before_pixels=True)
    study, uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    return study, uid, str(first.PatientID), f"{orthanc.dicomweb_url}/studies/{study}/series/{uid}"


def read_rows(table):
    with open(table, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_pacs_lists_studies_then_series(orthanc, series, capsys):  # noqa: F811
    study, uid, patient, url = series
    assert main(["pacs", orthanc.dicomweb_url, "--patient-id", patient, "--modality", "CT"]) == 0
    out = capsys.readouterr().out
    assert study in out and patient in out and "1 study" in out and out.splitlines()[0].startswith("DATE")
    assert main(["pacs", orthanc.dicomweb_url, "--study", study]) == 0
    out = capsys.readouterr().out
    assert url in out and "1 series" in out
    assert main(["pacs", f"{orthanc.dicomweb_url}/studies/{study}"]) == 0
    assert url in capsys.readouterr().out
    assert main(["pacs", orthanc.dicomweb_url, "--patient-id", "nobody"]) == 0
    assert "0 studies" in capsys.readouterr().out


def test_pacs_errors_are_one_line(orthanc_auth, capsys):  # noqa: F811
    assert main(["pacs", orthanc_auth.dicomweb_url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The PACS at") and "(401)" in err and err.count("\n") == 1
    assert main(["pacs", orthanc_auth.dicomweb_url, "--date", "2020"]) == 2
    assert "not a date" in capsys.readouterr().err
    with_password = orthanc_auth.dicomweb_url.replace("//", f"//{AUTH_USER}:{AUTH_PASSWORD}@")
    assert main(["pacs", with_password]) == 0
    out, err = capsys.readouterr()
    assert AUTH_PASSWORD not in out + err


def test_diagnose_a_series_url(series, chest_series_dir, tiny_bundle, tmp_path, capsys):
    study, uid, _, url = series
    out = tmp_path / "out"
    args = ["diagnose", url, str(chest_series_dir), "--out", str(out), "--bundle", str(tiny_bundle), "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    rows = read_rows(out / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["input"] == url
    remote, local = rows
    for column in ("finding", "predicted", "infection_ml", "lung_ml", "p_COVID-19"):
        assert remote[column] == local[column], column  # the same scan, the same result
    folder = out / remote["outputs"]
    assert folder.name.startswith("0000_series-1.3.6.1.4") and (folder / "summary.json").is_file()


def test_diagnose_url_failures_are_rows(orthanc, series, tiny_bundle, tmp_path, capsys):  # noqa: F811
    study, _, _, url = series
    missing = f"{orthanc.dicomweb_url}/studies/{study}/series/1.2.3"
    out = tmp_path / "out"
    assert main(["diagnose", missing, "--out", str(out), "--bundle", str(tiny_bundle), "--device", "cpu"]) == 2
    (row,) = read_rows(out / "results.csv")
    assert row["status"] == "error" and "has no series 1.2.3" in row["error"]
    assert main(["diagnose", f"{orthanc.dicomweb_url}/studies/{study}", "--out", str(tmp_path / "o2")]) == 2
    assert "does not name a DICOMweb series" in capsys.readouterr().err
