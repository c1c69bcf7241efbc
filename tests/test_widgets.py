"""Viewer tests: the reader, the sample data and the dock widget in a real napari window."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_attention import _reader
from napari_covid_attention._layer_data import plugin_meta
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.widgets import layers as ops
from napari_covid_attention.widgets.compare import grid_of

pytestmark = pytest.mark.viewer
PLUGIN = "napari-covid-attention"


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(21, label="COVID-19", shape=(40, 80, 80))


@pytest.fixture
def widget_viewer(open_ct_with_diagnose_widget, phantom, tiny_bundle):
    return open_ct_with_diagnose_widget(phantom.volume, tiny_bundle)


def test_sample_opens_in_hu_with_true_geometry(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "covid_phantom")
    layer = layers[0]
    from napari_covid_attention._sample_data import sample_phantom

    volume = sample_phantom("COVID-19").volume
    np.testing.assert_allclose(layer.scale, volume.spacing_mm)
    np.testing.assert_allclose(layer.translate, volume.affine[:3, 3][::-1])
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    assert layer.data.dtype == np.int16 and layer.data.min() >= -1024


def test_real_series_opens_through_the_reader(make_napari_viewer, chest_series_dir, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.open(chest_series_dir, plugin=PLUGIN)[0]
    assert layer.data.shape == (30, 512, 512)
    np.testing.assert_allclose(layer.scale, (8.0, 0.6465, 0.6465), atol=1e-3)
    assert tuple(layer.contrast_limits) == (-1350.0, 150.0)
    # canonical orientation: world axes are LPS (z, y, x); z grows towards the head
    assert layer.data_to_world((1, 0, 0))[0] > layer.data_to_world((0, 0, 0))[0]
    meta = plugin_meta(layer.metadata)
    assert "Lung_Dx" not in str(meta)  # de-identified (the series has PatientName set)
    # anterior at the top of the slice: the body's front is in low rows, the table in high rows
    column = layer.data[15, :, 256]
    assert np.argmax(column > -300) < 200 < np.flatnonzero(column > -300).max()


def test_reader_shows_one_sentence_for_bad_files(tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr(_reader, "_notify_error", messages.append)
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all" * 20)
    assert _reader.napari_get_reader(str(bad)) is _reader.read_ct
    assert _reader.read_ct(str(bad)) == [(None,)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert _reader.napari_get_reader(str(tmp_path / "notes.txt")) is None


def test_diagnose_adds_layers_on_the_ct_geometry(widget_viewer, phantom, tiny_bundle, qtbot):
    viewer, widget = widget_viewer
    widget.run_diagnosis()
    qtbot.waitUntil(lambda: widget.current_result() is not None, timeout=120_000)
    ct = viewer.layers["ct"]
    kinds = {plugin_meta(layer.metadata)["kind"]: layer for layer in ops.plugin_layers_of(viewer, ct)}
    assert set(kinds) == {"lung_mask", "infection_mask", "attention", "gradcam", "gradcam_pp"}
    for kind in ("lung_mask", "infection_mask"):
        np.testing.assert_allclose(kinds[kind].scale, ct.scale)
        np.testing.assert_allclose(kinds[kind].translate, ct.translate)
    # the card shows exactly what diagnose() computes for this scan and bundle
    expected = diagnose(phantom.volume, load_bundle(tiny_bundle), "cpu")
    card = widget.card.text()
    assert f"{100 * expected.probabilities['COVID-19']:.1f} %" in card
    assert f"{expected.infection_volume_ml:.1f} mL" in card
    assert "not for clinical use" in card
    qtbot.waitUntil(lambda: widget.scores.rowCount() == 3, timeout=30_000)  # one row per map, filled by a worker
    # re-run: same number of layers, plugin layers replaced
    count = len(viewer.layers)
    widget.run_diagnosis(threaded=False)
    assert len(viewer.layers) == count


def test_compare_on_and_off(widget_viewer, qtbot):
    viewer, widget = widget_viewer
    widget.run_diagnosis(threaded=False)
    order = [layer.name for layer in viewer.layers]
    widget.include_pp.setChecked(True)
    widget.compare_button.setChecked(True)
    assert grid_of(viewer).enabled and widget.session.compare.active
    assert len(viewer.layers) == len(order) + 4  # 2 extra CT views + 2 extra mask views
    widget.compare_button.setChecked(False)
    assert not grid_of(viewer).enabled
    assert [layer.name for layer in viewer.layers] == order


def test_scores_follow_mask_edits(widget_viewer, qtbot):
    viewer, widget = widget_viewer
    widget.run_diagnosis(threaded=False)
    ct = viewer.layers["ct"]
    mask_layer = ops.layer_of_kind(viewer, ct, "infection_mask")
    def table():
        return [[widget.scores.item(r, c).text() for c in range(4)] for r in range(widget.scores.rowCount())]

    before = table()
    assert len(before) == 3
    mid = ct.data.shape[0] // 2
    mask = np.zeros_like(mask_layer.data)
    mask[mid - 3 : mid + 3, 30:50, 20:40] = 1
    mask_layer.data = mask
    qtbot.waitUntil(lambda: table() != before, timeout=5000)
    on_right = table()
    assert on_right[0][0] == "attention" and len(on_right) == 3
    assert all(cell != "–" for row in on_right for cell in row[1:])  # a mask in the lung: every map is scored
    mask = np.zeros_like(mask_layer.data)
    mask[mid - 3 : mid + 3, 30:50, 45:65] = 1  # the other lung
    mask_layer.data = mask
    qtbot.waitUntil(lambda: table() != on_right, timeout=5000)


def test_only_ct_images_are_offered_and_picked_by_layer(widget_viewer):
    viewer, widget = widget_viewer
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="photo")
    viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="some labels")
    offered = [layer.name for layer in widget.layer_picker.choices]
    assert offered == ["ct"]  # neither the RGB photo nor the labels are offered as a CT
    viewer.layers["ct"].name = "renamed"
    assert widget.layer_picker.value is viewer.layers["renamed"]


def test_an_error_is_notified_exactly_once(widget_viewer, qtbot):
    from napari.utils.notifications import notification_manager

    viewer, widget = widget_viewer
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer.add_image(np.zeros((8, 32, 32), np.float32), name="not hu")  # no air: not a CT in HU
        widget.layer_picker.value = viewer.layers["not hu"]
        assert widget.run_diagnosis() is None
        assert len(seen) == 1 and "Hounsfield" in seen[0].message
        seen.clear()
        widget.layer_picker.value = viewer.layers["ct"]
        monkeypatched = widget.session.models
        monkeypatched.chosen = monkeypatched.chosen.parent / "missing-bundle"  # fails inside the worker
        widget.run_diagnosis()
        qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
        qtbot.wait(50)
        assert len(seen) == 1, [n.message for n in seen]
        assert widget.progress.value() == 0 and "failed" in widget.status.text()
    finally:
        notification_manager.notification_ready.disconnect(seen.append)


def test_cancel_adds_nothing(widget_viewer, qtbot):
    viewer, widget = widget_viewer
    before = len(viewer.layers)
    worker = widget.run_diagnosis()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)
    assert len(viewer.layers) == before
    assert worker is not None and widget.current_result() is None



def test_closing_the_scan_clears_the_card_and_readout(widget_viewer):
    viewer, widget = widget_viewer
    widget.run_diagnosis(threaded=False)
    assert "mL" in widget.card.text() and widget.slice_readout.text().startswith("Slice")
    viewer.layers.remove(viewer.layers["ct"])
    assert widget.card.text() == "Select a CT image layer and press Diagnose."
    assert widget.slice_readout.text() == "" and widget.scores.rowCount() == 0
    assert len(viewer.layers) == 0  # its result layers went with it


def test_the_bundle_picker_follows_a_promotion_and_a_rollback(widget_viewer, tiny_bundle):
    import json
    import shutil

    from napari_covid_attention.models.registry import (
        BUILTIN_DIR,
        bundle_info,
        rollback,
        set_current,
        user_bundles_dir,
    )

    viewer, widget = widget_viewer
    models = widget.session.models
    models.choose(BUILTIN_DIR / "demo")  # follow the demo family's current version
    target = user_bundles_dir() / "demo" / "9.0.0"
    shutil.copytree(tiny_bundle, target)
    meta = json.loads((target / "bundle.json").read_text())
    meta.update(name="demo", version="9.0.0", parent={"name": "demo", "version": bundle_info(BUILTIN_DIR / "demo").version})
    (target / "bundle.json").write_text(json.dumps(meta))
    set_current("demo", "9.0.0", "promoted in a test")
    models.refresh()  # what the Fine-tune dock does after a promotion
    assert widget.bundle_combo.currentData() == str(target)
    rollback("demo")
    models.refresh()
    assert widget.bundle_combo.currentData() == str(BUILTIN_DIR / "demo")


def test_the_slice_readout_follows_a_mask_edit(widget_viewer):
    viewer, widget = widget_viewer
    widget.run_diagnosis(threaded=False)
    widget.jump_to_infection()
    before = widget.slice_readout.text()
    mask_layer = ops.layer_of_kind(viewer, viewer.layers["ct"], "infection_mask")
    z = ops.current_slice(viewer, viewer.layers["ct"])
    mask = np.array(mask_layer.data)
    mask[z] = 0
    mask_layer.data = mask
    assert widget.slice_readout.text() != before and "infection 0.0 cm²" in widget.slice_readout.text()
