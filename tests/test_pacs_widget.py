"""The PACS dock against a real Orthanc holding the real 30-slice chest CT: search, open,
diagnose, correct, send the SEG and SR back (skips without Orthanc or the data)."""

from __future__ import annotations

import dataclasses
from io import BytesIO

import numpy as np
import pydicom
import pytest
from orthanc import AUTH_PASSWORD, AUTH_USER, orthanc, orthanc_auth, start_orthanc  # noqa: F401

from napari_covid_attention._layer_data import ct_layer_data, plugin_meta
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.pacs.auth import CA_BUNDLE_ENV, PASSWORD_ENV, TOKEN_ENV, USER_ENV
from napari_covid_attention.session import ManualScheduler, session_for
from napari_covid_attention.settings import load_settings
from napari_covid_attention.widgets import layers as ops
from napari_covid_attention.widgets.pacs import pacs_origin

pytestmark = pytest.mark.viewer
PLUGIN = "napari-covid-attention"


@pytest.fixture(autouse=True)
def no_pacs_env(monkeypatch, tmp_path):
    for name in (USER_ENV, PASSWORD_ENV, TOKEN_ENV, CA_BUNDLE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


@pytest.fixture
def notifications():
    from napari.utils.notifications import notification_manager

    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _uids(folder) -> tuple[str, str]:
    first = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    return str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


@pytest.fixture(scope="module")
def stored_series(orthanc, chest_series_dir):  # noqa: F811
    """(study UID, series UID) of the real series, uploaded to the module's Orthanc."""
    orthanc.upload_folder(chest_series_dir)
    return _uids(chest_series_dir)


def _pacs_dock(make_napari_viewer, url: str):
    """A viewer whose session runs background work at once, with the PACS dock on ``url``."""
    viewer = make_napari_viewer()
    session_for(viewer, ManualScheduler)  # before the docks: searches and saves run synchronously
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "PACS")
    dock.url.setText(url)
    return viewer, dock


def _instances(server, study: str, modality: str) -> list:
    """Headers of the study's instances of ``modality`` as Orthanc holds them."""
    found = []
    for item in server.instances_of_study(study):
        dataset = pydicom.dcmread(BytesIO(server.instance_file(item["ID"])), stop_before_pixels=True)
        if dataset.Modality == modality:
            found.append(dataset)
    return found


def test_search_lists_the_study_and_open_adds_the_ct(orthanc, stored_series, chest_series_dir, make_napari_viewer, qtbot):  # noqa: F811
    study, series_uid = stored_series
    viewer, dock = _pacs_dock(make_napari_viewer, orthanc.dicomweb_url)
    dock.patient_id.setText("Lung_Dx-A0002")
    dock.search()
    assert dock.studies.rowCount() == 1 and dock.selected_study().study_uid == study
    assert load_settings()["pacs_url"] == orthanc.dicomweb_url
    assert dock.series_table.rowCount() == 1  # the one study was selected, its series listed
    assert dock.selected_series().series_uid == series_uid

    dock.open_selected()  # in a worker, as in the GUI
    qtbot.waitUntil(lambda: not dock.retriever.running, timeout=60_000)
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10_000)
    layer = viewer.layers[0]
    np.testing.assert_array_equal(layer.data, load_ct(chest_series_dir).hu)
    assert pacs_origin(layer) == {"server": orthanc.dicomweb_url, "study_uid": study, "series_uid": series_uid}
    assert plugin_meta(layer.metadata)["kind"] == "ct"
    session = session_for(viewer, ManualScheduler)
    assert session.active is not None and session.active.ct_layer is layer  # tracked like any CT
    assert "Opened" in dock.status.text() and dock.progress.value() == dock.progress.maximum()

    dock.patient_id.setText("nobody")
    dock.search()
    assert dock.studies.rowCount() == 0 and "0 studies found" in dock.status.text()


def test_send_stores_the_corrected_version_once_and_a_failed_send_changes_nothing(
    chest_series_dir, tiny_bundle, make_napari_viewer, tmp_path, notifications
):
    server = start_orthanc(tmp_path / "short-lived")
    try:
        server.upload_folder(chest_series_dir)
        study, _ = _uids(chest_series_dir)
        viewer, dock = _pacs_dock(make_napari_viewer, server.dicomweb_url)
        assert not dock.send_button.isEnabled() and "Open a CT" in dock.send_target.text()
        _, diagnose = viewer.window.add_plugin_dock_widget(PLUGIN, "COVID-19 attention")
        diagnose.set_bundle(tiny_bundle)
        diagnose.set_device("cpu")
        session = session_for(viewer, ManualScheduler)
        session.set_annotator("Dr Test")
        dock.search()
        dock.open_selected(threaded=False)
        assert "Diagnose this scan first" in dock.send_target.text() and not dock.send_button.isEnabled()
        diagnose.run_diagnosis(threaded=False)
        scan = session.active
        correction = scan.correction
        assert dock.send_button.isEnabled() and "the model's masks" in dock.send_target.text()

        mask = ops.layer_of_kind(viewer, scan.ct_layer, "infection_mask")
        mask.paint((15, 200, 150), 1)
        session.scheduler.run_pending()  # the autosave
        version = correction.history()[-1]
        assert version.kind == "edit" and f"version {version.id}" in dock.send_target.text()
        before = server.instance_count()
        dock.send(threaded=False)
        assert dock.send_status.text() == f"Sent SEG and SR of version {version.id} to {server.dicomweb_url}."
        assert server.instance_count() == before + 2
        (seg,) = _instances(server, study, "SEG")
        assert "Dr Test" in str(seg.ContentCreatorName)
        assert f"v{version.id}" in seg.SeriesDescription and "Dr Test" in seg.SeriesDescription
        (sr,) = _instances(server, study, "SR")
        assert str(sr.StudyInstanceUID) == study

        dock.send(threaded=False)  # the same version again: the same UIDs, no new instance
        assert server.instance_count() == before + 2 and dock.send_status.text().startswith("Sent")
        assert notifications == []

        mask.paint((16, 210, 150), 1)
        session.scheduler.run_pending()
        history = [v.id for v in correction.history()]
        server.stop()
        dock.send(threaded=False)
        assert len(notifications) == 1, [n.message for n in notifications]
        message = notifications[0].message
        assert "cannot be reached" in message and message.endswith("nothing was stored; the local version is intact.")
        assert dock.send_status.text() == message
        assert [v.id for v in correction.history()] == history
        assert dock.send_button.isEnabled()  # it can be retried once the server is back
    finally:
        server.stop()


def test_a_nifti_scan_cannot_be_sent_and_says_why(make_napari_viewer):
    viewer, dock = _pacs_dock(make_napari_viewer, "http://127.0.0.1:9/dicom-web")
    phantom = generate_phantom(3, shape=(16, 32, 32)).volume
    volume = dataclasses.replace(phantom, metadata={"format": "NIfTI"}, source_path="scan.nii.gz")
    data, kwargs, _ = ct_layer_data(volume, "ct")
    viewer.add_image(data, **kwargs)
    assert not dock.send_button.isEnabled()
    text = dock.send_target.text()
    assert text.startswith("A NIfTI scan cannot be sent") and text.count(". ") == 0
    assert dock.send_button.toolTip() == text


def test_search_errors_are_one_notification_and_never_show_credentials(orthanc_auth, make_napari_viewer, notifications, capfd):  # noqa: F811
    _, dock = _pacs_dock(make_napari_viewer, orthanc_auth.dicomweb_url)
    dock.search()
    assert len(notifications) == 1 and "(401)" in notifications[0].message
    assert dock.studies.rowCount() == 0
    notifications.clear()
    dock.url.setText(orthanc_auth.dicomweb_url.replace("//", f"//{AUTH_USER}:{AUTH_PASSWORD}@"))
    dock.search()
    assert notifications == [] and "found" in dock.status.text()
    dock.url.editingFinished.emit()
    assert load_settings()["pacs_url"] == orthanc_auth.dicomweb_url  # remembered without the password
    captured = capfd.readouterr()
    assert AUTH_PASSWORD not in captured.out + captured.err + dock.status.text()
