"""``load_ct``: one entry point for every supported way of pointing at a scan."""

from __future__ import annotations

import os
from pathlib import Path

from napari_covid_attention.io.files import check_input_file, check_input_folder
from napari_covid_attention.io.nifti import is_nifti_path, load_nifti
from napari_covid_attention.io.volume import CTLoadError, CTVolume


def load_ct(path: str | os.PathLike, series: str | None = None) -> CTVolume:
    """Load a chest CT from a NIfTI file, a DICOM folder, one DICOM file or a DICOMDIR.

    Args:
        path: file or folder.
        series: for DICOM folders holding several series, the ``series_key`` (see
            :func:`napari_covid_attention.io.dicom.list_series`) of the one to load;
            by default the largest CT series is loaded.

    Raises:
        CTLoadError: with one sentence saying why the input cannot be used.
    """
    path = Path(path)
    if not path.exists():
        raise CTLoadError(f"{path} does not exist.")
    if path.is_dir():
        check_input_folder(path)
    else:  # pipes, sockets and devices are refused here: opening a pipe would block
        check_input_file(path)
    if not path.is_dir() and is_nifti_path(path):
        return load_nifti(path)

    from napari_covid_attention.io import dicom  # pydicom is imported only for DICOM input

    if path.is_dir():
        return dicom.load_dicom(path, series=series)
    if dicom.is_dicom_file(path):
        return dicom.load_dicom(path, series=series)
    raise CTLoadError(
        f"{path.name} is neither a NIfTI file (.nii, .nii.gz) nor a DICOM file or folder."
    )
