"""One CT layer's session: its diagnosis, its result layers and its mask correction.

Layers are tied to the scan by the CT layer's id, never by name, so renaming a layer or
opening two scans with the same file name changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psygnal import Signal

from napari_covid_attention.jobs import Job, Progress
from napari_covid_attention.session.correction import MaskCorrection

if TYPE_CHECKING:
    from napari_covid_attention.diagnosis import Diagnosis
    from napari_covid_attention.io.volume import CTVolume


class ScanSession:
    """Everything the viewer knows about one open CT."""

    diagnosed = Signal(object)  # the Diagnosis, once its layers are shown
    correction_changed = Signal()  # a new mask was bound (or none any more)

    def __init__(self, ct_layer: Any) -> None:
        from napari_covid_attention.widgets.layers import scan_key

        self.ct_layer = ct_layer
        self.key = scan_key(ct_layer)
        self.diagnosis: Diagnosis | None = None
        self.correction: MaskCorrection | None = None
        self.hidden_visibility: dict[int, bool] | None = None  # while another scan is shown

    @property
    def name(self) -> str:
        return self.ct_layer.name

    def volume(self) -> CTVolume:
        """The CT behind the layer, or a one-sentence reason why it cannot be diagnosed."""
        from napari_covid_attention.widgets.layers import ct_volume_of

        return ct_volume_of(self.ct_layer)

    def diagnosis_job(self, volume: CTVolume, load_bundle, device: str) -> Job[Diagnosis]:
        """(worker) Load the model (cached) and diagnose; yields one Progress per stage."""
        from napari_covid_attention.session.imports import import_heavy_modules

        import_heavy_modules()
        from napari_covid_attention.diagnosis import STAGES, diagnose_steps

        total = len(STAGES) + 1
        bundle = load_bundle()
        yield Progress("model loaded", 1, total)
        steps = diagnose_steps(volume, bundle, device)
        while True:
            try:
                event = next(steps)
            except StopIteration as done:
                return done.value
            yield Progress(event.phase, event.step + 1, total)

    def layer_of_kind(self, viewer, kind: str):
        from napari_covid_attention.widgets.layers import layer_of_kind

        return layer_of_kind(viewer, self.ct_layer, kind)

    def result_layers(self, viewer) -> list:
        from napari_covid_attention.widgets.layers import plugin_layers_of

        return plugin_layers_of(viewer, self.ct_layer)

    def bind(self, correction: MaskCorrection | None) -> None:
        """Attach the correction of a new infection mask (the previous one is saved first)."""
        if self.correction is not None:
            self.correction.close()
        self.correction = correction
        self.correction_changed.emit()

    def close(self) -> None:
        """The CT was closed: unsaved edits are saved, nothing listens any more."""
        self.bind(None)
        self.diagnosis = None
