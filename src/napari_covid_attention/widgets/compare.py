"""Side-by-side comparison of attention and Grad-CAM (Qt-free, on napari's grid mode).

napari's grid puts every ``stride`` consecutive layers into one view box, all sharing the
dims and the camera, so slices and zoom stay linked. Each box holds [CT, map, infection
mask]: the CT and the mask are added again as extra layers over the *same* arrays (no
copy), so an edit of the infection mask shows in every box. Entering hides and moves the
other layers; leaving removes the extra layers and restores order, visibility and grid
settings exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from napari_covid_attention.widgets.layers import MAP_TITLES, layer_of_kind

if TYPE_CHECKING:
    from napari.components import ViewerModel
    from napari.layers import Layer

STRIDE = 3  # CT, map, infection mask per view box


def grid_of(viewer: ViewerModel):
    """The grid settings: ``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


@dataclass
class _Saved:
    order: list
    visible: dict
    grid: tuple


@dataclass
class CompareView:
    """Enter with :meth:`enter`, leave with :meth:`exit`; ``active`` says which it is in."""

    viewer: ViewerModel
    added: list = field(default_factory=list)
    boxes: list = field(default_factory=list)  # (map name, [layers of the box])
    _saved: _Saved | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    def enter(self, ct_layer: Layer, maps: tuple[str, ...] = ("attention", "gradcam")) -> None:
        if self.active:
            self.exit()
        viewer = self.viewer
        infection = layer_of_kind(viewer, ct_layer, "infection_mask")
        map_layers = [layer_of_kind(viewer, ct_layer, name) for name in maps]
        if any(layer is None for layer in map_layers):
            raise ValueError("diagnose the scan before comparing its maps")
        self._saved = _Saved(
            order=list(viewer.layers),
            visible={id(layer): layer.visible for layer in viewer.layers},
            grid=(grid_of(viewer).enabled, grid_of(viewer).stride, grid_of(viewer).shape),
        )
        self.boxes = []
        for i, (name, map_layer) in enumerate(zip(maps, map_layers, strict=True)):
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
        viewer.layers.selection.active = ct_layer

    def exit(self) -> None:
        if self._saved is None:
            return
        viewer, saved = self.viewer, self._saved
        for layer in self.added:
            if layer in viewer.layers:
                viewer.layers.remove(layer)
        self.added, self.boxes = [], []
        for target, layer in enumerate(kept for kept in saved.order if kept in viewer.layers):
            viewer.layers.move(viewer.layers.index(layer), target)
        for layer in viewer.layers:
            layer.visible = saved.visible.get(id(layer), layer.visible)
        grid = grid_of(viewer)
        grid.enabled, grid.stride, grid.shape = saved.grid
        self._saved = None

    def refresh_twins(self) -> None:
        """Redraw the extra mask layers after the shared mask array was edited in place."""
        for layer in self.added:
            layer.refresh()

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
