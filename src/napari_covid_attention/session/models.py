"""Which model the viewer diagnoses with: the registry as the GUI sees it, kept fresh.

The bundle picker, diagnosis and fine-tuning all read this one object, so a promotion or
rollback (from the GUI or, after :meth:`ModelChoice.refresh`, from the CLI) changes the
model every part of the viewer uses. Loaded bundles are cached by folder.
"""

from __future__ import annotations

from pathlib import Path
from threading import Lock

from psygnal import Signal

from napari_covid_attention.models.registry import (
    DEMO_BUNDLE,
    BundleInfo,
    bundle_info,
    current_bundle,
    list_bundles,
)


class ModelChoice:
    """The bundles on offer, the chosen one, and a cache of loaded bundles."""

    changed = Signal()  # the list or the choice changed

    def __init__(self, family: str = DEMO_BUNDLE) -> None:
        self.family = family  # the bundle name whose current version is diagnosed and fine-tuned
        self.bundles: list[BundleInfo] = []
        self.chosen: Path | None = None
        self._follow_current = True  # until the user picks a version, use the family's current one
        self._extra: list[Path] = []  # folders added with "Add…"
        self._loaded: dict[Path, object] = {}
        self._lock = Lock()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the registry: new versions appear, the current version is chosen again."""
        infos = list_bundles()
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
            self.chosen = current_bundle(self.family) or (infos[0].path if infos else None)
        self.changed.emit()

    def choose(self, path: str | Path) -> BundleInfo:
        """Pick a bundle folder (added to the list if new); raises BundleError if unreadable."""
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

        folder = path or self.chosen
        if folder is None:
            raise UserFacingError("No model bundle is available; add one with Add….")
        folder = Path(folder)
        with self._lock:
            if folder not in self._loaded:
                self._loaded[folder] = load_bundle(folder)
            return self._loaded[folder]
