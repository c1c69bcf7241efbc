"""Mask editing helpers: HU-constrained brush, one-click lesion selection, slice interpolation."""

from __future__ import annotations

import numpy as np

from napari_covid_attention.annotations.editing import (
    connected_lesion,
    interpolate_slices,
    outside_hu_range,
)


def test_stroke_outside_the_hu_range_is_reverted():
    hu = np.full((2, 4, 4), -600.0)
    hu[0, 0, :2] = 40.0  # soft tissue under part of the stroke
    indices = (np.array([0, 0, 0, 0]), np.array([0, 0, 0, 0]), np.array([0, 1, 2, 3]))
    old = np.array([0, 0, 3, 0])
    back = outside_hu_range([(indices, old, 1)], hu, -750, -300)
    assert back is not None
    (z, y, x), values = back
    assert x.tolist() == [0, 1] and values.tolist() == [0, 0]
    assert outside_hu_range([(indices, old, 0)], hu, -750, -300) is None  # erasing is free
    assert outside_hu_range([(indices, old, 1)], hu, -2000, 2000) is None


def test_connected_lesion_selects_only_the_clicked_component():
    mask = np.zeros((5, 10, 10), np.uint8)
    mask[1:3, 1:4, 1:4] = 1
    mask[1:3, 6:9, 6:9] = 1
    found = connected_lesion(mask, (1, 2, 2))
    assert len(found[0]) == 2 * 3 * 3
    assert all(c < 4 for c in found[2])
    assert connected_lesion(mask, (0, 0, 0)) is None
    assert connected_lesion(mask, (99, 0, 0)) is None


def test_interpolation_moves_and_resizes_a_lesion_between_slices():
    mask = np.zeros((5, 32, 32), np.uint8)
    yy, xx = np.mgrid[:32, :32]
    mask[0] = (yy - 13) ** 2 + (xx - 13) ** 2 <= 25  # radius 5 at (13, 13)
    mask[4] = (yy - 18) ** 2 + (xx - 18) ** 2 <= 64  # radius 8 at (18, 18), overlapping
    filled = interpolate_slices(mask, 4, 0)
    assert sorted(filled) == [1, 2, 3]
    centres = [np.argwhere(filled[z]).mean(0) for z in (1, 2, 3)]
    assert centres[0][0] < centres[1][0] < centres[2][0]  # moves from (13, 13) to (18, 18)
    areas = [filled[z].sum() for z in (1, 2, 3)]
    assert mask[0].sum() < areas[0] < areas[1] < areas[2] < mask[4].sum()
    assert interpolate_slices(mask, 0, 1) == {}
    assert interpolate_slices(np.zeros_like(mask), 0, 4) == {}
