"""torch, MONAI and the plugin modules built on them, imported once, by one thread at a time.

Docks open without them (seconds of import), so the first use happens in a worker. Two
threads importing MONAI at the same time fail ("cannot import name ... from partially
initialized module 'monai.apps'"), so every first use goes through this lock. The same
failure hits a package both torch's import and the main thread need (matplotlib, for the
fine-tune plot): :func:`import_shared_modules` imports those on the main thread first.
"""

from __future__ import annotations

import importlib
import threading

_LOCK = threading.Lock()
HEAVY_MODULES = (
    "napari_covid_attention.models.registry",
    "napari_covid_attention.models.device",
    "napari_covid_attention.diagnosis",
    "napari_covid_attention.training.finetune",
)
# Imported by torch / MONAI *and* by the docks; on the main thread before any worker starts.
SHARED_MODULES = ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "scipy.ndimage", "skimage.segmentation")
_done = False


def import_shared_modules() -> None:
    """(main thread) Import what the heavy imports share with the GUI (~0.4 s, once)."""
    for name in SHARED_MODULES:
        importlib.import_module(name)


def import_heavy_modules() -> None:
    """Import everything that needs torch; returns at once once it has been done."""
    global _done
    if _done:
        return
    with _LOCK:
        for name in HEAVY_MODULES:
            importlib.import_module(name)
        _done = True
