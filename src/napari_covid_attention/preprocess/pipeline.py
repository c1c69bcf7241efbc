"""Crop to the lungs, resample onto the network grids, normalise HU, and map back exactly.

Every grid made here carries its affine (grid index -> LPS mm), so any map or mask the
networks produce can be placed on the scan without approximation: either drawn through
its own affine (low-resolution maps) or resampled into the crop box (masks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRange
from scipy import ndimage

from napari_covid_attention.io.geometry import spacing_mm, subgrid_affine
from napari_covid_attention.io.volume import AIR_HU


@dataclass(frozen=True)
class PreprocessConfig:
    """How scans become network inputs (stored in bundle.json).

    ``classifier_shape`` is a fixed (z, y, x) grid the lung box is resized to (every
    scan gives the classifier the same field of view: both lungs). The segmenter works at
    a fixed voxel size instead, so lesions keep their physical size. It trains on
    ``segmenter_patch`` crops and infers with a window of ``segmenter_roi``, large enough
    that an adult chest's lung box (up to ~320 x 320 x 410 mm) takes a single window
    (a sliding window costs several times more on a CPU).
    """

    classifier_shape: tuple[int, int, int] = (48, 96, 128)
    segmenter_spacing_mm: tuple[float, float, float] = (4.0, 2.0, 2.0)
    segmenter_roi: tuple[int, int, int] = (80, 160, 208)
    hu_window: tuple[float, float] = (-1000.0, 500.0)
    margin_mm: float = 10.0

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        # Bundles before 1.1.0 name the segmenter's training crop, which training no longer
        # uses (it trains on what inference sees: datasets.SegmenterDataset).
        data = {k: v for k, v in data.items() if k != "segmenter_patch"}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown preprocessing fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CropBox:
    """A box of scan voxels [start, stop) per axis; may extend past the scan (air-padded)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]


@dataclass(frozen=True)
class Grid:
    """A regular grid resampled from a crop box: its shape and its affine to LPS mm."""

    box: CropBox
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def step(self) -> np.ndarray:
        """Scan voxels per grid voxel along (z, y, x)."""
        return np.asarray(self.box.size, dtype=float) / np.asarray(self.shape, dtype=float)


def lung_box(lung_mask: np.ndarray, affine: np.ndarray, margin_mm: float) -> CropBox:
    """Bounding box of the lungs plus a margin in mm (clamped to the scan)."""
    if not lung_mask.any():
        raise ValueError("empty lung mask")
    coords = [np.flatnonzero(lung_mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    margin_vox = np.ceil(margin_mm / np.asarray(spacing_mm(affine))).astype(int)
    start = [max(0, int(c[0]) - m) for c, m in zip(coords, margin_vox, strict=True)]
    stop = [min(n, int(c[-1]) + 1 + m) for c, n, m in zip(coords, lung_mask.shape, margin_vox, strict=True)]
    return CropBox(tuple(start), tuple(stop))  # type: ignore[arg-type]


def fixed_shape_grid(box: CropBox, shape: tuple[int, int, int], scan_affine: np.ndarray) -> Grid:
    """The crop box resized to a fixed shape (the classifier's grid)."""
    box = _divisible_box(box, shape)
    return Grid(box, tuple(shape), _grid_affine(box, shape, scan_affine))  # type: ignore[arg-type]


def fixed_spacing_grid(
    box: CropBox, target_spacing_mm: tuple[float, float, float], scan_affine: np.ndarray
) -> Grid:
    """The crop box resampled to (about) a fixed voxel size (the segmenter's grid)."""
    scan_spacing = np.asarray(spacing_mm(scan_affine))
    extent_mm = np.asarray(box.size) * scan_spacing
    shape = tuple(int(max(1, round(e / t))) for e, t in zip(extent_mm, target_spacing_mm, strict=True))
    return fixed_shape_grid(box, shape, scan_affine)  # type: ignore[arg-type]


def resample_to_grid(volume: np.ndarray, grid: Grid, fill: float = AIR_HU) -> np.ndarray:
    """Resample scan data (HU or a mask as float) onto a grid, anti-aliased.

    Hand-written because MONAI's anti-aliased ``Resize`` smooths the whole crop with a
    Gaussian first (seconds on a 512x512x300 scan); integer-factor average pooling
    followed by trilinear interpolation gives the same anti-aliasing in a fraction of the
    time. The crop box was made divisible by the pooling factors (``_divisible_box``), so
    the result sits exactly on ``grid.affine``.
    """
    crop = _crop(volume, grid.box, fill)
    tensor = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
    kernel = _pool_kernel(grid.box.size, grid.shape)
    with torch.no_grad():
        if any(k > 1 for k in kernel):
            tensor = F.avg_pool3d(tensor, kernel_size=kernel, stride=kernel)
        if tuple(tensor.shape[2:]) != tuple(grid.shape):
            tensor = F.interpolate(tensor, size=grid.shape, mode="trilinear", align_corners=False)
    return tensor[0, 0].numpy()


def grid_to_scan(values: np.ndarray, grid: Grid, scan_shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resampling of grid values back onto the full scan (zero outside the box).

    The exact inverse of the geometry used by :func:`resample_to_grid`
    (``align_corners=False`` both ways).
    """
    out = np.zeros(scan_shape, dtype=np.float32)
    inside, region = grid_to_box(values, grid, scan_shape)
    out[region] = inside
    return out


def grid_to_box(
    values: np.ndarray, grid: Grid, scan_shape: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Like :func:`grid_to_scan` but only the crop box's part of the scan, and where it is.

    Avoids allocating and filling a full-scan array when only the box can be non-zero.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    with torch.no_grad():
        up = F.interpolate(tensor, size=grid.box.size, mode="trilinear", align_corners=False)[0, 0]
    src, dst = _overlap(grid.box, scan_shape)
    return up.numpy()[src], dst


def normalize_hu(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to the window and scale to [0, 1] (MONAI's ScaleIntensityRange)."""
    scaler = ScaleIntensityRange(a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True)
    return np.asarray(scaler(np.asarray(hu, dtype=np.float32)), dtype=np.float32)


@dataclass(frozen=True)
class NetworkInputs:
    """A scan cropped to its lungs and put on the classifier's and segmenter's grids."""

    classifier_grid: Grid
    segmenter_grid: Grid
    classifier_image: np.ndarray  # float32 in [0, 1]
    segmenter_image: np.ndarray  # float32 in [0, 1]


def network_inputs(hu: np.ndarray, affine: np.ndarray, lung_mask: np.ndarray, config: PreprocessConfig) -> NetworkInputs:
    """Crop to the lung mask's box, resample and normalize, for both networks.

    Diagnosis and training both come through here with the lung mask computed from HU,
    so a model is trained on exactly the crops it will be shown (a reference lung mask
    from a dataset gives a different box, and the classifier pays for it in AUC).
    """
    box = lung_box(lung_mask, affine, config.margin_mm)
    cls_grid = fixed_shape_grid(box, config.classifier_shape, affine)
    seg_grid = fixed_spacing_grid(box, config.segmenter_spacing_mm, affine)
    return NetworkInputs(
        classifier_grid=cls_grid,
        segmenter_grid=seg_grid,
        classifier_image=normalize_hu(resample_to_grid(hu, cls_grid), config.hu_window),
        segmenter_image=normalize_hu(resample_to_grid(hu, seg_grid), config.hu_window),
    )


# Infection may reach this far beyond the lung mask: subpleural consolidation whose edge
# the HU-based mask draws a little short, never the heart, chest wall or bowel further out.
PLEURA_MARGIN_MM = 5.0


def near_lungs(lungs_on_grid: np.ndarray, grid_spacing_mm: tuple[float, float, float], margin_mm: float = PLEURA_MARGIN_MM) -> np.ndarray:
    """Where infection may be predicted: the lungs grown by ``margin_mm`` (bool, same grid).

    Diagnosis cuts the segmenter's output here; training measures its infection burden
    the same way when it chooses the pneumonia threshold.
    """
    return ndimage.distance_transform_edt(~np.asarray(lungs_on_grid, bool), sampling=grid_spacing_mm) <= margin_mm


def subgrid_of(grid_affine: np.ndarray, grid_shape, map_shape) -> np.ndarray:
    """Affine of a coarse map (e.g. attention at 1/16) computed from a grid's input.

    Map voxel m covers grid voxels [m * s, (m + 1) * s) with s = grid_shape / map_shape,
    so its centre sits at grid index m * s + (s - 1) / 2.
    """
    s = np.asarray(grid_shape, dtype=float) / np.asarray(map_shape, dtype=float)
    return subgrid_affine(grid_affine, (s - 1.0) / 2.0, s)


def _grid_affine(box: CropBox, shape, scan_affine: np.ndarray) -> np.ndarray:
    step = np.asarray(box.size, dtype=float) / np.asarray(shape, dtype=float)
    start = np.asarray(box.start, dtype=float) - 0.5 + step / 2.0
    return subgrid_affine(scan_affine, start, step)


def _pool_kernel(box_size, shape) -> tuple[int, int, int]:
    return tuple(max(1, int(b // s)) for b, s in zip(box_size, shape, strict=True))  # type: ignore[return-value]


def _divisible_box(box: CropBox, shape) -> CropBox:
    """Grow the box (centred) until each side is a multiple of its pooling factor.

    Growing can raise the factor itself, hence the loop; it stops after a few steps
    because every step adds fewer voxels than the factor.
    """
    start, stop = list(box.start), list(box.stop)
    for axis in range(3):
        while (stop[axis] - start[axis]) % (k := max(1, (stop[axis] - start[axis]) // shape[axis])):
            extra = (-(stop[axis] - start[axis])) % k
            start[axis] -= extra // 2
            stop[axis] += extra - extra // 2
    return CropBox(tuple(start), tuple(stop))  # type: ignore[arg-type]


def _overlap(box: CropBox, scan_shape) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices into the box (src) and into the scan (dst) for the part inside the scan."""
    src, dst = [], []
    for a, b, n in zip(box.start, box.stop, scan_shape, strict=True):
        lo, hi = max(a, 0), min(b, n)
        src.append(slice(lo - a, hi - a))
        dst.append(slice(lo, hi))
    return tuple(src), tuple(dst)


def _crop(volume: np.ndarray, box: CropBox, fill: float) -> np.ndarray:
    src, dst = _overlap(box, volume.shape)
    if all(s.start == 0 and s.stop == size for s, size in zip(src, box.size, strict=True)):
        return volume[dst]
    out = np.full(box.size, fill, dtype=np.float32)
    out[src] = volume[dst]
    return out
