"""npe2 writer: a labels layer (mask) as NIfTI on the geometry of the scan it belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_covid_attention._layer_data import affine_from_layer
from napari_covid_attention.io.nifti import save_nifti


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a mask with its scan's exact affine, on the source file's own voxel order.

    Layers made by this plugin carry the scan's affine; other layers are placed from
    their scale/translate. napari appends no extension, so ``.nii.gz`` is added when the
    user typed none.
    """
    target = Path(path)
    if not target.name.lower().endswith((".nii", ".nii.gz")):
        target = target.with_name(target.name + ".nii.gz")
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"only 3D masks can be written as NIfTI, this one has shape {array.shape}")
    affine, source_ornt = affine_from_layer(
        meta.get("metadata") or {}, meta.get("scale", np.ones(3)), meta.get("translate", np.zeros(3))
    )
    label_dtype = np.uint8 if array.max(initial=0) <= 255 and array.min(initial=0) >= 0 else np.int32
    save_nifti(target, array.astype(label_dtype, copy=False), affine, source_ornt=source_ornt)
    return [str(target)]
