"""DICOM-SEG export (issue 14 item 2): masks on the source frames, exact round trip, stable UIDs.

Tiny synthetic series (made here with pydicom) cover geometry, flips, UIDs and refusals
without shared data; the real 30-slice series checks the voxel-exact round trip of a
diagnosis. Every SEG written is checked by dciodvfy when it is installed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import npe2
import numpy as np
import pydicom
import pytest
from dicom_export_helpers import (
    DCIODVFY,
    asymmetric_masks,
    dciodvfy_errors,
    frames_match_positions,
    headers,
    write_series,
)

from napari_covid_attention.export import ExportError, read_segmentation, segmentation_dataset
from napari_covid_attention.export.source import source_series
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.volume import CTLoadError

ALGORITHM = ("tiny-test", "0.0.1")
# Row direction along +x, column direction along -y: the normal points to the feet, so the
# stack order, the rows and the canonical grid all disagree and two flips are needed.
FLIPPED = (1, 0, 0, 0, -1, 0)


def _series(tmp_path: Path, **kwargs):
    paths = write_series(tmp_path / "ct", **kwargs)
    return load_ct(tmp_path / "ct"), headers(paths)


def _write(seg, path: Path) -> Path:
    seg.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), FLIPPED, (0, 1, 0, 0, 0, -1)], ids=["axial", "flipped", "sagittal"])
def test_round_trip_is_voxel_exact_on_the_ct_grid(tmp_path: Path, orientation) -> None:
    volume, sources = _series(tmp_path, orientation=orientation)
    lungs, infection = asymmetric_masks(volume.shape)
    seg = segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM, mask_affine=volume.affine)
    path = _write(seg, tmp_path / "x.seg.dcm")

    for reference in (None, volume):
        masks = read_segmentation(path, reference)
        assert set(masks) == {"lungs", "infection"}
        assert np.array_equal(masks["lungs"][0], lungs) and masks["lungs"][0].dtype == np.uint8
        assert np.array_equal(masks["infection"][0], infection)
        np.testing.assert_allclose(masks["lungs"][1], volume.affine, atol=1e-3)
        np.testing.assert_allclose(masks["infection"][1], volume.affine, atol=1e-3)


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), FLIPPED], ids=["axial", "flipped"])
def test_each_frame_is_drawn_on_the_source_image_it_references(tmp_path: Path, orientation) -> None:
    """The frame referencing image k holds the mask at image k's pixel positions (flips applied)."""
    volume, sources = _series(tmp_path, orientation=orientation)
    lungs, infection = asymmetric_masks(volume.shape, seed=3)
    seg = segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM)  # default grid: load_ct's
    assert frames_match_positions(seg, sources, infection, volume.affine, segment=3)
    assert frames_match_positions(seg, sources, (lungs == 1).astype(np.uint8), volume.affine, segment=1)
    assert frames_match_positions(seg, sources, (lungs == 2).astype(np.uint8), volume.affine, segment=2)


def test_source_order_follows_positions_not_files_or_instance_numbers(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path, orientation=FLIPPED)
    ordered = source_series(sources)
    heights = [float(np.dot(np.asarray(ds.ImagePositionPatient, float), np.cross([1, 0, 0], [0, -1, 0]))) for ds in ordered.datasets]
    assert heights == sorted(heights)
    lungs, infection = asymmetric_masks(volume.shape)
    one = segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM)
    other = segmentation_dataset(sources[::-1], lungs, infection, algorithm=ALGORITHM)
    assert one.PixelData == other.PixelData
    assert one.SOPInstanceUID == other.SOPInstanceUID


def test_uids_are_derived_per_source_series_and_mask_version(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path)
    lungs, infection = asymmetric_masks(volume.shape)

    def seg(**kwargs):
        return segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM, **kwargs)

    first, again = seg(annotator="Dr X", mask_version=3), seg(annotator="Dr X", mask_version=3)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    other = seg(annotator="Dr X", mask_version=4)
    model = seg()
    assert len({first.SeriesInstanceUID, other.SeriesInstanceUID, model.SeriesInstanceUID}) == 3
    assert first.SeriesInstanceUID != sources[0].SeriesInstanceUID
    for uid in (first.SeriesInstanceUID, first.SOPInstanceUID, model.SOPInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid[5:].isdigit()
    # Another series gets other UIDs for the same version.
    _, elsewhere = _series(tmp_path / "b")
    assert segmentation_dataset(elsewhere, lungs, infection, algorithm=ALGORITHM, mask_version=3).SeriesInstanceUID != first.SeriesInstanceUID


def test_model_output_is_automatic_with_the_bundle_as_algorithm(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path)
    seg = segmentation_dataset(sources, *asymmetric_masks(volume.shape), algorithm=ALGORITHM)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right lung", "Left lung", "Infection"]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert types == ["3341006", "44029006", "52988006"]
    categories = [s.SegmentedPropertyCategoryCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert categories == ["91723000", "91723000", "49755003"]
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ALGORITHM
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert "tiny-test 0.0.1" in seg.SeriesDescription


def test_corrected_masks_name_annotator_and_version(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path)
    masks = asymmetric_masks(volume.shape)
    seg = segmentation_dataset(sources, *masks, algorithm=ALGORITHM, annotator="Dr X", mask_version=3)
    assert seg.SeriesDescription == "COVID-19 attention infection v3 (Dr X)"
    assert seg.ContentDescription == "COVID-19 attention infection v3 (Dr X)"
    assert str(seg.ContentCreatorName) == "Dr X^"
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}
    manual = segmentation_dataset(sources, *masks, algorithm=None, annotator="Dr Y", mask_version=1)
    assert {s.SegmentAlgorithmType for s in manual.SegmentSequence} == {"MANUAL"}
    assert "SegmentationAlgorithmIdentificationSequence" not in manual.SegmentSequence[0]


def test_empty_infection_still_writes_every_frame(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path)
    lungs, _ = asymmetric_masks(volume.shape)
    seg = segmentation_dataset(sources, lungs, np.zeros(volume.shape, np.uint8), algorithm=ALGORITHM)
    assert int(seg.NumberOfFrames) == 3 * volume.shape[0]
    masks = read_segmentation(_write(seg, tmp_path / "e.seg.dcm"), volume)
    assert not masks["infection"][0].any()
    assert np.array_equal(masks["lungs"][0], lungs)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"])
def test_series_without_uids_is_refused_in_one_sentence(tmp_path: Path, keyword: str) -> None:
    paths = write_series(tmp_path / "ct", drop=(keyword,))
    sources = headers(paths)
    lungs, infection = asymmetric_masks((4, 16, 16))
    with pytest.raises(ExportError) as caught:
        segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM)
    assert str(caught.value) == f"The source series has no {keyword}: a DICOM-SEG cannot reference it."


def test_masks_off_the_source_grid_or_with_odd_values_are_refused(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path)
    lungs, infection = asymmetric_masks(volume.shape)
    with pytest.raises(ExportError, match="not on the voxel grid"):
        segmentation_dataset(sources, lungs[:-1], infection[:-1], algorithm=ALGORITHM)
    shifted = volume.affine.copy()
    shifted[:3, 3] += 1.0
    with pytest.raises(ExportError, match="not on the voxel grid"):
        segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM, mask_affine=shifted)
    with pytest.raises(ExportError, match="values other than"):
        segmentation_dataset(sources, lungs * 2, infection, algorithm=ALGORITHM)
    with pytest.raises(ExportError, match="algorithm or its annotator"):
        segmentation_dataset(sources, lungs, infection, algorithm=None)


def test_seg_on_another_grid_is_refused_against_a_reference(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path)
    path = _write(segmentation_dataset(sources, *asymmetric_masks(volume.shape), algorithm=ALGORITHM), tmp_path / "x.seg.dcm")
    other = dataclasses.replace(volume, affine=volume.affine @ np.diag([1.0, 2.0, 1.0, 1.0]))
    with pytest.raises(CTLoadError, match="not on the voxel grid"):
        read_segmentation(path, other)


def test_damaged_or_foreign_files_are_refused_in_one_sentence(tmp_path: Path) -> None:
    volume, sources = _series(tmp_path)
    path = _write(segmentation_dataset(sources, *asymmetric_masks(volume.shape), algorithm=ALGORITHM), tmp_path / "x.seg.dcm")
    cut = tmp_path / "cut.seg.dcm"
    cut.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CTLoadError, match="DICOM-SEG cannot be read"):
        read_segmentation(cut)
    with pytest.raises(CTLoadError, match="not a DICOM segmentation"):
        read_segmentation(sources[0].filename)


# ----- napari reader ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def _plugin_discovered():
    manager = npe2.PluginManager.instance()
    try:
        manager.get_manifest("napari-covid-attention")
    except KeyError:
        manager.discover(include_npe1=False)


def test_plugin_reader_opens_a_seg_as_labels_on_the_ct_geometry(tmp_path: Path, _plugin_discovered) -> None:
    from napari_covid_attention._layer_data import ct_layer_data, plugin_meta

    volume, sources = _series(tmp_path, orientation=FLIPPED)
    lungs, infection = asymmetric_masks(volume.shape)
    path = _write(segmentation_dataset(sources, lungs, infection, algorithm=ALGORITHM), tmp_path / "case.seg.dcm")
    layers = npe2.read([str(path)], stack=False, plugin_name="napari-covid-attention")
    assert [layer[2] for layer in layers] == ["labels", "labels"]
    by_group = {plugin_meta(kwargs["metadata"])["segment_group"]: (data, kwargs) for data, kwargs, _ in layers}
    assert np.array_equal(by_group["lungs"][0], lungs)
    assert np.array_equal(by_group["infection"][0], infection)
    _, ct_kwargs, _ = ct_layer_data(volume, "ct")
    for _data, kwargs in by_group.values():
        np.testing.assert_allclose(kwargs["scale"], ct_kwargs["scale"], atol=1e-6)
        np.testing.assert_allclose(kwargs["translate"], ct_kwargs["translate"], atol=1e-3)
        assert kwargs["name"].endswith(" · case.seg")  # kind first, as the result layers
    # A CT file next to it still opens as a CT.
    ct_layers = npe2.read([str(sources[0].filename)], stack=False, plugin_name="napari-covid-attention")
    assert ct_layers[0][2] == "image"


# ----- dciodvfy --------------------------------------------------------------------------


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), FLIPPED], ids=["axial", "flipped"])
def test_segs_pass_dciodvfy(tmp_path: Path, orientation) -> None:
    volume, sources = _series(tmp_path, orientation=orientation)
    masks = asymmetric_masks(volume.shape)
    for i, kwargs in enumerate(
        [{"algorithm": ALGORITHM}, {"algorithm": ALGORITHM, "annotator": "Dr X", "mask_version": 3}, {"algorithm": None, "annotator": "Dr Y", "mask_version": 1}]
    ):
        path = _write(segmentation_dataset(sources, *masks, **kwargs), tmp_path / f"{i}.seg.dcm")
        errors, output = dciodvfy_errors(path)
        assert "Segmentation" in output  # dciodvfy recognised the IOD
        assert errors == [], output


# ----- the real series -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_diagnosis(chest_series_dir: Path, tiny_bundle: Path):
    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.models.bundle import load_bundle

    volume = load_ct(chest_series_dir)
    return volume, diagnose(volume, load_bundle(tiny_bundle), device="cpu")


def test_real_series_diagnosis_round_trips_voxel_exact(tmp_path: Path, real_diagnosis) -> None:
    from napari_covid_attention.export import dicom_outputs, read_source_datasets

    volume, diagnosis = real_diagnosis
    sources = read_source_datasets(volume.source_path, volume.metadata.get("series_key"))
    assert len(sources) == volume.shape[0]
    seg_path, sr_path = dicom_outputs(sources, diagnosis, tmp_path, name="real")
    assert seg_path.name == "real.seg.dcm" and sr_path.name == "real.sr.dcm"
    for reference in (None, volume):
        masks = read_segmentation(seg_path, reference)
        assert np.array_equal(masks["lungs"][0], diagnosis.lung_mask)
        assert np.array_equal(masks["infection"][0], diagnosis.infection_mask)
        np.testing.assert_allclose(masks["lungs"][1], volume.affine, atol=1e-3)
    # Files are numbered top down (1-01 is the highest slice): frames follow positions.
    seg = pydicom.dcmread(seg_path)
    assert frames_match_positions(seg, sources, diagnosis.infection_mask, volume.affine, segment=3)
    assert frames_match_positions(seg, sources, (diagnosis.lung_mask == 2).astype(np.uint8), volume.affine, segment=2)
    if DCIODVFY:
        errors, output = dciodvfy_errors(seg_path)
        assert errors == [], output
    # A second export of the same result is the same object, not a duplicate.
    again, _ = dicom_outputs(sources, diagnosis, tmp_path / "again", name="real")
    assert pydicom.dcmread(again).SOPInstanceUID == seg.SOPInstanceUID


def test_odd_corpus_segs_read_or_are_refused_in_one_sentence(odd_corpus_dir: Path) -> None:
    """pydicom's SEG files (one frame, big endian...): Labels or a CTLoadError, nothing else."""
    from napari_covid_attention.export.sniff import is_segmentation_file

    segs = [p for p in sorted(odd_corpus_dir.rglob("*.dcm")) if is_segmentation_file(p)]
    assert segs, "the corpus holds SEG files"
    read = 0
    for path in segs:
        try:
            masks = read_segmentation(path)
        except CTLoadError as exc:
            assert str(exc).endswith(".") and "\n" not in str(exc)
            continue
        read += 1
        assert all(mask.ndim == 3 and mask.dtype == np.uint8 and affine.shape == (4, 4) for mask, affine in masks.values())
    assert read >= 1
