"""CT window presets (lung, mediastinum, bone, full range) for the selected CT layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QHBoxLayout, QPushButton, QWidget

from napari_covid_attention.windows import window_limits, window_names

if TYPE_CHECKING:
    import napari


def apply_window(layer, preset: str) -> None:
    """Set an image layer's contrast limits to a window preset (Qt-free, testable)."""
    limits = window_limits(preset, layer.data if preset == "full range" else None)
    if preset == "full range":
        layer.contrast_limits_range = limits
    layer.contrast_limits = limits


def target_image_layer(viewer: napari.Viewer):
    """The CT of the selected layer (a CT, or one of its maps or masks), else the top-most
    CT, else None: a CT window never lands on an attention map."""
    from napari_covid_attention.session.session import is_ct
    from napari_covid_attention.widgets.layers import ct_layer_of

    found = ct_layer_of(viewer, viewer.layers.selection.active)
    if found is not None:
        return found
    return next((layer for layer in reversed(viewer.layers) if is_ct(layer)), None)


class WindowPresetWidget(QWidget):
    """One button per window; acts on the selected (or top-most) CT image layer."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        layout = QHBoxLayout(self)
        self.buttons: dict[str, QPushButton] = {}
        for name in window_names():
            button = QPushButton(name.capitalize())
            button.setToolTip(_tooltip(name))
            button.clicked.connect(lambda _checked=False, n=name: self.apply(n))
            layout.addWidget(button)
            self.buttons[name] = button

    def apply(self, preset: str) -> None:
        layer = target_image_layer(self.viewer)
        if layer is not None:
            apply_window(layer, preset)


def _tooltip(name: str) -> str:
    if name == "full range":
        return "Show the whole HU range of the scan"
    low, high = window_limits(name)
    return f"W {high - low:.0f} / L {(high + low) / 2:.0f} HU"
