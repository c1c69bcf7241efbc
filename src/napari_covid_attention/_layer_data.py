"""Translation between core objects and napari layer data (no napari import needed).

Every layer the plugin makes carries ``metadata["covid_attention"]``: what kind of layer
it is and the exact geometry (core affine, source orientation) of its grid, so writers
and widgets can rebuild the core object without guessing from scale/translate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_covid_attention.io.geometry import layer_transform
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.windows import DEFAULT_WINDOW, window_limits

META_KEY = "covid_attention"
LayerData = tuple[Any, dict, str]

# Masks this plugin writes carry NIfTI intent "label" (NIFTI_INTENT_LABEL) with this name.
LABELS_INTENT = ("label", "covid-attention")
# An integer volume with at most this many distinct values, all in 0..255, is a mask: a
# CT in HU always holds air (negative values) and hundreds of distinct values.
MAX_GUESSED_LABELS = 16


def geometry_meta(affine: np.ndarray, source_ornt: np.ndarray | None = None) -> dict:
    return {
        "affine": np.asarray(affine, dtype=float).tolist(),
        "source_ornt": None if source_ornt is None else np.asarray(source_ornt).tolist(),
    }


def ct_layer_data(volume: CTVolume, name: str) -> LayerData:
    """Image layer in HU, placed in patient mm, shown in the lung window."""
    meta = {
        "kind": "ct",
        **geometry_meta(volume.affine, volume.source_ornt),
        "source_path": volume.source_path,
        "warnings": list(volume.warnings),
        "dicom": dict(volume.metadata),
    }
    kwargs = {
        "name": name,
        "colormap": "gray",
        "contrast_limits": window_limits(DEFAULT_WINDOW),
        "metadata": {META_KEY: meta},
        **layer_transform(volume.affine).as_layer_kwargs(),
    }
    return volume.hu, kwargs, "image"


def labels_layer_data(
    mask: np.ndarray,
    affine: np.ndarray,
    name: str,
    kind: str,
    *,
    source_ornt: np.ndarray | None = None,
    extra_meta: dict | None = None,
    **layer_kwargs: Any,
) -> LayerData:
    """Labels layer on a scan grid (masks are edited on the full grid, never upsampled)."""
    meta = {"kind": kind, **geometry_meta(affine, source_ornt), **(extra_meta or {})}
    kwargs = {
        "name": name,
        "metadata": {META_KEY: meta},
        **layer_transform(affine).as_layer_kwargs(),
        **layer_kwargs,
    }
    return mask, kwargs, "labels"


def looks_like_labels(values: np.ndarray, source_dtype: Any, *, marked: bool = False) -> bool:
    """Whether a loaded volume is a mask rather than a scan.

    ``marked``: the file says so (NIfTI intent "label"); then any whole-numbered values
    are labels. Otherwise only an integer file whose values are few (<= 16 distinct)
    small non-negative numbers (<= 255) is taken as a mask.
    """
    values = np.asarray(values)
    if values.size == 0:
        return False
    if marked:
        return np.issubdtype(values.dtype, np.integer) or bool(np.all(values == np.round(values)))
    if np.dtype(source_dtype).kind not in "biu" or not np.issubdtype(values.dtype, np.integer):
        return False
    if values.min() < 0 or values.max() > 255:
        return False
    counts = np.bincount(values.ravel(), minlength=256)
    return int(np.count_nonzero(counts)) <= MAX_GUESSED_LABELS


def label_array(values: np.ndarray) -> np.ndarray:
    """Whole-numbered values as a labels array: uint8 when they fit, else int32."""
    values = np.asarray(values)
    if values.size and values.min() >= 0 and values.max() <= 255:
        return values.astype(np.uint8, copy=False)
    return values.astype(np.int32, copy=False)


def mask_file_layer_data(volume: CTVolume, name: str) -> LayerData:
    """Labels layer for a mask read from a file, on its file's geometry (same as the CT's)."""
    return labels_layer_data(
        label_array(volume.hu),
        volume.affine,
        name,
        "mask",
        source_ornt=volume.source_ornt,
        extra_meta={"source_path": volume.source_path, "warnings": list(volume.warnings)},
    )


def plugin_meta(layer_metadata: dict) -> dict | None:
    """The plugin's metadata block of a layer, or None for layers the plugin did not make."""
    meta = layer_metadata.get(META_KEY) if layer_metadata else None
    return meta if isinstance(meta, dict) else None


def affine_from_layer(
    layer_metadata: dict, scale: np.ndarray, translate: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Core affine and source orientation of a layer's grid.

    Layers made by this plugin carry their exact affine; for any other layer the
    affine is rebuilt from napari's scale and translate (world axes = LPS in z, y, x).
    """
    meta = plugin_meta(layer_metadata)
    if meta and meta.get("affine") is not None:
        ornt = meta.get("source_ornt")
        return np.asarray(meta["affine"], dtype=float), None if ornt is None else np.asarray(ornt)
    scale = np.asarray(scale, dtype=float)[-3:]
    translate = np.asarray(translate, dtype=float)[-3:]
    # world (z, y, x) -> LPS (x, y, z): reverse the rows.
    affine = np.eye(4)
    affine[:3, :3] = np.diag(scale)[::-1]
    affine[:3, 3] = translate[::-1]
    return affine, None


def volume_from_layer(data: np.ndarray, layer_metadata: dict, scale, translate) -> CTVolume:
    """Rebuild the core ``CTVolume`` of an image layer (from the reader or any 3D image)."""
    affine, ornt = affine_from_layer(layer_metadata, scale, translate)
    meta = plugin_meta(layer_metadata) or {}
    return CTVolume(
        hu=np.asarray(data),
        affine=affine,
        metadata=dict(meta.get("dicom") or {}),
        source_path=meta.get("source_path"),
        source_ornt=ornt,
        warnings=tuple(meta.get("warnings") or ()),
    )
