"""Geometry contract: canonical orientation, NIfTI affine conversion, napari transforms."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_attention.io import geometry


def _lps_affine(spacing=(2.5, 0.7, 0.8), origin=(-100.0, -120.0, -50.0)) -> np.ndarray:
    """Canonical affine: z -> +S (LPS z), y -> +P (LPS y), x -> +L (LPS x)."""
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0] = spacing[2], spacing[1], spacing[0]
    affine[:3, 3] = origin
    affine[3, 3] = 1
    return affine


def test_spacing_and_voxel_volume():
    affine = _lps_affine()
    assert geometry.spacing_mm(affine) == pytest.approx((2.5, 0.7, 0.8))
    assert geometry.voxel_volume_ml(affine) == pytest.approx(2.5 * 0.7 * 0.8 / 1000)


def test_nifti_affine_round_trip_is_exact():
    nifti = np.array([[-0.7, 0, 0, 90.0], [0, 0.7, 0, -120.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
    core = geometry.affine_from_nifti(nifti)
    np.testing.assert_array_equal(geometry.affine_to_nifti(core), nifti)


def test_canonical_orientation_from_flipped_and_permuted_array():
    rng = np.random.default_rng(0)
    canon = rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16)
    affine = _lps_affine()
    # Build a "file" layout: x and y flipped, then z and x swapped.
    file_array, file_affine = geometry.reorient(canon, affine, np.array([[0, -1], [1, -1], [2, 1]]))
    assert file_array.shape == (7, 6, 5)
    back, back_affine, source_ornt = geometry.to_canonical(file_array, file_affine)
    np.testing.assert_array_equal(back, canon)
    np.testing.assert_allclose(back_affine, affine, atol=1e-12)
    # ...and the source orientation recorded puts it back exactly.
    again, again_affine = geometry.reorient(back, back_affine, source_ornt)
    np.testing.assert_array_equal(again, file_array)
    np.testing.assert_allclose(again_affine, file_affine, atol=1e-12)


def test_same_voxel_maps_to_same_patient_point_after_reorientation():
    canon = np.zeros((4, 5, 6), dtype=np.int16)
    canon[1, 2, 3] = 1
    affine = _lps_affine()
    file_array, file_affine = geometry.reorient(canon, affine, np.array([[1, -1], [0, 1], [2, -1]]))
    idx_file = np.argwhere(file_array == 1)[0]
    point_file = file_affine @ np.r_[idx_file, 1]
    point_canon = affine @ np.array([1, 2, 3, 1])
    np.testing.assert_allclose(point_file, point_canon)


def test_layer_transform_axis_aligned_is_scale_and_translate():
    t = geometry.layer_transform(_lps_affine())
    assert t.scale == pytest.approx((2.5, 0.7, 0.8))
    assert t.translate == pytest.approx((-50.0, -120.0, -100.0))  # LPS (z, y, x)
    assert t.rotate is None and t.shear is None
    assert set(t.as_layer_kwargs()) == {"scale", "translate"}


def test_layer_transform_reproduces_oblique_and_sheared_affines():
    affine = _lps_affine()
    angle = np.deg2rad(12)
    tilt = affine.copy()
    tilt[1, 0] = np.tan(angle) * 2.5  # gantry tilt: slice step has a y component
    rot = np.eye(4)
    rot[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    for a in (tilt, rot @ affine):
        t = geometry.layer_transform(a)
        rotate = np.eye(3) if t.rotate is None else t.rotate
        shear = np.eye(3) if t.shear is None else t.shear
        linear = rotate @ shear @ np.diag(t.scale)
        world = a[[2, 1, 0]]  # LPS rows in (z, y, x) order
        np.testing.assert_allclose(linear, world[:, :3], atol=1e-9)
        np.testing.assert_allclose(t.translate, world[:, 3])
        assert min(t.scale) > 0


def test_subgrid_affine_places_low_resolution_voxels():
    affine = _lps_affine()
    sub = geometry.subgrid_affine(affine, start_index=np.array([2.0, 4.0, 6.0]), step=np.array([2.0, 4.0, 4.0]))
    np.testing.assert_allclose(sub @ [1, 1, 1, 1], affine @ [4, 8, 10, 1])
