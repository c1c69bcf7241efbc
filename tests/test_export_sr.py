"""TID 1500 SR and report page export (issue 14 items 2-3): numbers read back exactly equal.

Synthetic series and a hand-made Diagnosis cover the report's content, its references to
the SEG and its refusals; the real series checks ``dicom_outputs`` end to end (SEG, SR,
PNG, PDF) on a diagnosis. Every SR written is checked by dciodvfy when it is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_export_helpers import DCIODVFY, asymmetric_masks, dciodvfy_errors, headers, write_series

from napari_covid_attention.export import (
    ExportError,
    corrected,
    diagnosis_numbers,
    measurement_report,
    read_measurement_report,
    segmentation_dataset,
)
from napari_covid_attention.export.report_png import key_slice, write_report
from napari_covid_attention.io.load import load_ct

ALGORITHM = ("tiny-test", "0.0.1")
# Values a 16-character decimal string cannot hold: they must come back bit-exact anyway.
NUMBERS = {
    "infection_volume_ml": 123.45678901234567,
    "lung_volume_ml": 4567.891234567891,
    "infection_percent": 100 * 123.45678901234567 / 4567.891234567891,
    "probabilities": {"COVID-19": 0.7123456789012345, "CAP": 0.2876543210987655},
    "pneumonia_detected": True,
    "finding": "COVID-19",
    "algorithm": ALGORITHM,
}


@pytest.fixture
def series(tmp_path: Path):
    paths = write_series(tmp_path / "ct")
    volume = load_ct(tmp_path / "ct")
    sources = headers(paths)
    lungs, infection = asymmetric_masks(volume.shape)
    seg = segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM, annotator="Dr X", mask_version=3)
    return volume, sources, seg


def _saved(dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_numbers_read_back_exactly_and_reference_the_infection_segment(tmp_path: Path, series) -> None:
    _, sources, seg = series
    sr = measurement_report(sources, seg, NUMBERS, annotator="Dr X")
    back = read_measurement_report(_saved(sr, tmp_path / "x.sr.dcm"))
    for key, value in NUMBERS.items():
        assert back[key] == value, key
    assert back["infection_segment"] == (seg.SOPInstanceUID, 3)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in (seg.SeriesInstanceUID, sources[0].SeriesInstanceUID)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence


def test_report_uids_follow_the_seg(series) -> None:
    _, sources, seg = series
    one, again = measurement_report(sources, seg, NUMBERS), measurement_report(sources, seg, NUMBERS)
    assert (one.SeriesInstanceUID, one.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    other_seg = segmentation_dataset(sources, *asymmetric_masks((4, 16, 16)), algorithm=ALGORITHM, mask_version=4)
    assert measurement_report(sources, other_seg, NUMBERS).SOPInstanceUID != one.SOPInstanceUID
    assert one.SOPInstanceUID.startswith("2.25.")


def test_no_pneumonia_is_recorded_absent_without_a_cause(tmp_path: Path, series) -> None:
    _, sources, seg = series
    numbers = {**NUMBERS, "pneumonia_detected": False, "finding": "No pneumonia detected", "infection_volume_ml": 0.0, "infection_percent": 0.0}
    sr = measurement_report(sources, seg, numbers)
    back = read_measurement_report(_saved(sr, tmp_path / "n.sr.dcm"))
    assert back["pneumonia_detected"] is False
    assert back["finding"] == "No pneumonia detected"
    assert back["infection_volume_ml"] == 0.0


def test_other_class_names_survive(tmp_path: Path, series) -> None:
    _, sources, seg = series
    numbers = {**NUMBERS, "probabilities": {"Viral pneumonia": 0.25, "Bacterial": 0.75}, "finding": "Bacterial"}
    back = read_measurement_report(_saved(measurement_report(sources, seg, numbers), tmp_path / "o.sr.dcm"))
    assert back["probabilities"] == numbers["probabilities"]
    assert back["finding"] == "Bacterial"


def test_incomplete_numbers_are_refused(series) -> None:
    _, sources, seg = series
    with pytest.raises(ExportError, match="lack lung_volume_ml"):
        measurement_report(sources, seg, {k: v for k, v in NUMBERS.items() if k != "lung_volume_ml"})


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("detected", [True, False])
def test_srs_pass_dciodvfy(tmp_path: Path, series, detected: bool) -> None:
    _, sources, seg = series
    numbers = {**NUMBERS, "pneumonia_detected": detected}
    path = _saved(measurement_report(sources, seg, numbers, annotator="Dr X" if detected else None), tmp_path / "v.sr.dcm")
    errors, output = dciodvfy_errors(path)
    assert "Comprehensive3DSR" in output  # dciodvfy recognised the IOD
    assert errors == [], output


# ----- numbers of a diagnosis, corrected masks, report page ------------------------------


def _diagnosis(volume, lungs, infection):
    """A Diagnosis made by hand (no model run) with coarse maps on a sub-grid of the scan."""
    from napari_covid_attention.diagnosis import Diagnosis, SaliencyMap
    from napari_covid_attention.io.geometry import subgrid_affine

    voxel_ml = volume.voxel_volume_ml
    coarse = subgrid_affine(volume.affine, np.zeros(3), np.array([1.0, 4.0, 4.0]))
    ramp = np.linspace(0, 1, 4 * 4 * 4, dtype=np.float32).reshape(4, 4, 4)
    return Diagnosis(
        class_names=("COVID-19", "CAP"),
        probabilities={"COVID-19": 0.8, "CAP": 0.2},
        members=[],
        lesion_probabilities=None,
        maps={"attention": SaliencyMap(ramp, coarse), "gradcam": SaliencyMap(ramp[::-1].copy(), coarse)},
        lung_mask=lungs,
        infection_mask=infection,
        lung_volume_ml=float(np.count_nonzero(lungs)) * voxel_ml,
        infection_volume_ml=float(np.count_nonzero(infection)) * voxel_ml,
        scan_affine=volume.affine,
        classifier_grid=None,
        timings_s={},
        bundle_name=ALGORITHM[0],
        bundle_version=ALGORITHM[1],
        bundle_label="test bundle",
        device="cpu",
        warnings=["A test warning that is long enough to need wrapping on the page " * 3],
    )


def test_corrected_masks_recompute_volumes_and_decision(series) -> None:
    volume, _, _ = series
    lungs, infection = asymmetric_masks(volume.shape)
    diagnosis = _diagnosis(volume, lungs, infection)
    edited = corrected(diagnosis, lungs, np.zeros_like(infection))
    numbers = diagnosis_numbers(edited)
    assert numbers["infection_volume_ml"] == 0.0 and numbers["infection_percent"] == 0.0
    assert numbers["pneumonia_detected"] is False and numbers["finding"] == "No pneumonia detected"
    assert numbers["lung_volume_ml"] == diagnosis.lung_volume_ml
    assert numbers["probabilities"] == diagnosis.probabilities
    assert diagnosis_numbers(diagnosis)["infection_percent"] == diagnosis.infection_percent


def test_report_page_is_written_as_png_and_pdf(tmp_path: Path, series) -> None:
    from matplotlib.image import imread

    volume, _, _ = series
    lungs, infection = asymmetric_masks(volume.shape)
    diagnosis = _diagnosis(volume, lungs, infection)
    png, pdf = write_report(volume, diagnosis, tmp_path / "r.report.png", annotator="Dr X", mask_version=3)
    image = imread(png)
    assert image.shape[0] > image.shape[1] > 1000  # an A4 portrait page
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert key_slice(infection, lungs) == int(np.argmax(np.count_nonzero(infection, axis=(1, 2))))
    assert key_slice(np.zeros_like(infection), lungs) == int(np.argmax(np.count_nonzero(lungs, axis=(1, 2))))


# ----- the real series -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_diagnosis(chest_series_dir: Path, tiny_bundle: Path):
    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.models.bundle import load_bundle

    volume = load_ct(chest_series_dir)
    return volume, diagnose(volume, load_bundle(tiny_bundle), device="cpu")


def test_real_series_outputs_carry_the_diagnosis_numbers(tmp_path: Path, real_diagnosis) -> None:
    from napari_covid_attention.export import dicom_outputs, read_source_datasets

    volume, diagnosis = real_diagnosis
    sources = read_source_datasets(volume.source_path)
    paths = dicom_outputs(sources, diagnosis, tmp_path, name="real", volume=volume)
    assert [p.name for p in paths] == ["real.seg.dcm", "real.sr.dcm", "real.report.png", "real.report.pdf"]
    back = read_measurement_report(paths[1])
    for key, value in diagnosis_numbers(diagnosis).items():
        assert back[key] == value, key
    assert back["infection_volume_ml"] == diagnosis.infection_volume_ml
    assert back["probabilities"]["COVID-19"] == diagnosis.probabilities["COVID-19"]
    assert back["infection_segment"] == (pydicom.dcmread(paths[0]).SOPInstanceUID, 3)
    if DCIODVFY:
        errors, output = dciodvfy_errors(paths[1])
        assert errors == [], output


def test_real_series_corrected_masks_export(tmp_path: Path, real_diagnosis) -> None:
    from napari_covid_attention.export import dicom_outputs, read_segmentation, read_source_datasets

    volume, diagnosis = real_diagnosis
    edited = np.zeros_like(diagnosis.infection_mask)
    edited[10:14, 200:260, 100:160] = 1
    edited &= diagnosis.lung_mask > 0
    sources = read_source_datasets(volume.source_path)
    seg_path, sr_path = dicom_outputs(
        sources, diagnosis, tmp_path, name="v3", infection_mask=edited, annotator="Dr X", mask_version=3
    )
    seg = pydicom.dcmread(seg_path)
    assert seg.SeriesDescription == "COVID-19 attention infection v3 (Dr X)"
    assert np.array_equal(read_segmentation(seg_path, volume)["infection"][0], edited)
    back = read_measurement_report(sr_path)
    expected = diagnosis_numbers(corrected(diagnosis, diagnosis.lung_mask, edited))
    assert back["infection_volume_ml"] == expected["infection_volume_ml"] == float(edited.sum()) * volume.voxel_volume_ml
    assert back["infection_percent"] == expected["infection_percent"]
    assert back["pneumonia_detected"] == expected["pneumonia_detected"]
    if DCIODVFY:
        for path in (seg_path, sr_path):
            errors, output = dciodvfy_errors(path)
            assert errors == [], output


def test_diagnose_report_writes_the_one_page_report_per_scan(tmp_path, tiny_bundle):
    """`diagnose --report`: the page for people without an SR viewer, beside the masks."""
    from napari_covid_attention.cli import main
    from napari_covid_attention.data.synthetic import generate_phantom
    from napari_covid_attention.io.nifti import save_nifti

    phantom = generate_phantom(3, label="CAP", shape=(32, 64, 64))
    scan = tmp_path / "scan.nii.gz"
    save_nifti(scan, phantom.volume.hu, phantom.volume.affine)
    out = tmp_path / "out"
    code = main(["diagnose", str(scan), "--bundle", str(tiny_bundle), "--out", str(out), "--device", "cpu", "--no-maps", "--report"])
    assert code == 0
    import csv

    (row,) = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    page = Path(row["report"])
    assert page.name == "report.png" and page.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
