"""Which model the viewer diagnoses with: the registry as the GUI sees it, kept fresh.

The bundle picker, diagnosis and fine-tuning all read this one object, so a promotion or
rollback (from the GUI or, after :meth:`ModelChoice.refresh`, from the CLI) changes the
model every part of the viewer uses. Loaded bundles are cached by folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING

from psygnal import Signal

from napari_covid_attention.session.imports import import_heavy_modules

if TYPE_CHECKING:
    from napari_covid_attention.models.registry import BundleInfo
    from napari_covid_attention.session.scheduler import Scheduler

# The registry reads bundle.json through the bundle checks, which import torch (seconds):
# the first refresh runs in the background so a dock opens at once.
DEMO_BUNDLE = "demo"
log = logging.getLogger(__name__)


class ModelChoice:
    """The bundles on offer, the chosen one, and a cache of loaded bundles."""

    changed = Signal()  # the list or the choice changed

    def __init__(self, family: str = DEMO_BUNDLE, scheduler: Scheduler | None = None) -> None:
        self.family = family  # the bundle name whose current version is diagnosed and fine-tuned
        self.bundles: list[BundleInfo] = []
        self.chosen: Path | None = None
        self._follow_current = True  # until the user picks a version, use the family's current one
        self._extra: list[Path] = []  # folders added with "Add…"
        self._loaded: dict[Path, object] = {}
        self._lock = Lock()
        self.ready = False  # the registry has been read once
        if scheduler is None:
            self.refresh()
        else:
            scheduler.background(lambda: _read_registry(self.family), self._apply, self._unreadable)

    def refresh(self) -> None:
        """Re-read the registry: new versions appear, the current version is chosen again."""
        self._apply(_read_registry(self.family))

    def _unreadable(self, exc: BaseException) -> None:
        """The registry could not be read: no bundle on offer (the picker says so)."""
        log.error("reading the model registry failed", exc_info=exc)
        self.bundles, self.chosen, self.ready = [], None, True
        self.changed.emit()

    def _apply(self, found: tuple[list, Path | None]) -> None:
        import_heavy_modules()
        from napari_covid_attention.models.registry import bundle_info

        infos, current = found
        infos = list(infos)
        known = {info.path for info in infos}
        for folder in self._extra:
            if folder not in known:
                try:
                    infos.append(bundle_info(folder))
                except Exception:  # noqa: BLE001 - a removed or damaged folder simply drops out
                    continue
        self.bundles = infos
        if self._follow_current or self.chosen not in {info.path for info in infos}:
            self._follow_current = True
            self.chosen = current or (infos[0].path if infos else None)
        self.ready = True
        self.changed.emit()

    def choose(self, path: str | Path) -> BundleInfo:
        """Pick a bundle folder (added to the list if new); raises BundleError if unreadable."""
        import_heavy_modules()
        from napari_covid_attention.models.registry import bundle_info, current_bundle

        if not self.ready:
            self.refresh()
        info = bundle_info(Path(path))
        if info.path not in {b.path for b in self.bundles}:
            self._extra.append(info.path)
            self.bundles.append(info)
        self.chosen = info.path
        current = current_bundle(self.family)
        self._follow_current = current is not None and info.path == current
        self.changed.emit()
        return info

    @property
    def chosen_info(self) -> BundleInfo | None:
        return next((info for info in self.bundles if info.path == self.chosen), None)

    def load(self, path: Path | None = None):
        """The loaded bundle (cached; thread-safe, called from workers)."""
        from napari_covid_attention.errors import UserFacingError
        from napari_covid_attention.models.bundle import (
            load_bundle,  # torch: only once a model is needed
        )

        import_heavy_modules()
        if not self.ready:
            self.refresh()
        folder = path or self.chosen
        if folder is None:
            raise UserFacingError("No model bundle is available; add one with Add….")
        folder = Path(folder)
        with self._lock:
            if folder not in self._loaded:
                self._loaded[folder] = load_bundle(folder)
            return self._loaded[folder]


def _read_registry(family: str = DEMO_BUNDLE) -> tuple[list[BundleInfo], Path | None]:
    import_heavy_modules()
    from napari_covid_attention.models.registry import current_bundle, list_bundles

    return list_bundles(), current_bundle(family)
