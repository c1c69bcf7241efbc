"""npe2 reader: chest CT from NIfTI, a DICOM file, a DICOMDIR or a DICOM folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from napari_covid_attention._layer_data import LayerData, ct_layer_data
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.nifti import is_nifti_path
from napari_covid_attention.io.volume import CTLoadError

# napari's way of saying "read nothing, and that is not an error" (an error was shown).
_NOTHING: list = [(None,)]
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list] | None:
    """Return the reader when ``path`` looks like a CT this plugin can open."""
    if isinstance(path, list):
        if len(path) != 1:
            return None  # a scan is one file or one folder
        path = path[0]
    p = Path(path)
    if p.is_dir():
        return read_ct if _folder_has_dicom(p) else None
    name = p.name.lower()
    if is_nifti_path(p) or name.endswith(_DICOM_SUFFIXES) or name == "dicomdir":
        return read_ct
    return None


def read_ct(path: str | list[str]) -> list[LayerData] | list:
    """Load the scan; problems are shown as one-sentence notifications, not tracebacks."""
    if isinstance(path, list):
        path = path[0]
    try:
        volume = load_ct(path)
    except CTLoadError as exc:
        _notify_error(str(exc))
        return _NOTHING
    for warning in volume.warnings:
        _notify_warning(warning)
    return [ct_layer_data(volume, _display_name(Path(path)))]


def _display_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    if name.upper() == "DICOMDIR":
        return path.parent.name
    return name


def _folder_has_dicom(folder: Path, max_files: int = 200) -> bool:
    """Cheap check on a bounded number of files so huge folders do not stall the GUI."""
    from napari_covid_attention.io.dicom import is_dicom_file

    checked = 0
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if is_dicom_file(Path(root) / name):
                return True
            checked += 1
            if checked >= max_files:
                return False
    return False


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)
