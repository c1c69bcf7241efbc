"""Crop / resample / normalise and the exact inverse mapping back onto the scan."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_attention.preprocess.pipeline import (
    CropBox,
    PreprocessConfig,
    fixed_shape_grid,
    fixed_spacing_grid,
    grid_to_scan,
    lung_box,
    normalize_hu,
    resample_to_grid,
    subgrid_of,
)


def _affine(spacing=(2.0, 0.7, 0.7), origin=(-150.0, -160.0, -300.0)) -> np.ndarray:
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0] = spacing[2], spacing[1], spacing[0]
    affine[:3, 3] = origin
    affine[3, 3] = 1
    return affine


def test_lung_box_adds_margin_in_mm_and_clamps():
    mask = np.zeros((50, 100, 100), np.uint8)
    mask[10:40, 20:80, 30:70] = 1
    box = lung_box(mask, _affine(), margin_mm=7.0)
    assert box.start == (6, 10, 20) and box.stop == (44, 90, 80)
    edge = np.zeros_like(mask)
    edge[0:5, 0:5, 95:] = 1
    assert lung_box(edge, _affine(), 10.0).start == (0, 0, 80)


@pytest.mark.parametrize("box_size", [(37, 211, 290), (64, 300, 410), (40, 180, 270)])
def test_grid_voxels_land_where_the_affine_says(box_size):
    """A bright block must appear at the same patient position on scan and grid."""
    scan = np.zeros((80, 320, 420), np.float32)
    scan[30:40, 120:170, 200:260] = 1.0
    box = CropBox((5, 7, 3), tuple(5 + s for s in (box_size[0], box_size[1], box_size[2])))
    grid = fixed_shape_grid(box, (48, 96, 128), _affine())
    on_grid = resample_to_grid(scan, grid, fill=0.0)
    assert on_grid.shape == (48, 96, 128)
    centroid_scan = _affine() @ np.r_[np.argwhere(scan > 0.5).mean(0), 1]
    weights = on_grid / on_grid.sum()
    idx = np.indices(on_grid.shape).reshape(3, -1) @ weights.ravel()
    centroid_grid = grid.affine @ np.r_[idx, 1]
    step_mm = np.asarray(grid.step) * np.array([2.0, 0.7, 0.7])
    assert np.all(np.abs(centroid_grid - centroid_scan)[:3][::-1] <= step_mm * 0.51 + 0.5)


def test_grid_to_scan_inverts_resampling():
    scan = np.zeros((40, 200, 200), np.float32)
    scan[10:30, 50:150, 60:140] = 1.0
    grid = fixed_shape_grid(CropBox((0, 0, 0), (40, 200, 200)), (40, 100, 100), _affine())
    back = grid_to_scan(resample_to_grid(scan, grid, fill=0.0), grid, scan.shape)
    assert np.mean((back >= 0.5) == (scan >= 0.5)) > 0.995


def test_box_past_the_scan_is_padded_with_air():
    scan = np.full((10, 20, 20), 40.0, np.float32)
    grid = fixed_shape_grid(CropBox((-5, 0, 0), (15, 20, 20)), (20, 20, 20), _affine())
    # box z index k is scan slice k - 5: only box slices 5..14 hold the scan
    values = resample_to_grid(scan, grid)
    assert values[:5].max() == -1024 and values[5:15].min() == 40 and values[15:].max() == -1024
    assert grid_to_scan(values, grid, scan.shape).shape == scan.shape


def test_fixed_spacing_grid_has_about_the_requested_voxel_size():
    grid = fixed_spacing_grid(CropBox((0, 0, 0), (100, 400, 400)), (4.0, 2.0, 2.0), _affine(spacing=(1.0, 0.7, 0.7)))
    voxel = np.linalg.norm(grid.affine[:3, :3], axis=0)
    # columns are (z, y, x) index steps; their lengths are the voxel size in mm
    np.testing.assert_allclose(voxel, [4.0, 2.0, 2.0], rtol=0.05)


def test_normalize_hu_clips_to_window():
    out = normalize_hu(np.array([-2000.0, -1000.0, -250.0, 500.0, 3000.0]), (-1000.0, 500.0))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_subgrid_of_places_coarse_map_cells_at_their_centres():
    grid_affine = np.eye(4)
    coarse = subgrid_of(grid_affine, (48, 96, 128), (6, 6, 8))
    # cell 0 covers grid voxels 0..7 in z (centre 3.5), 0..15 in y/x (centre 7.5)
    np.testing.assert_allclose(coarse @ [0, 0, 0, 1], [3.5, 7.5, 7.5, 1])
    np.testing.assert_allclose(coarse @ [1, 1, 1, 1], [11.5, 23.5, 23.5, 1])


def test_config_round_trips_through_dict():
    cfg = PreprocessConfig(classifier_shape=(32, 64, 64))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown preprocessing"):
        PreprocessConfig.from_dict({"bogus": 1})
    # Bundles before 1.1.0 name the segmenter's old training crop; they still load.
    assert PreprocessConfig.from_dict({**cfg.to_dict(), "segmenter_patch": [48, 96, 128]}) == cfg
