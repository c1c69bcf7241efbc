"""Storing written DICOM files on a PACS, shared by the CLI's ``--push`` and the viewer's "Send to PACS".

The files are read back from disk and stored as they are, so what was written (and could
be checked) locally is exactly what the PACS receives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_covid_attention.pacs.client import PacsClient, StoreResult


def store_files(client: PacsClient, paths: Sequence[str | os.PathLike], *, study_uid: str | None = None) -> StoreResult:
    """Store DICOM files (e.g. a SEG and its SR) in one STOW-RS request into ``study_uid``.

    Raises:
        PacsError: (one sentence) the server refused or could not be reached.
        OSError: a file could not be read back.
    """
    import pydicom

    datasets = [pydicom.dcmread(os.fspath(path)) for path in paths]
    return client.store(datasets, study_uid=study_uid)
