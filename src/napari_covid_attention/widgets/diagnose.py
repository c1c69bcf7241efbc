"""The "COVID-19 attention" dock widget: model, diagnose, result card, review and compare.

Thin: diagnosis runs in :func:`napari_covid_attention.diagnosis.diagnose_steps` inside a
napari worker (progress after each stage, cancel between stages); layers are made by
:mod:`.layers` and the side-by-side view by :mod:`.compare`, both testable without Qt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
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
    QWidget,
)

from napari_covid_attention._layer_data import plugin_meta
from napari_covid_attention.diagnosis import STAGES, Diagnosis, diagnose_steps
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.jobs import run_to_end
from napari_covid_attention.models.bundle import Bundle, load_bundle
from napari_covid_attention.models.device import available_devices, one_core_for_the_gui
from napari_covid_attention.models.registry import bundle_info, list_bundles
from napari_covid_attention.widgets import layers as ops
from napari_covid_attention.widgets.card import result_card_html, scores_rows
from napari_covid_attention.widgets.compare import CompareView
from napari_covid_attention.widgets.window import apply_window
from napari_covid_attention.windows import window_names

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

log = logging.getLogger(__name__)
_SCORE_DELAY_MS = 400  # scores are recomputed this long after the last edit of the mask


class DiagnoseWidget(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.compare = CompareView(napari_viewer)
        self._bundles: dict[str, Bundle] = {}
        self._results: dict[str, tuple[Diagnosis, Image]] = {}
        self._worker = None
        self._threaded = True
        self._score_timer = QTimer(self)
        self._score_timer.setSingleShot(True)
        self._score_timer.timeout.connect(self.update_scores)

        layout = QVBoxLayout(self)
        layout.addWidget(self._model_box())
        layout.addWidget(self._scan_box())
        self.card = QLabel("Select a CT image layer and press Diagnose.")
        self.card.setWordWrap(True)
        self.card.setTextFormat(Qt.RichText)
        layout.addWidget(self.card)
        layout.addWidget(self._review_box())
        layout.addWidget(self._compare_box())
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._update_slice_readout)
        self._refresh_layers()

    # ----- construction -------------------------------------------------------------
    def _model_box(self) -> QGroupBox:
        box = QGroupBox("Model")
        grid = QGridLayout(box)
        self.bundle_combo = QComboBox()
        for info in list_bundles():
            self.bundle_combo.addItem(info.title, str(info.path))
        self.bundle_combo.currentIndexChanged.connect(self._show_bundle_label)
        add = QPushButton("Add…")
        add.setToolTip("Use a bundle folder (bundle.json + safetensors weights)")
        add.clicked.connect(self._browse_bundle)
        self.device_combo = QComboBox()
        for name, description in available_devices():
            self.device_combo.addItem(description, name)
        self.bundle_label = QLabel()
        self.bundle_label.setWordWrap(True)
        self.bundle_label.setStyleSheet("color: #ff9933")
        grid.addWidget(QLabel("Bundle"), 0, 0)
        grid.addWidget(self.bundle_combo, 0, 1)
        grid.addWidget(add, 0, 2)
        grid.addWidget(QLabel("Device"), 1, 0)
        grid.addWidget(self.device_combo, 1, 1, 1, 2)
        grid.addWidget(self.bundle_label, 2, 0, 1, 3)
        self._show_bundle_label()
        return box

    def _scan_box(self) -> QGroupBox:
        box = QGroupBox("Scan")
        grid = QGridLayout(box)
        self.layer_combo = QComboBox()
        self.diagnose_button = QPushButton("Diagnose")
        self.diagnose_button.clicked.connect(lambda: self.run_diagnosis())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, len(STAGES) + 1)
        self.status = QLabel("")
        grid.addWidget(QLabel("CT layer"), 0, 0)
        grid.addWidget(self.layer_combo, 0, 1, 1, 2)
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
            button.clicked.connect(lambda _=False, n=name: self._apply_window(n))
            windows.addWidget(button)
        layout.addLayout(windows)
        jumps = QHBoxLayout()
        self.jump_infection = QPushButton("Slice with most infection")
        self.jump_infection.clicked.connect(self.jump_to_infection)
        self.jump_attention = QPushButton("Attention peak")
        self.jump_attention.clicked.connect(self.jump_to_attention_peak)
        jumps.addWidget(self.jump_infection)
        jumps.addWidget(self.jump_attention)
        layout.addLayout(jumps)
        self.slice_readout = QLabel("")
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
        row.addWidget(self.compare_button)
        row.addWidget(self.include_pp)
        layout.addLayout(row)
        self.scores = QTableWidget(0, 4)
        self.scores.setHorizontalHeaderLabels(["map", "energy in mask", "pointing game", "map AUC"])
        self.scores.verticalHeader().setVisible(False)
        self.scores.setToolTip("How well each map points at the current infection mask; updates as you edit it.")
        self.scores.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.scores.setMaximumHeight(130)
        layout.addWidget(self.scores)
        return box

    # ----- model ---------------------------------------------------------------------
    def set_bundle(self, path: str | Path) -> None:
        """Select a bundle folder (adds it to the picker); used by Add… and by tests."""
        info = bundle_info(Path(path))
        index = self.bundle_combo.findData(str(info.path))
        if index < 0:
            self.bundle_combo.addItem(info.title, str(info.path))
            index = self.bundle_combo.count() - 1
        self.bundle_combo.setCurrentIndex(index)

    def _browse_bundle(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a bundle folder")
        if folder:
            try:
                self.set_bundle(folder)
            except UserFacingError as exc:
                _notify_error(str(exc))

    def _show_bundle_label(self) -> None:
        path = self.bundle_combo.currentData()
        self.bundle_label.setText(bundle_info(Path(path)).label if path else "No bundle installed.")

    def _bundle(self, path: str) -> Bundle:
        if path not in self._bundles:
            self._bundles[path] = load_bundle(path)
        return self._bundles[path]

    # ----- diagnosis -----------------------------------------------------------------
    def _refresh_layers(self, _event=None) -> None:
        from napari.layers import Image

        current = self.layer_combo.currentText()
        self.layer_combo.clear()
        for layer in self.viewer.layers:
            is_plugin_map = (plugin_meta(layer.metadata) or {}).get("kind") in ops.MAP_TITLES
            if isinstance(layer, Image) and not is_plugin_map and layer not in self.compare.added:
                self.layer_combo.addItem(layer.name)
        if current and self.layer_combo.findText(current) >= 0:
            self.layer_combo.setCurrentText(current)

    def selected_layer(self):
        name = self.layer_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        return self.viewer.layers.selection.active

    def run_diagnosis(self, threaded: bool = True):
        """Diagnose the selected layer; ``threaded=False`` runs in this thread (tests, demo)."""
        self._threaded = threaded
        layer = self.selected_layer()
        if layer is None:
            _notify_error("Open a CT scan first (File > Open, or File > Open Sample).")
            return None
        try:
            volume = ops.ct_volume_of(layer)
        except UserFacingError as exc:
            _notify_error(str(exc))
            return None
        bundle_path = self.bundle_combo.currentData()
        if not bundle_path:
            _notify_error("No model bundle is available; add one with Add….")
            return None
        device = self.device_combo.currentData() or "auto"
        if self.compare.active:
            self.compare_button.setChecked(False)
        if not threaded:
            return self._run_here(self._job(volume, bundle_path, device), layer)
        from napari.qt.threading import create_worker

        worker = create_worker(
            self._job, volume, bundle_path, device, _progress={"total": len(STAGES) + 1, "desc": "COVID-19 diagnosis"}
        )
        worker.yielded.connect(self._on_stage)
        worker.returned.connect(lambda result: self._on_result(result, layer))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._set_busy(True)
        worker.start()
        return worker

    def _job(self, volume, bundle_path: str, device: str) -> Generator[str, None, Diagnosis]:
        bundle = self._bundle(bundle_path)
        yield "model loaded"
        with one_core_for_the_gui() if self._threaded else contextlib.nullcontext():
            steps = diagnose_steps(volume, bundle, device)
            while True:  # re-yield (index, stage) as the stage name, for the progress display
                try:
                    stage = next(steps).phase
                except StopIteration as done:
                    return done.value
                yield stage

    def _run_here(self, job, layer) -> Diagnosis | None:
        try:
            result = run_to_end(job, self._on_stage)
        except Exception as exc:  # noqa: BLE001 - shown to the user like the threaded path
            self._on_error(exc)
            return None
        self._on_result(result, layer)
        return result

    def cancel(self) -> None:
        """Stop at the next stage boundary; nothing is added to the viewer."""
        if self._worker is not None:
            self._worker.quit()
            self.status.setText("Cancelling after the current stage…")

    def _on_stage(self, stage: str) -> None:
        self.progress.setValue(min(self.progress.value() + 1, self.progress.maximum()))
        self.status.setText(f"done: {stage}")

    def _on_result(self, diagnosis: Diagnosis, layer) -> None:
        self.progress.setValue(self.progress.maximum())
        if layer not in self.viewer.layers:
            return  # the scan was closed while it was diagnosed
        made = ops.add_diagnosis_layers(self.viewer, layer, diagnosis)
        self._results[ops.scan_key(layer)] = (diagnosis, layer)
        self.card.setText(result_card_html(diagnosis))
        infection = made["infection_mask"]
        infection.events.paint.connect(self._schedule_scores)
        infection.events.data.connect(self._schedule_scores)
        self.update_scores()
        self._update_slice_readout()
        self.status.setText(f"Diagnosed in {diagnosis.timings_s['total']:.1f} s on {diagnosis.device}.")

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, UserFacingError):
            _notify_error(str(exc))
        else:
            log.exception("diagnosis failed", exc_info=exc)
            _notify_error(f"Diagnosis failed unexpectedly ({type(exc).__name__}: {exc}).")
        self.status.setText("Diagnosis failed.")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_busy(False)
        if self.status.text().startswith(("Cancelling", "done:")):
            self.status.setText("Cancelled; nothing was added.")
            self.progress.setValue(0)

    def _set_busy(self, busy: bool) -> None:
        self.diagnose_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setValue(0)
            self.status.setText("loading model")

    # ----- results of the selected scan ------------------------------------------------
    def current_result(self) -> tuple[Diagnosis, Image] | None:
        layer = self.selected_layer()
        return None if layer is None else self._results.get(ops.scan_key(layer))

    def _schedule_scores(self, _event=None) -> None:
        self._score_timer.start(_SCORE_DELAY_MS)

    def update_scores(self, threaded: bool | None = None) -> None:
        """Localization scores of each map against the infection mask as it is now.

        Resampling a full-size mask takes a moment, so it runs in a worker when the
        diagnosis did (the table fills in when it is done).
        """
        found = self.current_result()
        if found is None:
            self.scores.setRowCount(0)
            return
        diagnosis, layer = found
        mask_layer = ops.layer_of_kind(self.viewer, layer, "infection_mask")
        if mask_layer is None:
            return
        self.compare.refresh_twins()
        mask = np.array(mask_layer.data, copy=True)
        if not (self._threaded if threaded is None else threaded):
            self._show_scores(scores_rows(diagnosis.localization(mask)))
            return
        from napari.qt.threading import create_worker

        worker = create_worker(lambda: scores_rows(diagnosis.localization(mask)))
        worker.returned.connect(self._show_scores)
        worker.start()

    def _show_scores(self, rows) -> None:
        self.scores.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.scores.setItem(r, c, QTableWidgetItem(text))

    def set_compare(self, on: bool) -> None:
        if not on:
            self.compare.exit()
            return
        found = self.current_result()
        if found is None:
            _notify_error("Diagnose the scan first; then attention and Grad-CAM can be compared.")
            self.compare_button.setChecked(False)
            return
        maps = ("attention", "gradcam", "gradcam_pp") if self.include_pp.isChecked() else ("attention", "gradcam")
        self.compare.enter(found[1], maps)
        # The canvas lays out the grid's view boxes on the next event loop turn; fitting
        # the camera before that would fit it to the old single view.
        QTimer.singleShot(0, self.viewer.reset_view)

    # ----- review helpers ----------------------------------------------------------------
    def _apply_window(self, preset: str) -> None:
        layer = self.selected_layer()
        if layer is not None and layer.__class__.__name__ == "Image":
            apply_window(layer, preset)

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


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)
