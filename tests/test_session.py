"""The Qt-free session layer on ``ViewerModel``: each scan's edits land in its own case,
undo / redo are saved, nothing typed before a name is lost, closing a scan cleans up, and
the model choice follows the registry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_covid_attention._layer_data import ct_layer_data
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.session import ManualScheduler, Session


@pytest.fixture(scope="module")
def scans():
    return [generate_phantom(seed, label="CAP", shape=(32, 64, 64)) for seed in (41, 42)]


@pytest.fixture(scope="module")
def diagnoses(scans, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    return [diagnose(scan.volume, bundle, "cpu") for scan in scans]


def _fresh(diagnosis):
    """The diagnosis with its own mask array: the mask layer edits its data in place."""
    return dataclasses.replace(diagnosis, infection_mask=diagnosis.infection_mask.copy())


def _open(viewer, scan, name):
    data, kwargs, _ = ct_layer_data(scan.volume, name)
    return viewer.add_image(data, **kwargs)


@pytest.fixture
def viewer_session(scans, diagnoses):
    """Two scans open and diagnosed in one viewer, with a scheduler the test drives."""
    viewer, scheduler = ViewerModel(), ManualScheduler()
    session = Session(viewer, scheduler)
    session.set_annotator("Dr Test")
    for scan, diagnosis, name in zip(scans, diagnoses, ("first", "second"), strict=True):
        layer = _open(viewer, scan, name)
        session.show_diagnosis(session.scan_of(layer), _fresh(diagnosis))
    return viewer, session, scheduler


def _scan(session, name):
    return next(scan for scan in session.scans.values() if scan.name == name)


def test_two_scans_each_edit_lands_in_its_own_case(viewer_session):
    viewer, session, scheduler = viewer_session
    first, second = _scan(session, "first"), _scan(session, "second")
    assert first.correction.case.id != second.correction.case.id
    first.correction.layer.paint((16, 30, 30), 1)  # edit the first scan while the second was added last
    second.correction.layer.paint((10, 20, 20), 1)
    assert scheduler.run_pending() >= 2
    for scan in (first, second):
        stored = session.store.latest(scan.correction.case.id)
        np.testing.assert_array_equal(stored, scan.correction.layer.data)
        assert [v.kind for v in session.store.history(scan.correction.case.id)] == ["original", "edit"]
    assert not np.array_equal(session.store.latest(first.correction.case.id)[16], session.store.latest(second.correction.case.id)[16])


def test_mark_reviewed_marks_the_scan_it_is_called_on(viewer_session):
    _, session, _ = viewer_session
    first, second = _scan(session, "first"), _scan(session, "second")
    counted = []
    session.reviewed_changed.connect(lambda: counted.append(session.reviewed_count()))
    first.correction.mark_reviewed("CAP")
    assert counted == [1]  # the Fine-tune dock's count follows
    assert session.store.get_case(first.correction.case.id).reviewed
    assert not session.store.get_case(second.correction.case.id).reviewed


def test_undo_and_redo_are_saved(viewer_session):
    viewer, session, scheduler = viewer_session
    correction = _scan(session, "first").correction
    layer, case_id = correction.layer, correction.case.id
    viewer.layers.selection.active = layer  # the annotator works on the first scan: it is drawn
    before = np.array(layer.data)
    layer.paint((16, 30, 30), 1)
    scheduler.run_pending()
    painted = session.store.latest(case_id).copy()
    assert not np.array_equal(painted, before)
    layer.undo()
    assert correction.unsaved
    scheduler.run_pending()
    np.testing.assert_array_equal(session.store.latest(case_id), before)
    layer.redo()
    scheduler.run_pending()
    np.testing.assert_array_equal(session.store.latest(case_id), painted)
    assert [v.kind for v in session.store.history(case_id)] == ["original", "edit", "edit", "edit"]


def test_paint_before_the_name_survives_close_and_reopen(scans, diagnoses):
    viewer, scheduler = ViewerModel(), ManualScheduler()
    session = Session(viewer, scheduler)
    assert session.annotator == ""
    layer = _open(viewer, scans[0], "ct")
    session.show_diagnosis(session.scan_of(layer), _fresh(diagnoses[0]))
    mask = session.scan_of(layer).correction.layer
    mask.paint((16, 30, 30), 1)
    scheduler.run_pending()
    assert session.scan_of(layer).correction.unsaved  # no name yet: kept, not saved
    assert "Type your name" in session.scan_of(layer).correction.message
    session.set_annotator("Dr Late")
    edited = np.array(mask.data)
    viewer.layers.remove(layer)  # close the scan: its result layers go with it
    assert len(viewer.layers) == 0 and not session.scans
    reopened = _open(viewer, scans[0], "ct")
    session.show_diagnosis(session.scan_of(reopened), _fresh(diagnoses[0]))
    scheduler.run_pending()
    correction = session.scan_of(reopened).correction
    np.testing.assert_array_equal(correction.layer.data, edited)  # the edit, not the model's mask
    correction.layer.paint((5, 40, 40), 1)
    scheduler.run_pending()
    latest = session.store.latest(correction.case.id)
    assert latest[16, 30, 30] == 1 and latest[5, 40, 40] == 1  # the next version keeps the early edit


def test_closing_a_scan_saves_its_pending_edit_and_forgets_it(viewer_session):
    viewer, session, scheduler = viewer_session
    first = _scan(session, "first")
    case_id, mask = first.correction.case.id, first.correction.layer
    mask.paint((20, 30, 30), 1)
    viewer.layers.remove(first.ct_layer)
    scheduler.run_pending()
    assert session.store.latest(case_id)[20, 30, 30] == 1
    assert mask not in viewer.layers and first.key not in session.scans
    assert session.active is _scan(session, "second")
    assert first.diagnosis is None  # the closed scan's diagnosis is not kept in memory


def test_the_active_scan_follows_the_selection_by_layer_not_name(viewer_session):
    viewer, session, _ = viewer_session
    first = _scan(session, "first")
    first.ct_layer.name = "renamed"
    viewer.layers.selection.active = first.layer_of_kind(viewer, "attention")
    assert session.active is first


def test_model_choice_follows_promotion_and_rollback(tiny_bundle, isolated_user_data):
    import shutil

    from napari_covid_attention.models.registry import rollback, set_current, user_bundles_dir

    session = Session(ViewerModel(), ManualScheduler())
    builtin = session.models.chosen
    assert builtin is not None and builtin.name == "demo"
    from napari_covid_attention.models.registry import bundle_info

    target = user_bundles_dir() / "demo" / "9.0.0"
    shutil.copytree(tiny_bundle, target)
    _rename_bundle(target, "demo", "9.0.0", parent=bundle_info(builtin).version)
    set_current("demo", "9.0.0", "test promotion")
    session.models.refresh()
    assert session.models.chosen == target
    rollback("demo")
    session.models.refresh()
    assert session.models.chosen == builtin


def _rename_bundle(folder, name, version, parent):
    import json

    path = folder / "bundle.json"
    meta = json.loads(path.read_text())
    meta.update(name=name, version=version, parent={"name": name, "version": parent})
    path.write_text(json.dumps(meta))


def test_only_the_active_scan_is_drawn_and_the_other_comes_back_as_it_was(viewer_session):
    viewer, session, _ = viewer_session
    first, second = _scan(session, "first"), _scan(session, "second")
    assert session.active is second
    assert not first.ct_layer.visible and not any(layer.visible for layer in first.result_layers(viewer))
    first.layer_of_kind(viewer, "attention")  # the first scan's attention map was visible before
    viewer.layers.selection.active = first.ct_layer
    assert first.ct_layer.visible and first.layer_of_kind(viewer, "attention").visible
    assert not first.layer_of_kind(viewer, "gradcam").visible  # hidden by default, still hidden
    assert not second.ct_layer.visible


def test_a_renamed_ct_is_announced_to_the_pickers(viewer_session):
    _, session, _ = viewer_session
    seen = []
    session.scans_changed.connect(lambda: seen.append(1))
    _scan(session, "first").ct_layer.name = "Patient A"
    assert seen and _scan(session, "Patient A") is not None
