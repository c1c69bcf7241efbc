"""NIfTI reading/writing: exact round trips, source voxel order, clear refusals."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_covid_attention.io import CTLoadError, load_ct, load_nifti, save_nifti
from napari_covid_attention.io.volume import looks_like_hu

RAS_AFFINE = np.array([[0.7, 0, 0, -100.0], [0, 0.7, 0, -120.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])


def _write(path, data, affine=RAS_AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def ras_scan(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(-1000, 1500, (20, 24, 10)).astype(np.int16)
    return _write(tmp_path / "scan.nii.gz", data), data


def test_load_reorients_ras_file_to_canonical(ras_scan):
    path, data = ras_scan
    volume = load_ct(path)
    assert volume.shape == (10, 24, 20)
    assert volume.spacing_mm == pytest.approx((2.5, 0.7, 0.7))
    # RAS stores x towards the patient's right; canonical x runs right -> left (LPS +x).
    assert volume.affine[0, 2] > 0 and volume.affine[1, 1] > 0 and volume.affine[2, 0] > 0
    # Voxel i of the file is at canonical x = 19 - i (flipped), j at y = 23 - j (flipped).
    assert volume.hu[3, 23 - 5, 19 - 7] == data[7, 5, 3]


def test_write_read_round_trip_is_exact(ras_scan, tmp_path):
    path, _ = ras_scan
    volume = load_nifti(path)
    mask = (volume.hu > 0).astype(np.uint8)
    out = save_nifti(tmp_path / "mask.nii.gz", mask, volume.affine, source_ornt=volume.source_ornt)
    back = load_nifti(out)
    np.testing.assert_array_equal(back.affine, volume.affine)
    np.testing.assert_array_equal(back.hu, mask)
    # The file is on the source's own voxel grid: same affine as the input file.
    np.testing.assert_array_equal(nib.load(str(out)).affine, nib.load(str(path)).affine)


def test_float_maps_are_written_as_float32(tmp_path, ras_scan):
    volume = load_nifti(ras_scan[0])
    prob = np.random.default_rng(0).random(volume.shape)
    out = save_nifti(tmp_path / "map.nii", prob, volume.affine)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asanyarray(img.dataobj).transpose(2, 1, 0), prob.astype(np.float32))


def test_atomic_write_leaves_no_temporary_files(tmp_path, ras_scan):
    volume = load_nifti(ras_scan[0])
    save_nifti(tmp_path / "out" / "m.nii.gz", np.zeros(volume.shape, np.uint8), volume.affine)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["m.nii.gz"]


def test_padding_below_air_becomes_air(tmp_path):
    data = np.full((8, 8, 4), -3024, np.int16)
    data[2:6, 2:6] = 40
    volume = load_nifti(_write(tmp_path / "pad.nii", data))
    assert volume.hu.min() == -1024 and volume.hu.max() == 40


def test_nan_voxels_become_air_with_a_warning(tmp_path):
    data = np.full((8, 8, 4), -500.0, np.float32)
    data[0, 0, 0] = np.nan
    volume = load_nifti(_write(tmp_path / "nan.nii", data))
    assert volume.hu.min() == -1024
    assert any("NaN" in w for w in volume.warnings)


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"hello, not a nifti" * 30), "not a readable NIfTI"),
        (lambda p: _write(p, np.zeros((16, 16), np.int16)), "2D image"),
        (lambda p: _write(p, np.zeros((16, 16, 1), np.int16)), "2D image"),
        (lambda p: _write(p, np.zeros((8, 8, 8, 3), np.int16)), "4 dimensions"),
        (lambda p: _write(p, np.full((8, 8, 4), np.nan, np.float32)), "no finite values"),
    ],
)
def test_bad_nifti_is_refused_with_one_sentence(tmp_path, make, phrase):
    path = tmp_path / "bad.nii"
    make(path)
    with pytest.raises(CTLoadError) as info:
        load_ct(path)
    message = str(info.value)
    assert phrase in message and "\n" not in message


def test_truncated_nifti_is_refused(tmp_path, ras_scan):
    raw = gzip.decompress(ras_scan[0].read_bytes())
    truncated = tmp_path / "trunc.nii"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CTLoadError, match="truncated or damaged"):
        load_ct(truncated)


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    volume = load_ct(_write(tmp_path / "t.nii", np.zeros((8, 8, 4, 1), np.int16)))
    assert volume.shape == (4, 8, 8)


def test_unknown_file_type_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CTLoadError, match="neither a NIfTI"):
        load_ct(path)


def test_looks_like_hu_detects_windowed_0_255_data():
    rng = np.random.default_rng(0)
    hu = rng.normal(-300, 400, (32, 64, 64)).clip(-1024, 2000)
    assert looks_like_hu(hu)
    windowed = ((hu.clip(-1250, 250) + 1250) / 1500 * 255).round()
    assert not looks_like_hu(windowed)


def test_float64_values_beyond_float32_are_refused_not_turned_into_inf(tmp_path):
    """They passed the NaN/Inf check as float64 and became inf (then a NaN diagnosis) in float32."""
    data = np.full((8, 8, 4), -500.5, np.float64)
    data[1, 1, 1] = 1e300
    with pytest.raises(CTLoadError, match="not in Hounsfield units"):
        load_nifti(_write(tmp_path / "huge.nii", data))
