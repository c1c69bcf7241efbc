"""The side-by-side view: panel titles, switching maps in place, and the camera after exit."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_covid_attention._layer_data import ct_layer_data
from napari_covid_attention.widgets import layers as ops
from napari_covid_attention.widgets.compare import CompareView, camera_of, grid_of, panel_title

TWO = ("attention", "gradcam")
THREE = ("attention", "gradcam", "gradcam_pp")


@pytest.fixture
def viewer(cap_phantom, cap_diagnosis):
    model = ViewerModel()
    model.canvas.size = (600, 900)
    data, kwargs, _ = ct_layer_data(cap_phantom.volume, "ct")
    ct = model.add_image(data, **kwargs)
    ops.add_diagnosis_layers(model, ct, cap_diagnosis)
    return model


def titles(viewer) -> list:
    """The panel titles in view-box order: (title, box index) of every titled layer."""
    grid = grid_of(viewer)
    found = []
    for index, layer in enumerate(viewer.layers):
        title = panel_title(layer)
        if title is not None:
            box = index // grid.stride if grid.enabled else None
            found.append((title, box))
    return found


def test_each_panel_has_its_title_while_active_and_none_after_exit(viewer):
    ct = viewer.layers["ct"]
    compare = CompareView(viewer)
    compare.enter(ct, THREE)
    assert titles(viewer) == [("attention", 0), ("Grad-CAM", 1), ("Grad-CAM++", 2)]
    for _, box in compare.boxes:
        title = box[1]._overlays["covid_attention_title"]
        assert title.visible and title.position == "top_center"
    compare.exit()
    assert titles(viewer) == []
    assert all("covid_attention_title" not in layer._overlays for layer in viewer.layers)


def test_set_maps_switches_panels_in_place_keeping_slice_and_zoom(viewer):
    ct = viewer.layers["ct"]
    before = [(layer.name, layer.visible) for layer in viewer.layers]
    compare = CompareView(viewer)
    compare.enter(ct, TWO)
    camera = camera_of(viewer)
    fit_two = camera.zoom  # entering fits the two panels
    viewer.dims.set_point(0, float(ct.data_to_world((20, 0, 0))[0]))
    camera.zoom *= 2.5  # zoomed in on a lesion
    camera.center = (0.0, 12.0, -7.0)
    point, center = viewer.dims.point, camera.center
    grid = grid_of(viewer)

    compare.set_maps(THREE)
    assert compare.active and compare.maps == THREE
    assert grid.enabled and grid.shape == (1, 3) and grid.stride == 3
    assert len(viewer.layers) == len(before) + 4
    shown = [layer for layer in viewer.layers if layer.visible]
    assert shown == list(viewer.layers)[:9]
    assert titles(viewer) == [("attention", 0), ("Grad-CAM", 1), ("Grad-CAM++", 2)]
    # same slice and center; still 2.5x the fit, now the fit of three narrower panels
    assert viewer.dims.point == point and camera.center == center
    zoom_three = camera.zoom
    viewer.reset_view()
    fit_three = camera.zoom
    assert fit_three < fit_two and zoom_three == pytest.approx(2.5 * fit_three)
    camera.zoom, camera.center = zoom_three, center

    compare.set_maps(TWO)
    assert grid.shape == (1, 2) and len(viewer.layers) == len(before) + 2
    assert titles(viewer) == [("attention", 0), ("Grad-CAM", 1)]
    assert not ops.layer_of_kind(viewer, ct, "gradcam_pp").visible
    assert viewer.dims.point == point and camera.center == center
    assert camera.zoom == pytest.approx(2.5 * fit_two)

    compare.exit()
    assert [(layer.name, layer.visible) for layer in viewer.layers] == before
    assert not grid.enabled and titles(viewer) == []


def test_set_maps_while_off_does_nothing(viewer):
    compare = CompareView(viewer)
    count = len(viewer.layers)
    compare.set_maps(THREE)
    assert not compare.active and len(viewer.layers) == count and not grid_of(viewer).enabled


def test_exit_restores_the_camera_from_before_entering_exactly(viewer):
    ct = viewer.layers["ct"]
    viewer.reset_view()
    camera_of(viewer).zoom *= 1.7  # the radiologist zoomed in on a lesion
    camera_of(viewer).center = (0.0, -5.25, 8.5)
    zoom, center, angles = camera_of(viewer).zoom, camera_of(viewer).center, camera_of(viewer).angles
    compare = CompareView(viewer)
    compare.enter(ct, THREE)
    viewer.reset_view()  # what the dock widget does once the grid is laid out
    assert not np.isclose(camera_of(viewer).zoom, zoom)  # the grid's fit is another zoom
    camera_of(viewer).center = (0.0, 3.0, 3.0)  # and the user panned in the grid
    compare.exit()
    assert camera_of(viewer).zoom == zoom
    assert camera_of(viewer).center == center
    assert camera_of(viewer).angles == angles


def test_entering_fits_the_grid(viewer):
    """Each panel is fitted to its view box (the camera is shared, so the whole grid is)."""
    ct = viewer.layers["ct"]
    compare = CompareView(viewer)
    compare.enter(ct, THREE)
    fitted = camera_of(viewer).zoom
    viewer.reset_view()
    assert camera_of(viewer).zoom == pytest.approx(fitted)


@pytest.mark.viewer
def test_titles_are_drawn_in_their_view_boxes(make_napari_viewer, cap_phantom, cap_diagnosis):
    """On the real canvas each title is a text visual inside its own grid view box."""
    viewer = make_napari_viewer()
    data, kwargs, _ = ct_layer_data(cap_phantom.volume, "ct")
    ct = viewer.add_image(data, **kwargs)
    ops.add_diagnosis_layers(viewer, ct, cap_diagnosis)
    canvas = viewer.window._qt_viewer.canvas
    compare = CompareView(viewer)
    compare.enter(ct, THREE)
    for column, (_, box) in enumerate(compare.boxes):
        overlay = box[1]._overlays["covid_attention_title"]
        visual = canvas._layer_overlay_to_visual[box[1]][overlay]
        assert visual.node.text == overlay.text
        assert visual.node.parent is canvas.grid[0, column]
        assert visual.node.visible
    compare.set_maps(("attention", "gradcam"))
    assert [canvas._layer_overlay_to_visual[box[1]][box[1]._overlays["covid_attention_title"]].node.text
            for _, box in compare.boxes] == ["attention", "Grad-CAM"]
    compare.exit()
    assert not any("covid_attention_title" in layer._overlays for layer in viewer.layers)
    viewer.screenshot(canvas_only=True, flash=False)  # draws without the titles
