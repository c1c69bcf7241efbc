"""Widget logic on napari.components.ViewerModel: no Qt, no window."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_covid_attention._layer_data import ct_layer_data, plugin_meta
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.widgets import layers as ops
from napari_covid_attention.widgets.card import result_card_html, scores_rows
from napari_covid_attention.widgets.compare import CompareView, grid_of


@pytest.fixture
def viewer(cap_phantom):
    model = ViewerModel()
    data, kwargs, _ = ct_layer_data(cap_phantom.volume, "ct")
    model.add_image(data, **kwargs)
    return model


def test_ct_volume_round_trips_through_the_layer(viewer, cap_phantom):
    volume = ops.ct_volume_of(viewer.layers["ct"])
    np.testing.assert_array_equal(volume.affine, cap_phantom.volume.affine)
    assert volume.hu is cap_phantom.volume.hu or np.shares_memory(volume.hu, cap_phantom.volume.hu)


@pytest.mark.parametrize(
    ("add", "phrase"),
    [
        (lambda v: v.add_labels(np.zeros((8, 8, 8), np.uint8), name="bad"), "labels layer"),
        (lambda v: v.add_image(np.zeros((16, 16, 3), np.uint8), rgb=True, name="bad"), "RGB"),
        (lambda v: v.add_image(np.zeros((16, 16)), name="bad"), "2 dimensions"),
        (lambda v: v.add_image(np.full((8, 16, 16), 100.0), name="bad"), "Hounsfield"),
    ],
)
def test_bad_layers_get_one_sentence(viewer, add, phrase):
    add(viewer)
    with pytest.raises(UserFacingError, match=phrase):
        ops.ct_volume_of(viewer.layers["bad"])


def test_layers_are_added_on_the_ct_geometry(viewer, cap_diagnosis):
    ct = viewer.layers["ct"]
    made = ops.add_diagnosis_layers(viewer, ct, cap_diagnosis)
    assert set(made) == {"lung_mask", "infection_mask", "attention", "gradcam", "gradcam_pp"}
    for kind in ("lung_mask", "infection_mask"):
        np.testing.assert_allclose(made[kind].scale, ct.scale)
        np.testing.assert_allclose(made[kind].translate, ct.translate)
        assert made[kind].data.shape == ct.data.shape
    for kind in ("attention", "gradcam", "gradcam_pp"):
        layer = made[kind]
        assert layer.blending == "additive" and layer.data.shape == cap_diagnosis.maps[kind].values.shape
        # a coarse map's voxel (0, 0, 0) lands where its affine says, in world (z, y, x)
        world = layer.data_to_world((0, 0, 0))
        np.testing.assert_allclose(world, (cap_diagnosis.maps[kind].affine @ [0, 0, 0, 1])[:3][::-1], atol=1e-6)
        assert np.all(np.asarray(layer.scale) > np.asarray(ct.scale))  # coarse, not upsampled
        # the lung's background saliency leaves the CT untinted; the peak is fully drawn
        alpha = layer.colormap.map(np.array([0.0, 0.2, 1.0]))[:, 3]
        np.testing.assert_allclose(alpha, [0.0, 0.0, 1.0])


def test_rerun_replaces_plugin_layers_and_keeps_user_layers(viewer, cap_diagnosis):
    ct = viewer.layers["ct"]
    notes = viewer.add_labels(np.zeros(ct.data.shape, np.uint8), name="my notes")
    ops.add_diagnosis_layers(viewer, ct, cap_diagnosis)
    first = len(viewer.layers)
    ops.add_diagnosis_layers(viewer, ct, cap_diagnosis)
    assert len(viewer.layers) == first
    assert notes in viewer.layers and plugin_meta(notes.metadata) is None
    assert len(ops.plugin_layers_of(viewer, ct)) == 5


def test_compare_mode_enters_and_restores_exactly(viewer, cap_diagnosis):
    ct = viewer.layers["ct"]
    viewer.add_labels(np.zeros(ct.data.shape, np.uint8), name="my notes")
    ops.add_diagnosis_layers(viewer, ct, cap_diagnosis)
    before = [(layer.name, layer.visible) for layer in viewer.layers]
    compare = CompareView(viewer)
    compare.enter(ct, ("attention", "gradcam", "gradcam_pp"))
    grid = grid_of(viewer)
    assert grid.enabled and grid.stride == 3 and grid.shape == (1, 3)
    names = [layer.name for layer in viewer.layers][:9]
    assert names[1].startswith("attention ·") and names[4].startswith("Grad-CAM ·") and names[7].startswith("Grad-CAM++ ·")
    assert all(layer.visible for layer in list(viewer.layers)[:9])
    assert not any(layer.visible for layer in list(viewer.layers)[9:])
    # twins share the data arrays: an edit shows in every box
    assert viewer.layers[3].data is ct.data and viewer.layers[5].data is viewer.layers[2].data
    compare.exit()
    assert [(layer.name, layer.visible) for layer in viewer.layers] == before
    assert not grid.enabled


def test_review_helpers(viewer, cap_diagnosis, cap_phantom):
    mask = np.zeros(cap_phantom.volume.shape, np.uint8)
    mask[7, 10:20, 10:20] = 1
    mask[9, 10:12, 10:12] = 1
    assert ops.slice_with_most_infection(mask) == 7
    assert ops.slice_with_most_infection(np.zeros_like(mask)) is None
    spacing = cap_phantom.volume.spacing_mm
    infected, _ = ops.slice_areas_cm2(mask, cap_diagnosis.lung_mask, 7, spacing)
    assert infected == pytest.approx(100 * spacing[1] * spacing[2] / 100)
    peak = ops.attention_peak_world(cap_diagnosis)
    ct = viewer.layers["ct"]
    index = np.asarray(ct.world_to_data(peak))
    assert np.all(index >= -1) and np.all(index <= np.asarray(ct.data.shape))


def test_card_and_scores_text(cap_diagnosis, cap_phantom):
    html = result_card_html(cap_diagnosis)
    assert f"{100 * cap_diagnosis.probabilities['COVID-19']:.1f} %" in html
    assert f"{cap_diagnosis.infection_volume_ml:.1f} mL" in html
    assert "not for clinical use" in html
    rows = scores_rows(cap_diagnosis.localization(cap_phantom.infection_mask))
    assert [r[0] for r in rows] == ["attention", "Grad-CAM", "Grad-CAM++"]


def test_rerun_refreshes_maps_in_place_with_the_new_values_and_geometry(viewer, cap_diagnosis):
    """Maps and lung mask are updated, not re-created (napari's layer removal is slow);
    the user's visibility choice survives; the infection mask is a new layer."""
    import dataclasses

    ct = viewer.layers["ct"]
    first = ops.add_diagnosis_layers(viewer, ct, cap_diagnosis)
    first["gradcam"].visible = True
    saliency = cap_diagnosis.maps["attention"]
    moved = saliency.affine.copy()
    moved[:3, 3] += 5.0
    shifted = dataclasses.replace(saliency, values=saliency.values * 0.5, affine=moved)
    second_diagnosis = dataclasses.replace(cap_diagnosis, maps={**cap_diagnosis.maps, "attention": shifted})
    second = ops.add_diagnosis_layers(viewer, ct, second_diagnosis)
    for kind in ops.REFRESHED_IN_PLACE:
        assert second[kind] is first[kind]
    assert second["infection_mask"] is not first["infection_mask"]
    assert first["infection_mask"] not in viewer.layers
    assert second["gradcam"].visible
    np.testing.assert_allclose(second["attention"].data, shifted.values)
    assert plugin_meta(second["attention"].metadata)["affine"] == moved.tolist()
    expected = ops.layer_transform(moved).as_layer_kwargs()
    np.testing.assert_allclose(second["attention"].translate, expected["translate"])


def test_a_window_preset_goes_to_the_ct_even_when_its_map_is_selected(viewer, cap_diagnosis):
    from napari_covid_attention.widgets.window import target_image_layer

    ct = viewer.layers["ct"]
    ops.add_diagnosis_layers(viewer, ct, cap_diagnosis)
    attention = ops.layer_of_kind(viewer, ct, "attention")
    viewer.layers.selection.active = attention
    assert target_image_layer(viewer) is ct  # was the attention map: a pink box
