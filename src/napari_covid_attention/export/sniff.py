"""Is a file a DICOM-SEG? Judged from its header alone, without importing highdicom."""

from __future__ import annotations

import os
from pathlib import Path

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def is_segmentation_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file whose SOP class is Segmentation Storage."""
    from napari_covid_attention.io.dicom.headers import (
        TAG,
        NotDicom,
        Unreadable,
        read_file,
        stripped_text,
    )
    from napari_covid_attention.io.dicom.messages import quiet_pydicom

    try:
        with quiet_pydicom():
            raw = read_file(Path(path))
    except (NotDicom, Unreadable):
        return False
    value = raw.values.get(TAG["SOPClassUID"])
    sop_class = stripped_text(value) if value is not None else raw.media_sop_class
    return sop_class == SEGMENTATION_STORAGE
