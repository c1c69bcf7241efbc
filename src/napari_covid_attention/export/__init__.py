"""DICOM outputs of a diagnosis: DICOM-SEG of the masks, TID 1500 SR of the numbers, a PNG/PDF page.

Modules, each with one job: :mod:`.source` (the source series in volume order, refusals),
:mod:`.seg` / :mod:`.seg_read` (write / read the SEG), :mod:`.sr` / :mod:`.sr_read`
(write / read the SR), :mod:`.report_png` (the human-readable page), :mod:`.outputs`
(:func:`dicom_outputs`, all of them at once), :mod:`.uids` (deterministic UIDs),
:mod:`.codes` (coded concepts), :mod:`.sniff` (is a file a SEG, without highdicom).
Nothing here imports napari or Qt. Names are imported lazily, so that the reader's
"is this a SEG?" check does not load highdicom.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportError": "source",
    "read_source_datasets": "source",
    "segmentation_dataset": "seg",
    "read_segmentation": "seg_read",
    "corrected": "sr",
    "diagnosis_numbers": "sr",
    "measurement_report": "sr",
    "read_measurement_report": "sr_read",
    "write_report": "report_png",
    "dicom_outputs": "outputs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
