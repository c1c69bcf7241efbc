"""The "Corrections" dock: who edits, where it is kept, the active scan's case and tools.

A view of the session: each scan's mask is bound to its own case by
:class:`~napari_covid_attention.session.MaskCorrection` (autosave, undo / redo, reopen),
so this widget only shows the active scan's state and forwards clicks to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
)

from napari_covid_attention._layer_data import plugin_meta
from napari_covid_attention.annotations.editing import HU_RANGES
from napari_covid_attention.classes import CONFIRMABLE_FINDINGS, NO_PNEUMONIA, NO_PNEUMONIA_DETECTED
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.session.correction import clock_time
from napari_covid_attention.widgets.jobs import notify_failure, session_of
from napari_covid_attention.widgets.scrolling import ScrollingDock

if TYPE_CHECKING:
    import napari

    from napari_covid_attention.session import MaskCorrection, ScanSession

_NO_SCAN = "Diagnose a scan: its infection mask is then saved as you edit it."


class CorrectionWidget(ScrollingDock):
    """Dock widget; shows the session's active scan."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.session = session_of(napari_viewer)
        self.viewer = self.session.viewer  # the viewer itself, not napari's proxy of it
        self._scan: ScanSession | None = None
        self._correction: MaskCorrection | None = None
        layout = self.content_layout
        layout.addWidget(self._store_box())
        layout.addWidget(self._case_box())
        layout.addWidget(self._tools_box())
        layout.addStretch(1)
        self.session.active_changed.connect(self._show_scan)
        self.session.store_changed.connect(self._show_store)
        self._show_scan(self.session.active)

    # ----- construction -----------------------------------------------------------
    def _store_box(self) -> QGroupBox:
        box = QGroupBox("Annotator and store")
        grid = QGridLayout(box)
        self.annotator = QLineEdit(self.session.annotator)
        self.annotator.setPlaceholderText("your name (recorded with every save)")
        self.annotator.editingFinished.connect(self.set_annotator)
        self.store_label = QLabel()
        self.store_label.setWordWrap(True)
        change = QPushButton("Change…")
        change.clicked.connect(self._choose_store)
        grid.addWidget(QLabel("Annotator"), 0, 0)
        grid.addWidget(self.annotator, 0, 1, 1, 2)
        grid.addWidget(QLabel("Store"), 1, 0)
        grid.addWidget(self.store_label, 1, 1)
        grid.addWidget(change, 1, 2)
        self._show_store()
        return box

    def _case_box(self) -> QGroupBox:
        box = QGroupBox("Case")
        layout = QVBoxLayout(box)
        self.scan_label = QLabel("")
        self.scan_label.setWordWrap(True)
        self.status = QLabel(_NO_SCAN)
        self.status.setWordWrap(True)
        layout.addWidget(self.scan_label)
        layout.addWidget(self.status)
        self.history = QListWidget()
        self.history.setMaximumHeight(110)
        layout.addWidget(self.history)
        self.restore_button = QPushButton("Restore selected version")
        self.restore_button.clicked.connect(self.restore_selected)
        layout.addWidget(self.restore_button)
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
        self.constrain.toggled.connect(self._update_tools)
        self.range_combo = QComboBox()
        self.range_combo.addItems(list(HU_RANGES))
        self.range_combo.currentTextChanged.connect(self._set_range)
        self.hu_low, self.hu_high = QDoubleSpinBox(), QDoubleSpinBox()
        for spin in (self.hu_low, self.hu_high):
            spin.setRange(-1100.0, 3000.0)
            spin.setSingleStep(50.0)
        self._set_range(self.range_combo.currentText())
        for spin in (self.hu_low, self.hu_high):
            spin.valueChanged.connect(self._update_tools)
        self.delete_tool = QPushButton("Delete lesion on click")
        self.delete_tool.setCheckable(True)
        self.delete_tool.toggled.connect(self._update_tools)
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

    # ----- what is shown ------------------------------------------------------------
    def _show_scan(self, scan: ScanSession | None) -> None:
        if self._scan is not None:
            self._scan.correction_changed.disconnect(self._rebind)
        self._scan = scan
        if scan is not None:
            scan.correction_changed.connect(self._rebind)
        self._rebind()

    def _rebind(self) -> None:
        """Listen to the active scan's correction (a re-diagnosis binds a new one)."""
        if self._correction is not None:
            self._correction.status.disconnect(self._show_status)
            self._correction.history_changed.disconnect(self._show_history)
        scan = self._scan
        self._correction = None if scan is None else scan.correction
        self.scan_label.setText("" if scan is None else f"Scan: <b>{scan.name}</b>")
        self.scan_label.setToolTip("" if scan is None else scan.name)
        if self._correction is None:
            self.status.setText(_NO_SCAN)
        else:
            self._correction.status.connect(self._show_status)
            self._correction.history_changed.connect(self._show_history)
            self.status.setText(self._correction.message)
            guess = _confirmable_guess(plugin_meta(self._correction.layer.metadata) or {})
            if guess is not None:
                self.label_combo.setCurrentText(guess)
        self._show_history()

    def _show_history(self) -> None:
        self.history.clear()
        correction = self._correction
        if correction is None:
            return
        for version in reversed(correction.history()):
            who = version.model if version.kind == "original" else version.annotator
            item = QListWidgetItem(f"v{version.id} {version.kind} · {clock_time(version.created)} · {who}")
            item.setData(256, version.id)
            self.history.addItem(item)
        reviewed = correction.reviewed_text()
        if reviewed:
            self.history.insertItem(0, reviewed)

    def _show_status(self, text: str) -> None:
        self.status.setText(text)

    def _show_store(self) -> None:
        self.store_label.setText(str(self.session.store.root))
        self.store_label.setToolTip(str(self.session.store.root))

    # ----- actions ------------------------------------------------------------------
    def set_annotator(self) -> None:
        self.session.set_annotator(self.annotator.text())

    def save_now(self) -> None:
        if self._correction is not None:
            self._correction.save_now()

    def restore_selected(self) -> None:
        item = self.history.currentItem()
        if item is None or self._correction is None or item.data(256) is None:
            return
        self._act(lambda: self._correction.restore(int(item.data(256))), "restoring a version")

    def mark_reviewed(self) -> None:
        if self._correction is None:
            self.status.setText(_NO_SCAN)
            return
        self.set_annotator()
        self._act(lambda: self._correction.mark_reviewed(self.label_combo.currentText()), "marking the case reviewed")

    def interpolate(self) -> None:
        if self._correction is not None:
            self.status.setText(self._correction.interpolate())

    def _act(self, action, what: str) -> None:
        try:
            action()
        except UserFacingError as exc:
            self.status.setText(str(exc))
        except Exception as exc:  # noqa: BLE001 - one notification, the edit stays in the layer
            self.status.setText(notify_failure(exc, what))

    def _set_range(self, name: str) -> None:
        low, high = HU_RANGES[name]
        self.hu_low.setValue(low)
        self.hu_high.setValue(high)

    def _update_tools(self, *_args) -> None:
        tools = self.session.tools
        tools.hu_range = (self.hu_low.value(), self.hu_high.value()) if self.constrain.isChecked() else None
        tools.delete_on_click = self.delete_tool.isChecked()

    def _choose_store(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Annotation store folder")
        if folder:
            self._act(lambda: self.session.set_store(folder), "changing the store")


def _confirmable_guess(meta: dict) -> str | None:
    """The finding to preselect for review: "no pneumonia" when the diagnosis found none,
    else the class it found most likely (masks of older sessions carry only "predicted")."""
    if meta.get("finding") == NO_PNEUMONIA_DETECTED:
        return NO_PNEUMONIA
    guess = meta.get("finding") or meta.get("predicted")
    return guess if guess in CONFIRMABLE_FINDINGS else None

