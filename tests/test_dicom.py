"""DICOM CT reading: the real chest series, and small synthetic series written with pydicom."""

from __future__ import annotations

import gc
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from napari_covid_attention.io import dicom, geometry
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.volume import CTLoadError

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SECRET_NAME = "Secret^Patient"


# ----------------------------------------------------------------- test-data writer


@dataclass
class Series:
    """What a synthetic series holds, in slice-position order, for checking a load."""

    folder: Path
    raw: np.ndarray  # (n, rows, cols) stored values, sorted by position along the normal
    positions: np.ndarray  # (n, 3) ImagePositionPatient, same order
    iop: tuple[float, ...]
    spacing: tuple[float, float]
    slopes: np.ndarray
    intercepts: np.ndarray
    files: list[Path] = field(default_factory=list)


def _normal(iop) -> np.ndarray:
    return np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))


def write_series(
    folder: Path,
    n: int = 8,
    rows: int = 32,
    cols: int = 24,
    *,
    iop=AXIAL,
    spacing=(0.7, 0.8),
    origin=(-10.0, -20.0, -30.0),
    step: float | np.ndarray = 2.5,
    slope: float | list[float] = 1.0,
    intercept: float | list[float] = -1024.0,
    signed: bool = False,
    bits_stored: int = 12,
    syntax=ExplicitVRLittleEndian,
    order: list[int] | None = None,
    names: list[str] | None = None,
    series_uid: str | None = None,
    modality: str = "CT",
    sop_class=CTImageStorage,
    seed: int = 0,
    extra: dict | None = None,
    positions: np.ndarray | None = None,
    acquisitions: list[int] | None = None,
) -> Series:
    """Write a CT series with pydicom; ``order[i]`` is the position index of file i."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    low, high = (-500, 1500) if signed else (0, 2000)
    raw = rng.integers(low, high, size=(n, rows, cols)).astype(np.int16 if signed else np.uint16)
    raw[:, 0, 0] = 100 + 10 * np.arange(n)  # a per-slice marker for ordering checks
    if positions is None:
        step_vector = np.asarray(step, float) if np.ndim(step) else _normal(iop) * step
        positions = np.asarray(origin, float) + np.arange(n)[:, None] * step_vector
    slopes = np.broadcast_to(np.asarray(slope, float), (n,)).copy()
    intercepts = np.broadcast_to(np.asarray(intercept, float), (n,)).copy()
    order = list(range(n)) if order is None else order
    names = names or [f"IM{i:04d}.dcm" for i in range(len(order))]
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    files = []
    for i, k in enumerate(order):
        ds = _slice_dataset(
            raw[k], positions[k], iop, spacing, slopes[k], intercepts[k], signed, bits_stored
        )
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            study_uid,
            series_uid,
            frame_uid,
        )
        ds.Modality = modality
        ds.InstanceNumber = i + 1
        ds.AcquisitionNumber = acquisitions[k] if acquisitions else 1
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        files.append(_save(ds, folder / names[i], syntax))
    return Series(folder, raw, positions, iop, spacing, slopes, intercepts, files)


def _slice_dataset(
    pixels, position, iop, spacing, slope, intercept, signed, bits_stored
) -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.StudyDate = SECRET_NAME, "ID-12345", "20200101"
    ds.Manufacturer, ds.KVP, ds.SliceThickness = "TestVendor", "120", "2.5"
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
    ds.PixelSpacing = [f"{v:g}" for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    ds.PixelData = pixels.tobytes()
    return ds


def _save(ds: Dataset, path: Path, syntax) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(syntax)
    elif syntax != ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == ExplicitVRBigEndian:  # pydicom writes pixel bytes as given
            ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    ds.save_as(
        path,
        enforce_file_format=True,
        little_endian=syntax != ExplicitVRBigEndian,
        implicit_vr=syntax == ImplicitVRLittleEndian,
    )
    return path


def expected_hu(series: Series) -> np.ndarray:
    return series.raw * series.slopes[:, None, None] + series.intercepts[:, None, None]


def assert_voxels_at_patient_positions(volume, series: Series, samples: int = 40) -> None:
    """Every sampled source voxel is found, through the affine, where the patient was."""
    rng = np.random.default_rng(1)
    row = np.asarray(series.iop[:3])
    col = np.asarray(series.iop[3:])
    inverse = np.linalg.inv(volume.affine)
    expected = np.maximum(expected_hu(series), -1024)
    n, rows, cols = series.raw.shape
    for _ in range(samples):
        k, r, c = rng.integers(n), rng.integers(rows), rng.integers(cols)
        patient = series.positions[k] + r * series.spacing[0] * col + c * series.spacing[1] * row
        index = inverse @ np.append(patient, 1.0)
        assert np.allclose(index[:3], np.round(index[:3]), atol=1e-3)
        z, y, x = np.round(index[:3]).astype(int)
        assert volume.hu[z, y, x] == pytest.approx(expected[k, r, c])


def assert_canonical(volume) -> None:
    assert np.array_equal(geometry.orientation_of(volume.affine), geometry.CANONICAL_ORNT)


# -------------------------------------------------------------- the real chest series


def test_real_series_loads_with_expected_geometry_and_values(chest_series_dir: Path) -> None:
    volume = load_ct(chest_series_dir)
    assert volume.shape == (30, 512, 512)
    assert volume.spacing_mm == pytest.approx((8.0, 0.6465, 0.6465), abs=1e-3)
    assert volume.affine[2, 0] > 0  # canonical z runs inferior -> superior
    assert_canonical(volume)
    assert volume.hu.dtype == np.int16
    corner = np.concatenate([volume.hu[:, :40, :40].ravel(), volume.hu[:, :40, -40:].ravel()])
    assert -1050 <= np.median(corner) <= -950
    assert volume.warnings == ()


def test_real_series_metadata_is_technical_only(chest_series_dir: Path) -> None:
    volume = load_ct(chest_series_dir)
    text = repr(volume.metadata) + repr(volume.warnings)
    assert "Lung_Dx-A0002" not in text
    for key in ("PatientName", "PatientID", "StudyDate", "SeriesInstanceUID", "AccessionNumber"):
        assert key not in volume.metadata
    assert volume.metadata["Modality"] == "CT"
    assert volume.metadata["Rows"] == "512" and volume.metadata["NumberOfSlices"] == "30"
    assert volume.metadata["TransferSyntax"] == "Explicit VR Little Endian"


def test_real_series_order_ignores_file_names(chest_series_dir: Path, tmp_path: Path) -> None:
    reference = load_ct(chest_series_dir)
    files = sorted(chest_series_dir.glob("*.dcm"))
    for name, order in (
        ("reversed", files[::-1]),
        ("shuffled", list(np.random.default_rng(3).permutation(files))),
    ):
        folder = tmp_path / name
        folder.mkdir()
        for i, source in enumerate(order):
            (folder / f"x{i:03d}.dcm").symlink_to(source)
        volume = load_ct(folder)
        assert np.array_equal(volume.hu, reference.hu)
        assert np.allclose(volume.affine, reference.affine)


def test_real_series_one_file_gives_the_folder_volume(chest_series_dir: Path) -> None:
    from_folder = load_ct(chest_series_dir)
    from_file = load_ct(chest_series_dir / "1-17.dcm")
    assert np.array_equal(from_file.hu, from_folder.hu)
    assert np.allclose(from_file.affine, from_folder.affine)
    assert from_file.source_path.endswith("1-17.dcm")


def test_real_series_matches_pydicom_values(chest_series_dir: Path) -> None:
    volume = load_ct(chest_series_dir)
    ds = pydicom.dcmread(chest_series_dir / "1-01.dcm")
    hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    z = int(round((float(ds.ImagePositionPatient[2]) - volume.affine[2, 3]) / volume.affine[2, 0]))
    assert np.array_equal(volume.hu[z], np.maximum(hu, -1024))


# ------------------------------------------------------------------ ordering, geometry


def test_shuffled_names_and_instance_numbers_sort_by_position(tmp_path: Path) -> None:
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    names = [f"{name}.dcm" for name in ("q", "b", "z", "a", "m", "c", "y", "k")]
    series = write_series(tmp_path, order=order, names=names)
    volume = load_ct(tmp_path)
    assert volume.shape == (8, 32, 24)
    assert np.array_equal(volume.hu, expected_hu(series).astype(np.int16))
    assert_canonical(volume)
    assert_voxels_at_patient_positions(volume, series)
    assert volume.warnings == ()


def test_reversed_positions_end_canonical(tmp_path: Path) -> None:
    series = write_series(tmp_path, origin=(-10.0, -20.0, 40.0), step=np.array([0.0, 0.0, -2.5]))
    volume = load_ct(tmp_path)
    assert volume.affine[2, 0] == pytest.approx(2.5)
    assert_canonical(volume)
    assert_voxels_at_patient_positions(volume, series)


@pytest.mark.parametrize("iop", [SAGITTAL, CORONAL], ids=["sagittal", "coronal"])
def test_sagittal_and_coronal_acquisitions_end_canonical(tmp_path: Path, iop) -> None:
    series = write_series(tmp_path, iop=iop, rows=20, cols=16, spacing=(0.9, 0.6))
    volume = load_ct(tmp_path)
    assert_canonical(volume)
    assert_voxels_at_patient_positions(volume, series)
    assert sorted(volume.spacing_mm) == pytest.approx(sorted((2.5, 0.9, 0.6)))
    assert dicom.list_series(tmp_path)[0].orientation == (
        "sagittal" if iop == SAGITTAL else "coronal"
    )


def test_gantry_tilt_is_a_shear_with_a_warning(tmp_path: Path) -> None:
    tilt = math.radians(15.0)
    step = np.array([0.0, 2.5 * math.tan(tilt), 2.5])
    series = write_series(tmp_path, step=step)
    volume = load_ct(tmp_path)
    assert any("15.0 degrees" in w and "tilt" in w for w in volume.warnings)
    assert np.allclose(volume.affine[:3, 0], step, atol=1e-3)  # sheared z column
    assert_voxels_at_patient_positions(volume, series)
    transform = geometry.layer_transform(volume.affine)
    assert transform.shear is not None


def test_missing_slice_gives_a_gap_warning(tmp_path: Path) -> None:
    write_series(tmp_path, order=[0, 1, 2, 4, 5, 6, 7])
    volume = load_ct(tmp_path)
    assert volume.shape[0] == 7
    assert volume.spacing_mm[0] == pytest.approx(2.5)
    assert any("missing" in w and "gap" in w for w in volume.warnings)


def test_duplicate_positions_are_dropped_deterministically(tmp_path: Path) -> None:
    series = write_series(tmp_path, order=[0, 1, 2, 3, 3, 4, 5, 6, 7, 7])
    first = load_ct(tmp_path)
    assert first.shape[0] == 8
    assert any("2 slices repeated the position" in w for w in first.warnings)
    for i, path in enumerate(series.files):  # renaming files must not change the pick
        path.rename(tmp_path / f"renamed{9 - i}.dcm")
    second = load_ct(tmp_path)
    assert np.array_equal(first.hu, second.hu)


def test_uneven_spacing_warns_and_uses_the_median(tmp_path: Path) -> None:
    heights = np.array([0.0, 2.5, 5.0, 7.6, 10.0, 12.5, 15.1, 17.5])
    positions = np.stack([np.full(8, -10.0), np.full(8, -20.0), heights], axis=1)
    write_series(tmp_path, positions=positions)
    volume = load_ct(tmp_path)
    assert volume.spacing_mm[0] == pytest.approx(2.5)
    assert any("spacing varies" in w for w in volume.warnings)


def test_overlapping_acquisitions_warn(tmp_path: Path) -> None:
    heights = np.array([0.0, 5.0, 10.0, 15.0, 2.5, 7.5, 12.5, 17.5])
    positions = np.stack([np.full(8, -10.0), np.full(8, -20.0), heights], axis=1)
    write_series(tmp_path, positions=positions, acquisitions=[1, 1, 1, 1, 2, 2, 2, 2])
    volume = load_ct(tmp_path)
    assert any("2 acquisitions" in w for w in volume.warnings)


def test_consecutive_acquisitions_do_not_warn(tmp_path: Path) -> None:
    write_series(tmp_path, acquisitions=[1, 1, 1, 1, 2, 2, 2, 2])
    assert load_ct(tmp_path).warnings == ()


# ----------------------------------------------------------------------- values


def test_integral_rescale_stays_int16(tmp_path: Path) -> None:
    series = write_series(tmp_path, slope=1, intercept=-1024)
    volume = load_ct(tmp_path)
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.hu, np.maximum(expected_hu(series), -1024))


def test_fractional_slope_gives_float_values(tmp_path: Path) -> None:
    series = write_series(tmp_path, slope=0.5, intercept=-1024)
    volume = load_ct(tmp_path)
    assert volume.hu.dtype == np.float32
    assert np.allclose(volume.hu, np.maximum(expected_hu(series), -1024))


def test_per_slice_rescale_is_applied_per_slice(tmp_path: Path) -> None:
    intercepts = [-1024, -1000, -1024, -900, -1024, -1024, -1010, -1024]
    series = write_series(tmp_path, slope=[1, 1, 2, 1, 1, 1, 1, 1], intercept=intercepts)
    volume = load_ct(tmp_path)
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.hu, np.maximum(expected_hu(series), -1024))


def test_16_bit_signed_values_beyond_the_bits_stored_bound(tmp_path: Path) -> None:
    series = write_series(tmp_path, signed=True, bits_stored=16, intercept=-1024)
    volume = load_ct(tmp_path)
    assert volume.hu.dtype == np.int16
    assert np.array_equal(volume.hu, np.maximum(expected_hu(series), -1024))


def test_padding_below_air_becomes_air(tmp_path: Path) -> None:
    series = write_series(tmp_path, signed=True, bits_stored=16, intercept=0)
    for path in series.files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[:4, :4] = -3024
        ds.PixelData = pixels.tobytes()
        ds.save_as(path)
    volume = load_ct(tmp_path)
    assert (volume.hu[:, :4, :4] == -1024).all()


def test_pixel_padding_value_becomes_air_even_above_air(tmp_path: Path) -> None:
    series = write_series(
        tmp_path, signed=True, bits_stored=16, intercept=1000, extra={"PixelPaddingValue": -2000}
    )
    for path in series.files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[-3:, -3:] = -2000  # -1000 HU after rescale, but marked as padding
        ds.PixelData = pixels.tobytes()
        ds.save_as(path)
    volume = load_ct(tmp_path)
    canonical_corner = volume.hu[:, -3:, -3:]
    assert (canonical_corner == -1024).all()
    assert (volume.hu[:, 5:-5, 5:-5] > -1024).any()


# ------------------------------------------------------------------ series choice


def test_largest_series_is_default_and_series_key_picks_another(tmp_path: Path) -> None:
    write_series(tmp_path, n=8, names=[f"a{i}.dcm" for i in range(8)])
    write_series(tmp_path, n=5, rows=16, cols=16, names=[f"b{i}.dcm" for i in range(5)], seed=2)
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "notes.json").write_text("{}")
    infos = dicom.list_series(tmp_path)
    assert [info.n_images for info in infos] == [8, 5]
    assert all(info.is_ct_image for info in infos)
    assert infos[1].description == "CT 5 slices 16x16 axial"
    assert load_ct(tmp_path).shape == (8, 32, 24)
    assert load_ct(tmp_path, series=infos[1].series_key).shape == (5, 16, 16)
    assert dicom.load_series(infos[1]).shape == (5, 16, 16)
    with pytest.raises(CTLoadError) as error:
        load_ct(tmp_path, series="0123456789ab")
    message = str(error.value)
    assert infos[0].series_key in message and infos[1].series_key in message
    assert "\n" not in message


def test_series_key_is_stable_and_not_the_uid(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path, series_uid=uid)
    first, second = dicom.list_series(tmp_path), dicom.list_series(tmp_path)
    assert first[0].series_key == second[0].series_key
    assert len(first[0].series_key) == 12
    assert uid not in repr(first[0]) and SECRET_NAME not in repr(first[0])


def test_one_series_uid_with_two_orientations_splits(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path, series_uid=uid, names=[f"ax{i}.dcm" for i in range(8)])
    write_series(tmp_path, n=3, series_uid=uid, iop=CORONAL, names=[f"co{i}.dcm" for i in range(3)])
    infos = dicom.list_series(tmp_path)
    assert sorted(info.n_images for info in infos) == [3, 8]
    from_coronal_file = load_ct(tmp_path / "co1.dcm")
    assert (
        from_coronal_file.shape[0] * from_coronal_file.shape[1] * from_coronal_file.shape[2]
        == 3 * 32 * 24
    )


def test_list_series_of_a_file_is_its_series(tmp_path: Path) -> None:
    series = write_series(tmp_path)
    infos = dicom.list_series(series.files[3])
    assert len(infos) == 1 and infos[0].n_images == 8


def _strip(files: list[Path], *keywords: str) -> None:
    """Delete elements from every file, as some anonymisers do."""
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)


def test_series_without_uid_is_grouped_by_what_else_identifies_it(tmp_path: Path) -> None:
    """Files without SeriesInstanceUID were 8 one-file series: 'a single 2D slice'."""
    series = write_series(tmp_path, extra={"SeriesNumber": 4})
    _strip(series.files, "SeriesInstanceUID")
    volume = load_ct(tmp_path)
    assert np.array_equal(volume.hu, expected_hu(series).astype(np.int16))
    assert load_ct(series.files[5]).identity == volume.identity
    infos = dicom.list_series(tmp_path)
    assert [info.n_images for info in infos] == [8]


def test_series_without_uid_are_told_apart_by_study_number_and_spacing(tmp_path: Path) -> None:
    study, frame = generate_uid(), generate_uid()
    same = {"StudyInstanceUID": study, "FrameOfReferenceUID": frame}
    groups = [
        write_series(tmp_path, n=6, extra={**same, "SeriesNumber": 2}, names=[f"a{i}" for i in range(6)]),
        write_series(tmp_path, n=5, extra={**same, "SeriesNumber": 3}, names=[f"b{i}" for i in range(5)]),
        write_series(
            tmp_path, n=4, spacing=(0.5, 0.5), extra={**same, "SeriesNumber": 3},
            names=[f"c{i}" for i in range(4)],
        ),
        write_series(
            tmp_path, n=3, extra={"StudyInstanceUID": generate_uid(), "SeriesNumber": 2},
            names=[f"d{i}" for i in range(3)],
        ),
    ]
    for group in groups:
        _strip(group.files, "SeriesInstanceUID")
    infos = dicom.list_series(tmp_path)
    assert sorted(info.n_images for info in infos) == [3, 4, 5, 6]
    assert len({info.series_key for info in infos}) == 4
    assert load_ct(tmp_path).shape == (6, 32, 24)
    assert load_ct(tmp_path / "c2").shape == (4, 32, 24)


def test_real_series_without_uid_loads_like_the_original(
    chest_series_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "anonymised"
    shutil.copytree(chest_series_dir, folder)
    files = sorted(folder.glob("*.dcm"))
    _strip(files, "SeriesInstanceUID")
    volume = load_ct(folder)
    assert volume.shape == (30, 512, 512)
    assert volume.identity == load_ct(chest_series_dir).identity
    assert len(dicom.list_series(folder)) == 1


@pytest.mark.parametrize("uid", [True, False], ids=["with-uid", "without-uid"])
def test_slices_all_at_one_position_are_not_called_a_single_slice(
    tmp_path: Path, uid: bool
) -> None:
    series = write_series(tmp_path, n=48, rows=4, cols=4, positions=np.zeros((48, 3)))
    if not uid:
        _strip(series.files, "SeriesInstanceUID")
    with pytest.raises(CTLoadError, match="48 slices all at the same position") as error:
        load_ct(tmp_path)
    assert "single 2D slice" not in str(error.value)
    assert "\n" not in str(error.value)


def test_lone_file_without_uid_says_why_it_was_not_grouped(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=2)
    ds = pydicom.dcmread(series.files[1])
    ds.Rows, ds.Columns, ds.PixelData = 16, 16, np.zeros((16, 16), np.uint16).tobytes()
    ds.save_as(series.files[1])
    _strip(series.files, "SeriesInstanceUID")
    with pytest.raises(CTLoadError, match="single 2D slice.*no SeriesInstanceUID") as error:
        load_ct(tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(CTLoadError, match="single 2D slice; open the folder") as error:
        load_ct(write_series(tmp_path / "one", n=1).files[0])  # with its UID: as before
    assert "SeriesInstanceUID" not in str(error.value)


def test_dicomdir_loads_its_series(tmp_path: Path) -> None:
    from pydicom.fileset import FileSet

    source = write_series(
        tmp_path / "source", extra={"StudyTime": "120000", "StudyID": "1", "SeriesNumber": 1}
    )
    fileset = FileSet()
    for path in source.files:
        fileset.add(pydicom.dcmread(path))
    fileset.write(tmp_path / "media")
    dicomdir = tmp_path / "media" / "DICOMDIR"
    assert dicom.is_dicom_file(dicomdir)
    volume = load_ct(dicomdir)
    assert np.array_equal(volume.hu, expected_hu(source).astype(np.int16))
    assert dicom.list_series(dicomdir)[0].n_images == 8
    assert load_ct(tmp_path / "media").shape == volume.shape  # the folder, DICOMDIR skipped


# --------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEG2000Lossless,
    ],
    ids=["implicit", "big-endian", "deflated", "rle", "jpeg2000"],
)
def test_encodings_give_the_uncompressed_values(tmp_path: Path, syntax) -> None:
    if syntax == JPEG2000Lossless:
        from pydicom.pixels import get_encoder

        if not get_encoder(JPEG2000Lossless).is_available:
            pytest.skip("no JPEG 2000 encoder installed")
    plain = write_series(tmp_path / "plain", n=4, rows=64, cols=64)  # J2K needs >= 64 px
    encoded = write_series(tmp_path / "encoded", n=4, rows=64, cols=64, syntax=syntax)
    a, b = load_ct(plain.folder), load_ct(encoded.folder)
    assert np.array_equal(a.hu, b.hu)
    assert np.allclose(a.affine, b.affine)
    assert b.metadata["TransferSyntax"] == syntax.name


def test_unused_high_bits_are_ignored(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=3, bits_stored=12)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.PixelData = (ds.pixel_array | 0xF000).astype(np.uint16).tobytes()  # overlay bits
        ds.save_as(path)
    volume = load_ct(tmp_path)
    assert np.array_equal(volume.hu, np.maximum(expected_hu(series), -1024))


def test_broken_compressed_data_is_refused_in_one_sentence(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=3, syntax=RLELossless)
    ds = pydicom.dcmread(series.files[1])
    frame = bytearray(pydicom.encaps.encapsulate([b"\x10\x00\x00\x00" + b"\xff" * 60]))
    ds.PixelData = bytes(frame)
    ds.save_as(series.files[1])
    with pytest.raises(
        CTLoadError, match=r"compressed encoding \(RLE Lossless\) that could not be decoded"
    ) as error:
        load_ct(tmp_path)
    assert "\n" not in str(error.value)


def test_decoder_panic_is_refused_in_one_sentence(tmp_path: Path, monkeypatch) -> None:
    """Rust decoders (pylibjpeg-rle) panic with a BaseException subclass on bad data."""
    from pydicom.pixels.decoders.base import Decoder

    class Panic(BaseException):
        pass

    def panic(*args, **kwargs):
        raise Panic("index out of bounds: the len is 8192 but the index is 8193")

    write_series(tmp_path, n=3, syntax=RLELossless)
    monkeypatch.setattr(Decoder, "as_array", panic)
    with pytest.raises(CTLoadError, match="could not be decoded: index out of bounds"):
        load_ct(tmp_path)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["native", "rle"])
def test_damaged_copies_never_raise_anything_else(tmp_path: Path, syntax) -> None:
    """Random byte damage to one file of a series: a volume or a one-sentence refusal."""
    series = write_series(tmp_path / "clean", n=3, rows=16, cols=16, syntax=syntax)
    pristine = [path.read_bytes() for path in series.files]
    rng = np.random.default_rng(11)
    for attempt in range(25):
        folder = tmp_path / f"damaged{attempt}"
        folder.mkdir()
        victim = int(rng.integers(3))
        for k, data in enumerate(pristine):
            data = bytearray(data)
            if k == victim:
                for _ in range(int(rng.integers(1, 6))):
                    data[int(rng.integers(len(data)))] = int(rng.integers(256))
                if rng.random() < 0.3:
                    del data[int(rng.integers(len(data))) :]
            (folder / f"{k}.dcm").write_bytes(bytes(data))
        for target in (folder, folder / f"{victim}.dcm"):
            try:
                volume = load_ct(target)
            except CTLoadError as exc:
                assert "\n" not in str(exc)
            else:
                assert np.isfinite(volume.hu).all()


def test_unknown_transfer_syntax_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=3)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.2.1143.9999"  # private
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(CTLoadError, match="that this reader cannot decode"):
        load_ct(tmp_path)


def test_enhanced_multiframe_ct_frames_become_slices(tmp_path: Path) -> None:
    positions = np.array([[-5.0, -6.0, z] for z in (7.5, 0.0, 5.0, 2.5)])  # frames out of order
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 2000, size=(4, 12, 10)).astype(np.uint16)
    ds = Dataset()
    ds.PatientName = SECRET_NAME
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, generate_uid()
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "CT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 12, 10, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(AXIAL)
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.75]
    shared.PixelMeasuresSequence[0].SliceThickness = 2.5
    shared.PixelValueTransformationSequence = [Dataset()]
    shared.PixelValueTransformationSequence[0].RescaleSlope = 1
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1024
    shared.PixelValueTransformationSequence[0].RescaleType = "HU"
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for position in positions:
        item = Dataset()
        item.PlanePositionSequence = [Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = list(position)
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = frames.tobytes()
    path = _save(ds, tmp_path / "enhanced.dcm", ExplicitVRLittleEndian)
    volume = load_ct(path)
    assert volume.shape == (4, 12, 10)
    assert volume.spacing_mm == pytest.approx((2.5, 0.5, 0.75))
    order = np.argsort(positions[:, 2])
    assert np.array_equal(volume.hu, frames[order].astype(np.int16) - 1024)
    assert dicom.list_series(path)[0].n_images == 4


# ---------------------------------------------------------------------- refusals


def test_single_slice_file_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=1)
    with pytest.raises(CTLoadError, match="is a single 2D slice; open the folder"):
        load_ct(series.files[0])


def test_mr_series_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path, modality="MR", sop_class=MRImageStorage)
    with pytest.raises(
        CTLoadError, match="holds only one series, which is an MR image, not a CT scan"
    ):
        load_ct(tmp_path)
    with pytest.raises(CTLoadError, match="is an MR image, not a CT scan"):
        load_ct(tmp_path / "IM0003.dcm")


def test_missing_geometry_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=4)
    ds = pydicom.dcmread(series.files[2])
    del ds.ImagePositionPatient
    ds.save_as(series.files[2])
    with pytest.raises(CTLoadError, match="has no patient geometry"):
        load_ct(tmp_path)


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=4)
    ds = pydicom.dcmread(series.files[1])
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(series.files[1])
    with pytest.raises(CTLoadError, match="mixed series"):
        load_ct(series.files[0])


def test_truncated_slice_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=4)
    data = series.files[2].read_bytes()
    series.files[2].write_bytes(data[: len(data) - 300])
    with pytest.raises(CTLoadError, match="truncated or damaged"):
        load_ct(series.files[2])
    with pytest.raises(CTLoadError, match=r"IM0002\.dcm is truncated or damaged"):
        load_ct(tmp_path)


def test_colour_image_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=2)
    ds = pydicom.dcmread(series.files[0])
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((32, 24, 3), np.uint8).tobytes()
    ds.save_as(series.files[0])
    with pytest.raises(CTLoadError, match=r"is a colour image \(RGB\)"):
        load_ct(series.files[0])


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_bytes(b"just some text, long enough to be read" * 10)
    assert not dicom.is_dicom_file(path)
    with pytest.raises(CTLoadError, match="is not a DICOM file"):
        dicom.load_dicom(path)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("nothing")
    with pytest.raises(CTLoadError, match="contains no DICOM images"):
        load_ct(tmp_path)


def test_synthetic_metadata_has_no_identifiers(tmp_path: Path) -> None:
    write_series(tmp_path)
    volume = load_ct(tmp_path)
    text = repr(volume.metadata) + repr(volume.warnings)
    assert SECRET_NAME not in text and "ID-12345" not in text and "20200101" not in text
    assert volume.metadata["Manufacturer"] == "TestVendor"


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian], ids=["fast", "pydicom"]
)
def test_invalid_values_do_not_leak_warnings(tmp_path: Path, recwarn, syntax) -> None:
    series = write_series(tmp_path, n=3, syntax=syntax)
    little = syntax == ExplicitVRLittleEndian
    element = (b"\x18\x00\x50\x00DS\x04\x00" if little else b"\x00\x18\x00\x50DS\x00\x04") + b"2.5 "
    data = series.files[0].read_bytes()
    assert data.count(element) == 1
    series.files[0].write_bytes(data.replace(element, element[:-4] + b"a,b "))  # invalid DS
    gc.collect()  # warnings of earlier tests' garbage (e.g. FileSet temp dirs) come now
    recwarn.clear()
    volume = load_ct(tmp_path)
    assert [str(w.message) for w in recwarn] == []
    assert volume.shape == (3, 32, 24)


def test_copied_series_with_other_file_names_gives_the_same_volume(tmp_path: Path) -> None:
    series = write_series(tmp_path / "a")
    shutil.copytree(series.folder, tmp_path / "b")
    for path in (tmp_path / "b").iterdir():
        path.rename(path.with_name("z" + path.name[::-1]))
    assert load_ct(tmp_path / "a").identity == load_ct(tmp_path / "b").identity
