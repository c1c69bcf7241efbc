"""Versioned infection masks: the model's original, every annotator's save, the final mask.

Annotators correct predicted masks in the viewer; every correction is saved as a new,
never-modified version (atomic files + a SQLite index), and fine-tuning trains on the final
masks and confirmed labels of reviewed cases. Qt-free: the widgets call this core.
"""

from napari_covid_attention.annotations.files import AnnotationStoreError, DamagedMaskError
from napari_covid_attention.annotations.index import Case, Version
from napari_covid_attention.annotations.store import (
    AnnotationStore,
    default_root,
    foreground_dice,
)

__all__ = [
    "AnnotationStore",
    "AnnotationStoreError",
    "Case",
    "DamagedMaskError",
    "Version",
    "default_root",
    "foreground_dice",
]
