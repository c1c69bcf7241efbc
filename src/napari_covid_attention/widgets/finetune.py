"""The "Fine-tune" dock widget: retrain from reviewed corrections, with progress, plot, cancel.

The job is :func:`napari_covid_attention.training.finetune.finetune` in a napari worker;
this widget shows its events (a progress bar, a live loss plot, held-out Dice before and
after), the decision and its reason, and the versions with a one-click rollback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.jobs import run_to_end
from napari_covid_attention.models.device import one_core_for_the_gui
from napari_covid_attention.models.registry import (
    DEMO_BUNDLE,
    bundle_info,
    current_bundle,
    rollback,
    versions,
)
from napari_covid_attention.settings import load_settings
from napari_covid_attention.training.finetune import (
    FinetuneConfig,
    FinetuneEvent,
    FinetuneResult,
    finetune,
)

if TYPE_CHECKING:
    import napari


class FinetuneWidget(QWidget):
    """Dock widget; ``bundle_name`` is the bundle family whose current version is tuned."""

    def __init__(self, napari_viewer: napari.Viewer, bundle_name: str = DEMO_BUNDLE) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.bundle_name = bundle_name
        self.store_root = load_settings().get("store")
        self.worker = None
        self.result: FinetuneResult | None = None
        self._losses: list[float] = []

        layout = QVBoxLayout(self)
        box = QGroupBox("Fine-tune from reviewed corrections")
        grid = QGridLayout(box)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.segmenter_epochs, self.classifier_epochs = QSpinBox(), QSpinBox()
        for spin, value in ((self.segmenter_epochs, FinetuneConfig.segmenter_epochs), (self.classifier_epochs, FinetuneConfig.classifier_epochs)):
            spin.setRange(1, 200)
            spin.setValue(value)
        self.start_button = QPushButton("Fine-tune")
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        grid.addWidget(self.summary, 0, 0, 1, 2)
        grid.addWidget(QLabel("Segmenter epochs"), 1, 0)
        grid.addWidget(self.segmenter_epochs, 1, 1)
        grid.addWidget(QLabel("Classifier epochs"), 2, 0)
        grid.addWidget(self.classifier_epochs, 2, 1)
        grid.addWidget(self.start_button, 3, 0)
        grid.addWidget(self.cancel_button, 3, 1)
        grid.addWidget(self.progress, 4, 0, 1, 2)
        grid.addWidget(self.status, 5, 0, 1, 2)
        layout.addWidget(box)
        self.figure, self.canvas = _make_plot()
        layout.addWidget(self.canvas)
        versions_box = QGroupBox("Versions")
        vlayout = QVBoxLayout(versions_box)
        self.versions = QListWidget()
        self.versions.setMaximumHeight(120)
        self.rollback_button = QPushButton("Roll back to the previous version")
        self.rollback_button.clicked.connect(self.roll_back)
        vlayout.addWidget(self.versions)
        vlayout.addWidget(self.rollback_button)
        layout.addWidget(versions_box)
        layout.addStretch(1)
        self.refresh()

    def refresh(self) -> None:
        """Reviewed-case count and the versions list (after a job, a rollback, or on request)."""
        with AnnotationStore(self.store_root) as store:
            reviewed = store.reviewed_cases()
        current = current_bundle(self.bundle_name)
        title = "none" if current is None else bundle_info(current).version
        self.summary.setText(
            f"{len(reviewed)} reviewed case(s) in the store. Current {self.bundle_name} version: {title}."
        )
        self.versions.clear()
        for info in reversed(versions(self.bundle_name)):
            parent = f" (from {info.parent['version']})" if info.parent else ""
            self.versions.addItem(f"{info.title}{parent}")

    def start(self, threaded: bool = True):
        """Start a job; ``threaded=False`` runs it here (tests)."""
        config = FinetuneConfig(
            bundle=self.bundle_name if current_bundle(self.bundle_name) else None,
            store_root=self.store_root,
            segmenter_epochs=self.segmenter_epochs.value(),
            classifier_epochs=self.classifier_epochs.value(),
        )
        self._losses = []
        self.result = None
        self._set_busy(True)
        if not threaded:
            try:
                self._on_result(run_to_end(finetune(config), self._on_event))
            except UserFacingError as exc:
                self._on_error(exc)
            self._set_busy(False)
            return None
        from napari.qt.threading import create_worker

        self.worker = create_worker(_finetune_beside_the_gui, config, _progress={"desc": "Fine-tuning"})
        self.worker.yielded.connect(self._on_event)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(lambda: self._set_busy(False))
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Stop at the next step; nothing is saved and the current version stays."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Cancelled: nothing was saved; the current version is unchanged.")

    def roll_back(self) -> None:
        try:
            path = rollback(self.bundle_name)
        except UserFacingError as exc:
            self.status.setText(str(exc))
            return
        self.status.setText(f"Rolled back: {path.name} is current again.")
        self.refresh()

    def _on_event(self, event: FinetuneEvent) -> None:
        self.progress.setMaximum(max(event.total, 1))
        self.progress.setValue(event.step)
        text = ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items())
        self.status.setText(f"{event.phase}: {event.step}/{event.total}" + (f" ({text})" if text else ""))
        if "loss" in event.metrics:
            self._losses.append(event.metrics["loss"])
            if len(self._losses) % 5 == 0:
                self._plot()

    def _on_result(self, result: FinetuneResult) -> None:
        self.result = result
        verdict = "Promoted" if result.promoted else "Not promoted"
        self.status.setText(
            f"{verdict}: version {result.version} ({result.reason}). Held-out cases: {result.n_val}, training cases: {result.n_train}."
        )
        self._plot(before=result.before["dice"], after=result.after["dice"])
        self.refresh()

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(str(exc) if isinstance(exc, UserFacingError) else f"Fine-tuning failed ({type(exc).__name__}: {exc}).")

    def _set_busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.worker = None

    def _plot(self, before: float | None = None, after: float | None = None) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        ax.plot(self._losses, linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        if before is not None and after is not None:
            ax.set_title(f"held-out infection Dice {before:.3f} → {after:.3f}", fontsize=9)
        self.figure.tight_layout()
        self.canvas.draw_idle()


def _make_plot():
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.5, 2.2), dpi=90)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setMinimumHeight(160)
    return figure, canvas


def _finetune_beside_the_gui(config: FinetuneConfig):
    """The fine-tuning job, leaving one core to napari's main thread."""
    with one_core_for_the_gui():
        return (yield from finetune(config))
