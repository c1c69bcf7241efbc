"""What the widgets do to a viewer, without Qt: works on ``napari.components.ViewerModel``.

Adding a diagnosis as layers (replacing the plugin's earlier layers of the same scan,
never touching the user's), finding the CT volume behind a layer, and the slice-review
helpers. The dock widgets only wire buttons to these functions.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np

from napari_covid_attention._layer_data import (
    META_KEY,
    labels_layer_data,
    plugin_meta,
    volume_from_layer,
)
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.geometry import layer_transform
from napari_covid_attention.io.volume import CTVolume, looks_like_hu

if TYPE_CHECKING:
    from napari.components import ViewerModel
    from napari.layers import Image, Layer
    from napari.utils.colormaps import Colormap

    from napari_covid_attention.diagnosis import Diagnosis

MAP_TITLES = {"attention": "attention", "gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++"}
LUNG_COLORS = {"right": "#33d6ff", "left": "#ffd633"}  # keyed by side: preprocess.lung (scikit-image) loads later
INFECTION_COLOR = "#ff3030"
# Saliency below this fraction of its scan's peak fades to nothing: a map is normalised
# per scan, so most of the lung sits at 0.1-0.4 and would otherwise tint the whole lung box.
SALIENCY_FADE = (0.25, 0.6)


def ct_volume_of(layer: Layer) -> CTVolume:
    """The CT behind a layer, or a one-sentence reason why that layer cannot be diagnosed."""
    from napari.layers import Image

    if not isinstance(layer, Image):
        kind = type(layer).__name__.lower()
        raise UserFacingError(f"'{layer.name}' is a {kind} layer; select the CT image layer to diagnose.")
    if layer.rgb:
        raise UserFacingError(f"'{layer.name}' is an RGB image, not a CT scan in Hounsfield units.")
    if layer.multiscale:
        raise UserFacingError(f"'{layer.name}' is a multiscale image; open the CT as a single-resolution volume.")
    if layer.ndim != 3:
        raise UserFacingError(f"'{layer.name}' has {layer.ndim} dimensions; diagnosis needs a 3D CT volume.")
    volume = volume_from_layer(np.asarray(layer.data), layer.metadata, layer.scale, layer.translate)
    if not looks_like_hu(volume.hu):
        raise UserFacingError(f"'{layer.name}' does not look like a CT in Hounsfield units (no air below -800 HU).")
    return volume


def scan_key(layer: Layer) -> str:
    """Identifies a CT layer for the layers made from it (stable for the session)."""
    return str(layer.unique_id)


def ct_layer_of(viewer: ViewerModel, layer: Layer | None) -> Layer | None:
    """The CT a layer belongs to: itself when it is a CT, its scan's CT for a map or mask."""
    from napari_covid_attention.session.session import is_ct

    if layer is None:
        return None
    if is_ct(layer):
        return layer
    key = (plugin_meta(layer.metadata) or {}).get("scan")
    return next((c for c in viewer.layers if key is not None and scan_key(c) == key), None)


def plugin_layers_of(viewer: ViewerModel, ct_layer: Layer) -> list[Layer]:
    """The layers this plugin made from ``ct_layer`` (never the user's own layers)."""
    key = scan_key(ct_layer)
    return [layer for layer in viewer.layers if (plugin_meta(layer.metadata) or {}).get("scan") == key]


def layer_of_kind(viewer: ViewerModel, ct_layer: Layer, kind: str) -> Layer | None:
    for layer in plugin_layers_of(viewer, ct_layer):
        if plugin_meta(layer.metadata).get("kind") == kind:
            return layer
    return None


def add_diagnosis_layers(viewer: ViewerModel, ct_layer: Image, diagnosis: Diagnosis) -> dict[str, Layer]:
    """Maps and masks over the CT, all at once (scripts, tests); see :func:`diagnosis_layer_steps`."""
    steps = diagnosis_layer_steps(viewer, ct_layer, diagnosis)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def diagnosis_layer_steps(viewer: ViewerModel, ct_layer: Image, diagnosis: Diagnosis) -> Generator[str, None, dict[str, Layer]]:
    """Maps and masks over the CT, one layer per step; a re-run replaces the earlier ones.

    Each layer costs napari 0.1 s of main-thread work (slicing, thumbnail, texture), so
    the GUI runs one step per event-loop turn instead of stalling for all six at once.
    Maps stay on their coarse grid and are drawn through their own affine (scale /
    translate), smoothed by the renderer; masks are labels on the scan's full grid, so
    they can be edited voxel by voxel.
    """
    from napari.utils.colormaps import DirectLabelColormap

    from napari_covid_attention.preprocess.lung import LEFT_LUNG, RIGHT_LUNG

    # Maps and the lung mask of an earlier run are refreshed in place: removing a layer
    # costs napari a full gc.collect() on the main thread (~0.4 s each with torch loaded),
    # and the user's visibility / opacity choices survive. The infection mask is replaced:
    # its edits are bound to the annotation store by layer.
    earlier = {plugin_meta(layer.metadata).get("kind"): layer for layer in plugin_layers_of(viewer, ct_layer)}
    for kind in list(earlier):
        if kind not in REFRESHED_IN_PLACE:
            viewer.layers.remove(earlier.pop(kind))
            yield f"removed the earlier {kind}"
    key = scan_key(ct_layer)
    ct_meta = plugin_meta(ct_layer.metadata) or {}
    source_ornt = ct_meta.get("source_ornt")
    source_ornt = None if source_ornt is None else np.asarray(source_ornt)
    made: dict[str, Layer] = {}

    lungs = labels_layer_data(
        diagnosis.lung_mask, diagnosis.scan_affine, f"lung mask · {ct_layer.name}", "lung_mask",
        source_ornt=source_ornt, extra_meta={"scan": key},
        colormap=DirectLabelColormap(
            color_dict={None: "transparent", 0: "transparent", RIGHT_LUNG: LUNG_COLORS["right"], LEFT_LUNG: LUNG_COLORS["left"]}
        ),
        opacity=0.7, visible=False,
    )
    made["lung_mask"] = _refresh(earlier.get("lung_mask"), lungs[0], lungs[1]) or viewer.add_labels(lungs[0], **lungs[1])
    made["lung_mask"].contour = 1
    yield "lung mask"
    for name in ("gradcam_pp", "gradcam", "attention"):
        made[name] = _add_map(viewer, ct_layer, diagnosis, name, visible=name == "attention", earlier=earlier.get(name))
        yield name
    infection = labels_layer_data(
        diagnosis.infection_mask, diagnosis.scan_affine, f"infection mask · {ct_layer.name}", "infection_mask",
        source_ornt=source_ornt,
        extra_meta={"scan": key, "model": f"{diagnosis.bundle_name} {diagnosis.bundle_version}", "predicted": diagnosis.predicted_class,
                    "finding": diagnosis.finding},
        colormap=DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: INFECTION_COLOR}),
        opacity=0.55,
    )
    made["infection_mask"] = viewer.add_labels(infection[0], **infection[1])
    viewer.layers.selection.active = ct_layer
    return made


def _add_map(
    viewer: ViewerModel, ct_layer: Image, diagnosis: Diagnosis, name: str, visible: bool, earlier: Layer | None = None
) -> Layer:
    saliency = diagnosis.maps[name]
    meta = {
        "kind": name,
        "scan": scan_key(ct_layer),
        "affine": saliency.affine.tolist(),
        "source_ornt": None,
    }
    kwargs = dict(
        name=f"{MAP_TITLES[name]} · {ct_layer.name}",
        metadata={META_KEY: meta},
        **layer_transform(saliency.affine).as_layer_kwargs(),
    )
    return _refresh(earlier, saliency.values, kwargs) or viewer.add_image(
        saliency.values,
        colormap=saliency_colormap(),
        blending="additive",
        opacity=0.6,
        contrast_limits=(0.0, 1.0),
        interpolation2d="linear",
        interpolation3d="linear",
        visible=visible,
        **kwargs,
    )


def saliency_colormap() -> Colormap:
    """Inferno whose alpha ramps from 0 to 1 over ``SALIENCY_FADE``: only hot spots tint the CT.

    napari has no colormap with a transparent low end; additive blending weighs by alpha.
    """
    from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap

    inferno = AVAILABLE_COLORMAPS["inferno"]
    low, high = SALIENCY_FADE
    colors = np.array(inferno.colors, dtype=np.float32)
    colors[:, 3] = np.clip((np.asarray(inferno.controls) - low) / (high - low), 0.0, 1.0)
    return Colormap(colors, controls=inferno.controls, name="saliency", display_name="saliency (inferno, faded)")


REFRESHED_IN_PLACE = ("lung_mask", "attention", "gradcam", "gradcam_pp")
_REFRESHED_ATTRIBUTES = ("name", "metadata", "scale", "translate", "rotate", "shear")


def _refresh(layer: Layer | None, data: np.ndarray, kwargs: dict) -> Layer | None:
    """Give an earlier run's layer the new data, geometry and metadata (None: no layer)."""
    if layer is None:
        return None
    ndim = data.ndim
    axis_aligned = {"rotate": np.eye(ndim), "shear": np.zeros(ndim * (ndim - 1) // 2)}  # when kwargs omit them
    values = {**axis_aligned, **kwargs}
    layer.data = data
    for attribute in _REFRESHED_ATTRIBUTES:
        setattr(layer, attribute, values[attribute])
    return layer


def world_z_of_slice(ct_layer: Layer, z_index: int) -> float:
    return float(ct_layer.data_to_world((z_index, 0, 0))[0])


def current_slice(viewer: ViewerModel, ct_layer: Layer) -> int:
    """The CT slice index under the viewer's current z position."""
    data_point = ct_layer.world_to_data(viewer.dims.point)
    return int(np.clip(round(float(data_point[0])), 0, ct_layer.data.shape[0] - 1))


def slice_with_most_infection(mask: np.ndarray) -> int | None:
    per_slice = np.count_nonzero(mask.reshape(mask.shape[0], -1), axis=1)
    return int(np.argmax(per_slice)) if per_slice.any() else None


def attention_peak_world(diagnosis: Diagnosis, name: str = "attention") -> np.ndarray:
    """World (z, y, x) position (LPS mm in napari order) of a map's maximum."""
    saliency = diagnosis.maps[name]
    peak = np.unravel_index(int(np.argmax(saliency.values)), saliency.values.shape)
    lps = saliency.affine @ np.r_[np.asarray(peak, dtype=float), 1.0]
    return lps[:3][::-1]


def slice_areas_cm2(infection: np.ndarray, lungs: np.ndarray, z_index: int, spacing_mm) -> tuple[float, float]:
    """Infection and lung area (cm^2) on one axial slice, for the per-slice readout."""
    pixel_cm2 = spacing_mm[1] * spacing_mm[2] / 100.0
    return (
        float(np.count_nonzero(infection[z_index])) * pixel_cm2,
        float(np.count_nonzero(lungs[z_index])) * pixel_cm2,
    )
