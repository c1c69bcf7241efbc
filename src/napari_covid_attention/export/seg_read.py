"""Reading a DICOM-SEG back into label arrays on the plugin's (z, y, x) / LPS grid.

highdicom rebuilds the segments' volume from the SEG's own plane positions and pixel
measures (``Segmentation.get_volume``); this module turns it into the canonical
orientation ``load_ct`` uses and groups segments the way the plugin shows masks: both
lungs in one array (1 right, 2 left), the infection as 0/1, any other segment alone.
Given the scan it belongs to, the masks are placed on that scan's grid exactly.
"""

from __future__ import annotations

import os
import re

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from napari_covid_attention.export import codes
from napari_covid_attention.export.sniff import SEGMENTATION_STORAGE
from napari_covid_attention.io import geometry
from napari_covid_attention.io.dicom.messages import quiet_pydicom, short_message
from napari_covid_attention.io.files import open_regular
from napari_covid_attention.io.volume import CTLoadError, CTVolume
from napari_covid_attention.preprocess.lung import LEFT_LUNG, RIGHT_LUNG

LUNGS, INFECTION = "lungs", "infection"
_LUNG_LABELS = {codes.RIGHT_LUNG.value: RIGHT_LUNG, codes.LEFT_LUNG.value: LEFT_LUNG}
_INFECTION_TYPES = {codes.LESION.value, codes.PNEUMONIA.value, codes.COVID19_DISEASE.value}
# A SEG voxel grid may sit this far (in voxels) from the reference scan's and still match it.
_GRID_TOLERANCE_VOXELS = 0.01

Masks = dict[str, tuple[np.ndarray, np.ndarray]]


def read_segmentation(
    path_or_dataset: str | os.PathLike | Dataset, reference_volume: CTVolume | None = None
) -> Masks:
    """Segment groups of a DICOM-SEG: ``{name: (mask (z, y, x) uint8, affine voxel -> LPS mm)}``.

    ``"lungs"`` holds 1 (right) / 2 (left), ``"infection"`` 0/1, any other segment 0/1 under
    its label. Without ``reference_volume`` the grid is the SEG's own (canonical
    orientation); with it, the scan's, and a SEG off that grid is refused.

    Raises:
        CTLoadError: not a readable segmentation, or not on the reference scan's grid.
    """
    seg = _segmentation(path_or_dataset)
    try:
        volume = seg.get_volume(combine_segments=False, dtype=np.float32 if _fractional(seg) else np.uint8)
    except (ValueError, RuntimeError) as exc:
        raise CTLoadError(f"The DICOM-SEG is not a regular 3D volume, so it cannot be placed on a grid ({exc}).") from None
    numbers = [int(n) for n in volume.get_channel_values(volume.channel_descriptors[0])]
    descriptions = {int(d.SegmentNumber): d for d in seg.SegmentSequence}
    out: Masks = {}
    for index, number in enumerate(numbers):
        values = volume.array[..., index]
        binary = values >= 0.5 if values.dtype.kind == "f" else values > 0
        mask, affine = geometry.to_canonical(binary.astype(np.uint8), volume.affine)[:2]
        if reference_volume is not None:
            mask, affine = _on_reference(mask, affine, reference_volume)
        name, label = _group(descriptions[number], out)
        if name in out:
            out[name][0][mask > 0] = label
        else:
            out[name] = (mask * np.uint8(label), affine)
    return out


def _segmentation(source: str | os.PathLike | Dataset) -> hd.seg.Segmentation:
    if isinstance(source, hd.seg.Segmentation):
        return source
    try:
        if isinstance(source, Dataset):
            dataset = source
        else:
            with quiet_pydicom(), open_regular(source, capped=True) as handle:
                dataset = pydicom.dcmread(handle)
        if str(dataset.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
            raise CTLoadError("The file is not a DICOM segmentation (its SOP class is not Segmentation Storage).")
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except CTLoadError:
        raise
    except Exception as exc:  # pydicom and highdicom raise many types on damaged files
        raise CTLoadError(f"The DICOM-SEG cannot be read: {short_message(exc).rstrip('.')}.") from None


def _fractional(seg: hd.seg.Segmentation) -> bool:
    return str(seg.get("SegmentationType", "")) == "FRACTIONAL"


def _group(description: Dataset, found: Masks) -> tuple[str, int]:
    """(group name, label value) of one segment."""
    kind = description.SegmentedPropertyTypeCodeSequence[0].CodeValue
    if kind in _LUNG_LABELS:
        return LUNGS, _LUNG_LABELS[kind]
    if kind in _INFECTION_TYPES and INFECTION not in found:
        return INFECTION, 1
    label = re.sub(r"\s+", "_", str(description.get("SegmentLabel", "") or "").strip().lower())
    name = label or f"segment_{int(description.SegmentNumber)}"
    return (name if name not in found else f"{name}_{int(description.SegmentNumber)}"), 1


def _on_reference(mask: np.ndarray, affine: np.ndarray, reference: CTVolume) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` pasted onto the reference scan's grid: a whole-voxel shift, never a resampling."""
    index_map = np.linalg.inv(reference.affine) @ affine  # SEG voxel -> reference voxel
    offset = np.round(index_map[:3, 3])
    same_axes = np.allclose(index_map[:3, :3], np.eye(3), atol=1e-3)
    whole = np.allclose(index_map[:3, 3], offset, atol=_GRID_TOLERANCE_VOXELS)
    start = offset.astype(int)
    stop = start + np.asarray(mask.shape)
    inside = (start >= 0).all() and (stop <= np.asarray(reference.shape)).all()
    if not (same_axes and whole and inside):
        raise CTLoadError("The DICOM-SEG is not on the voxel grid of this scan: it belongs to another series or reconstruction.")
    out = np.zeros(reference.shape, np.uint8)
    out[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = mask
    return out, np.asarray(reference.affine, dtype=float).copy()
