"""npe2 writers: a labels layer (mask) or an image layer (the CT in HU) as NIfTI on its scan's geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_covid_attention._layer_data import LABELS_INTENT, affine_from_layer
from napari_covid_attention.io.nifti import save_nifti

_INT16 = np.iinfo(np.int16)


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a mask with its scan's exact affine, on the source file's own voxel order.

    Layers made by this plugin carry the scan's affine; other layers are placed from
    their scale/translate. napari appends no extension, so ``.nii.gz`` is added when the
    user typed none. The file is marked with the NIfTI intent "label", so the reader
    opens it again as labels.
    """
    target = _nifti_target(path)
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"only 3D masks can be written as NIfTI, this one has shape {array.shape}")
    affine, source_ornt = _geometry(meta)
    label_dtype = np.uint8 if array.max(initial=0) <= 255 and array.min(initial=0) >= 0 else np.int32
    save_nifti(target, array.astype(label_dtype, copy=False), affine, source_ornt=source_ornt, intent=LABELS_INTENT)
    return [str(target)]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write a 3D image (the CT in HU) with its geometry, like :func:`write_labels`.

    Whole-numbered values within the int16 range are written as int16 (how CT is
    stored), anything else as float32.
    """
    target = _nifti_target(path)
    if meta.get("rgb"):
        raise ValueError("an RGB image is not a CT and cannot be written as a NIfTI volume")
    if meta.get("multiscale") or isinstance(data, (list, tuple)):
        raise ValueError("a multiscale image cannot be written as one NIfTI volume; save its full-resolution level")
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"only 3D images can be written as NIfTI, this one has shape {array.shape}")
    affine, source_ornt = _geometry(meta)
    save_nifti(target, _ct_values(array), affine, source_ornt=source_ornt)
    return [str(target)]


def _ct_values(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.int16:
        return array
    if array.size == 0:
        return array.astype(np.int16)
    if array.dtype == bool:
        return array.astype(np.int16)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() >= _INT16.min and array.max() <= _INT16.max:
            return array.astype(np.int16)
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array).all()
        if finite and array.min() >= _INT16.min and array.max() <= _INT16.max and np.all(array == np.round(array)):
            return array.astype(np.int16)
        return array.astype(np.float32, copy=False)
    raise ValueError(f"an image of {array.dtype} values is not a CT and cannot be written as NIfTI")


def _nifti_target(path: str) -> Path:
    target = Path(path)
    if not target.name.lower().endswith((".nii", ".nii.gz")):
        target = target.with_name(target.name + ".nii.gz")
    return target


def _geometry(meta: dict) -> tuple[np.ndarray, np.ndarray | None]:
    return affine_from_layer(
        meta.get("metadata") or {}, meta.get("scale", np.ones(3)), meta.get("translate", np.zeros(3))
    )
