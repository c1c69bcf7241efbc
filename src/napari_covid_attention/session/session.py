"""The viewer's session: the store, the annotator, the model, and one ScanSession per CT.

The dock widgets are views of this object: they draw its state and forward clicks, and
hold no state of their own, so every dock shows the same scan, case and model. It works
on ``napari.components.ViewerModel`` (no Qt), with an injected scheduler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from psygnal import Signal

from napari_covid_attention._layer_data import plugin_meta
from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.session.correction import AUTOSAVE_S, MaskCorrection, ToolSettings
from napari_covid_attention.session.imports import import_shared_modules
from napari_covid_attention.session.models import ModelChoice
from napari_covid_attention.session.scan import ScanSession
from napari_covid_attention.session.scheduler import Scheduler
from napari_covid_attention.settings import load_settings, save_setting

MAP_KINDS = ("attention", "gradcam", "gradcam_pp")
RESULT_KINDS = (*MAP_KINDS, "lung_mask", "infection_mask")


class Session:
    """One per viewer (see :func:`session_for`)."""

    scans_changed = Signal()  # a CT was opened or closed
    active_changed = Signal(object)  # the ScanSession now shown by the docks (or None)
    annotator_changed = Signal(str)
    store_changed = Signal()
    reviewed_changed = Signal()  # a case was marked reviewed (fine-tuning's count)

    def __init__(self, viewer: Any, scheduler: Scheduler, *, autosave_s: float = AUTOSAVE_S) -> None:
        from napari_covid_attention.widgets.compare import CompareView

        settings = load_settings()
        self.viewer = viewer
        self.scheduler = scheduler
        self.autosave_s = autosave_s
        import_shared_modules()  # before the model choice starts importing torch in a worker
        self.store = AnnotationStore(settings.get("store"))
        self.annotator: str = settings.get("annotator", "")
        self.models = ModelChoice(scheduler=scheduler)
        self.compare = CompareView(viewer)
        self.scans: dict[str, ScanSession] = {}
        self.active: ScanSession | None = None
        self.tools = ToolSettings()
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        viewer.layers.selection.events.active.connect(self._on_selection)
        self.sync_layers()

    # ----- scans ------------------------------------------------------------------------
    def sync_layers(self) -> None:
        """Track every CT layer and bind every infection mask now in the viewer."""
        for layer in list(self.viewer.layers):
            self._track(layer)

    def cts(self) -> list[ScanSession]:
        """The open scans, in layer order."""
        from napari_covid_attention.widgets.layers import scan_key

        return [self.scans[scan_key(layer)] for layer in self.viewer.layers if scan_key(layer) in self.scans]

    def scan_of(self, layer: Any) -> ScanSession | None:
        """The scan a CT layer or one of its result layers belongs to."""
        from napari_covid_attention.widgets.layers import scan_key

        if layer is None:
            return None
        key = (plugin_meta(layer.metadata) or {}).get("scan") or scan_key(layer)
        return self.scans.get(key)

    def set_active(self, scan: ScanSession | None) -> None:
        if scan is not self.active:
            self.active = scan
            if scan is not None and not self.compare.active:
                self._show_only(scan)
            self.active_changed.emit(scan)

    def _show_only(self, scan: ScanSession) -> None:
        """Draw the active scan only: two patients' scans share napari's world space, so two
        visible scans lie on top of each other. Hidden scans get their visibility back when
        they are made active again."""
        for other in self.scans.values():
            layers = [other.ct_layer, *other.result_layers(self.viewer)]
            if other is scan:
                if other.hidden_visibility is not None:
                    for layer in layers:
                        layer.visible = other.hidden_visibility.get(id(layer), layer.visible)
                    other.hidden_visibility = None
            elif other.hidden_visibility is None and any(layer.visible for layer in layers):
                other.hidden_visibility = {id(layer): layer.visible for layer in layers}
                for layer in layers:
                    layer.visible = False

    def _on_inserted(self, event) -> None:
        if not self.compare.active:  # its twin layers are views, not scans
            self._track(event.value)

    def _track(self, layer: Any) -> None:
        from napari_covid_attention.widgets.layers import scan_key

        if is_ct(layer) and layer not in self.compare.added and scan_key(layer) not in self.scans:
            scan = ScanSession(layer)
            self.scans[scan.key] = scan
            layer.events.name.connect(self._renamed)  # pickers show the new name
            self.scans_changed.emit()
            if self.active is None:
                self.set_active(scan)
        elif (plugin_meta(layer.metadata) or {}).get("kind") == "infection_mask":
            self._bind_mask(layer)

    def _renamed(self, _event=None) -> None:
        self.scans_changed.emit()

    def _bind_mask(self, layer: Any) -> None:
        scan = self.scan_of(layer)
        if scan is None:
            return
        try:
            volume = scan.volume()
        except UserFacingError:
            return
        model = (plugin_meta(layer.metadata) or {}).get("model", "model")
        correction = MaskCorrection(
            layer, volume, model, self.store, self.scheduler, lambda: self.annotator, self.autosave_s, self.tools
        )
        correction.reviewed.connect(self.reviewed_changed.emit)  # not every save: the count re-reads the registry
        scan.bind(correction)

    def _on_removed(self, event) -> None:
        layer = event.value
        scan = self.scans.get(_key(layer))
        if scan is not None and scan.ct_layer is layer:
            self._close_scan(scan)
            return
        scan = self.scan_of(layer)
        if scan is not None and scan.correction is not None and scan.correction.layer is layer:
            scan.bind(None)  # its mask layer was deleted: the saved versions stay

    def _close_scan(self, scan: ScanSession) -> None:
        scan.ct_layer.events.name.disconnect(self._renamed)
        scan.close()
        del self.scans[scan.key]
        for layer in scan.result_layers(self.viewer):  # its overlays mean nothing without it
            self.viewer.layers.remove(layer)
        if self.active is scan:
            remaining = self.cts()
            self.set_active(remaining[-1] if remaining else None)
        self.scans_changed.emit()

    def _on_selection(self, _event=None) -> None:
        scan = self.scan_of(self.viewer.layers.selection.active)
        if scan is not None:
            self.set_active(scan)

    # ----- diagnosis ----------------------------------------------------------------------
    def show_diagnosis(self, scan: ScanSession, diagnosis, *, staged: bool = False, done=None) -> dict | None:
        """Add (or refresh) the scan's result layers; None when the scan was closed meanwhile.

        ``staged``: one layer per event-loop turn (the GUI: no long main-thread stall),
        ``done(made)`` called at the end; otherwise all at once, and they are returned.
        """
        from napari_covid_attention.widgets.layers import diagnosis_layer_steps

        if scan.key not in self.scans or scan.ct_layer not in self.viewer.layers:
            return None
        if self.compare.active:
            self.leave_compare()
        steps = diagnosis_layer_steps(self.viewer, scan.ct_layer, diagnosis)  # binds the new mask (inserted)

        def finish(made: dict) -> dict:
            scan.diagnosis = diagnosis
            self.set_active(scan)
            scan.diagnosed.emit(diagnosis)
            if done is not None:
                done(made)
            return made

        def step() -> None:
            if scan.key not in self.scans:
                steps.close()  # closed while its layers were being added
                return
            try:
                next(steps)
            except StopIteration as finished:
                finish(finished.value)
                return
            self.scheduler.later(0.0, step)

        if staged:
            step()
            return {}
        while True:
            try:
                next(steps)
            except StopIteration as finished:
                return finish(finished.value)

    def leave_compare(self) -> None:
        self.compare.exit()
        self.sync_layers()  # scans opened while comparing

    # ----- annotator and store ------------------------------------------------------------
    def set_annotator(self, name: str) -> None:
        """Record who edits; edits waiting for a name are saved now."""
        name = name.strip()
        if name == self.annotator:
            return
        self.annotator = name
        save_setting("annotator", name or None)
        self.annotator_changed.emit(name)
        for scan in self.scans.values():
            if scan.correction is not None:
                scan.correction.save_now()

    def set_store(self, folder: str | Path) -> None:
        """Use another annotation store; every open mask moves to its case there."""
        for scan in self.scans.values():
            if scan.correction is not None:
                scan.correction.save_now()
        store = AnnotationStore(Path(folder))
        old, self.store = self.store, store
        save_setting("store", str(folder))
        for scan in self.scans.values():
            if scan.correction is not None:
                scan.correction.use_store(store)
        old.close()
        self.store_changed.emit()

    def reviewed_count(self) -> int:
        return len(self.store.reviewed_cases())

    def close(self) -> None:
        """Save what is unsaved and stop listening to the viewer."""
        for scan in list(self.scans.values()):
            scan.close()
        self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        self.viewer.layers.events.removed.disconnect(self._on_removed)
        self.viewer.layers.selection.events.active.disconnect(self._on_selection)


def _key(layer: Any) -> str:
    from napari_covid_attention.widgets.layers import scan_key

    return scan_key(layer)


def is_ct(layer: Any) -> bool:
    """A layer the plugin can diagnose: a 3D single-channel image that is not one of its maps."""
    if type(layer).__name__ != "Image" or getattr(layer, "rgb", False) or layer.ndim != 3:
        return False
    return (plugin_meta(layer.metadata) or {}).get("kind") in (None, "ct")


_SESSIONS: dict[int, Session] = {}


def session_for(viewer: Any, scheduler_factory) -> Session:
    """The viewer's one Session, made on first use (every dock of the viewer shares it).

    napari hands plugin widgets a public-only proxy of the viewer (a different object on
    each call); the session holds the viewer itself, so every dock finds the same one and
    its layers are the real layers.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    found = _SESSIONS.get(key)
    if found is None or found.viewer is not viewer:
        found = _SESSIONS[key] = Session(viewer, scheduler_factory())
    return found
