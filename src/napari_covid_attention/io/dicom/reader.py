"""The reader's entry points: from a path to a list of series or a CT volume.

Each entry point dispatches on what the path is (a folder, a DICOMDIR, one file),
finds the series (:mod:`.series`), refuses what is not a usable CT series
(:mod:`.refusals`), stacks the slices (:mod:`.stack`), reads and rescales the pixels
(:mod:`.pixels`) and builds the :class:`CTVolume`, all while pydicom's own output is
muted (:mod:`.messages`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from napari_covid_attention.io import geometry
from napari_covid_attention.io.dicom.headers import is_dicomdir, read_single
from napari_covid_attention.io.dicom.messages import quiet_pydicom
from napari_covid_attention.io.dicom.pixels import read_pixels, to_hu
from napari_covid_attention.io.dicom.refusals import file_refusal, series_refusal
from napari_covid_attention.io.dicom.series import (
    Scan,
    SeriesInfo,
    cannot_read_note,
    choose_series,
    scan_dicomdir,
    scan_folder,
    scan_siblings,
    series_containing,
)
from napari_covid_attention.io.dicom.slices import FileHeader, parse_header
from napari_covid_attention.io.dicom.stack import stack_slices
from napari_covid_attention.io.files import check_input_file, check_input_folder
from napari_covid_attention.io.volume import CTLoadError, CTVolume, hu_array


def list_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """The series under a folder (recursive), of one file (its series) or of a DICOMDIR.

    CT image series come first, largest first. Non-DICOM files are skipped silently.
    """
    path = Path(path)
    _check_input(path)
    with quiet_pydicom():
        if path.is_dir():
            return scan_folder(path).series
        raw = read_single(path)
        if is_dicomdir(raw):
            return scan_dicomdir(path, raw).series
        header, slices = parse_header(path, raw)
        return [series_containing(path, header, slices)]


def load_dicom(path: str | os.PathLike, series: str | None = None) -> CTVolume:
    """Load a CT volume from a DICOM folder, one file of a series, or a DICOMDIR.

    A folder or DICOMDIR gives its largest CT image series unless ``series`` names
    another by its ``series_key``; a file gives the series it belongs to in its folder.

    Raises:
        CTLoadError: with one sentence saying why the input cannot be used.
    """
    path = Path(path)
    _check_input(path)
    with quiet_pydicom() as caught:
        if path.is_dir():
            return _load_from_scan(scan_folder(path), series, path, caught)
        raw = read_single(path)
        if is_dicomdir(raw):
            return _load_from_scan(scan_dicomdir(path, raw), series, path, caught)
        header, slices = parse_header(path, raw)
        if series is not None:
            scan = scan_siblings(path, header, slices)
            return _load_from_scan(scan, series, path.parent, caught)
        reason = file_refusal(header)
        if reason:
            raise CTLoadError(f"{path.name} {reason}.")
        info = series_containing(path, header, slices)
        return _load(info, path.name, source=path, single_file=True, caught=caught)


def load_series(info: SeriesInfo) -> CTVolume:
    """Load a series found by :func:`list_series` without reading its headers again."""
    with quiet_pydicom() as caught:
        source = Path(os.path.commonpath([str(p.parent) for p in info.files]))
        subject = f"The series {info.series_key}"
        return _load(info, subject, source=source, single_file=False, caught=caught)


def _check_input(path: Path) -> None:
    """Refuse a missing path, a pipe, socket or device, or one that cannot be read."""
    if not path.exists():
        raise CTLoadError(f"{path} does not exist.")
    if path.is_dir():
        check_input_folder(path)
    else:
        check_input_file(path)


def _load_from_scan(
    scan: Scan, key: str | None, source: Path, caught: list[warnings.WarningMessage]
) -> CTVolume:
    info = choose_series(scan, key)
    subject = f"The series {info.series_key} in {scan.name}"
    notes = []
    if scan.unreadable:
        count = len(scan.unreadable)
        notes.append(
            f"{count} damaged DICOM file{'s were' if count > 1 else ' was'} skipped in {scan.name}."
        )
    notes += cannot_read_note(scan)
    return _load(info, subject, source=source, single_file=False, caught=caught, notes=notes)


def _load(
    info: SeriesInfo,
    subject: str,
    *,
    source: Path,
    single_file: bool,
    caught: list[warnings.WarningMessage],
    notes: list[str] | None = None,
) -> CTVolume:
    """Check, stack, read and rescale one series into a canonical CTVolume."""
    reason = series_refusal(info)
    if reason:
        raise CTLoadError(f"{subject} {reason}.")
    stack = stack_slices(info._slices, subject, single_file, has_uid=info._has_uid)
    problem = geometry.affine_problem(stack.affine)
    if problem:
        raise CTLoadError(f"{subject} has no valid patient geometry: {problem}.")
    raw, decoder_notes = read_pixels(stack, caught)
    hu = hu_array(to_hu(raw, stack.slices))
    del raw  # on the float path the stored values are a separate array: free them now
    canon, affine, source_ornt = geometry.to_canonical(hu, stack.affine)
    first = stack.slices[0].file
    return CTVolume(
        hu=canon,
        affine=affine,
        metadata=_metadata(first, info, len(stack.slices)),
        source_path=str(source),
        source_ornt=source_ornt,
        warnings=tuple(stack.warnings + decoder_notes + (notes or [])),
    )


def _metadata(first: FileHeader, info: SeriesInfo, n_slices: int) -> dict[str, str]:
    """The volume's de-identified metadata: the first file's technical fields and format."""
    meta = {"format": "DICOM", **first.technical}
    meta.update(
        {
            "TransferSyntax": first.transfer_syntax.name,
            "Rows": str(first.rows),
            "Columns": str(first.columns),
            "NumberOfSlices": str(n_slices),
            "series_key": info.series_key,
        }
    )
    return meta
