"""Mask editing helpers radiologists expect, on plain arrays (the GUI applies their results).

- keep a brush stroke only where the CT is within an HU interval (e.g. ground glass),
- find a whole connected lesion from one clicked voxel (to delete it in one click),
- fill the slices between two edited slices by shape-based interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.segmentation import flood

# Interval presets for the constrained brush, in HU.
HU_RANGES: dict[str, tuple[float, float]] = {
    "ground glass": (-750.0, -300.0),
    "consolidation": (-300.0, 100.0),
    "any lesion": (-750.0, 100.0),
}

Indices = tuple[np.ndarray, ...]


def outside_hu_range(
    atoms: Sequence[tuple[Indices, np.ndarray, object]], hu: np.ndarray, low: float, high: float
) -> tuple[Indices, np.ndarray] | None:
    """Voxels a paint stroke labelled although their HU lies outside [low, high].

    ``atoms`` are napari's paint-history entries (indices, old values, new value). Returns
    the indices to put back and their previous values, or None when the stroke is clean;
    erasing (new value 0) is never constrained.
    """
    back_index: list[Indices] = []
    back_value: list[np.ndarray] = []
    for indices, old_values, new_value in atoms:
        if np.all(np.asarray(new_value) == 0) or len(indices[0]) == 0:
            continue
        values = hu[indices]
        outside = (values < low) | (values > high)
        if outside.any():
            back_index.append(tuple(axis[outside] for axis in indices))
            back_value.append(np.asarray(old_values)[outside])
    if not back_index:
        return None
    merged = tuple(np.concatenate([idx[d] for idx in back_index]) for d in range(len(back_index[0])))
    return merged, np.concatenate(back_value)


def connected_lesion(mask: np.ndarray, voxel: Sequence[int]) -> Indices | None:
    """All voxels of the labelled region (3D, face-connected) containing ``voxel``, or None."""
    point = tuple(int(v) for v in voxel)
    if any(not 0 <= p < n for p, n in zip(point, mask.shape, strict=True)) or mask[point] == 0:
        return None
    return np.nonzero(flood(mask > 0, point, connectivity=1))


def interpolate_slices(mask: np.ndarray, z_first: int, z_last: int, label: int = 1) -> dict[int, np.ndarray]:
    """Masks for the slices strictly between two edited axial slices.

    Shape-based interpolation: the signed distance maps of the two slices' regions are
    blended linearly along z and thresholded at zero, so a lesion grows, shrinks and moves
    smoothly between the slices instead of being copied (regions must overlap in plane, as
    one lesion's cross-sections do a few slices apart). Returns {z: boolean slice}.
    """
    low, high = sorted((int(z_first), int(z_last)))
    if high - low < 2:
        return {}
    first, last = mask[low] == label, mask[high] == label
    if not first.any() and not last.any():
        return {}
    d_first, d_last = _signed_distance(first), _signed_distance(last)
    out = {}
    for z in range(low + 1, high):
        t = (z - low) / (high - low)
        out[z] = (1.0 - t) * d_first + t * d_last > 0
    return out


def _signed_distance(region: np.ndarray) -> np.ndarray:
    """Positive inside, negative outside; an empty region is 'far away' everywhere."""
    if not region.any():
        return np.full(region.shape, -float(max(region.shape)), dtype=np.float32)
    inside = ndimage.distance_transform_edt(region)
    outside = ndimage.distance_transform_edt(~region)
    return (inside - outside).astype(np.float32)
