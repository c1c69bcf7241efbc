"""Finding scans and masks in a dataset folder by their file names.

The layouts in :mod:`.layouts` say where a dataset keeps its scans; these helpers do the
looking: NIfTI names and stems, the first of several folder names that exists, the scans
and masks of a folder of the user's own files, and file-name-safe case names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from napari_covid_attention.io.nifti import is_nifti_path

INFECTION_SUFFIXES = ("_mask", "_seg", "_infection")
LUNG_SUFFIXES = ("_lung", "_lungs", "_lung_mask")
INFECTION_FOLDERS = ("masks", "infections", "infection_masks")
LUNG_FOLDERS = ("lungs", "lung_masks")
_DICOM_PROBES = 5  # files looked at per folder to decide whether it holds a DICOM series


def folder_items(source: Path) -> list[Path]:
    """NIfTI scans (not masks) and folders holding DICOM files, in a stable order."""
    from napari_covid_attention.io.dicom import is_dicom_file

    mask_folders = {*INFECTION_FOLDERS, *LUNG_FOLDERS}
    items = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in mask_folders)
        folder = Path(root)
        names = sorted(f for f in files if not f.startswith("."))
        items += [folder / n for n in names if is_nifti_path(n) and not _is_mask_name(n)]
        others = [n for n in names if not is_nifti_path(n)]
        if any(is_dicom_file(folder / n) for n in others[:_DICOM_PROBES]):
            items.append(folder)
    return items


def match_mask(
    item: Path, stem: str, source: Path, suffixes: Iterable[str], folders: Iterable[str]
) -> Path | None:
    """The first mask named after ``stem`` beside ``item`` or in a mask folder near it."""
    with_suffix = [stem + s for s in suffixes]
    places = [(item.parent, with_suffix)]
    for folder in folders:
        places.append((item.parent / folder, [stem, *with_suffix]))
        if item.parent != source:
            places.append((item.parent.parent / folder, [stem, *with_suffix]))
    for place, stems in places:
        if inside(place, source):
            for name in stems:
                found = nifti_named(place, name)
                if found is not None:
                    return found
    return None


def _is_mask_name(name: str) -> bool:
    return nifti_stem(Path(name)).endswith((*INFECTION_SUFFIXES, *LUNG_SUFFIXES))


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder`` (hidden ones left out), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and is_nifti_path(p) and not p.name.startswith(".")
    )


def nifti_named(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists first; else None."""
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def nifti_stem(path: Path) -> str:
    """The file name without its ``.nii.gz`` or ``.nii`` ending."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def first_dir(parent: Path, names: Iterable[str]) -> Path | None:
    """The first of ``parent/name`` that is a folder; None if none is."""
    return next((parent / n for n in names if (parent / n).is_dir()), None)


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both already resolved)."""
    return path == folder or folder in path.parents


def hidden(path: Path, source: Path) -> bool:
    """Whether any part of ``path`` below ``source`` starts with a dot."""
    return any(part.startswith(".") for part in path.relative_to(source).parts)


def safe_name(text: str) -> str:
    """A file-name-safe case name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def unique_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``… if taken; the result is added to ``taken``."""
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate
