"""Turning what a dataset holds into what training reads.

MetaImage (.mha) scans are read through SimpleITK into canonical volumes, 0-255 windowed
volumes are mapped back to approximate Hounsfield units, and masks are checked against
their scan's voxel grid and reduced to the binary infection and lung masks training reads.
Masks that are already in that form are referenced as they are; others are staged anew.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io import geometry
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.volume import CTLoadError, CTVolume, hu_array

if TYPE_CHECKING:
    from .layouts import Candidate
    from .run import ImportRun

# Same tolerance as training's own mask check, so an accepted mask is never refused later.
GRID_ATOL_MM = 1e-3


# --------------------------------------------------------------------------- scans


def read_metaimage(path: Path) -> CTVolume:
    """A MetaImage (.mha) CT as a canonical :class:`CTVolume`.

    ITK's physical frame is LPS, like the core's, so no axis is flipped: the ITK index
    (i, j, k) is the array's (x, y, z) and the direction matrix's columns are the index
    axes' directions.
    """
    sitk = simpleitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CTLoadError(f"{path.name} is not a readable MetaImage file.") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CTLoadError(f"{path.name} is not a 3D single-channel CT volume.")
    kji = sitk.GetArrayFromImage(image)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    linear = direction * np.asarray(image.GetSpacing(), dtype=float)  # columns: i, j, k
    affine[:3, :3] = linear[:, ::-1]  # columns: k, j, i = the array's z, y, x
    affine[:3, 3] = image.GetOrigin()
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CTLoadError(f"{path.name} has no valid voxel-to-world geometry.")
    canon, canon_affine, source_ornt = geometry.to_canonical(hu_array(kji), affine)
    return CTVolume(
        hu=canon,
        affine=canon_affine,
        metadata={"format": "MetaImage"},
        source_path=str(path),
        source_ornt=source_ornt,
    )


def simpleitk():
    """SimpleITK, imported only for MetaImage input (it is not a dependency)."""
    try:
        import SimpleITK
    except ImportError as exc:
        raise UserFacingError(
            "Reading STOIC2021 .mha files needs SimpleITK: pip install SimpleITK."
        ) from exc
    return SimpleITK


def is_rescaled_0_255(values: np.ndarray) -> bool:
    """Whether every value lies in 0..255, as in a windowed volume rescaled to bytes."""
    return bool(values.min() >= 0 and values.max() <= 255)


def unwindow(volume: CTVolume, window: tuple[float, float]) -> CTVolume:
    """Approximate HU of a volume windowed to ``window`` and rescaled to 0-255.

    The inverse is exact only inside the window: everything the window clipped (air
    below it, bone and contrast above it) comes back as the window's edge.
    """
    low, high = window
    hu = np.rint(volume.hu.astype(np.float32) / 255.0 * (high - low) + low)
    return CTVolume(
        hu=hu_array(hu),
        affine=volume.affine,
        metadata={
            **volume.metadata,
            "converted_from_window": f"[{low:g}, {high:g}] rescaled to 0-255",
        },
        source_path=volume.source_path,
        source_ornt=volume.source_ornt,
        warnings=volume.warnings,
    )


# --------------------------------------------------------------------------- masks


def add_infection_mask(
    candidate: Candidate, volume: CTVolume, run: ImportRun, row: dict[str, str]
) -> np.ndarray | None:
    """The binary infection mask (kept in the row, converted if it has other labels)."""
    path = candidate.infection_mask
    values = None if path is None else _mask_values(path, volume, run)
    if path is None or values is None:
        return None
    if candidate.infection_labels is None:
        binary = (values > 0).astype(np.uint8)
    else:
        binary = np.isin(values, candidate.infection_labels).astype(np.uint8)
    row["infection_mask"] = _kept_or_staged(
        path, values, binary, f"masks/{candidate.case}_infection.nii.gz", volume, run
    )
    for flag, value in candidate.flag_labels:
        row[flag] = str(int(np.any(values == value)))
    return binary


def add_lung_mask(
    candidate: Candidate, volume: CTVolume, run: ImportRun, row: dict[str, str]
) -> np.ndarray | None:
    """The lung mask as training reads it: labels 0-255 as they are, anything else as lung > 0."""
    path = candidate.lung_mask
    values = None if path is None else _mask_values(path, volume, run)
    if path is None or values is None:
        return None
    if not np.any(values > 0):
        run.drop_mask(path, "it marks no lung voxel.")
        return None
    usable = np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() <= 255
    mask = values if usable else (values > 0).astype(np.uint8)
    row["lung_mask"] = _kept_or_staged(
        path, values, mask, f"masks/{candidate.case}_lung.nii.gz", volume, run
    )
    return mask > 0


def _mask_values(path: Path, volume: CTVolume, run: ImportRun) -> np.ndarray | None:
    """A mask's values on its scan's grid, or None (with the reason recorded) if unusable."""
    try:
        mask = load_ct(path)
    except CTLoadError as exc:
        run.drop_mask(path, str(exc))
        return None
    if mask.shape != volume.shape:
        run.drop_mask(
            path,
            f"its grid has shape {mask.shape} but its scan's has {volume.shape}.",
        )
        return None
    if not np.allclose(mask.affine, volume.affine, atol=GRID_ATOL_MM):
        run.drop_mask(
            path,
            "its voxels lie elsewhere in space than its scan's (different position, spacing or orientation).",
        )
        return None
    return mask.hu


def _kept_or_staged(
    path: Path, values: np.ndarray, wanted: np.ndarray, name: str, volume: CTVolume, run: ImportRun
) -> str:
    """Reference the source mask when it already holds ``wanted``, else write ``wanted``."""
    if np.array_equal(values, wanted):
        return run.reference(path)
    return run.stage(name, wanted.astype(np.uint8), volume)
