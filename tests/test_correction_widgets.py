"""Viewer tests of the correction loop: edits saved as versions, reopened, restored, reviewed,
and a fine-tuning run from the widget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_attention._layer_data import ct_layer_data
from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.session import ManualScheduler, session_for
from napari_covid_attention.settings import load_settings
from napari_covid_attention.widgets import layers as ops

pytestmark = pytest.mark.viewer
PLUGIN = "napari-covid-attention"


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(31, label="CAP", shape=(32, 64, 64))


def _open_with_docks(make_napari_viewer, volume, bundle):
    """A viewer whose session runs background work at once and autosaves when told."""
    viewer = make_napari_viewer()
    session_for(viewer, ManualScheduler)
    data, kwargs, _ = ct_layer_data(volume, "ct")
    viewer.add_image(data, **kwargs)
    _, diagnose_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "COVID-19 attention")
    diagnose_widget.set_bundle(bundle)
    diagnose_widget.set_device("cpu")
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Corrections")
    correct.annotator.setText("Dr Test")
    correct.set_annotator()
    diagnose_widget.run_diagnosis(threaded=False)
    return viewer, diagnose_widget, correct


@pytest.fixture
def session(make_napari_viewer, phantom, tiny_bundle):
    return _open_with_docks(make_napari_viewer, phantom.volume, tiny_bundle)


def _mask_layer(viewer):
    return ops.layer_of_kind(viewer, viewer.layers["ct"], "infection_mask")


def _correction(viewer):
    return session_for(viewer, ManualScheduler).active.correction


def _autosave(viewer) -> None:
    session_for(viewer, ManualScheduler).scheduler.run_pending()


def test_painting_saves_a_new_version(session):
    viewer, _, correct = session
    layer, correction = _mask_layer(viewer), _correction(viewer)
    assert correction.layer is layer and correction.case is not None
    layer.paint((16, 30, 30), 1)  # a brush stroke, through napari's own undo history
    assert correction.unsaved and correct.status.text() == "Unsaved changes…"
    _autosave(viewer)
    history = correction.store.history(correction.case.id)
    assert [v.kind for v in history] == ["original", "edit"]
    assert history[-1].annotator == "Dr Test"
    np.testing.assert_array_equal(correction.store.latest(correction.case.id), layer.data)
    assert "saved" in correct.status.text()
    assert correct.history.count() == 2


def test_reopening_the_scan_restores_the_latest_version(session, phantom, make_napari_viewer, tiny_bundle):
    viewer, _, correct = session
    layer = _mask_layer(viewer)
    layer.paint((10, 20, 20), 1)
    _autosave(viewer)
    saved = np.array(layer.data)
    # a new viewer session on the same scan: the correction comes back
    viewer2, _, correct2 = _open_with_docks(make_napari_viewer, phantom.volume, tiny_bundle)
    np.testing.assert_array_equal(_mask_layer(viewer2).data, saved)
    assert "restored version" in correct2.status.text()


def test_restore_an_earlier_version_and_mark_reviewed(session):
    viewer, _, correct = session
    layer, correction = _mask_layer(viewer), _correction(viewer)
    original = correction.store.latest(correction.case.id).copy()
    layer.paint((12, 25, 25), 1)
    _autosave(viewer)
    # the original is the oldest entry: restore it
    correct.history.setCurrentRow(correct.history.count() - 1)
    correct.restore_selected()
    np.testing.assert_array_equal(layer.data, original)
    assert [v.kind for v in correction.store.history(correction.case.id)][-1] == "restore"
    correct.label_combo.setCurrentText("CAP")
    correct.mark_reviewed()
    case = correction.store.get_case(correction.case.id)
    assert case.reviewed and case.label == "CAP" and case.reviewed_by == "Dr Test"


def test_editing_tools(session, qtbot):
    viewer, _, correct = session
    layer, correction = _mask_layer(viewer), _correction(viewer)
    layer.data = np.zeros_like(layer.data)
    layer.data[5:8, 10:20, 10:20] = 1
    assert correction.delete_lesion_at((6, 15, 15)) == 3 * 10 * 10
    assert not layer.data.any()
    correct.constrain.setChecked(True)
    correct.range_combo.setCurrentText("ground glass")
    layer.paint((16, 32, 5), 1)  # at the body's edge: mostly air, some tissue
    _autosave(viewer)  # the constraint applies right after napari writes the stroke
    painted = layer.data[16] > 0
    hu = correction.volume.hu[16]
    assert not painted[32, 3]  # air under the brush stays empty
    assert np.all((hu[painted] >= -750) & (hu[painted] <= -300))
    correct.constrain.setChecked(False)
    layer.paint((10, 30, 30), 1)
    layer.paint((14, 30, 30), 1)
    correct.interpolate()
    assert all(layer.data[z, 30, 30] for z in (11, 12, 13))


def test_annotator_name_is_remembered(session):
    _, _, correct = session
    correct.annotator.editingFinished.emit()
    assert load_settings()["annotator"] == "Dr Test"


def test_finetune_widget_runs_a_job_to_a_decision(make_napari_viewer, tiny_bundle, monkeypatch, isolated_user_data):
    import shutil

    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.models.bundle import load_bundle
    from napari_covid_attention.models.registry import user_bundles_dir

    # the tiny bundle as the user's current "tiny-test" family, and 4 reviewed cases
    family = user_bundles_dir() / "tiny-test" / "0.0.1"
    shutil.copytree(tiny_bundle, family)
    bundle = load_bundle(family)
    with AnnotationStore() as store:
        for seed in range(4):
            phantom = generate_phantom(200 + seed, shape=(32, 64, 64))
            case = store.open_case(phantom.volume)
            store.keep_scan(case.id, phantom.volume)
            store.set_original(case.id, diagnose(phantom.volume, bundle, "cpu").infection_mask, model="tiny")
            store.save_version(case.id, phantom.infection_mask, annotator="a")
            store.mark_reviewed(case.id, annotator="a", label=phantom.label)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    viewer = make_napari_viewer()
    from napari_covid_attention.widgets.finetune import FinetuneWidget

    session = session_for(viewer, ManualScheduler)
    session.models.family = "tiny-test"
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert "4 reviewed case(s)" in widget.summary.text()
    widget.segmenter_epochs.setValue(1)
    widget.classifier_epochs.setValue(1)
    widget.start(threaded=False)
    assert widget.result is not None
    assert widget.result.version == "0.1.0"
    assert ("Promoted" if widget.result.promoted else "Not promoted") in widget.status.text()
    assert widget.versions.count() == 2
