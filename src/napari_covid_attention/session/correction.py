"""One scan's infection mask bound to its case in the annotation store.

Every change of the mask layer (brush, eraser, fill, polygon, the plugin's tools, and
undo / redo, which napari applies without a paint event) marks it unsaved; it is saved as
a new version ``autosave_s`` after the last change, in the background. Opening the case
(hashing the scan, keeping a copy) also runs in the background; edits made meanwhile are
saved as soon as it is open, and a case that already has corrections brings its latest
version back into the layer instead. Each scan has its own object, so two open scans
never share a case, a timer or an unsaved flag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from psygnal import Signal

from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.annotations.editing import (
    connected_lesion,
    interpolate_slices,
    outside_hu_range,
)
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.session.scheduler import Cancel, Scheduler

log = logging.getLogger(__name__)
AUTOSAVE_S = 1.5  # save this long after the last change


@dataclass
class ToolSettings:
    """The editing tools' state, shared by every scan's correction (set by the Corrections dock)."""

    hu_range: tuple[float, float] | None = None  # the HU-constrained brush, when on
    delete_on_click: bool = False  # a click on the mask erases the whole lesion under it


class MaskCorrection:
    """Tracks, saves and restores the edits of one infection-mask layer."""

    status = Signal(str)  # one sentence for the annotator
    history_changed = Signal()  # a version was saved, restored, or the case was reviewed
    reviewed = Signal()  # the case was marked reviewed (what fine-tuning counts)

    def __init__(
        self,
        layer: Any,
        volume: CTVolume,
        model: str,
        store: AnnotationStore,
        scheduler: Scheduler,
        annotator: Callable[[], str],
        autosave_s: float = AUTOSAVE_S,
        tools: ToolSettings | None = None,
    ) -> None:
        self.layer = layer
        self.volume = volume
        self.model = model
        self.store = store
        self.case = None
        self.tools = tools or ToolSettings()
        self.edited_slices: list[int] = []
        self.message = "Opening this scan's case in the annotation store…"
        self._scheduler = scheduler
        self._annotator = annotator
        self._autosave_s = autosave_s
        self._dirty = False
        self._saving = False
        self._restoring = False
        self._closed = False
        self._cancel_timer: Cancel | None = None
        self._history_seen = _history_signature(layer)
        self._predicted = np.array(layer.data, copy=True)
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)
        layer.events.set_data.connect(self._on_redraw)
        layer.mouse_drag_callbacks.append(self._on_click)
        self._open()

    # ----- state ----------------------------------------------------------------------
    @property
    def unsaved(self) -> bool:
        return self._dirty or self._saving

    def _say(self, text: str) -> None:
        self.message = text
        self.status.emit(text)

    def disconnect(self) -> None:
        """Stop listening to the layer (the scan was closed or its mask replaced)."""
        self._closed = True
        for event, handler in (
            (self.layer.events.paint, self._on_paint),
            (self.layer.events.data, self._on_data),
            (self.layer.events.set_data, self._on_redraw),
        ):
            event.disconnect(handler)
        if self._on_click in self.layer.mouse_drag_callbacks:
            self.layer.mouse_drag_callbacks.remove(self._on_click)

    # ----- the case -------------------------------------------------------------------
    def _open(self) -> None:
        store, volume, predicted, model = self.store, self.volume, self._predicted, self.model

        def work():
            case = store.open_case(volume)
            if not store.history(case.id):
                store.set_original(case.id, predicted, model=model)
            store.keep_scan(case.id, volume)
            case = store.get_case(case.id)
            final = case.final
            latest = store.latest(case.id) if final is not None and final.kind != "original" else None
            return store, case, latest

        self._scheduler.background(work, self._opened, self._open_failed)

    def _opened(self, found) -> None:
        store, case, latest = found
        if store is not self.store:
            return  # the store was changed meanwhile; the new one is being opened
        self.case = case
        if self._dirty:
            self._say(f"Case {case.id}: saving the edits made while it opened…")
            self.save_now()
        elif latest is not None:
            self._set_layer_data(latest)  # reopened: continue where the annotator left off
            self._say(f"Case {case.id}: restored version {case.final.id} saved by {case.final.annotator} at {clock_time(case.final.created)}.")
        else:
            self._say(f"Case {case.id}: the model's mask is kept as the original; edits are saved automatically.")
        self.history_changed.emit()

    def _open_failed(self, exc: BaseException) -> None:
        self._say(f"Not saving this mask: {_sentence(exc)}")
        if not isinstance(exc, UserFacingError):
            log.error("opening a case failed", exc_info=exc)

    def use_store(self, store: AnnotationStore) -> None:
        """Move to another store: unsaved edits go to the new store's case of this scan."""
        self.store, self.case = store, None
        self._say("Opening this scan's case in the new annotation store…")
        self._open()

    # ----- edits ----------------------------------------------------------------------
    def _on_paint(self, event) -> None:
        self._history_seen = _history_signature(self.layer)
        atoms = [_index_atom(atom) for atom in event.value]
        if self.tools.hu_range is not None:
            back = outside_hu_range(atoms, self.volume.hu, *self.tools.hu_range)
            if back is not None:
                # napari announces a stroke before writing it; put the voxels back after.
                self._scheduler.later(0.0, lambda: self._put_back(*back))
        for indices, _old, _new in atoms:
            if len(indices[0]):
                self._note_slice(int(np.median(indices[0])))
        self._changed()

    def _on_data(self, _event=None) -> None:
        self._history_seen = _history_signature(self.layer)
        self._changed()

    def _on_redraw(self, _event=None) -> None:
        # napari's undo / redo rewrite the array and only redraw (no paint or data event):
        # a changed undo / redo history length is how they show. A hidden layer is not
        # redrawn, so an undo through the API on a hidden mask is seen at its next redraw.
        seen = _history_signature(self.layer)
        if seen != self._history_seen:
            self._history_seen = seen
            self._changed()

    def _changed(self) -> None:
        if self._restoring or self._closed:
            return
        self._dirty = True
        self._say("Unsaved changes…")
        self._restart_timer()

    def _restart_timer(self) -> None:
        if self._cancel_timer is not None:
            self._cancel_timer()
        self._cancel_timer = self._scheduler.later(self._autosave_s, self.save_now)

    def _put_back(self, indices: tuple[np.ndarray, ...], values: np.ndarray) -> None:
        self.layer.data[indices] = values
        self.layer.refresh()

    def save_now(self) -> None:
        """Save the mask as a new version now (in the background), if it has unsaved changes."""
        if self._cancel_timer is not None:
            self._cancel_timer()
            self._cancel_timer = None
        if not self._dirty or self._saving:
            return
        if self.case is None:
            self._say("Unsaved changes: they are saved as soon as the case is open.")
            return
        annotator = self._annotator().strip()
        if not annotator:
            self._say("Type your name in Corrections: it is recorded with every save. Edits are kept until then.")
            return
        mask, case_id, store = np.array(self.layer.data, copy=True), self.case.id, self.store
        self._dirty, self._saving = False, True
        self._say("Saving…")
        self._scheduler.background(
            lambda: store.save_version(case_id, mask, annotator=annotator), self._saved, self._save_failed
        )

    def _saved(self, version) -> None:
        self._saving = False
        self._say(f"Case {version.case_id}: version {version.id} saved at {clock_time(version.created)} by {version.annotator}.")
        self.history_changed.emit()
        if self._dirty and self._closed:
            self.save_now()  # closed while saving: the last edits must not wait for a timer
        elif self._dirty:  # edited again while saving
            self._restart_timer()

    def _save_failed(self, exc: BaseException) -> None:
        self._saving, self._dirty = False, True
        self._say(f"Could not save: {_sentence(exc)} Your edits are still in the layer; they are saved on the next change.")
        if not isinstance(exc, UserFacingError):
            log.error("saving a mask version failed", exc_info=exc)

    def close(self) -> None:
        """The scan is closing: save what is unsaved (from a copy) and stop listening."""
        self.disconnect()
        self.save_now()

    # ----- versions and review --------------------------------------------------------
    def history(self) -> list:
        return [] if self.case is None else self.store.history(self.case.id)

    def reviewed_text(self) -> str | None:
        if self.case is None:
            return None
        case = self.store.get_case(self.case.id)
        return f"reviewed ({case.label}) by {case.reviewed_by}" if case.reviewed else None

    def restore(self, version_id: int) -> None:
        """Make an earlier version final again and show it."""
        case = self._require_case()
        annotator = self._annotator().strip() or "unknown"
        version = self.store.restore(case.id, int(version_id), annotator=annotator)
        self._set_layer_data(self.store.load_version(case.id, version.id))
        self._dirty = False
        if self._cancel_timer is not None:
            self._cancel_timer()
        self._say(f"Case {case.id}: restored as version {version.id}.")
        self.history_changed.emit()

    def mark_reviewed(self, label: str) -> None:
        """Save any unsaved edit synchronously, then record the confirmed finding."""
        case = self._require_case()
        annotator = self._annotator().strip()
        if not annotator:
            raise UserFacingError("Type your name in Corrections before marking the case reviewed.")
        if self._dirty:
            self._dirty = False
            self.store.save_version(case.id, np.array(self.layer.data, copy=True), annotator=annotator)
        self.store.mark_reviewed(case.id, annotator=annotator, label=label)
        self._say(f"Case {case.id} marked reviewed ({label}) by {annotator}.")
        self.history_changed.emit()
        self.reviewed.emit()

    def _require_case(self):
        if self.case is None:
            raise UserFacingError("This scan's case is still opening in the annotation store; try again in a moment.")
        return self.case

    def _set_layer_data(self, mask: np.ndarray) -> None:
        self._restoring = True
        try:
            self.layer.data = mask
        finally:
            self._restoring = False
            self._history_seen = _history_signature(self.layer)

    # ----- tools ----------------------------------------------------------------------
    def _on_click(self, layer, event) -> None:
        if self.tools.delete_on_click and event.type == "mouse_press":
            self.delete_lesion_at(np.round(layer.world_to_data(event.position)).astype(int))

    def delete_lesion_at(self, voxel: Sequence[int]) -> int:
        """Erase the whole connected lesion under ``voxel`` (one undoable step); voxels erased."""
        found = connected_lesion(np.asarray(self.layer.data), voxel)
        if found is None:
            return 0
        self.layer.data_setitem(found, 0)
        return len(found[0])

    def _note_slice(self, z: int) -> None:
        if not self.edited_slices or self.edited_slices[-1] != z:
            self.edited_slices = [*self.edited_slices[-1:], z]

    def interpolate(self) -> str:
        """Fill the slices between the last two edited slices (one undoable step); says what it did."""
        if len(self.edited_slices) < 2:
            return "Edit two slices (a few slices apart) first, then fill between them."
        first, last = self.edited_slices
        data = np.asarray(self.layer.data)
        filled = interpolate_slices(data, first, last)
        parts = [np.nonzero(region & (data[z] == 0)) for z, region in filled.items()]
        zs = [np.full(len(y), z) for z, (y, _x) in zip(filled, parts, strict=True)]
        if sum(len(z) for z in zs):
            self.layer.data_setitem(
                (np.concatenate(zs), np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), 1
            )
        return f"Filled slices {min(first, last) + 1} to {max(first, last) - 1}."


def _history_signature(layer) -> tuple[int, int]:
    # Private napari state, read only: napari emits no event for undo / redo (0.9).
    return len(getattr(layer, "_undo_history", ())), len(getattr(layer, "_redo_history", ()))


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


def _sentence(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, UserFacingError) else f"{type(exc).__name__}: {exc}."
    return text if text.endswith((".", "!", "?")) else text + "."


def clock_time(iso: str) -> str:
    """hh:mm:ss of an ISO 8601 time stamp, as the status lines show it."""
    return iso[11:19] if len(iso) >= 19 else iso
