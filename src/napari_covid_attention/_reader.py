"""npe2 reader: chest CT from NIfTI, a DICOM file, a DICOMDIR or a DICOM folder.

A DICOM-SEG file opens as Labels layers (one per segment group) on its own geometry.

A NIfTI mask (one the plugin's writer saved, marked with the NIfTI intent "label", or
any integer volume of a few small non-negative values) opens as a Labels layer on its
file's geometry instead of as a CT.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from napari_covid_attention._layer_data import (
    LayerData,
    ct_layer_data,
    labels_layer_data,
    looks_like_labels,
    mask_file_layer_data,
)
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
    if _is_segmentation(path):
        return read_dicom_seg(path)
    header = _nifti_header(path) if is_nifti_path(path) else None
    try:
        volume = load_ct(path)
    except CTLoadError as exc:
        _notify_error(str(exc))
        return _NOTHING
    for warning in volume.warnings:
        _notify_warning(warning)
    name = _display_name(Path(path))
    if header is not None and looks_like_labels(volume.hu, header.get_data_dtype(), marked=_marked_as_labels(header)):
        return [mask_file_layer_data(volume, name)]
    return [ct_layer_data(volume, name)]


def _is_segmentation(path: str | os.PathLike) -> bool:
    p = Path(path)
    if is_nifti_path(p) or p.is_dir():
        return False
    from napari_covid_attention.export.sniff import is_segmentation_file

    return is_segmentation_file(p)


def read_dicom_seg(path: str | os.PathLike) -> list[LayerData] | list:
    """A DICOM-SEG as Labels on its own geometry: lungs 1 right / 2 left, infection 1, other segments 1."""
    from napari_covid_attention.export.seg_read import read_segmentation

    try:
        masks = read_segmentation(path)
    except CTLoadError as exc:
        _notify_error(str(exc))
        return _NOTHING
    name = _display_name(Path(path))
    meta = {"source_path": str(path), "warnings": []}
    return [
        labels_layer_data(mask, affine, f"{group} · {name}", "mask", extra_meta={**meta, "segment_group": group})
        for group, (mask, affine) in masks.items()
    ]


def _nifti_header(path: str | os.PathLike):
    """The NIfTI header alone (nibabel reads the data lazily), or None if unreadable:
    the loader then says what is wrong with the file."""
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception:  # nibabel raises many types for damaged headers
        return None
    return header if isinstance(header, nib.Nifti1Header) else None  # Nifti2Header is a subclass


def _marked_as_labels(header) -> bool:
    try:
        return header.get_intent()[0] == "label"
    except Exception:  # an intent code nibabel does not know
        return False


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
