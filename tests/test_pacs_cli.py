"""The CLI with a PACS: the ``pacs`` listing and ``diagnose`` on a DICOMweb series URL,
against a real Orthanc holding the real 30-slice chest CT (skips without either)."""

from __future__ import annotations

import csv

import pytest
from orthanc import AUTH_PASSWORD, AUTH_USER, orthanc, orthanc_auth  # noqa: F401

from napari_covid_attention.cli import main
from napari_covid_attention.io.load import load_ct
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


def _orthanc_datasets(server, study: str, modality: str):
    """The instances of ``modality`` in a study, downloaded from Orthanc as pydicom datasets."""
    from io import BytesIO

    import pydicom

    found = [i for i in server.instances_of_study(study) if _modality_of(server, i) == modality]
    return [pydicom.dcmread(BytesIO(server.instance_file(i["ID"]))) for i in found]


def _modality_of(server, instance: dict) -> str:
    series = server.rest("GET", f"/series/{instance['ParentSeries']}").json()
    return series["MainDicomTags"].get("Modality", "")


def test_push_stores_seg_and_sr_in_the_study_once(orthanc, series, chest_series_dir, tiny_bundle, tmp_path, capsys):  # noqa: F811
    import numpy as np

    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.export import read_measurement_report, read_segmentation
    from napari_covid_attention.models.bundle import load_bundle

    study, uid, _, url = series
    before = orthanc.instance_count()
    out = tmp_path / "out"
    args = ["diagnose", url, "--out", str(out), "--bundle", str(tiny_bundle), "--device", "cpu", "--push"]
    assert main(args) == 0, capsys.readouterr().err
    (row,) = read_rows(out / "results.csv")
    assert row["status"] == "ok" and row["push"] == "stored"
    folder = out / row["outputs"]
    assert (folder / "diagnosis.seg.dcm").is_file() and (folder / "diagnosis.sr.dcm").is_file()
    assert orthanc.instance_count() == before + 2

    (seg,) = _orthanc_datasets(orthanc, study, "SEG")
    (sr,) = _orthanc_datasets(orthanc, study, "SR")
    assert str(seg.StudyInstanceUID) == study == str(sr.StudyInstanceUID)
    (referenced,) = seg.ReferencedSeriesSequence
    assert str(referenced.SeriesInstanceUID) == uid
    referenced_sops = {str(item.ReferencedSOPInstanceUID) for item in referenced.ReferencedInstanceSequence}
    import pydicom

    local_sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in chest_series_dir.glob("*.dcm")}
    assert referenced_sops <= local_sops and referenced_sops
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    assert len(labels) == 3 and all(labels)

    numbers = read_measurement_report(sr)
    assert round(numbers["infection_volume_ml"], 1) == float(row["infection_ml"])
    assert round(numbers["lung_volume_ml"], 1) == float(row["lung_ml"])
    assert round(numbers["infection_percent"], 2) == float(row["infection_percent"])
    for name, p in numbers["probabilities"].items():
        assert round(p, 4) == float(row[f"p_{name}"])
    assert numbers["finding"] == row["finding"]
    assert numbers["infection_segment"][0] == str(seg.SOPInstanceUID)

    # the SEG read back by the plugin is the diagnosis' masks, voxel for voxel
    volume = load_ct(chest_series_dir)
    result = diagnose(volume, load_bundle(tiny_bundle), "cpu")
    masks = read_segmentation(seg, reference_volume=volume)
    assert np.array_equal(masks["lungs"][0], result.lung_mask)
    assert np.array_equal(masks["infection"][0], result.infection_mask.astype(np.uint8))

    # the same version pushed again replaces rather than duplicates
    assert main([*args, "--overwrite"]) == 0
    assert orthanc.instance_count() == before + 2


def test_a_failed_push_is_one_sentence_and_keeps_the_local_outputs(series, chest_series_dir, tiny_bundle, tmp_path, capsys):
    """The series is cached from a server that is then stopped: the diagnosis runs from the
    cache, the STOW fails, the SEG and SR stay in --out."""
    from orthanc import start_orthanc

    study, uid, _, _ = series
    server = start_orthanc(tmp_path / "short-lived")
    server.upload_folder(chest_series_dir)
    url = f"{server.dicomweb_url}/studies/{study}/series/{uid}"
    common = ["--bundle", str(tiny_bundle), "--device", "cpu", "--no-maps"]
    assert main(["diagnose", url, "--out", str(tmp_path / "first"), *common]) == 0
    server.stop()
    out = tmp_path / "out"
    assert main(["diagnose", url, "--out", str(out), *common, "--push"]) == 2
    err = capsys.readouterr().err
    assert "were not stored on the PACS" in err
    (row,) = read_rows(out / "results.csv")
    assert row["status"] == "ok" and "cannot be reached" in row["push"] and row["push"].count(". ") == 0
    folder = out / row["outputs"]
    assert sorted(p.name for p in folder.iterdir()) == ["diagnosis.seg.dcm", "diagnosis.sr.dcm"]


def test_dicom_files_get_seg_and_sr_in_out(chest_series_dir, tiny_bundle, tmp_path):
    from napari_covid_attention.export import read_segmentation

    out = tmp_path / "out"
    one_file = sorted(chest_series_dir.glob("*.dcm"))[3]
    assert main(["diagnose", str(one_file), "--out", str(out), "--bundle", str(tiny_bundle), "--device", "cpu"]) == 0
    (row,) = read_rows(out / "results.csv")
    assert row["dicom"] == "diagnosis.seg.dcm diagnosis.sr.dcm" and "push" not in row
    masks = read_segmentation(out / row["outputs"] / "diagnosis.seg.dcm", reference_volume=load_ct(chest_series_dir))
    assert set(masks) == {"lungs", "infection"}


def test_credentials_in_a_diagnose_url_are_used_and_never_written(orthanc_auth, tiny_bundle, tmp_path, capfd):  # noqa: F811
    root = orthanc_auth.dicomweb_url.replace("//", f"//{AUTH_USER}:{AUTH_PASSWORD}@")
    out = tmp_path / "out"
    assert main(["diagnose", f"{root}/studies/1.2/series/1.2.3", "--out", str(out), "--bundle", str(tiny_bundle)]) == 2
    (row,) = read_rows(out / "results.csv")
    assert row["input"] == f"{orthanc_auth.dicomweb_url}/studies/1.2/series/1.2.3"
    assert "has no series 1.2.3" in row["error"]  # authenticated: a 404, not a 401
    captured = capfd.readouterr()
    assert AUTH_PASSWORD not in (out / "results.csv").read_text() + captured.out + captured.err
