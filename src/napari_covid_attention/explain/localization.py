"""How well a map points at the infection: energy inside the mask, pointing game, map AUC.

The scores compare a map S with a reference infection mask M on the same grid
(DESIGN.md section 6): energy inside = sum(S * M) / sum(S); pointing game = whether the
map's maximum lies in M; map AUC = ROC AUC of S as a voxel-wise detector of M.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.metrics import compute_roc_auc

from napari_covid_attention.preprocess.pipeline import Grid, resample_to_grid


@dataclass(frozen=True)
class LocalizationScores:
    energy_inside: float
    pointing_game: bool
    map_auc: float

    def to_dict(self) -> dict:
        return asdict(self)


def localization_scores(saliency: np.ndarray, mask: np.ndarray) -> LocalizationScores | None:
    """Scores of a non-negative map against a binary mask of the same shape.

    Returns None when the mask is empty or fills the grid (nothing to localise), or when
    the map is all zero.
    """
    if saliency.shape != mask.shape:
        raise ValueError(f"map {saliency.shape} and mask {mask.shape} must share a grid")
    inside = mask.astype(bool).ravel()
    values = np.clip(saliency.astype(np.float64).ravel(), 0.0, None)
    total = values.sum()
    if not inside.any() or inside.all() or total <= 0:
        return None
    auc = compute_roc_auc(torch.from_numpy(values), torch.from_numpy(inside.astype(np.float64)))
    return LocalizationScores(
        energy_inside=float(values[inside].sum() / total),
        pointing_game=bool(inside[int(np.argmax(values))]),
        map_auc=float(auc),
    )


def upsample_map(values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A feature-grid map (e.g. 6x6x8) trilinearly resampled to its input grid."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    with torch.no_grad():
        up = torch.nn.functional.interpolate(tensor, size=shape, mode="trilinear", align_corners=False)
    return up[0, 0].numpy()


def mask_on_grid(mask: np.ndarray, grid: Grid, threshold: float = 0.5) -> np.ndarray:
    """A scan-grid mask on a network grid: a grid voxel is in when >= ``threshold`` of it is."""
    fraction = resample_to_grid(mask.astype(np.float32), grid, fill=0.0)
    return fraction >= threshold
