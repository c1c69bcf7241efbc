"""Finding the series in a folder, a file's folder or a DICOMDIR, and picking one.

Every DICOM file found is read once (header only) and split into series by
SeriesInstanceUID, orientation and image size, since one SeriesInstanceUID may hold
scouts or reformats of another size or plane. Files whose anonymiser removed the
SeriesInstanceUID are grouped, as 3D Slicer and SimpleITK do, by what else identifies a
series: StudyInstanceUID, FrameOfReferenceUID, SeriesNumber, orientation, image size
and pixel spacing. (Not by AcquisitionNumber: step-and-shoot scanners number every
rotation of one series, and :mod:`.stack` warns when acquisitions overlap.) Series are
listed CT images first, largest first, each with a stable key that identifies it without
identifying the patient (a hash, not the UID) and a technical description. Files that
are not DICOM, and pipes, sockets and devices, are skipped silently; damaged DICOM files
and files that cannot be read (permission denied) are counted so the user can be told.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from napari_covid_attention.io.dicom.headers import (
    CannotRead,
    NotDicom,
    RawHeader,
    Unreadable,
    is_dicomdir,
    read_file,
)
from napari_covid_attention.io.dicom.messages import short_message
from napari_covid_attention.io.dicom.refusals import kind_refusal
from napari_covid_attention.io.dicom.slices import FileHeader, Slice, parse_header
from napari_covid_attention.io.dicom.stack import slice_normal
from napari_covid_attention.io.files import open_regular, reason_unreadable
from napari_covid_attention.io.volume import CTLoadError

# A folder scan stops here instead of crawling a whole disk.
_MAX_FILES = 100_000


@dataclass
class SeriesInfo:
    """One series found by :func:`list_series`; pass it to :func:`load_series` to load it.

    ``series_key`` is a stable, non-identifying key (a hash of the SeriesInstanceUID,
    orientation and image size) usable as ``load_ct(path, series=key)``. ``description``
    is technical only: no SeriesDescription, which may hold identifiers.
    """

    series_key: str
    modality: str
    n_images: int
    rows: int
    columns: int
    files: list[Path]
    is_ct_image: bool
    description: str
    orientation: str
    transfer_syntax: str
    _slices: list[Slice] = field(default_factory=list, repr=False, compare=False)
    _has_uid: bool = field(default=True, repr=False, compare=False)


@dataclass
class Scan:
    """Headers of a folder, file or DICOMDIR: the series, plus files that were skipped."""

    series: list[SeriesInfo]
    unreadable: list[Path]  # damaged DICOM files
    name: str  # how to call the source in messages
    cannot_read: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)


# ------------------------------------------------------------------- finding files


def _iter_files(
    folder: Path, recursive: bool, cannot_read: list[tuple[Path, str]] | None = None
) -> Iterator[Path]:
    """Entries under ``folder`` that are not folders, in a stable order, not descending
    into linked folders. Subfolders that cannot be listed go to ``cannot_read``."""
    if not recursive:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        yield from (p for p in entries if p.is_file())
        return

    def failed(error: OSError) -> None:
        if cannot_read is not None and error.filename:
            cannot_read.append((Path(error.filename), reason_unreadable(error)))

    for root, dirs, files in os.walk(folder, onerror=failed):
        dirs.sort()
        for name in sorted(files):
            yield Path(root, name)


def _parse_files(
    paths: Iterable[Path], where: str, cannot_read: list[tuple[Path, str]]
) -> tuple[list[tuple[FileHeader, list[Slice]]], list[Path]]:
    """Parse every DICOM image header among ``paths``; DICOMDIRs and non-DICOM are skipped.

    Returns the parsed headers and the damaged files; files that cannot be read at all
    (permission denied) are added to ``cannot_read``.
    """
    parsed, unreadable = [], []
    for count, path in enumerate(paths):
        if count >= _MAX_FILES:
            raise CTLoadError(
                f"{where} holds more than {_MAX_FILES} files; "
                "open the folder of one study or series instead."
            )
        try:
            raw = read_file(path)
        except NotDicom:
            continue
        except CannotRead as exc:
            cannot_read.append((path, str(exc)))
            continue
        except Unreadable:
            unreadable.append(path)
            continue
        if not is_dicomdir(raw):
            parsed.append(parse_header(path, raw))
    return parsed, unreadable


def scan_folder(folder: Path) -> Scan:
    """The series of every DICOM file under ``folder`` (recursive)."""
    name = folder.name or str(folder)
    cannot_read: list[tuple[Path, str]] = []
    files = _iter_files(folder, recursive=True, cannot_read=cannot_read)
    parsed, unreadable = _parse_files(files, name, cannot_read)
    return Scan(_group(parsed), unreadable, name, cannot_read)


def scan_siblings(path: Path, header: FileHeader, slices: list[Slice]) -> Scan:
    """The series of ``path``'s folder (not recursive), reusing ``path``'s own header."""
    name = path.parent.name or str(path.parent)
    others = (p for p in _iter_files(path.parent, recursive=False) if p != path)
    cannot_read: list[tuple[Path, str]] = []
    parsed, unreadable = _parse_files(others, name, cannot_read)
    parsed.append((header, slices))
    return Scan(_group(parsed), unreadable, name, cannot_read)


def series_containing(path: Path, header: FileHeader, slices: list[Slice]) -> SeriesInfo:
    """The series of ``path``'s folder that ``path``'s own slices belong to."""
    scan = scan_siblings(path, header, slices)
    return next(info for info in scan.series if any(s.file is header for s in info._slices))


def scan_dicomdir(path: Path, raw: RawHeader) -> Scan:
    """The series of the files a DICOMDIR refers to (its directory records)."""
    root = path.parent.resolve()
    try:
        if raw.dataset is not None:
            ds = raw.dataset
        else:
            with open_regular(path, capped=True) as handle:
                ds = pydicom.dcmread(handle, force=True)
        records = list(ds.get("DirectoryRecordSequence") or [])
    except Exception as exc:  # damaged records: pydicom raises many types
        raise CTLoadError(f"{path.name} is a damaged DICOMDIR ({short_message(exc)}).") from None
    files: dict[Path, None] = {}
    for record in records:
        file_id = record.get("ReferencedFileID")
        if file_id:
            target = _existing(root, [file_id] if isinstance(file_id, str) else list(file_id))
            if target is not None:
                files[target] = None
    if not files:
        raise CTLoadError(f"{path.name} is a DICOMDIR that refers to no image files present.")
    cannot_read: list[tuple[Path, str]] = []
    parsed, unreadable = _parse_files(files, path.name, cannot_read)
    return Scan(_group(parsed), unreadable, path.name, cannot_read)


def _existing(root: Path, parts: list[str]) -> Path | None:
    """The file a DICOMDIR file ID names (as written, or lower case), inside ``root``."""
    for candidate in (root.joinpath(*parts), root.joinpath(*(p.lower() for p in parts))):
        resolved = candidate.resolve()
        if resolved.is_file() and resolved.is_relative_to(root):
            return resolved
    return None


# ---------------------------------------------------------------------- grouping


def _group(parsed: list[tuple[FileHeader, list[Slice]]]) -> list[SeriesInfo]:
    """Series by SeriesInstanceUID (or, without one, by study, frame of reference, series
    number and pixel spacing), orientation and image size; CT first, largest first."""
    groups: dict[tuple, list[Slice]] = defaultdict(list)
    for header, slices in parsed:
        for piece in slices:
            orientation = _orientation_key(piece.orientation)
            if header.series_uid:
                identity: str | tuple = header.series_uid
            else:
                identity = ("no-uid", *header.series_identity, _spacing_key(piece.spacing))
            groups[(identity, orientation, header.rows, header.columns)].append(piece)
    series = [_series_info(key, slices) for key, slices in groups.items()]
    series.sort(key=lambda s: (not s.is_ct_image, -s.n_images, s.series_key))
    return series


def _spacing_key(spacing: tuple[float, float] | None) -> str:
    return "" if spacing is None else "\\".join(f"{v:.4g}" for v in spacing)


def _orientation_key(orientation: np.ndarray | None) -> tuple[float, ...]:
    if orientation is None:
        return ()
    return tuple(float(v) + 0.0 for v in np.round(orientation, 3))


def _series_info(key: tuple, slices: list[Slice]) -> SeriesInfo:
    uid, orientation, rows, columns = key
    first = slices[0].file
    digest = hashlib.sha256(f"{uid}|{orientation}|{rows}x{columns}".encode()).hexdigest()[:12]
    files = sorted({s.file.path for s in slices})
    is_ct = kind_refusal(first) is None
    plane = _plane(slices[0].orientation)
    modality = first.modality or "unknown"
    if first.pixel_keyword:
        noun = "slice" if len(slices) == 1 else "slices"
        description = f"{modality} {len(slices)} {noun} {rows}x{columns}"
        description += f" {plane}" if plane else ""
    else:
        noun = "object" if len(files) == 1 else "objects"
        description = f"{modality} {len(files)} {noun}, no image"
    return SeriesInfo(
        series_key=digest,
        modality=modality,
        n_images=len(slices) if first.pixel_keyword else 0,
        rows=rows,
        columns=columns,
        files=files,
        is_ct_image=is_ct,
        description=description,
        orientation=plane,
        transfer_syntax=first.transfer_syntax.name,
        _slices=slices,
        _has_uid=isinstance(uid, str),
    )


def _plane(orientation: np.ndarray | None) -> str:
    """axial / coronal / sagittal / oblique, from the slice normal."""
    normal = slice_normal(orientation)
    if normal is None:
        return ""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def choose_series(scan: Scan, key: str | None) -> SeriesInfo:
    """The series named by ``key``, else the largest CT image series."""
    if key is not None:
        for info in scan.series:
            if info.series_key == key:
                return info
        listing = "; ".join(f"{s.series_key} ({s.description})" for s in scan.series[:8])
        more = f"; and {len(scan.series) - 8} more" if len(scan.series) > 8 else ""
        available = f"available: {listing}{more}" if listing else "it holds no DICOM series"
        raise CTLoadError(f"{scan.name} has no series '{key}'; {available}.")
    candidates = [s for s in scan.series if s.is_ct_image]
    if candidates:
        return candidates[0]
    if not scan.series:
        if scan.cannot_read:
            raise CTLoadError(_nothing_readable(scan))
        damaged = f" ({len(scan.unreadable)} damaged DICOM files)" if scan.unreadable else ""
        raise CTLoadError(f"{scan.name} contains no DICOM images{damaged}.")
    if len(scan.series) == 1:
        info = scan.series[0]
        reason = kind_refusal(info._slices[0].file)
        raise CTLoadError(f"{scan.name} holds only one series, which {reason}.")
    counts = Counter(s.modality for s in scan.series)
    found = ", ".join(f"{n} {modality}" for modality, n in sorted(counts.items()))
    raise CTLoadError(f"{scan.name} contains no CT image series (found series: {found}).")


def _cannot_read(scan: Scan) -> tuple[str, str, bool]:
    """(subject, reason, several) for the files of a scan that cannot be read at all."""
    reasons = sorted({reason for _, reason in scan.cannot_read})
    several = len(scan.cannot_read) > 1
    if several:
        subject = f"{len(scan.cannot_read)} files in {scan.name}"
    else:
        subject = f"{scan.cannot_read[0][0].name} in {scan.name}"
    return subject, " or ".join(reasons), several


def cannot_read_note(scan: Scan) -> list[str]:
    """A warning sentence on the files of a scan that could not be read, if any."""
    if not scan.cannot_read:
        return []
    subject, reason, several = _cannot_read(scan)
    return [f"{subject} cannot be read: {reason}; {'they were' if several else 'it was'} skipped."]


def _nothing_readable(scan: Scan) -> str:
    subject, reason, _ = _cannot_read(scan)
    return f"{subject} cannot be read: {reason}, and {scan.name} holds no other DICOM images."
