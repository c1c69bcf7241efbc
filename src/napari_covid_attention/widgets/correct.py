"""The "Corrections" dock widget: bind the infection mask to the annotation store.

Every edit of the plugin's infection mask layer (brush, eraser, fill, polygon, the tools
below) is saved as a new version shortly after the last stroke, in the background; the
scan's case is found again when the same scan is reopened and its latest version is
shown. The store (:mod:`napari_covid_attention.annotations`) does the keeping; the editing
tools' logic is in :mod:`napari_covid_attention.annotations.editing`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_covid_attention._layer_data import plugin_meta
from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.annotations.editing import (
    HU_RANGES,
    connected_lesion,
    interpolate_slices,
    outside_hu_range,
)
from napari_covid_attention.classes import CONFIRMABLE_FINDINGS, NO_PNEUMONIA, NO_PNEUMONIA_DETECTED
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.settings import load_settings, save_setting
from napari_covid_attention.widgets import layers as ops

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)
AUTOSAVE_DELAY_MS = 1500  # save this long after the last stroke


class CorrectionWidget(QWidget):
    """Dock widget; binds itself to each infection mask the plugin adds."""

    def __init__(self, napari_viewer: napari.Viewer, threaded: bool = True) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.threaded = threaded
        settings = load_settings()
        self.store = AnnotationStore(settings.get("store"))
        self.layer = None  # the bound infection mask layer
        self.ct_layer = None
        self.case = None
        self._hu: np.ndarray | None = None
        self._dirty = False
        self._saving = False
        self._restoring = False
        self._edited_slices: list[int] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.save_now)

        layout = QVBoxLayout(self)
        layout.addWidget(self._store_box(settings))
        layout.addWidget(self._case_box())
        layout.addWidget(self._tools_box())
        layout.addStretch(1)
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        for layer in self.viewer.layers:
            if self._is_infection_layer(layer):
                self.bind(layer)

    # ----- construction -----------------------------------------------------------
    def _store_box(self, settings: dict) -> QGroupBox:
        box = QGroupBox("Annotator and store")
        grid = QGridLayout(box)
        self.annotator = QLineEdit(settings.get("annotator", ""))
        self.annotator.setPlaceholderText("your name (recorded with every save)")
        self.annotator.editingFinished.connect(lambda: save_setting("annotator", self.annotator.text().strip() or None))
        self.store_label = QLabel(str(self.store.root))
        self.store_label.setWordWrap(True)
        change = QPushButton("Change…")
        change.clicked.connect(self._choose_store)
        grid.addWidget(QLabel("Annotator"), 0, 0)
        grid.addWidget(self.annotator, 0, 1, 1, 2)
        grid.addWidget(QLabel("Store"), 1, 0)
        grid.addWidget(self.store_label, 1, 1)
        grid.addWidget(change, 1, 2)
        return box

    def _case_box(self) -> QGroupBox:
        box = QGroupBox("Case")
        layout = QVBoxLayout(box)
        self.status = QLabel("Diagnose a scan: its infection mask is then saved as you edit it.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.history = QListWidget()
        self.history.setMaximumHeight(140)
        layout.addWidget(self.history)
        row = QHBoxLayout()
        self.restore_button = QPushButton("Restore selected version")
        self.restore_button.clicked.connect(self.restore_selected)
        row.addWidget(self.restore_button)
        layout.addLayout(row)
        review = QHBoxLayout()
        self.label_combo = QComboBox()
        self.label_combo.addItems(list(CONFIRMABLE_FINDINGS))
        self.review_button = QPushButton("Mark reviewed")
        self.review_button.clicked.connect(self.mark_reviewed)
        review.addWidget(QLabel("Confirmed"))
        review.addWidget(self.label_combo)
        review.addWidget(self.review_button)
        layout.addLayout(review)
        return box

    def _tools_box(self) -> QGroupBox:
        box = QGroupBox("Editing tools")
        grid = QGridLayout(box)
        self.constrain = QCheckBox("Brush only within HU")
        self.range_combo = QComboBox()
        self.range_combo.addItems(list(HU_RANGES))
        self.range_combo.currentTextChanged.connect(self._set_range)
        self.hu_low, self.hu_high = QDoubleSpinBox(), QDoubleSpinBox()
        for spin in (self.hu_low, self.hu_high):
            spin.setRange(-1100.0, 3000.0)
            spin.setSingleStep(50.0)
        self._set_range(self.range_combo.currentText())
        self.delete_tool = QPushButton("Delete lesion on click")
        self.delete_tool.setCheckable(True)
        self.interpolate_button = QPushButton("Fill between last two edited slices")
        self.interpolate_button.clicked.connect(self.interpolate)
        grid.addWidget(self.constrain, 0, 0)
        grid.addWidget(self.range_combo, 0, 1, 1, 2)
        grid.addWidget(QLabel("HU from / to"), 1, 0)
        grid.addWidget(self.hu_low, 1, 1)
        grid.addWidget(self.hu_high, 1, 2)
        grid.addWidget(self.delete_tool, 2, 0, 1, 3)
        grid.addWidget(self.interpolate_button, 3, 0, 1, 3)
        return box

    # ----- binding ------------------------------------------------------------------
    @staticmethod
    def _is_infection_layer(layer) -> bool:
        return (plugin_meta(layer.metadata) or {}).get("kind") == "infection_mask"

    def _on_inserted(self, event) -> None:
        if self._is_infection_layer(event.value):
            self.bind(event.value)

    def bind(self, layer) -> None:
        """Attach to an infection mask layer: find or create its case, restore its latest version.

        Hashing the scan, keeping a copy and writing the original take a moment on big
        scans, so they run in a worker; edits made meanwhile are tracked and saved after.
        """
        self.save_now()  # edits to a previous layer are never dropped
        ct = self._ct_of(layer)
        if ct is None:
            return
        try:
            volume = ops.ct_volume_of(ct)
        except UserFacingError as exc:
            self._say(f"Not saving this mask: {exc}")
            return
        predicted, title = np.array(layer.data, copy=True), self._model_title(layer)
        self.layer, self.ct_layer, self.case, self._hu = layer, ct, None, volume.hu
        self._dirty, self._edited_slices = False, []
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_changed)
        layer.mouse_drag_callbacks.append(self._on_click)
        guess = _confirmable_guess(plugin_meta(layer.metadata) or {})
        if guess is not None:
            self.label_combo.setCurrentText(guess)
        self._say("Opening this scan's case in the annotation store…")
        self._run(lambda: self._open_case(volume, predicted, title), lambda case: self._bound(layer, case))

    def _open_case(self, volume, predicted: np.ndarray, model: str):
        """(worker) The scan's case, with the model's mask as its original and the scan kept."""
        case = self.store.open_case(volume)
        if not self.store.history(case.id):
            self.store.set_original(case.id, predicted, model=model)
        self.store.keep_scan(case.id, volume)
        return self.store.get_case(case.id)

    def _bound(self, layer, case) -> None:
        if layer is not self.layer:
            return  # another mask was bound meanwhile
        self.case = case
        final = case.final
        if final is not None and final.kind != "original" and not self._dirty:
            self._restoring = True
            try:
                layer.data = self.store.latest(case.id)  # reopened: continue where the annotator left off
            finally:
                self._restoring = False
            self._say(f"Case {case.id}: restored version {final.id} saved by {final.annotator} at {_time(final.created)}.")
        elif self._dirty:
            self.save_now()  # edited while the case was opening
        else:
            self._say(f"Case {case.id}: the model's mask is kept as the original; edits are saved automatically.")
        self._show_history()

    def _ct_of(self, layer):
        key = (plugin_meta(layer.metadata) or {}).get("scan")
        return next((c for c in self.viewer.layers if ops.scan_key(c) == key), None)

    @staticmethod
    def _model_title(layer) -> str:
        return (plugin_meta(layer.metadata) or {}).get("model", "model")

    # ----- saving -------------------------------------------------------------------
    def _on_paint(self, event) -> None:
        atoms = [_index_atom(atom) for atom in event.value]
        if self.constrain.isChecked() and self._hu is not None:
            back = outside_hu_range(atoms, self._hu, self.hu_low.value(), self.hu_high.value())
            if back is not None:
                # napari announces a stroke before writing it; put the voxels back after.
                QTimer.singleShot(0, lambda: self._put_back(*back))
        for indices, _old, _new in atoms:
            if len(indices[0]):
                self._note_slice(int(np.median(indices[0])))
        self._on_changed()

    def _put_back(self, indices: tuple[np.ndarray, ...], values: np.ndarray) -> None:
        self.layer.data[indices] = values
        self.layer.refresh()

    def _on_changed(self, _event=None) -> None:
        if self._restoring:
            return
        self._dirty = True
        self._say("Unsaved changes…")
        self._timer.start(AUTOSAVE_DELAY_MS)

    def save_now(self) -> None:
        """Save the current mask as a new version (in the background unless ``threaded`` is off)."""
        self._timer.stop()
        if not self._dirty or self.case is None or self._saving:
            return
        annotator = self.annotator.text().strip()
        if not annotator:
            self._say("Type your name above: it is recorded with every save. Edits are kept until then.")
            return
        mask, case_id = np.array(self.layer.data, copy=True), self.case.id
        self._dirty, self._saving = False, True
        self._say("Saving…")
        self._run(lambda: self.store.save_version(case_id, mask, annotator=annotator), self._saved)

    def _saved(self, version) -> None:
        self._saving = False
        self._say(f"Case {version.case_id}: version {version.id} saved at {_time(version.created)} by {version.annotator}.")
        self._show_history()
        if self._dirty:  # edited again while saving
            self._timer.start(AUTOSAVE_DELAY_MS)

    def restore_selected(self) -> None:
        item = self.history.currentItem()
        if item is None or self.case is None:
            return
        annotator = self.annotator.text().strip() or "unknown"
        version = self.store.restore(self.case.id, int(item.data(256)), annotator=annotator)
        self._restoring = True
        try:
            self.layer.data = self.store.load_version(self.case.id, version.id)
        finally:
            self._restoring = False
        self._dirty = False
        self._timer.stop()
        self._say(f"Case {self.case.id}: restored as version {version.id}.")
        self._show_history()

    def mark_reviewed(self) -> None:
        if self.case is None:
            return
        annotator = self.annotator.text().strip()
        if not annotator:
            self._say("Type your name above before marking the case reviewed.")
            return
        if self._dirty:
            self._dirty, mask = False, np.array(self.layer.data, copy=True)
            self.store.save_version(self.case.id, mask, annotator=annotator)
        self.store.mark_reviewed(self.case.id, annotator=annotator, label=self.label_combo.currentText())
        self._say(f"Case {self.case.id} marked reviewed ({self.label_combo.currentText()}) by {annotator}.")
        self._show_history()

    # ----- tools ---------------------------------------------------------------------
    def _set_range(self, name: str) -> None:
        low, high = HU_RANGES[name]
        self.hu_low.setValue(low)
        self.hu_high.setValue(high)

    def _on_click(self, layer, event):
        if not self.delete_tool.isChecked() or event.type != "mouse_press":
            return
        voxel = np.round(layer.world_to_data(event.position)).astype(int)
        self.delete_lesion_at(voxel)

    def delete_lesion_at(self, voxel) -> int:
        """Erase the whole connected lesion under ``voxel`` (one undoable step); returns voxels erased."""
        found = connected_lesion(np.asarray(self.layer.data), voxel)
        if found is None:
            return 0
        self.layer.data_setitem(found, 0)
        return len(found[0])

    def _note_slice(self, z: int) -> None:
        if not self._edited_slices or self._edited_slices[-1] != z:
            self._edited_slices = [*self._edited_slices[-1:], z]

    def interpolate(self) -> None:
        """Fill the slices between the last two edited slices (one undoable step)."""
        if self.layer is None or len(self._edited_slices) < 2:
            self._say("Edit two slices (a few slices apart) first, then fill between them.")
            return
        first, last = self._edited_slices
        filled = interpolate_slices(np.asarray(self.layer.data), first, last)
        zs, ys, xs = [], [], []
        for z, region in filled.items():
            y, x = np.nonzero(region & (self.layer.data[z] == 0))
            zs.append(np.full(len(y), z))
            ys.append(y)
            xs.append(x)
        if filled and sum(len(z) for z in zs):
            self.layer.data_setitem((np.concatenate(zs), np.concatenate(ys), np.concatenate(xs)), 1)
        self._say(f"Filled slices {min(first, last) + 1} to {max(first, last) - 1}.")

    # ----- helpers -------------------------------------------------------------------
    def _show_history(self) -> None:
        self.history.clear()
        if self.case is None:
            return
        for version in reversed(self.store.history(self.case.id)):
            who = version.model if version.kind == "original" else version.annotator
            item = QListWidgetItem(f"v{version.id} {version.kind} · {_time(version.created)} · {who}")
            item.setData(256, version.id)
            self.history.addItem(item)
        case = self.store.get_case(self.case.id)
        if case.reviewed:
            self.history.insertItem(0, f"reviewed ({case.label}) by {case.reviewed_by}")

    def _choose_store(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Annotation store folder")
        if folder:
            self.save_now()
            self.store.close()
            self.store = AnnotationStore(Path(folder))
            save_setting("store", folder)
            self.store_label.setText(folder)
            if self.layer is not None:
                self.bind(self.layer)

    def _run(self, job, done) -> None:
        if not self.threaded:
            done(job())
            return
        from napari.qt.threading import create_worker

        worker = create_worker(job)
        worker.returned.connect(done)
        worker.errored.connect(self._failed)
        worker.start()

    def _failed(self, exc: BaseException) -> None:
        self._saving, self._dirty = False, True
        self._say(f"Could not save: {exc}. Your edits are still in the layer; they will be saved on the next change.")
        log.error("saving a mask version failed", exc_info=exc)

    def _say(self, text: str) -> None:
        self.status.setText(text)


def _index_atom(atom) -> tuple[tuple[np.ndarray, ...], np.ndarray, object]:
    """A napari paint-history atom as (indices, old values, new value).

    napari 0.9 records brush, fill and polygon edits as a bounding box plus a mask
    (``_MaskedPaintAtom``); ``data_setitem`` and older napari record fancy indices.
    """
    if not hasattr(atom, "slice_key"):
        return atom
    offset = [s.start or 0 for s in atom.slice_key]
    if atom.mask is None:
        shape = np.asarray(atom.old_values).shape
        local = tuple(axis.ravel() for axis in np.indices(shape))
        old = np.asarray(atom.old_values).ravel()
    else:
        local = np.nonzero(atom.mask)
        old = np.asarray(atom.old_values)
    return tuple(axis + o for axis, o in zip(local, offset, strict=True)), old, atom.new_value


def _confirmable_guess(meta: dict) -> str | None:
    """The finding to preselect for review: "no pneumonia" when the diagnosis found none,
    else the class it found most likely (masks of older sessions carry only "predicted")."""
    if meta.get("finding") == NO_PNEUMONIA_DETECTED:
        return NO_PNEUMONIA
    guess = meta.get("finding") or meta.get("predicted")
    return guess if guess in CONFIRMABLE_FINDINGS else None


def _time(iso: str) -> str:
    return iso[11:19] if len(iso) >= 19 else iso
