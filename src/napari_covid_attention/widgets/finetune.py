"""The "Fine-tune" dock: retrain from reviewed corrections, with progress, plot, cancel.

A view of the session: the store and the model family come from it, and a promotion or a
rollback refreshes the session's model choice, so the next diagnosis uses the new current
version. The job is :func:`napari_covid_attention.training.finetune.finetune`, run by the
one job adapter; a refusal (too few reviewed cases, a version that is not better) is a
message, not an error.
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
)

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.widgets.jobs import JobRunner, session_of
from napari_covid_attention.widgets.scrolling import ScrollingDock

if TYPE_CHECKING:
    import napari

class FinetuneWidget(ScrollingDock):
    """Dock widget; tunes the current version of the session's model family."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.session = session_of(napari_viewer)
        self.viewer = self.session.viewer  # the viewer itself, not napari's proxy of it
        self.runner = JobRunner("fine-tuning")
        self.result = None
        self._losses: list[float] = []

        layout = self.content_layout
        box = QGroupBox("Fine-tune from reviewed corrections")
        grid = QGridLayout(box)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.segmenter_epochs, self.classifier_epochs = QSpinBox(), QSpinBox()
        for spin in (self.segmenter_epochs, self.classifier_epochs):
            spin.setRange(1, 200)
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
        self.versions.setMaximumHeight(100)
        self.rollback_button = QPushButton("Roll back to the previous version")
        self.rollback_button.clicked.connect(self.roll_back)
        vlayout.addWidget(self.versions)
        vlayout.addWidget(self.rollback_button)
        layout.addWidget(versions_box)
        layout.addStretch(1)
        for signal in (self.session.reviewed_changed, self.session.store_changed, self.session.models.changed):
            signal.connect(self.refresh)
        self.refresh()
        self.session.scheduler.background(_default_epochs, self._show_defaults, lambda exc: None)

    def _show_defaults(self, epochs: tuple[int, int]) -> None:
        self.segmenter_epochs.setValue(epochs[0])
        self.classifier_epochs.setValue(epochs[1])

    @property
    def family(self) -> str:
        return self.session.models.family

    def refresh(self) -> None:
        """Reviewed-case count and the versions list, as they are now."""
        if not self.session.models.ready:
            self.summary.setText(f"{self.session.reviewed_count()} reviewed case(s) in the store. Reading the model versions…")
            return  # models.changed calls again once the registry is read
        from napari_covid_attention.models.registry import bundle_info, current_bundle, versions

        current = current_bundle(self.family)
        title = "none" if current is None else bundle_info(current).version
        self.summary.setText(
            f"{self.session.reviewed_count()} reviewed case(s) in the store. Current {self.family} version: {title}."
        )
        self.versions.clear()
        for info in reversed(versions(self.family)):
            parent = f" (from {info.parent['version']})" if info.parent else ""
            self.versions.addItem(f"{info.title}{parent}")
            self.versions.item(self.versions.count() - 1).setToolTip(str(info.path))

    def start(self, threaded: bool = True):
        """Start a job; ``threaded=False`` runs it here (tests)."""
        from napari_covid_attention.session.imports import import_heavy_modules

        import_heavy_modules()
        from napari_covid_attention.models.registry import current_bundle

        current = current_bundle(self.family)
        store_root = self.session.store.root
        segmenter_epochs, classifier_epochs = self.segmenter_epochs.value(), self.classifier_epochs.value()

        def job():
            from napari_covid_attention.session.imports import import_heavy_modules

            import_heavy_modules()
            from napari_covid_attention.training.finetune import FinetuneConfig, finetune

            # The current version's folder, never the bare name: a "demo" folder in the
            # working directory must not be taken for the model.
            config = FinetuneConfig(
                bundle=current, store_root=store_root,
                segmenter_epochs=segmenter_epochs, classifier_epochs=classifier_epochs,
            )
            return (yield from finetune(config))

        self._losses, self.result = [], None
        self._set_busy(True)
        self.status.setText("Preparing the reviewed cases…")
        return self.runner.start(
            job, progress=self._on_event, done=self._on_result, failed=self._on_failed, finished=self._on_finished,
            threaded=threaded,
        )

    def cancel(self) -> None:
        """Stop at the next step; a version is saved only with its decision, never half."""
        if self.runner.running:
            self.runner.cancel()
            self.status.setText("Cancelling at the next step…")

    def roll_back(self) -> None:
        from napari_covid_attention.session.imports import import_heavy_modules

        import_heavy_modules()
        from napari_covid_attention.models.registry import rollback

        try:
            path = rollback(self.family)
        except UserFacingError as exc:
            self.status.setText(str(exc))
            return
        self.status.setText(f"Rolled back: {path.name} is current again.")
        self.session.models.refresh()

    def _on_event(self, event) -> None:
        self.progress.setMaximum(max(event.total, 1))
        self.progress.setValue(event.step)
        text = ", ".join(f"{k} {v:.3f}" for k, v in event.metrics.items())
        self.status.setText(f"{event.phase}: {event.step}/{event.total}" + (f" ({text})" if text else ""))
        if "loss" in event.metrics:
            self._losses.append(event.metrics["loss"])
            if len(self._losses) % 5 == 0:
                self._plot()

    def _on_result(self, result) -> None:
        self.result = result
        verdict = "Promoted" if result.promoted else "Not promoted"
        self.status.setText(
            f"{verdict}: version {result.version} ({result.reason}). Held-out cases: {result.n_val}, training cases: {result.n_train}."
        )
        self._plot(before=result.before["dice"], after=result.after["dice"])
        self.session.models.refresh()  # the picker and the next diagnosis follow a promotion

    def _on_failed(self, sentence: str) -> None:
        self.progress.setValue(0)
        self.status.setText(sentence)

    def _on_finished(self, cancelled: bool) -> None:
        self._set_busy(False)
        if cancelled and self.result is None:
            self.progress.setValue(0)
            self.status.setText("Cancelled: nothing was saved; the current version is unchanged.")

    def _set_busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

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


def _default_epochs() -> tuple[int, int]:
    """FinetuneConfig's defaults (the one place they are set); importing it loads torch,
    so the dock asks in the background."""
    from napari_covid_attention.session.imports import import_heavy_modules

    import_heavy_modules()
    from napari_covid_attention.training.finetune import FinetuneConfig

    return FinetuneConfig.segmenter_epochs, FinetuneConfig.classifier_epochs


def _make_plot():
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.5, 2.0), dpi=90, facecolor="none")  # no white box on napari's dark theme
    canvas = FigureCanvasQTAgg(figure)
    canvas.setStyleSheet("background-color: transparent")
    canvas.setMinimumHeight(140)
    return figure, canvas
