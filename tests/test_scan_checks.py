"""scan_warnings: each check fires on a scan built to have its problem, and on nothing else."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from conftest import SHARED_DATA

from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.preprocess.scan_checks import (
    MAX_NOISE_HU,
    estimate_noise_hu,
    scan_warnings,
)

REAL_CT = SHARED_DATA / "real-chest-ct"
SHAPE = (64, 128, 128)  # 4.7 x 2.8 x 2.8 mm voxels over a whole chest


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(3, shape=SHAPE)


def warnings_of(volume: CTVolume, lungs: np.ndarray, real_bundle: bool = True) -> list[str]:
    return scan_warnings(volume, lungs, bundle_trained_on_real_scans=real_bundle)


def with_hu(volume: CTVolume, hu: np.ndarray, **changes) -> CTVolume:
    return dataclasses.replace(volume, hu=hu, **changes)


def with_slice_spacing(volume: CTVolume, mm: float) -> CTVolume:
    affine = volume.affine.copy()
    affine[:3, 0] *= mm / volume.spacing_mm[0]
    return dataclasses.replace(volume, affine=affine)


def test_clean_phantom_gives_no_warning(phantom):
    assert warnings_of(phantom.volume, phantom.lung_mask, real_bundle=False) == []
    assert warnings_of(phantom.volume, phantom.lung_mask, real_bundle=True) == []


# --------------------------------------------------------------------------- thick slices


def test_thick_slices_are_reported_with_their_spacing(phantom):
    thick = with_slice_spacing(phantom.volume, 8.0)
    assert warnings_of(thick, phantom.lung_mask) == [
        "Slices are 8.0 mm apart (thicker than the 5 mm the model was made for): small lesions may be missed."
    ]


def test_5_mm_slices_are_not_thick(phantom):
    assert warnings_of(with_slice_spacing(phantom.volume, 5.0), phantom.lung_mask) == []
    assert warnings_of(with_slice_spacing(phantom.volume, 5.0 + 1e-7), phantom.lung_mask) == []


def test_thick_overlapping_reconstruction_is_reported_from_the_header(phantom):
    volume = dataclasses.replace(phantom.volume, metadata={**phantom.volume.metadata, "SliceThickness": "10"})
    (warning,) = warnings_of(volume, phantom.lung_mask)
    assert warning.startswith("Slices are 10.0 mm thick")
    odd = dataclasses.replace(phantom.volume, metadata={**phantom.volume.metadata, "SliceThickness": "n/a"})
    assert warnings_of(odd, phantom.lung_mask) == []


# --------------------------------------------------------------------------- lung coverage


def lung_rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero((mask > 0).any(axis=(1, 2)))


def test_lungs_cut_at_the_top_are_reported_as_apices(phantom):
    z = lung_rows(phantom.lung_mask)
    top = (z[0] + z[-1]) // 2 + 5  # a little above the middle of the lungs
    volume = with_hu(phantom.volume, phantom.volume.hu[:top])
    (warning,) = warnings_of(volume, phantom.lung_mask[:top])
    assert "apices are cut off at the top" in warning and "bases" not in warning


def test_lungs_cut_at_the_bottom_are_reported_as_bases(phantom):
    z = lung_rows(phantom.lung_mask)
    bottom = (z[0] + z[-1]) // 2 - 5
    volume = with_hu(phantom.volume, phantom.volume.hu[bottom:])
    (warning,) = warnings_of(volume, phantom.lung_mask[bottom:])
    assert "bases are cut off at the bottom" in warning and "apices" not in warning


def test_lungs_cut_at_both_ends_give_one_sentence(phantom):
    z = lung_rows(phantom.lung_mask)
    middle = slice(z[0] + 10, z[-1] - 10)
    volume = with_hu(phantom.volume, phantom.volume.hu[middle])
    (warning,) = warnings_of(volume, phantom.lung_mask[middle])
    assert "both the top (apices) and the bottom (bases)" in warning


def test_lung_tips_in_the_end_slices_are_not_a_cut(phantom):
    z = lung_rows(phantom.lung_mask)
    tight = slice(z[0], z[-1] + 1)  # the first and last slices hold the lungs' tips
    volume = with_hu(phantom.volume, phantom.volume.hu[tight])
    assert warnings_of(volume, phantom.lung_mask[tight]) == []


# --------------------------------------------------------------------------- phantom-only bundle


def test_phantom_bundle_on_a_real_scan_is_reported_only_for_real_scans(phantom):
    real_looking = dataclasses.replace(phantom.volume, metadata={"format": "NIfTI"})
    (warning,) = warnings_of(real_looking, phantom.lung_mask, real_bundle=False)
    assert "trained only on synthetic phantoms" in warning and "not a diagnosis" in warning
    assert warnings_of(real_looking, phantom.lung_mask, real_bundle=True) == []
    assert warnings_of(phantom.volume, phantom.lung_mask, real_bundle=False) == []


# --------------------------------------------------------------------------- values not in HU


def test_windowed_8_bit_values_are_not_hu(phantom):
    hu = phantom.volume.hu.astype(np.float32)
    windowed = np.clip((hu + 1350) / 1500 * 255, 0, 255).round().astype(np.int16)  # lung window to 0-255
    (warning,) = warnings_of(with_hu(phantom.volume, windowed), phantom.lung_mask)
    assert "8-bit" in warning and "not Hounsfield units" in warning
    normalised = np.clip((hu + 1350) / 1500, 0, 1)
    (warning,) = warnings_of(with_hu(phantom.volume, normalised), phantom.lung_mask)
    assert "to 1, like an 8-bit" in warning


@pytest.mark.parametrize(
    ("offset", "says"),
    [
        (1024, "Almost nothing in the image is between -1024 and -900 HU"),  # stored values, no rescale
        (250, "Almost nothing in the image is between -1024 and -900 HU"),  # air at -750
        (-200, "darker than air"),  # air at -1200: clamped at -1024 like padding, as the loaders do
    ],
)
def test_air_far_from_minus_1000_means_not_hu(phantom, offset, says):
    hu = np.maximum(phantom.volume.hu.astype(np.int32) + offset, -1024).astype(np.int16)
    warnings = warnings_of(with_hu(phantom.volume, hu), phantom.lung_mask)
    assert len(warnings) == 1 and says in warnings[0] and "probably not Hounsfield units" in warnings[0]


@pytest.mark.parametrize("padding", [-3024, -2048, -1024])
def test_scanner_padding_outside_the_field_of_view_is_not_a_problem(phantom, padding):
    hu = phantom.volume.hu.copy()
    y, x = np.ogrid[: hu.shape[1], : hu.shape[2]]
    centre = (hu.shape[1] - 1) / 2
    outside = (y - centre) ** 2 + (x - centre) ** 2 > (0.45 * hu.shape[1]) ** 2
    hu[:, outside] = padding
    assert warnings_of(with_hu(phantom.volume, hu), phantom.lung_mask) == []


# --------------------------------------------------------------------------- noise


def test_noise_estimate_recovers_added_white_noise(phantom):
    base = estimate_noise_hu(phantom.volume.hu, phantom.lung_mask)
    assert 10 < base < 40  # the phantom's own 10-25 HU, smoothed, plus a little anatomy
    rng = np.random.default_rng(0)
    noisy = phantom.volume.hu + rng.normal(0.0, 100.0, phantom.volume.hu.shape)
    estimate = estimate_noise_hu(noisy, phantom.lung_mask)
    assert estimate == pytest.approx(np.hypot(100.0, base), rel=0.1)


def test_very_noisy_scan_is_reported_with_its_noise():
    noisy = generate_phantom(3, shape=SHAPE, noise_sd_hu=150.0)
    (warning,) = warnings_of(noisy.volume, noisy.lung_mask)
    estimate = estimate_noise_hu(noisy.volume.hu, noisy.lung_mask)
    assert estimate > MAX_NOISE_HU
    assert "unusually noisy" in warning and f"about {estimate:.0f} HU" in warning


def test_noise_is_not_judged_on_values_that_are_not_hu(phantom):
    rng = np.random.default_rng(1)
    noisy_windowed = np.clip((phantom.volume.hu + 1350) / 1500 * 255 + rng.normal(0, 100, SHAPE), 0, 255)
    warnings = warnings_of(with_hu(phantom.volume, noisy_windowed.astype(np.float32)), phantom.lung_mask)
    assert len(warnings) == 1 and "8-bit" in warnings[0]


# --------------------------------------------------------------------------- odd input never raises


def test_float_and_int16_hu_give_the_same_warnings(phantom):
    thick = with_slice_spacing(phantom.volume, 8.0)
    as_float = with_hu(thick, thick.hu.astype(np.float32) + np.float32(0.25))
    assert warnings_of(as_float, phantom.lung_mask) == warnings_of(thick, phantom.lung_mask)


def test_empty_lung_mask_skips_the_checks_that_need_lungs(phantom):
    empty = np.zeros_like(phantom.lung_mask)
    assert warnings_of(with_slice_spacing(phantom.volume, 8.0), empty) == [
        "Slices are 8.0 mm apart (thicker than the 5 mm the model was made for): small lesions may be missed."
    ]
    assert estimate_noise_hu(phantom.volume.hu, empty) is None


def test_mask_of_another_shape_or_dtype_is_handled(phantom):
    assert warnings_of(phantom.volume, phantom.lung_mask[:, :64]) == []
    assert warnings_of(phantom.volume, phantom.lung_mask > 0) == []


def test_one_slice_volume(phantom):
    z = int(np.argmax((phantom.lung_mask > 0).sum(axis=(1, 2))))
    volume = with_hu(phantom.volume, phantom.volume.hu[z : z + 1])
    (warning,) = warnings_of(volume, phantom.lung_mask[z : z + 1])
    assert "cut off at both" in warning


@pytest.mark.parametrize(
    "hu",
    [
        np.full((4, 16, 16), -3024, dtype=np.int16),  # nothing but padding
        np.zeros((1, 1, 1), dtype=np.int16),
        np.zeros((0, 8, 8), dtype=np.float32),
        np.full((3, 8, 8), np.nan, dtype=np.float32),
        np.where(np.arange(3 * 8 * 8).reshape(3, 8, 8) % 2, np.inf, -1000.0).astype(np.float32),
    ],
)
def test_degenerate_volumes_never_raise(hu):
    volume = CTVolume(hu=hu, affine=np.diag([2.0, 1.0, 1.0, 1.0]), metadata=None)  # type: ignore[arg-type]
    for mask in (np.zeros(hu.shape, np.uint8), np.ones(hu.shape, np.uint8), np.zeros((2, 2, 2), np.uint8)):
        result = scan_warnings(volume, mask, bundle_trained_on_real_scans=False)
        assert isinstance(result, list) and all(isinstance(w, str) and w for w in result)


# --------------------------------------------------------------------------- in the diagnosis


def test_diagnosis_carries_the_scan_warnings(tiny_bundle):
    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.models.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    assert not bundle.trained_on_real_scans
    phantom = generate_phantom(11, shape=(32, 64, 64))  # 9.4 mm slices over a whole chest
    thick = "Slices are 9.4 mm apart (thicker than the 5 mm the model was made for): small lesions may be missed."
    assert diagnose(phantom.volume, bundle, "cpu").warnings == [thick]
    real_looking = dataclasses.replace(phantom.volume, metadata={"format": "NIfTI"})
    phantom_bundle, thick_again = diagnose(real_looking, bundle, "cpu").warnings
    assert "trained only on synthetic phantoms" in phantom_bundle and thick_again == thick


# --------------------------------------------------------------------------- real scans


@pytest.fixture(scope="module")
def real_scans() -> dict[str, tuple[CTVolume, np.ndarray]]:
    """The four real NIfTI chest CTs with their lung masks (about 2 s each, once per module)."""
    paths = sorted(REAL_CT.glob("*.nii.gz"))
    if not paths:
        pytest.skip(f"real chest CT volumes not found at {REAL_CT}")
    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.preprocess.lung import lung_mask

    scans = {}
    for path in paths:
        volume = load_ct(path)
        scans[path.name] = (volume, lung_mask(volume.hu, volume.spacing_mm))
    return scans


def test_real_scans_raise_only_the_phantom_bundle_warning(real_scans):
    assert len(real_scans) == 4
    for name, (volume, lungs) in real_scans.items():
        assert warnings_of(volume, lungs, real_bundle=True) == [], name
        (warning,) = warnings_of(volume, lungs, real_bundle=False)
        assert "trained only on synthetic phantoms" in warning, name
        noise = estimate_noise_hu(volume.hu, lungs)
        assert noise is not None and 10 < noise < MAX_NOISE_HU * 0.8, (name, noise)


def test_checks_are_fast_on_a_full_scan(real_scans):
    volume, lungs = max(real_scans.values(), key=lambda scan: scan[0].hu.size)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        warnings_of(volume, lungs)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.2


def test_8_mm_dicom_series_gets_the_thick_slice_warning(chest_series_dir):
    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.preprocess.lung import lung_mask

    volume = load_ct(chest_series_dir)
    lungs = lung_mask(volume.hu, volume.spacing_mm)
    assert warnings_of(volume, lungs) == [
        "Slices are 8.0 mm apart (thicker than the 5 mm the model was made for): small lesions may be missed."
    ]
