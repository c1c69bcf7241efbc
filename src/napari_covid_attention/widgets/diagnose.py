"""The "COVID-19 attention" dock: model, diagnose, result card, review and compare.

A view of the viewer's :class:`~napari_covid_attention.session.Session`: the scan, its
diagnosis and the model live there; this widget draws them and forwards clicks. Diagnosis
runs through the one job adapter (:mod:`.jobs`): progress per stage, cancel between
stages, one notification per error. torch and MONAI are imported only when a diagnosis
starts, so the dock opens at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.widgets import layers as ops
from napari_covid_attention.widgets.card import result_card_html, scores_rows
from napari_covid_attention.widgets.jobs import JobRunner, notify_failure, session_of
from napari_covid_attention.widgets.scrolling import ScrollingDock
from napari_covid_attention.widgets.window import apply_window
from napari_covid_attention.windows import window_names

if TYPE_CHECKING:
    import napari

    from napari_covid_attention.session import ScanSession

_SCORE_DELAY_MS = 400  # scores are recomputed this long after the last edit of the mask
_PLACEHOLDER = "Select a CT image layer and press Diagnose."


class DiagnoseWidget(ScrollingDock):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.session = session_of(napari_viewer)
        self.viewer = self.session.viewer  # the viewer itself, not napari's proxy of it
        self.runner = JobRunner("diagnosis")
        self._score_timer = QTimer(self)
        self._score_timer.setSingleShot(True)
        self._score_timer.timeout.connect(self.update_scores)
        self._shown: ScanSession | None = None  # whose card and scores are drawn
        self._threaded = True  # a diagnosis run in this thread (tests, demo) scores in it too

        layout = self.content_layout
        layout.addWidget(self._model_box())
        layout.addWidget(self._scan_box())
        self.card = QLabel(_PLACEHOLDER)
        self.card.setWordWrap(True)
        self.card.setTextFormat(Qt.RichText)
        layout.addWidget(self.card)
        layout.addWidget(self._review_box())
        layout.addWidget(self._compare_box())
        layout.addStretch(1)

        session = self.session
        session.models.changed.connect(self._fill_bundles)
        session.scans_changed.connect(self.layer_picker.reset_choices)
        session.active_changed.connect(self._show_active)
        self.viewer.dims.events.current_step.connect(self._update_slice_readout)
        self.destroyed.connect(self._disconnect)
        self._fill_bundles()
        self._fill_devices()
        self._show_active(session.active)

    def _disconnect(self, *_args) -> None:
        self.session.models.changed.disconnect(self._fill_bundles)
        self.session.scans_changed.disconnect(self.layer_picker.reset_choices)
        self.session.active_changed.disconnect(self._show_active)

    # ----- construction -------------------------------------------------------------
    def _model_box(self) -> QGroupBox:
        box = QGroupBox("Model")
        grid = QGridLayout(box)
        self.bundle_combo = _narrow(QComboBox())
        self.bundle_combo.activated.connect(self._bundle_picked)
        add = QPushButton("Add…")
        add.setToolTip("Use a bundle folder (bundle.json + safetensors weights)")
        add.clicked.connect(self._browse_bundle)
        self.device_combo = _narrow(QComboBox())
        self.device_combo.addItem("automatic (GPU if available)", "auto")
        self.bundle_label = QLabel()
        self.bundle_label.setWordWrap(True)
        self.bundle_label.setStyleSheet("color: #ff9933")
        grid.addWidget(QLabel("Bundle"), 0, 0)
        grid.addWidget(self.bundle_combo, 0, 1)
        grid.addWidget(add, 0, 2)
        grid.addWidget(QLabel("Device"), 1, 0)
        grid.addWidget(self.device_combo, 1, 1, 1, 2)
        grid.addWidget(self.bundle_label, 2, 0, 1, 3)
        return box

    def _scan_box(self) -> QGroupBox:
        box = QGroupBox("Scan")
        grid = QGridLayout(box)
        # magicgui's picker holds layers, not names: a rename or two scans of the same
        # name never diagnose the wrong layer; only CT images are offered.
        self.layer_picker = ComboBox(choices=self._ct_choices, nullable=False)
        self.layer_picker.native.setToolTip("The CT image to diagnose (3D single-channel images; maps, masks and RGB are not offered)")
        _narrow(self.layer_picker.native)
        self.layer_picker.changed.connect(self._picked_layer)
        self.diagnose_button = QPushButton("Diagnose")
        self.diagnose_button.clicked.connect(lambda: self.run_diagnosis())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        grid.addWidget(QLabel("CT layer"), 0, 0)
        grid.addWidget(self.layer_picker.native, 0, 1, 1, 2)
        grid.addWidget(self.diagnose_button, 1, 1)
        grid.addWidget(self.cancel_button, 1, 2)
        grid.addWidget(self.progress, 2, 0, 1, 3)
        grid.addWidget(self.status, 3, 0, 1, 3)
        return box

    def _review_box(self) -> QGroupBox:
        box = QGroupBox("Review")
        layout = QVBoxLayout(box)
        windows = QHBoxLayout()
        for name in window_names():
            button = QPushButton(name.capitalize())
            button.setMinimumWidth(40)  # "Mediastinum" may be elided rather than widen the dock
            button.clicked.connect(lambda _=False, n=name: self.apply_window(n))
            windows.addWidget(button)
        layout.addLayout(windows)
        jumps = QHBoxLayout()
        self.jump_infection = QPushButton("Most infected slice")
        self.jump_infection.setToolTip("Go to the axial slice with the most infection in the mask as it is now")
        self.jump_infection.clicked.connect(self.jump_to_infection)
        self.jump_attention = QPushButton("Attention peak")
        self.jump_attention.clicked.connect(self.jump_to_attention_peak)
        jumps.addWidget(self.jump_infection)
        jumps.addWidget(self.jump_attention)
        layout.addLayout(jumps)
        self.slice_readout = QLabel("")
        self.slice_readout.setWordWrap(True)  # unwrapped, it alone set the dock's minimum width
        layout.addWidget(self.slice_readout)
        return box

    def _compare_box(self) -> QGroupBox:
        box = QGroupBox("Attention vs Grad-CAM")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.compare_button = QPushButton("Side by side")
        self.compare_button.setCheckable(True)
        self.compare_button.toggled.connect(self.set_compare)
        self.include_pp = QCheckBox("with Grad-CAM++")
        self.include_pp.toggled.connect(self._compare_maps_changed)
        row.addWidget(self.compare_button)
        row.addWidget(self.include_pp)
        layout.addLayout(row)
        self.scores = QTableWidget(0, 4)
        self.scores.setHorizontalHeaderLabels(["map", "in mask", "pointing", "AUC"])
        for column, tip in enumerate((
            "attention, Grad-CAM or Grad-CAM++",
            "share of the map's energy inside the infection mask",
            "pointing game: is the map's peak inside the mask?",
            "map AUC: how well the map's values separate mask from non-mask voxels",
        )):
            self.scores.horizontalHeaderItem(column).setToolTip(tip)
        self.scores.verticalHeader().setVisible(False)
        self.scores.setToolTip("How well each map points at the current infection mask; updates as you edit it.")
        self.scores.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.scores.setMaximumHeight(130)
        layout.addWidget(self.scores)
        return box

    # ----- model ---------------------------------------------------------------------
    def _fill_bundles(self) -> None:
        models = self.session.models
        self.bundle_combo.blockSignals(True)
        self.bundle_combo.clear()
        for info in models.bundles:
            self.bundle_combo.addItem(info.title, str(info.path))
            self.bundle_combo.setItemData(self.bundle_combo.count() - 1, str(info.path), Qt.ItemDataRole.ToolTipRole)
        index = self.bundle_combo.findData(str(models.chosen)) if models.chosen else -1
        self.bundle_combo.setCurrentIndex(index)
        self.bundle_combo.blockSignals(False)
        chosen = models.chosen_info
        self.bundle_label.setText(chosen.label if chosen else "No bundle installed.")
        self.bundle_combo.setToolTip(f"{chosen.title}\n{chosen.path}" if chosen else "")

    def _fill_devices(self) -> None:
        """The device list needs torch: filled in the background so the dock opens at once."""

        def fill(devices) -> None:
            for name, description in devices:
                if self.device_combo.findData(name) < 0:
                    self.device_combo.addItem(description, name)

        def find():
            from napari_covid_attention.session.imports import import_heavy_modules

            import_heavy_modules()
            from napari_covid_attention.models.device import available_devices

            return available_devices()

        self.session.scheduler.background(find, fill, lambda exc: notify_failure(exc, "finding devices"))

    def set_bundle(self, path: str | Path) -> None:
        """Select a bundle folder (adds it to the picker); used by Add… and by tests."""
        self.session.models.choose(path)

    def set_device(self, name: str) -> None:
        if self.device_combo.findData(name) < 0:
            self.device_combo.addItem(name, name)
        self.device_combo.setCurrentIndex(self.device_combo.findData(name))

    def _bundle_picked(self, index: int) -> None:
        path = self.bundle_combo.itemData(index)
        if path:
            self.set_bundle(path)

    def _browse_bundle(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a bundle folder")
        if folder:
            try:
                self.set_bundle(folder)
            except UserFacingError as exc:
                notify_failure(exc, "adding a bundle")

    # ----- the scan ------------------------------------------------------------------
    def _ct_choices(self, _widget=None) -> list[tuple[str, object]]:
        return [(scan.name, scan.ct_layer) for scan in self.session.cts()]

    def _picked_layer(self, layer) -> None:
        scan = self.session.scan_of(layer)
        if scan is not None:
            self.session.set_active(scan)

    def selected_scan(self) -> ScanSession | None:
        return self.session.scan_of(self.layer_picker.value) or self.session.active

    # ----- diagnosis -----------------------------------------------------------------
    def run_diagnosis(self, threaded: bool = True):
        """Diagnose the selected scan; ``threaded=False`` runs in this thread (tests, demo)."""
        scan = self.selected_scan()
        if scan is None:
            self._refused(UserFacingError("Open a CT scan first (File > Open, or File > Open Sample)."))
            return None
        try:
            volume = scan.volume()
        except UserFacingError as exc:
            self._refused(exc)
            return None
        models, device = self.session.models, self.device_combo.currentData() or "auto"
        chosen, self._threaded = models.chosen, threaded
        if self.session.compare.active:
            self.compare_button.setChecked(False)
        self._set_busy(True)
        return self.runner.start(
            lambda: scan.diagnosis_job(volume, lambda: models.load(chosen), device),
            progress=self._on_progress,
            done=lambda diagnosis: self._on_result(scan, diagnosis),
            failed=self._on_failed,
            finished=self._on_finished,
            threaded=threaded,
        )

    def _refused(self, exc: UserFacingError) -> None:
        """Nothing started: one notification, and the status says so (not an earlier run's)."""
        self.progress.setValue(0)
        self.status.setText(notify_failure(exc, "diagnosis"))

    def cancel(self) -> None:
        """Stop at the next stage boundary; nothing is added to the viewer."""
        if self.runner.running:
            self.runner.cancel()
            self.status.setText("Cancelling after the current stage…")

    def _on_progress(self, event) -> None:
        self.progress.setMaximum(max(event.total, 1))
        self.progress.setValue(event.step)
        self.status.setText(f"done: {event.phase}")

    def _on_result(self, scan: ScanSession, diagnosis) -> None:
        self.progress.setValue(self.progress.maximum())

        def shown(_made=None) -> None:
            self._show_active(scan)
            self.status.setText(f"Diagnosed in {diagnosis.timings_s['total']:.1f} s on {diagnosis.device}.")

        # A threaded run adds its layers one per event-loop turn (no long stall); a run in
        # this thread (tests, the headless demo) adds them at once.
        self.status.setText("Showing the result…")
        if self.session.show_diagnosis(scan, diagnosis, staged=self._threaded, done=shown) is None:
            self.status.setText("The scan was closed while it was diagnosed; nothing was added.")

    def _on_failed(self, sentence: str) -> None:
        self.progress.setValue(0)
        self.status.setText(f"Diagnosis failed: {sentence}")

    def _on_finished(self, cancelled: bool) -> None:
        self._set_busy(False)
        if cancelled:
            self.status.setText("Cancelled; nothing was added.")
            self.progress.setValue(0)

    def _set_busy(self, busy: bool) -> None:
        self.diagnose_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setValue(0)
            self.status.setText("loading model")

    # ----- what the active scan shows -----------------------------------------------
    def _show_active(self, scan: ScanSession | None) -> None:
        """Card, scores and readout of the active scan (cleared when it was closed)."""
        if self._shown is not None and self._shown.correction is not None:
            _disconnect_mask(self._shown.correction.layer, self._schedule_scores)
        self._shown = scan
        if scan is not None and scan.ct_layer is not self.layer_picker.value and scan.ct_layer in [c for _, c in self._ct_choices()]:
            self.layer_picker.value = scan.ct_layer
        diagnosis = None if scan is None else scan.diagnosis
        self.card.setText(_PLACEHOLDER if diagnosis is None else result_card_html(diagnosis))
        if scan is not None and scan.correction is not None:
            scan.correction.layer.events.paint.connect(self._schedule_scores)
            scan.correction.layer.events.data.connect(self._schedule_scores)
        self.update_scores()
        self._update_slice_readout()

    def current_result(self):
        """(diagnosis, CT layer) of the active scan, or None."""
        scan = self.session.active
        return None if scan is None or scan.diagnosis is None else (scan.diagnosis, scan.ct_layer)

    def _schedule_scores(self, _event=None) -> None:
        """The mask was edited: the slice readout now (cheap), the scores a moment later."""
        self._update_slice_readout()
        self._score_timer.start(_SCORE_DELAY_MS)

    def update_scores(self, threaded: bool | None = None) -> None:
        """Localization scores of each map against the infection mask as it is now (in the
        background: resampling a full-size mask takes a moment)."""
        found = self.current_result()
        mask_layer = None if found is None else ops.layer_of_kind(self.viewer, found[1], "infection_mask")
        if mask_layer is None:
            self.scores.setRowCount(0)
            return
        diagnosis = found[0]
        self.session.compare.refresh_twins()
        mask = np.array(mask_layer.data, copy=True)
        scan = self.session.active

        def show(rows) -> None:
            if self.session.active is scan:
                self._show_scores(rows)

        if not (self._threaded if threaded is None else threaded):
            show(scores_rows(diagnosis.localization(mask)))
            return
        self.session.scheduler.background(
            lambda: scores_rows(diagnosis.localization(mask)), show, lambda exc: notify_failure(exc, "scoring the maps")
        )

    def _show_scores(self, rows) -> None:
        self.scores.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.scores.setItem(r, c, QTableWidgetItem(text))

    def _compare_maps(self) -> tuple[str, ...]:
        return ("attention", "gradcam", "gradcam_pp") if self.include_pp.isChecked() else ("attention", "gradcam")

    def set_compare(self, on: bool) -> None:
        compare = self.session.compare
        if not on:
            self.session.leave_compare()
            return
        found = self.current_result()
        if found is None:
            notify_failure(UserFacingError("Diagnose the scan first; then attention and Grad-CAM can be compared."), "comparing")
            self.compare_button.setChecked(False)
            return
        compare.enter(found[1], self._compare_maps())
        # The canvas lays out the grid's view boxes on the next event loop turn; fitting
        # the camera before that would fit it to the old single view.
        QTimer.singleShot(0, self.viewer.reset_view)

    def _compare_maps_changed(self, _on: bool) -> None:
        compare = self.session.compare
        if compare.active and hasattr(compare, "set_maps"):
            compare.set_maps(self._compare_maps())

    # ----- review helpers ----------------------------------------------------------------
    def apply_window(self, preset: str) -> None:
        """A CT window on the active scan's CT (never on a map or mask that happens to be selected)."""
        scan = self.session.active
        if scan is not None:
            apply_window(scan.ct_layer, preset)

    def jump_to_infection(self) -> None:
        found = self.current_result()
        if found is None:
            return
        diagnosis, layer = found
        mask_layer = ops.layer_of_kind(self.viewer, layer, "infection_mask")
        z = ops.slice_with_most_infection(mask_layer.data if mask_layer is not None else diagnosis.infection_mask)
        if z is not None:
            self.viewer.dims.set_point(0, ops.world_z_of_slice(layer, z))

    def jump_to_attention_peak(self) -> None:
        found = self.current_result()
        if found is None:
            return
        point = ops.attention_peak_world(found[0])
        self.viewer.dims.set_point(0, float(point[0]))
        self.viewer.camera.center = (float(point[0]), float(point[1]), float(point[2]))

    def _update_slice_readout(self, _event=None) -> None:
        found = self.current_result()
        if found is None:
            self.slice_readout.setText("")
            return
        diagnosis, layer = found
        mask_layer = ops.layer_of_kind(self.viewer, layer, "infection_mask")
        infection = mask_layer.data if mask_layer is not None else diagnosis.infection_mask
        z = ops.current_slice(self.viewer, layer)
        spacing = [abs(s) for s in layer.scale]
        infected, lung = ops.slice_areas_cm2(infection, diagnosis.lung_mask, z, spacing)
        share = f" ({100 * infected / lung:.1f} % of lung on this slice)" if lung else ""
        self.slice_readout.setText(f"Slice {z}: infection {infected:.1f} cm²{share}")


def _narrow(combo: QComboBox) -> QComboBox:
    """A combo box that does not widen the dock to its longest item (the item is elided;
    its full text is in the tooltip)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(14)
    return combo


def _disconnect_mask(layer, handler) -> None:
    layer.events.paint.disconnect(handler)
    layer.events.data.disconnect(handler)
