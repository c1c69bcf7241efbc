"""Synthetic chest CT phantoms: determinism, geometry, anatomy, lesion classes, data sets."""

from __future__ import annotations

import csv
from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from napari_covid_attention.data.synthetic import (
    CLASS_NAMES,
    LESION_TYPES,
    SYNTHETIC_MANIFEST_COLUMNS,
    Phantom,
    case_seed,
    generate_phantom,
    write_dataset,
)
from napari_covid_attention.io import geometry
from napari_covid_attention.io.nifti import load_nifti

SMALL = (32, 64, 64)
FOV = (300.0, 360.0, 360.0)


@cache
def phantom(seed: int, label: str | None = None, fraction: float | None = None) -> Phantom:
    """Phantoms are deterministic, so tests share them."""
    return generate_phantom(seed, label, shape=SMALL, fov_mm=FOV, infection_fraction=fraction)


def laterality(p: Phantom) -> float:
    """Share of the infection in the less affected lung (0 = unilateral)."""
    infected = p.infection_mask > 0
    right = np.count_nonzero(infected & (p.lung_mask == 1))
    left = np.count_nonzero(infected & (p.lung_mask == 2))
    return min(right, left) / max(right + left, 1)


def test_same_seed_gives_identical_phantom_and_other_seeds_differ():
    a = phantom(11)
    b = generate_phantom(11, shape=SMALL, fov_mm=FOV)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert np.array_equal(a.lung_mask, b.lung_mask)
    assert np.array_equal(a.infection_mask, b.infection_mask)
    assert (a.label, a.lesion_flags, a.infection_fraction) == (b.label, b.lesion_flags, b.infection_fraction)
    c = phantom(12)
    assert not np.array_equal(a.volume.hu, c.volume.hu)


def test_anatomy_depends_on_the_seed_only():
    covid, cap = phantom(5, "COVID-19", 0.05), phantom(5, "CAP", 0.05)
    assert np.array_equal(covid.lung_mask, cap.lung_mask)
    assert not np.array_equal(covid.infection_mask, cap.infection_mask)


def test_shapes_dtypes_and_canonical_geometry():
    p = phantom(3)
    vol = p.volume
    assert vol.hu.shape == SMALL and vol.hu.dtype == np.int16
    assert p.lung_mask.shape == SMALL and p.lung_mask.dtype == np.uint8
    assert p.infection_mask.shape == SMALL and p.infection_mask.dtype == np.uint8
    assert np.allclose(vol.spacing_mm, np.array(FOV) / np.array(SMALL))
    assert np.array_equal(geometry.orientation_of(vol.affine), geometry.CANONICAL_ORNT)
    assert vol.metadata["format"] == "synthetic phantom"
    assert vol.metadata["seed"] == "3" and vol.metadata["kind"] == p.label
    assert p.label in CLASS_NAMES and set(p.lesion_flags) == set(LESION_TYPES)


def test_hounsfield_units_are_plausible():
    p = phantom(4)
    hu, lungs, infected = p.volume.hu, p.lung_mask > 0, p.infection_mask > 0
    corners = np.concatenate([hu[:, :4, :4].ravel(), hu[:, :4, -4:].ravel()])
    assert -1024 <= np.median(corners) <= -950  # air or scanner padding outside the body
    assert -900 <= np.median(hu[lungs & ~infected]) <= -800
    assert hu.max() > 400  # bone
    assert hu.min() >= -1024


def test_two_lungs_labelled_by_patient_side():
    p = phantom(6)
    _, count = ndimage.label(p.lung_mask > 0)
    assert count == 2
    assert set(np.unique(p.lung_mask)) == {0, 1, 2}
    # canonical x runs patient right -> left: the right lung (1) has the smaller x indices
    right_x = np.nonzero(p.lung_mask == 1)[2].mean()
    left_x = np.nonzero(p.lung_mask == 2)[2].mean()
    assert right_x < SMALL[2] / 2 < left_x


def test_right_lung_is_larger_on_average():
    ratios = [np.count_nonzero(phantom(s).lung_mask == 1) / np.count_nonzero(phantom(s).lung_mask == 2) for s in range(4)]
    assert np.mean(ratios) > 1.0


def test_infection_is_binary_and_inside_the_lungs():
    for seed in (7, 8):
        p = phantom(seed)
        assert set(np.unique(p.infection_mask)) <= {0, 1}
        assert not np.any((p.infection_mask > 0) & (p.lung_mask == 0))
        fraction = np.count_nonzero(p.infection_mask) / np.count_nonzero(p.lung_mask)
        assert p.infection_fraction == pytest.approx(fraction)


@pytest.mark.parametrize(
    ("label", "fraction"), [("COVID-19", 0.004), ("COVID-19", 0.3), ("CAP", 0.02), ("CAP", 0.2)]
)
def test_requested_infection_fraction_is_met(label: str, fraction: float):
    p = phantom(9, label, fraction)
    assert p.label == label
    assert p.infection_fraction == pytest.approx(fraction, rel=0.25)


def test_covid_is_ground_glass_and_bilateral_cap_is_denser_and_unilateral():
    covid = [phantom(s, "COVID-19", 0.08) for s in range(6)]
    cap = [phantom(s, "CAP", 0.08) for s in range(6)]

    def lesion_hu(p: Phantom) -> float:
        return float(p.volume.hu[p.infection_mask > 0].mean())

    assert np.mean([lesion_hu(p) for p in covid]) < np.mean([lesion_hu(p) for p in cap]) - 150
    assert sum(laterality(p) < 0.05 for p in cap) >= 4
    assert sum(laterality(p) > 0.05 for p in covid) >= 4


def test_lesion_flags_match_what_was_drawn():
    for p in (phantom(s, label, 0.08) for s in range(6) for label in CLASS_NAMES):
        flags = p.lesion_flags
        assert flags["ground_glass"] or flags["consolidation"] or flags["septal_thickening"]
        if flags["crazy_paving"]:
            assert flags["ground_glass"] and flags["septal_thickening"]
        if flags["air_bronchogram"]:
            assert flags["consolidation"]
    glassy = phantom(9, "COVID-19", 0.08)
    assert not glassy.lesion_flags["consolidation"] and glassy.lesion_flags["ground_glass"]
    assert np.mean(glassy.volume.hu[glassy.infection_mask > 0] > -250) < 0.05  # nothing solid
    solid = phantom(0, "CAP", 0.08)
    assert not solid.lesion_flags["ground_glass"] and solid.lesion_flags["consolidation"]
    assert np.median(solid.volume.hu[solid.infection_mask > 0]) > -150


def test_label_and_size_are_drawn_from_the_seed():
    drawn = [generate_phantom(s, shape=(16, 32, 32)) for s in range(24)]
    labels = [p.label for p in drawn]
    assert set(labels) == set(CLASS_NAMES)
    assert 0.35 < labels.count("COVID-19") / len(labels) < 0.9
    assert len({round(p.infection_fraction, 4) for p in drawn}) > 20


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="label"):
        generate_phantom(1, "flu", shape=SMALL)
    with pytest.raises(ValueError, match="seed"):
        generate_phantom(-1, shape=SMALL)
    with pytest.raises(ValueError, match="infection_fraction"):
        generate_phantom(1, "CAP", shape=SMALL, infection_fraction=1.5)
    with pytest.raises(ValueError, match="noise_sd_hu"):
        generate_phantom(1, shape=SMALL, noise_sd_hu=-5.0)


def test_noise_override_changes_only_the_noise():
    """A low-dose version of a case: same anatomy and lesions, noisier lung parenchyma."""
    base = phantom(11)
    low_dose = generate_phantom(11, shape=SMALL, fov_mm=FOV, noise_sd_hu=60.0)
    assert np.array_equal(base.infection_mask, low_dose.infection_mask)
    assert np.array_equal(base.lung_mask, low_dose.lung_mask)
    # Both draw the same noise pattern, scaled: the difference is (60 - 10..25 HU) of noise.
    difference = low_dose.volume.hu.astype(float) - base.volume.hu.astype(float)
    inside = base.lung_mask > 0
    assert 30.0 < np.std(difference[inside]) < 55.0


def test_write_dataset_round_trips_reproduces_and_refuses_overwrite(tmp_path):
    calls: list[tuple[int, int]] = []
    manifest = write_dataset(tmp_path / "a", 3, seed=5, shape=SMALL, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (3, 3) and len(calls) == 3
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == SYNTHETIC_MANIFEST_COLUMNS and len(rows) == 3
    for i, row in enumerate(rows):
        assert int(row["seed"]) == case_seed(5, i)
        expected = generate_phantom(int(row["seed"]), row["label"], shape=SMALL)
        image = load_nifti(manifest.parent / row["image"])
        lungs = load_nifti(manifest.parent / row["lung_mask"])
        infection = load_nifti(manifest.parent / row["infection_mask"])
        assert np.array_equal(image.hu, expected.volume.hu)
        assert np.allclose(image.affine, expected.volume.affine, atol=1e-4)
        assert np.array_equal(lungs.hu, expected.lung_mask) and np.array_equal(infection.hu, expected.infection_mask)
        assert all(row[k] == str(int(expected.lesion_flags[k])) for k in LESION_TYPES)
        assert float(row["infection_fraction"]) == pytest.approx(expected.infection_fraction, abs=1e-6)

    again = write_dataset(tmp_path / "b", 3, seed=5, shape=SMALL, workers=2)
    for row in rows:
        for key in ("image", "lung_mask", "infection_mask"):
            assert (manifest.parent / row[key]).read_bytes() == (again.parent / row[key]).read_bytes()

    other = write_dataset(tmp_path / "c", 3, seed=6, shape=SMALL, workers=1)
    with open(other, newline="") as handle:
        assert not {r["seed"] for r in csv.DictReader(handle)} & {r["seed"] for r in rows}

    with pytest.raises(ValueError, match="overwrite"):
        write_dataset(tmp_path / "a", 2, seed=5, shape=SMALL, workers=1)
    replaced = write_dataset(tmp_path / "a", 2, seed=7, shape=SMALL, workers=1, overwrite=True)
    assert sorted(p.name for p in (replaced.parent / "images").iterdir()) == ["case_0000.nii.gz", "case_0001.nii.gz"]
