"""NIfTI reading and writing with the scan's exact geometry."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_covid_attention.atomic import atomic_path
from napari_covid_attention.io import geometry, limits
from napari_covid_attention.io.files import check_input_file
from napari_covid_attention.io.limits import bytes_text, shape_text
from napari_covid_attention.io.volume import AIR_HU, CTLoadError, CTVolume, hu_array

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def load_nifti(path: str | os.PathLike) -> CTVolume:
    """Read a 3D NIfTI CT (values taken as HU) into the canonical orientation.

    Everything the header declares (dimensions, data type, size against the file's
    size, scale factors, geometry) is checked before the image data is read, so damaged
    or crafted headers are refused in one sentence without reading or allocating much
    (limits in :mod:`napari_covid_attention.io.limits`).
    """
    path = Path(path)
    if not path.exists():
        raise CTLoadError(f"{path.name} does not exist.")
    check_input_file(path)  # pipes, devices, permission denied
    if not path.is_file():
        raise CTLoadError(f"{path.name} is not a file.")
    size = path.stat().st_size
    if size == 0:
        raise CTLoadError(f"{path.name} is empty.")
    with _quiet_nibabel():
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for damaged headers
            raise CTLoadError(
                f"{path.name} is not a readable NIfTI file ({_header_reason(exc, path)})."
            ) from exc
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise CTLoadError(f"{path.name} is not a NIfTI image.")
        shape, dtype, notes = _check_header(path, img, size)
        try:
            data = np.asanyarray(img.dataobj).reshape(shape)
        except Exception as exc:  # truncated files raise OSError/EOFError/ValueError/zlib.error
            raise CTLoadError(
                f"{path.name} is truncated or damaged: its image data cannot be read."
            ) from exc

    if np.issubdtype(data.dtype, np.floating):
        finite = np.isfinite(data)
        if not finite.any():
            raise CTLoadError(f"{path.name} contains no finite values (all NaN or infinite).")
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            notes.append(f"{bad} voxels were NaN or infinite and are shown as air.")
            data = np.where(finite, data, AIR_HU)

    # nibabel arrays are (i, j, k) = (x, y, z); the core is (z, y, x).
    zyx = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    del data
    affine = geometry.affine_from_nifti(img.affine)
    canon, canon_affine, source_ornt = geometry.to_canonical(hu_array(zyx), affine)
    return CTVolume(
        hu=canon,
        affine=canon_affine,
        metadata={"format": "NIfTI", "source_dtype": str(dtype)},
        source_path=str(path),
        source_ornt=source_ornt,
        warnings=tuple(notes),
    )


def _check_header(
    path: Path, img: nib.Nifti1Image, size: int
) -> tuple[tuple[int, ...], np.dtype, list[str]]:
    """(3D shape, stored dtype, warnings) of a header fit to read, else a CTLoadError."""
    name = path.name
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if any(s < 1 for s in shape):
        raise CTLoadError(f"{name} is damaged: its header declares {shape_text(shape)} voxels.")
    if len(shape) < 3 or (len(shape) == 3 and min(shape) == 1):
        raise CTLoadError(f"{name} is a 2D image; a chest CT must be a 3D volume.")
    if len(shape) > 3:
        raise CTLoadError(
            f"{name} has {len(shape)} dimensions {tuple(shape)}; "
            "open a single 3D CT volume instead of a time series or multi-channel image."
        )
    dtype = img.get_data_dtype()
    if dtype.names is not None or dtype.kind == "c":
        raise CTLoadError(f"{name} holds RGB or complex values, not CT intensities.")
    too_large = limits.size_problem(shape)
    if too_large:
        raise CTLoadError(
            f"{name} is too large for this reader: its header declares "
            f"{shape_text(shape)} voxels, {too_large}."
        )
    declared = int(np.prod(shape)) * dtype.itemsize
    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    compressed = name.lower().endswith(".gz")
    if compressed and offset + declared > size * limits.DEFLATE_MAX_RATIO + 4096:
        raise CTLoadError(
            f"{name} is damaged: its header declares {shape_text(shape)} voxels of {dtype} "
            f"({bytes_text(declared)}), more than its {bytes_text(size)} of compressed data "
            "can hold."
        )
    if not compressed and offset + declared > size:
        raise CTLoadError(
            f"{name} is truncated or damaged: its header declares {shape_text(shape)} voxels "
            f"of {dtype} ({bytes_text(declared)}) but the file holds only "
            f"{bytes_text(max(0, size - offset))} "
            "of image data."
        )
    slope = float(getattr(img.dataobj, "slope", 1.0))
    inter = float(getattr(img.dataobj, "inter", 0.0))
    scaled = (slope, inter) != (1.0, 0.0)
    if scaled:
        problem = limits.rescale_problem(slope, inter, ("scl_slope", "scl_inter"))
        if problem:
            raise CTLoadError(f"{name} cannot be used because its {problem}.")
    geometry_problem = geometry.affine_problem(geometry.affine_from_nifti(img.affine))
    if geometry_problem:
        raise CTLoadError(f"{name} has no valid voxel-to-world geometry: {geometry_problem}.")
    notes = []
    if dtype.itemsize == 1 and dtype.kind in "uib" and not scaled:
        notes.append(
            f"This NIfTI stores {dtype.name} values: a CT in HU needs signed values from "
            "about -1000; it looks like a mask or a windowed image."
        )
    return shape, dtype, notes


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Mute nibabel's header-fixing log lines ("sizeof_hdr should be 348...") and warnings,
    and numpy's overflow warnings on absurd header values: what matters about a header
    becomes a refusal or a CTVolume warning sentence instead."""
    logger = logging.getLogger("nibabel")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _header_reason(exc: Exception, path: Path) -> str:
    """nibabel's reason, without the full path (it may name the patient)."""
    if isinstance(exc, nib.filebasedimages.ImageFileError) and "file type" in str(exc):
        return "its header is incomplete or not a NIfTI header"
    return _short(exc).replace(str(path), path.name)


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
