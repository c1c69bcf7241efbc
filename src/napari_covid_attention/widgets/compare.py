"""Side-by-side comparison of attention and Grad-CAM (Qt-free, on napari's grid mode).

napari's grid puts every ``stride`` consecutive layers into one view box, all sharing the
dims and the camera, so slices and zoom stay linked. Each box holds [CT, map, infection
mask]: the CT and the mask are added again as extra layers over the *same* arrays (no
copy), so an edit of the infection mask shows in every box. Each box is titled with its
map's name ("attention", "Grad-CAM", "Grad-CAM++") by a text overlay on the box's map
layer. Entering hides and moves the other layers and fits the camera to the grid;
:meth:`CompareView.set_maps` switches the panels in place; leaving removes the extra
layers and the titles and restores order, visibility, grid settings and camera exactly.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from napari_covid_attention.widgets.layers import MAP_TITLES, layer_of_kind

if TYPE_CHECKING:
    from napari.components import ViewerModel
    from napari.layers import Layer

STRIDE = 3  # CT, map, infection mask per view box
TITLE_KEY = "covid_attention_title"  # the key of a panel title in a map layer's overlays
TITLE_FONT_SIZE = 14


def grid_of(viewer: ViewerModel):
    """The grid settings: ``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def camera_of(viewer: ViewerModel):
    """The camera: ``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def panel_title(layer: Layer) -> str | None:
    """The title shown over the view box of ``layer`` (None if it has none)."""
    overlays = getattr(layer, "_overlays", {})
    if TITLE_KEY in overlays:
        return overlays[TITLE_KEY].text
    return None


@cache
def _panel_title_type() -> type:
    """A text overlay that lives in one layer's grid view box.

    napari 0.9 draws a layer's canvas overlays in that layer's view box, but its only
    per-layer text overlay shows the layer name (too long here: "<scan> · Grad-CAM++"),
    and a plain ``TextOverlay`` has no per-layer visual. This subclass gets one: the text
    overlay's visual with napari's layer-overlay mixin (registered by
    :func:`_register_title_visual` once a canvas is around).
    """
    from napari.components.overlays import TextOverlay

    class PanelTitle(TextOverlay):
        """The title of one side-by-side panel."""

    return PanelTitle


def _register_title_visual() -> bool:
    """Teach a running vispy canvas to draw :func:`_panel_title_type`; False where it cannot.

    Without a canvas (``ViewerModel``) there is nothing to draw and this returns True
    without importing vispy or Qt.
    """
    if "napari._vispy.utils.visual" not in sys.modules:
        return True
    try:
        from napari._vispy.overlays.base import LayerOverlayMixin
        from napari._vispy.overlays.text import VispyTextOverlay
        from napari._vispy.utils import visual
    except ImportError:  # pragma: no cover - another napari layout
        return False
    registry = getattr(visual, "overlay_to_visual", None)
    if not isinstance(registry, dict):  # pragma: no cover - another napari layout
        return False
    title_type = _panel_title_type()
    if title_type not in registry:

        class VispyPanelTitle(LayerOverlayMixin, VispyTextOverlay):
            """A text overlay's visual in its layer's view box."""

        registry[title_type] = VispyPanelTitle
    return True


@dataclass
class _Saved:
    order: list
    visible: dict
    grid: tuple
    camera: dict


@dataclass
class CompareView:
    """Enter with :meth:`enter`, leave with :meth:`exit`; ``active`` says which it is in."""

    viewer: ViewerModel
    added: list = field(default_factory=list)
    boxes: list = field(default_factory=list)  # (map name, [layers of the box])
    maps: tuple = ()
    _saved: _Saved | None = None
    _ct: Layer | None = None
    _titled: list = field(default_factory=list)  # map layers given a title overlay
    _named: dict = field(default_factory=dict)  # fallback titles: layer -> its name overlay state

    @property
    def active(self) -> bool:
        return self._saved is not None

    def enter(self, ct_layer: Layer, maps: tuple[str, ...] = ("attention", "gradcam")) -> None:
        """Show one panel per map, side by side, fitted to the canvas."""
        if self.active:
            self.exit()
        viewer = self.viewer
        self._check_maps(ct_layer, maps)
        camera = camera_of(viewer)
        self._saved = _Saved(
            order=list(viewer.layers),
            visible={id(layer): layer.visible for layer in viewer.layers},
            grid=(grid_of(viewer).enabled, grid_of(viewer).stride, grid_of(viewer).shape),
            camera={"center": tuple(camera.center), "zoom": camera.zoom, "angles": tuple(camera.angles)},
        )
        self._ct = ct_layer
        self._build(maps)
        viewer.reset_view()
        viewer.layers.selection.active = ct_layer

    def set_maps(self, maps: tuple[str, ...]) -> None:
        """Switch the panels (e.g. add or drop Grad-CAM++) while active, keeping slice and zoom.

        The slice and the camera center stay as they are; the zoom stays the same relative
        to the panels' fit (a third panel is narrower: a fitted view stays fitted instead of
        being cropped, and a view zoomed in 2x on a lesion stays 2x). Does nothing while the
        view is off: :meth:`enter` takes the maps then.
        """
        maps = tuple(maps)
        if not self.active or maps == self.maps:
            return
        viewer = self.viewer
        self._check_maps(self._ct, maps)
        point = tuple(viewer.dims.point)
        camera = camera_of(viewer)
        center, zoom, angles = tuple(camera.center), camera.zoom, tuple(camera.angles)
        active = viewer.layers.selection.active
        old_fit = self._fit_zoom()
        self._teardown()
        self._build(maps)
        new_fit = self._fit_zoom()
        viewer.dims.point = point
        camera.angles, camera.center, camera.zoom = angles, center, zoom * new_fit / old_fit
        if active in viewer.layers:
            viewer.layers.selection.active = active

    def exit(self) -> None:
        """Back to the single view as it was before :meth:`enter`: layers, grid and camera."""
        if self._saved is None:
            return
        viewer, saved = self.viewer, self._saved
        self._teardown()
        for target, layer in enumerate(kept for kept in saved.order if kept in viewer.layers):
            viewer.layers.move(viewer.layers.index(layer), target)
        for layer in viewer.layers:
            layer.visible = saved.visible.get(id(layer), layer.visible)
        grid = grid_of(viewer)
        grid.enabled, grid.stride, grid.shape = saved.grid
        camera = camera_of(viewer)
        camera.angles = saved.camera["angles"]
        camera.center = saved.camera["center"]
        camera.zoom = saved.camera["zoom"]
        self._saved, self._ct, self.maps = None, None, ()

    def refresh_twins(self) -> None:
        """Redraw the extra mask layers after the shared mask array was edited in place."""
        for layer in self.added:
            layer.refresh()

    # ----- building and tearing down the panels ------------------------------------------
    def _fit_zoom(self) -> float:
        """The zoom that fits the scan in one view box of the grid as it is now (moves the camera)."""
        self.viewer.reset_view()
        return camera_of(self.viewer).zoom

    def _check_maps(self, ct_layer: Layer, maps: tuple[str, ...]) -> None:
        if any(layer_of_kind(self.viewer, ct_layer, name) is None for name in maps):
            raise ValueError("diagnose the scan before comparing its maps")

    def _build(self, maps: tuple[str, ...]) -> None:
        viewer, ct_layer = self.viewer, self._ct
        infection = layer_of_kind(viewer, ct_layer, "infection_mask")
        self.boxes = []
        for i, name in enumerate(maps):
            map_layer = layer_of_kind(viewer, ct_layer, name)
            ct = ct_layer if i == 0 else self._twin(ct_layer, f"{ct_layer.name} [{MAP_TITLES[name]}]")
            box = [ct, map_layer]
            if infection is not None:
                box.append(infection if i == 0 else self._twin(infection, f"{infection.name} [{MAP_TITLES[name]}]"))
            self.boxes.append((name, box))
        ordered = [layer for _, box in self.boxes for layer in box]
        for layer in viewer.layers:
            layer.visible = False
        for target, layer in enumerate(ordered):
            viewer.layers.move(viewer.layers.index(layer), target)
            layer.visible = True
        grid = grid_of(viewer)
        grid.stride = STRIDE if infection is not None else 2
        grid.shape = (1, len(maps))
        grid.enabled = True
        for name, box in self.boxes:
            self._add_title(box[1], MAP_TITLES[name])
        self.maps = tuple(maps)

    def _teardown(self) -> None:
        """Remove the titles and the extra layers (order and visibility are left as they are)."""
        viewer = self.viewer
        for layer in self._titled:
            layer._overlays.pop(TITLE_KEY, None)
        for layer, state in self._named.items():
            layer.name_overlay.update(state)
        self._titled, self._named = [], {}
        for layer in self.added:
            if layer in viewer.layers:
                viewer.layers.remove(layer)
        self.added, self.boxes = [], []

    def _add_title(self, layer: Layer, title: str) -> None:
        overlays = getattr(layer, "_overlays", None)
        if overlays is not None and _register_title_visual():
            overlays[TITLE_KEY] = _panel_title_type()(
                text=title, position="top_center", font_size=TITLE_FONT_SIZE, color="white", box=True, visible=True
            )
            self._titled.append(layer)
            return
        # fallback (a napari whose overlays are laid out otherwise): the layer's own name
        name_overlay = layer.name_overlay
        self._named[layer] = {key: getattr(name_overlay, key) for key in ("visible", "position", "font_size")}
        name_overlay.update({"visible": True, "position": "top_center", "font_size": TITLE_FONT_SIZE})

    def _twin(self, layer: Layer, name: str) -> Layer:
        """Another layer over the same data array, transform and display settings."""
        from napari.layers import Image, Labels

        common = {
            "name": name,
            "scale": layer.scale,
            "translate": layer.translate,
            "rotate": layer.rotate,
            "shear": layer.shear,
            "opacity": layer.opacity,
            "metadata": {},
        }
        if isinstance(layer, Labels):
            twin = self.viewer.add_labels(layer.data, colormap=layer.colormap, **common)
        elif isinstance(layer, Image):
            twin = self.viewer.add_image(
                layer.data, colormap=layer.colormap, contrast_limits=layer.contrast_limits, blending=layer.blending, **common
            )
        else:
            raise TypeError(f"cannot twin a {type(layer).__name__} layer")
        self.added.append(twin)
        return twin
