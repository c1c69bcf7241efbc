"""NIfTI reading and writing with the scan's exact geometry."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_covid_attention.atomic import atomic_path
from napari_covid_attention.io import geometry
from napari_covid_attention.io.volume import AIR_HU, CTLoadError, CTVolume, hu_array

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def load_nifti(path: str | os.PathLike) -> CTVolume:
    """Read a 3D NIfTI CT (values taken as HU) into the canonical orientation."""
    path = Path(path)
    if not path.is_file():
        raise CTLoadError(f"{path.name} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise CTLoadError(f"{path.name} is empty.")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for damaged headers
        raise CTLoadError(f"{path.name} is not a readable NIfTI file ({_short(exc)}).") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CTLoadError(f"{path.name} is not a NIfTI image.")

    shape = img.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 3 or (len(shape) == 3 and min(shape) == 1):
        raise CTLoadError(f"{path.name} is a 2D image; a chest CT must be a 3D volume.")
    if len(shape) > 3:
        raise CTLoadError(
            f"{path.name} has {len(shape)} dimensions {tuple(shape)}; "
            "open a single 3D CT volume instead of a time series or multi-channel image."
        )
    if img.get_data_dtype().names is not None or img.get_data_dtype().kind == "c":
        raise CTLoadError(f"{path.name} holds RGB or complex values, not CT intensities.")

    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as exc:  # truncated files raise OSError/EOFError/ValueError/zlib.error
        raise CTLoadError(
            f"{path.name} is truncated or damaged: its image data cannot be read."
        ) from exc

    warnings: list[str] = []
    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.any():
            raise CTLoadError(f"{path.name} contains no finite values (all NaN or infinite).")
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            warnings.append(f"{bad} voxels were NaN or infinite and are shown as air.")
            data = np.where(finite, data, AIR_HU)

    nifti_affine = img.affine
    if nifti_affine is None or abs(np.linalg.det(nifti_affine[:3, :3])) < 1e-9:
        raise CTLoadError(f"{path.name} has no valid voxel-to-world geometry (singular affine).")

    # nibabel arrays are (i, j, k) = (x, y, z); the core is (z, y, x).
    zyx = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    affine = geometry.affine_from_nifti(nifti_affine)
    canon, canon_affine, source_ornt = geometry.to_canonical(hu_array(zyx), affine)
    return CTVolume(
        hu=canon,
        affine=canon_affine,
        metadata={"format": "NIfTI", "source_dtype": str(img.get_data_dtype())},
        source_path=str(path),
        source_ornt=source_ornt,
        warnings=tuple(warnings),
    )


def save_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    source_ornt: np.ndarray | None = None,
    intent: tuple[str, str] | None = None,
) -> Path:
    """Write a (z, y, x) array with its core affine as NIfTI, atomically.

    With ``source_ornt`` (from :attr:`CTVolume.source_ornt`) the array is put back on the
    source file's own voxel order, so the result overlays the original file voxel for
    voxel in any tool. Booleans are written as uint8, floats as float32. ``intent`` is
    the header's (NIfTI intent code, intent name), e.g. ``("label", ...)`` for masks.
    """
    path = Path(path)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating) and array.dtype != np.float32:
        array = array.astype(np.float32)
    affine = np.asarray(affine, dtype=float)
    if source_ornt is not None:
        array, affine = geometry.reorient(array, affine, source_ornt)

    img = nib.Nifti1Image(np.transpose(array, (2, 1, 0)), geometry.affine_to_nifti(affine))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    if intent is not None:
        img.header.set_intent(intent[0], name=intent[1])
    with atomic_path(path) as temp:
        nib.save(img, str(temp))
    return path


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:120]
