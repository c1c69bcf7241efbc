"""DICOM CT reading: series discovery, one-sentence refusals, exact geometry, fast pixels.

Why a reader of its own rather than ``pydicom.dcmread(...).pixel_array`` per file:

* geometry must come from positions (never InstanceNumber or file names), with gantry
  tilt kept as shear and gaps, duplicates and uneven spacing reported to the user;
* every unusable input (MR, RT plans, colour screenshots, broken files...) must end in a
  :class:`CTLoadError` with one sentence, never a traceback;
* loading must be fast: each header is parsed once with the pixel data deferred, the
  output array is allocated once and every slice is read (uncompressed data straight
  from its file offset) or decoded into it by a thread pool, and the HU rescale is done
  in place with integer arithmetic whenever the slope and intercept allow it.

Arrays follow the (z, y, x) / LPS / canonical conventions of :mod:`.geometry`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from napari_covid_attention.io import geometry
from napari_covid_attention.io.volume import AIR_HU, CTLoadError, CTVolume, hu_array

# Elements up to this size are read with the header; larger ones (pixel data, vendor
# blobs) are skipped and, for pixel data, read later straight from their file offset.
_DEFER_BYTES = 4096
_PROBE_BYTES = 1024
_READ_BYTES = 16384  # one read covers the whole header of most files
_MAX_NESTING = 16
# A folder scan stops here instead of crawling a whole disk.
_MAX_FILES = 100_000
_WORKERS = max(2, min(8, os.cpu_count() or 2))
# Positions closer than this (mm) along the slice normal are the same slice.
_SAME_POSITION_MM = 0.01

_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_CT_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

# Objects without pixels: what to call them in "X is ..., not an image".
_NON_IMAGE_KINDS = {
    "SR": "a structured report",
    "RTPLAN": "an RT plan",
    "RTSTRUCT": "an RT structure set",
    "RTRECORD": "an RT treatment record",
    "KO": "a key object selection",
    "PR": "a presentation state",
    "DOC": "an encapsulated document",
    "REG": "a registration",
    "ECG": "a waveform (ECG)",
    "HD": "a waveform",
    "RESP": "a waveform",
    "AU": "an audio waveform",
    "PLAN": "a plan",
}
# Images of other modalities: "X is ..., not a CT scan".
_MODALITY_KINDS = {
    "MR": "an MR image",
    "PT": "a PET image",
    "NM": "a nuclear medicine image",
    "US": "an ultrasound image",
    "CR": "a computed radiography image",
    "DX": "a digital X-ray",
    "MG": "a mammogram",
    "XA": "an X-ray angiography image",
    "RF": "a fluoroscopy image",
    "IO": "an intra-oral X-ray",
    "PX": "a panoramic X-ray",
    "OT": "a secondary capture image",
    "SC": "a secondary capture image",
    "RTDOSE": "an RT dose grid",
    "RTIMAGE": "an RT portal image",
    "SEG": "a segmentation",
    "OCT": "an optical coherence tomography image",
    "OP": "an ophthalmic photograph",
    "XC": "a photograph",
    "ES": "an endoscopy image",
    "SM": "a slide microscopy image",
}
# Explicit VRs, and those with a 4-byte length field, for the no-preamble probe.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC "
    b"UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())

# Tags read from every header (raw, without pydicom's value conversion, for speed).
_TAG = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "Modality": 0x00080060,
    "Manufacturer": 0x00080070,
    "ManufacturerModelName": 0x00081090,
    "BodyPartExamined": 0x00180015,
    "SliceThickness": 0x00180050,
    "KVP": 0x00180060,
    "ConvolutionKernel": 0x00181210,
    "SeriesInstanceUID": 0x0020000E,
    "AcquisitionNumber": 0x00200012,
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "SamplesPerPixel": 0x00280002,
    "PhotometricInterpretation": 0x00280004,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "PixelSpacing": 0x00280030,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "PixelRepresentation": 0x00280103,
    "PixelPaddingValue": 0x00280120,
    "PixelPaddingRangeLimit": 0x00281011,
    "RescaleIntercept": 0x00281052,
    "RescaleSlope": 0x00281053,
}
_WANTED = frozenset(_TAG.values())
_PIXEL_KEYWORDS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
_DIRECTORY_RECORDS = 0x00041220
# Elements the fast walker leaves to pydicom: per-frame functional groups, DICOMDIR records.
_FALLBACK_TAGS = frozenset({0x52009230, 0x52009229, _DIRECTORY_RECORDS})
_UNDEFINED = 0xFFFFFFFF
_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_UINT32 = struct.Struct("<I")
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TECHNICAL_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "ConvolutionKernel",
    "KVP",
    "SliceThickness",
)


@dataclass(slots=True, eq=False)
class _RawHeader:
    """Undecoded values of the elements this reader needs, from either header parser."""

    values: dict[int, bytes]  # as stored in the file
    little_endian: bool
    transfer_syntax: UID
    pixel_keyword: str  # "" when the file has no pixel data
    pixel_offset: int | None
    pixel_length: int | None
    size: int
    media_sop_class: str
    dataset: Dataset | None = None  # only when pydicom parsed the file (sequences)
    truncated: bool = False  # the header itself ends early


@dataclass(slots=True, eq=False)
class _FileHeader:
    """What one file's header says, kept instead of the pydicom dataset (no identifiers)."""

    path: Path
    series_uid: str
    sop_uid: str
    modality: str
    sop_class: str
    transfer_syntax: UID
    instance_number: int
    rows: int
    columns: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    n_frames: int
    pixel_keyword: str  # "" when the file has no pixel data
    pixel_offset: int | None  # file offset of the pixel data value, None if unknown
    pixel_length: int | None  # None for undefined length (encapsulated)
    padding: tuple[int, int] | None  # stored-value range that means "outside the scan"
    problem: str | None  # why the file is damaged, as the end of a sentence
    header_complete: bool  # False: the file ends inside its header, so nothing is sure
    technical: dict[str, str]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one uncompressed frame (YBR_FULL_422 stores 2 samples per pixel)."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples
        return self.rows * self.columns * samples * self.bits_allocated // 8


@dataclass(slots=True, eq=False)
class _Slice:
    """One 2D image: a classic single-frame file or one frame of a multi-frame file."""

    file: _FileHeader
    frame: int
    position: np.ndarray | None  # ImagePositionPatient (3,)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    spacing: tuple[float, float] | None  # PixelSpacing (row spacing, column spacing)
    slope: float
    intercept: float
    acquisition: str


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
    _slices: list[_Slice] = field(default_factory=list, repr=False, compare=False)


class _NotDicom(Exception):
    """The file is not DICOM (skipped silently in folders)."""


class _Unreadable(Exception):
    """The file looks like DICOM but its header cannot be parsed."""


class _Fallback(Exception):
    """The fast header walker cannot handle this file; pydicom will."""


class _PastEnd(_Fallback):
    """An element runs past the end of the file."""


@dataclass
class _Scan:
    """Headers of a folder, file or DICOMDIR: the series, plus files that were skipped."""

    series: list[SeriesInfo]
    unreadable: list[Path]
    name: str  # how to call the source in messages


# --------------------------------------------------------------------------- public API


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file, judged from its first kilobyte only."""
    try:
        with open(path, "rb") as handle:
            return _looks_like_dicom(handle.read(_PROBE_BYTES))
    except OSError:
        return False


def list_series(path: str | os.PathLike) -> list[SeriesInfo]:
    """The series under a folder (recursive), of one file (its series) or of a DICOMDIR.

    CT image series come first, largest first. Non-DICOM files are skipped silently.
    """
    path = Path(path)
    if not path.exists():
        raise CTLoadError(f"{path} does not exist.")
    with _quiet_pydicom():
        if path.is_dir():
            return _scan_folder(path).series
        raw = _read_single(path)
        if _is_dicomdir(raw):
            return _scan_dicomdir(path, raw).series
        header, slices = _parse(path, raw)
        return [_series_containing(path, header, slices)]


def load_dicom(path: str | os.PathLike, series: str | None = None) -> CTVolume:
    """Load a CT volume from a DICOM folder, one file of a series, or a DICOMDIR.

    A folder or DICOMDIR gives its largest CT image series unless ``series`` names
    another by its ``series_key``; a file gives the series it belongs to in its folder.

    Raises:
        CTLoadError: with one sentence saying why the input cannot be used.
    """
    path = Path(path)
    if not path.exists():
        raise CTLoadError(f"{path} does not exist.")
    with _quiet_pydicom() as caught:
        if path.is_dir():
            return _load_from_scan(_scan_folder(path), series, path, caught)
        raw = _read_single(path)
        if _is_dicomdir(raw):
            return _load_from_scan(_scan_dicomdir(path, raw), series, path, caught)
        header, slices = _parse(path, raw)
        if series is not None:
            scan = _scan_siblings(path, header, slices)
            return _load_from_scan(scan, series, path.parent, caught)
        reason = _file_refusal(header)
        if reason:
            raise CTLoadError(f"{path.name} {reason}.")
        info = _series_containing(path, header, slices)
        return _load(info, path.name, source=path, single_file=True, caught=caught)


def load_series(info: SeriesInfo) -> CTVolume:
    """Load a series found by :func:`list_series` without reading its headers again."""
    with _quiet_pydicom() as caught:
        source = Path(os.path.commonpath([str(p.parent) for p in info.files]))
        subject = f"The series {info.series_key}"
        return _load(info, subject, source=source, single_file=False, caught=caught)


def _load_from_scan(
    scan: _Scan, key: str | None, source: Path, caught: list[warnings.WarningMessage]
) -> CTVolume:
    info = _choose(scan, key)
    subject = f"The series {info.series_key} in {scan.name}"
    notes = []
    if scan.unreadable:
        count = len(scan.unreadable)
        notes.append(
            f"{count} damaged DICOM file{'s were' if count > 1 else ' was'} skipped in {scan.name}."
        )
    return _load(info, subject, source=source, single_file=False, caught=caught, notes=notes)


# ------------------------------------------------------------------- discovery: files


def _looks_like_dicom(head: bytes) -> bool:
    """Preamble + b"DICM", or (files without preamble) well-formed leading elements."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return any(_plausible_elements(head, endian) for endian in "<>")


def _plausible_elements(head: bytes, endian: str) -> bool:
    """Whether ``head`` starts with data elements of group 0002 or 0008 in tag order.

    Checks up to three elements (explicit or implicit VR); a value running past
    ``head`` ends the check, since the elements seen so far were consistent.
    """
    if len(head) < 8:
        return False
    if struct.unpack_from(f"{endian}H", head)[0] not in (0x0002, 0x0008):
        return False
    pos, previous = 0, -1
    for _ in range(3):
        if pos + 12 > len(head):
            return True
        group, element = struct.unpack_from(f"{endian}HH", head, pos)
        tag = (group << 16) | element
        if tag <= previous or group % 2:
            return False
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length, size = struct.unpack_from(f"{endian}I", head, pos + 8)[0], 12
        elif vr in _VRS:
            length, size = struct.unpack_from(f"{endian}H", head, pos + 6)[0], 8
        else:
            length, size = struct.unpack_from(f"{endian}I", head, pos + 4)[0], 8
        if length == _UNDEFINED:
            return True
        pos, previous = pos + size + length, tag
    return True


def _read_file(path: Path) -> _RawHeader:
    """The header of one file, read once, with the pixel data left on disk.

    The common encodings (little endian with a meta header) are walked by
    :func:`_walk_header`; anything else goes through ``pydicom.dcmread``.
    """
    try:
        with open(path, "rb") as handle:
            window = _Window(handle, os.fstat(handle.fileno()).st_size)
            if not _looks_like_dicom(window.get(0, min(window.size, _PROBE_BYTES))):
                raise _NotDicom
            try:
                return _walk_header(window)
            except _Fallback:
                pass
            handle.seek(0)
            try:
                ds = pydicom.dcmread(handle, defer_size=_DEFER_BYTES, force=True)
            except Exception as exc:  # pydicom raises many types on damaged headers
                raise _Unreadable(_short(exc)) from exc
            return _from_dataset(ds, window.size)
    except OSError as exc:
        raise _Unreadable(exc.strerror or "it cannot be opened") from exc


def _read_single(path: Path) -> _RawHeader:
    """Header of a file the user pointed at, or a one-sentence refusal."""
    try:
        return _read_file(path)
    except _NotDicom:
        raise CTLoadError(f"{path.name} is not a DICOM file.") from None
    except _Unreadable as exc:
        raise CTLoadError(
            f"{path.name} is truncated or damaged: its DICOM header cannot be read ({exc})."
        ) from None


def _is_dicomdir(raw: _RawHeader) -> bool:
    return raw.media_sop_class == _MEDIA_STORAGE_DIRECTORY or (
        raw.dataset is not None and _DIRECTORY_RECORDS in raw.dataset
    )


def _iter_files(folder: Path, recursive: bool) -> Iterator[Path]:
    """Files under ``folder`` in a stable order, not descending into linked folders."""
    if not recursive:
        yield from sorted(p for p in folder.iterdir() if p.is_file())
        return
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root, name)


def _headers(
    paths: Iterable[Path], where: str
) -> tuple[list[tuple[_FileHeader, list[_Slice]]], list[Path]]:
    """Parse every DICOM image header among ``paths``; DICOMDIRs and non-DICOM are skipped."""
    parsed, unreadable = [], []
    for count, path in enumerate(paths):
        if count >= _MAX_FILES:
            raise CTLoadError(
                f"{where} holds more than {_MAX_FILES} files; "
                "open the folder of one study or series instead."
            )
        try:
            raw = _read_file(path)
        except _NotDicom:
            continue
        except _Unreadable:
            unreadable.append(path)
            continue
        if not _is_dicomdir(raw):
            parsed.append(_parse(path, raw))
    return parsed, unreadable


def _scan_folder(folder: Path) -> _Scan:
    name = folder.name or str(folder)
    parsed, unreadable = _headers(_iter_files(folder, recursive=True), name)
    return _Scan(_group(parsed), unreadable, name)


def _scan_siblings(path: Path, header: _FileHeader, slices: list[_Slice]) -> _Scan:
    """The series of ``path``'s folder (not recursive), reusing ``path``'s own header."""
    name = path.parent.name or str(path.parent)
    others = (p for p in _iter_files(path.parent, recursive=False) if p != path)
    parsed, unreadable = _headers(others, name)
    parsed.append((header, slices))
    return _Scan(_group(parsed), unreadable, name)


def _series_containing(path: Path, header: _FileHeader, slices: list[_Slice]) -> SeriesInfo:
    scan = _scan_siblings(path, header, slices)
    return next(info for info in scan.series if any(s.file is header for s in info._slices))


def _scan_dicomdir(path: Path, raw: _RawHeader) -> _Scan:
    """The series of the files a DICOMDIR refers to (its directory records)."""
    root = path.parent.resolve()
    try:
        ds = raw.dataset if raw.dataset is not None else pydicom.dcmread(path, force=True)
        records = list(ds.get("DirectoryRecordSequence") or [])
    except Exception as exc:  # damaged records: pydicom raises many types
        raise CTLoadError(f"{path.name} is a damaged DICOMDIR ({_short(exc)}).") from None
    files: dict[Path, None] = {}
    for record in records:
        file_id = record.get("ReferencedFileID")
        if file_id:
            target = _existing(root, [file_id] if isinstance(file_id, str) else list(file_id))
            if target is not None:
                files[target] = None
    if not files:
        raise CTLoadError(f"{path.name} is a DICOMDIR that refers to no image files present.")
    parsed, unreadable = _headers(files, path.name)
    return _Scan(_group(parsed), unreadable, path.name)


def _existing(root: Path, parts: list[str]) -> Path | None:
    """The file a DICOMDIR file ID names (as written, or lower case), inside ``root``."""
    for candidate in (root.joinpath(*parts), root.joinpath(*(p.lower() for p in parts))):
        resolved = candidate.resolve()
        if resolved.is_file() and resolved.is_relative_to(root):
            return resolved
    return None


# ------------------------------------------------------------ fast header walker


class _Window:
    """Random access to a file's bytes through one moving read buffer."""

    def __init__(self, handle, size: int) -> None:
        self.handle, self.size = handle, size
        self.base, self.buffer = 0, b""

    def view(self, pos: int, n: int) -> tuple[bytes, int]:
        """(buffer, offset) such that ``buffer[offset:offset + n]`` are bytes ``pos..pos+n``."""
        start = pos - self.base
        if start < 0 or start + n > len(self.buffer):
            if pos + n > self.size:
                raise _PastEnd
            self.handle.seek(pos)
            self.buffer, self.base, start = self.handle.read(max(n, _READ_BYTES)), pos, 0
            if len(self.buffer) < n:  # the file shrank since it was opened
                raise _PastEnd
        return self.buffer, start

    def get(self, pos: int, n: int) -> bytes:
        buffer, start = self.view(pos, n)
        return buffer[start : start + n]


def _walk_header(window: _Window) -> _RawHeader:
    """Collect the wanted elements of a little-endian file by walking element headers.

    Values are sliced out only for the few wanted tags; sequences are stepped over, the
    walk stops at the pixel data. Big endian, deflated, preamble-less, enhanced
    multi-frame and DICOMDIR files raise :class:`_Fallback` (pydicom reads those).
    """
    if window.get(128, 4) != b"DICM":
        raise _Fallback
    meta: dict[int, bytes] = {}
    pos = 132
    while pos + 8 <= window.size:
        tag, _, length, size = _element(window, pos, implicit=False)
        if tag >> 16 != 0x0002:
            break
        if length == _UNDEFINED:
            raise _Fallback
        meta[tag] = window.get(pos + size, length)
        pos += size + length
    syntax = UID(_clean(meta.get(0x00020010, b"")))
    media = _clean(meta.get(0x00020002, b""))
    fast = syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian) or (
        _encapsulated(syntax)
        and syntax.is_transfer_syntax
        and syntax != DeflatedExplicitVRLittleEndian
    )
    if not fast:
        raise _Fallback
    if media == _MEDIA_STORAGE_DIRECTORY:  # folder scans skip it; _scan_dicomdir parses it
        return _RawHeader({}, True, syntax, "", None, None, window.size, media)
    implicit = syntax == ImplicitVRLittleEndian
    values: dict[int, bytes] = {}
    try:
        while pos + 8 <= window.size:
            tag, vr, length, size = _element(window, pos, implicit)
            if tag in _PIXEL_KEYWORDS:
                total = None if length == _UNDEFINED else length
                keyword = _PIXEL_KEYWORDS[tag]
                return _RawHeader(
                    values, True, syntax, keyword, pos + size, total, window.size, media
                )
            if tag in _FALLBACK_TAGS:
                raise _Fallback
            if length == _UNDEFINED:
                pos = _skip_sequence(window, pos + size, implicit or vr == b"UN", 0)
                continue
            if tag in _WANTED and 0 < length <= _DEFER_BYTES:
                values[tag] = window.get(pos + size, length)
            pos += size + length
        if pos != window.size:
            raise _PastEnd
    except _PastEnd:
        return _RawHeader(values, True, syntax, "", None, None, window.size, media, truncated=True)
    return _RawHeader(values, True, syntax, "", None, None, window.size, media)


def _element(window: _Window, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, header size) of the little-endian element at ``pos``."""
    buffer, start = window.view(pos, 8)
    group, element, vr, short = _EXPLICIT_HEADER.unpack_from(buffer, start)
    tag = (group << 16) | element
    if implicit or group == 0xFFFE:  # item and delimiter tags never carry a VR
        return tag, b"", _UINT32.unpack_from(buffer, start + 4)[0], 8
    if vr in _LONG_VRS:
        buffer, start = window.view(pos + 8, 4)
        return tag, vr, _UINT32.unpack_from(buffer, start)[0], 12
    if vr not in _VRS:
        raise _Fallback
    return tag, vr, short, 8


def _skip_sequence(window: _Window, pos: int, implicit: bool, depth: int) -> int:
    """Position just after the undefined-length sequence whose items start at ``pos``."""
    if depth > _MAX_NESTING:
        raise _Fallback
    while True:
        tag, _, length, _ = _element(window, pos, implicit=True)
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Fallback
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: step over its elements
            tag, vr, length, size = _element(window, pos, implicit)
            pos += size
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                pos = _skip_sequence(window, pos, implicit or vr == b"UN", depth + 1)
            else:
                pos += length


def _from_dataset(ds: Dataset, size: int) -> _RawHeader:
    """The same raw values as :func:`_walk_header`, from a dataset read by pydicom."""
    encoding = getattr(ds, "original_encoding", (None, True))
    little = encoding[1] is not False
    values = {}
    for tag in _WANTED:
        value = _element_bytes(ds.get_item(tag, keep_deferred=True), little)
        if value:  # like the walker, empty values count as absent
            values[tag] = value
    keyword, offset, length = _pixel_element(ds)
    meta = getattr(ds, "file_meta", None)
    media = _clean(_element_bytes(meta.get_item(0x00020002), True) or b"") if meta else ""
    return _RawHeader(
        values, little, _transfer_syntax(ds, little), keyword, offset, length, size, media, ds
    )


def _element_bytes(elem: DataElement | RawDataElement | None, little: bool) -> bytes | None:
    """An element's value as it is stored in the file (re-encoded if pydicom converted it)."""
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(elem, RawDataElement):
        return value if isinstance(value, bytes) else None
    if isinstance(value, bytes):
        return value
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if elem.VR in ("US", "SS", "US or SS"):
        code = "h" if any(int(v) < 0 for v in items) else "H"
        return struct.pack(f"{'<' if little else '>'}{len(items)}{code}", *(int(v) for v in items))
    return "\\".join(str(v) for v in items).encode("latin-1", "replace")


def _pixel_element(ds: Dataset) -> tuple[str, int | None, int | None]:
    """(keyword, value offset, defined length) of the pixel data element, if any."""
    for tag, keyword in _PIXEL_KEYWORDS.items():
        elem = ds.get_item(tag, keep_deferred=True)
        if elem is None:
            continue
        if isinstance(elem, RawDataElement):
            return keyword, elem.value_tell, None if elem.length == _UNDEFINED else elem.length
        return keyword, None, None
    return "", None, None


def _transfer_syntax(ds: Dataset, little: bool) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = _clean(_element_bytes(meta.get_item(0x00020010), True) or b"") if meta else ""
    if uid:
        return UID(uid)
    if getattr(ds, "original_encoding", (None, None))[0]:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


# -------------------------------------------------------------- header value access


def _encapsulated(syntax: UID) -> bool:
    """Compressed pixel data; an unknown transfer syntax counts as a compression we lack."""
    return not syntax.is_transfer_syntax or syntax.is_encapsulated


def _clean(value: bytes) -> str:
    return value.decode("latin-1").strip(" \x00")


def _text(raw: _RawHeader, tag: int) -> str | None:
    value = raw.values.get(tag)
    return None if value is None else _clean(value)


def _numbers(raw: _RawHeader, tag: int) -> list[float] | None:
    """Decimal/integer string values (DS, IS), or None if absent or not numbers."""
    text = _text(raw, tag)
    if not text:
        return None
    try:
        values = [float(part) for part in text.split("\\")]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _number(raw: _RawHeader, tag: int, default: float) -> float:
    values = _numbers(raw, tag)
    return values[0] if values else default


def _binary_int(raw: _RawHeader, tag: int, signed: bool = False) -> int | None:
    """A US/SS value in the file's byte order."""
    value = raw.values.get(tag)
    if value is None or len(value) < 2:
        return None
    code = f"{'<' if raw.little_endian else '>'}{'h' if signed else 'H'}"
    return int(struct.unpack_from(code, value)[0])


# ------------------------------------------------------------------ header parsing


def _parse(path: Path, raw: _RawHeader) -> tuple[_FileHeader, list[_Slice]]:
    """The compact header of one file and its slices (one per frame)."""
    signed = bool(_binary_int(raw, _TAG["PixelRepresentation"]) or 0)
    bits_allocated = _binary_int(raw, _TAG["BitsAllocated"]) or 0
    bits_stored = _binary_int(raw, _TAG["BitsStored"]) or bits_allocated
    n_frames = max(1, int(_number(raw, _TAG["NumberOfFrames"], 1)))
    # Every frame takes at least 8 bytes, so a larger count is a damaged header
    # (and must not make us build millions of slices).
    frames_ok = n_frames <= max(1, raw.size // 8)
    header = _FileHeader(
        path=path,
        series_uid=_text(raw, _TAG["SeriesInstanceUID"]) or f"file:{path}",
        sop_uid=_text(raw, _TAG["SOPInstanceUID"]) or str(path),
        modality=(_text(raw, _TAG["Modality"]) or "").upper(),
        sop_class=_text(raw, _TAG["SOPClassUID"]) or "",
        transfer_syntax=raw.transfer_syntax,
        instance_number=int(_number(raw, _TAG["InstanceNumber"], 0)),
        rows=_binary_int(raw, _TAG["Rows"]) or 0,
        columns=_binary_int(raw, _TAG["Columns"]) or 0,
        samples=_binary_int(raw, _TAG["SamplesPerPixel"]) or 1,
        photometric=(_text(raw, _TAG["PhotometricInterpretation"]) or "").upper(),
        bits_allocated=bits_allocated,
        bits_stored=min(bits_stored, bits_allocated) if bits_allocated else bits_stored,
        signed=signed,
        n_frames=n_frames if frames_ok else 1,
        pixel_keyword=raw.pixel_keyword,
        pixel_offset=raw.pixel_offset,
        pixel_length=raw.pixel_length,
        padding=_padding(raw, signed),
        problem=None,
        header_complete=not raw.truncated,
        technical=_technical(raw),
    )
    if raw.truncated:
        header.problem = "the file ends inside its header"
    elif not frames_ok:
        header.problem = "its NumberOfFrames is larger than the file"
    else:
        header.problem = _damage(header, raw.size)
    return header, _slices(raw, header)


def _padding(raw: _RawHeader, signed: bool) -> tuple[int, int] | None:
    value = _binary_int(raw, _TAG["PixelPaddingValue"], signed)
    if value is None:
        return None
    limit = _binary_int(raw, _TAG["PixelPaddingRangeLimit"], signed)
    limit = value if limit is None else limit
    return (min(value, limit), max(value, limit))


def _technical(raw: _RawHeader) -> dict[str, str]:
    """De-identified technical fields only (no names, IDs, dates, UIDs, descriptions)."""
    out = {}
    for keyword in _TECHNICAL_KEYWORDS:
        value = _text(raw, _TAG[keyword])
        if value:
            out[keyword] = " ".join(value.replace("\\", " ").split())[:64]
    return out


def _damage(header: _FileHeader, size: int) -> str | None:
    """Why the pixel data cannot be complete (end of a sentence), judged without reading it."""
    if header.pixel_offset is None or _encapsulated(header.transfer_syntax):
        return None
    if header.transfer_syntax == DeflatedExplicitVRLittleEndian or header.bits_allocated < 8:
        return None
    needed = header.frame_bytes * header.n_frames
    if header.pixel_offset + needed > size:
        return "its pixel data ends before the end of the image"
    if header.pixel_length is not None and header.pixel_length < needed:
        return "its pixel data is shorter than its image size"
    return None


def _slices(raw: _RawHeader, header: _FileHeader) -> list[_Slice]:
    """One slice per frame, with per-frame geometry for enhanced multi-frame images."""
    acquisition = _text(raw, _TAG["AcquisitionNumber"]) or ""
    per_frame = _sequence(raw.dataset, "PerFrameFunctionalGroupsSequence")
    if per_frame is not None and header.pixel_keyword and len(per_frame) == header.n_frames:
        shared = _sequence(raw.dataset, "SharedFunctionalGroupsSequence")
        shared_item = shared[0] if shared else None
        return [
            _frame_slice(header, i, item, shared_item, acquisition)
            for i, item in enumerate(per_frame)
        ]
    spacing = _vector(_numbers(raw, _TAG["PixelSpacing"]), 2)
    # Frames without per-frame positions: the geometry of all but one is unknown.
    position = (
        _vector(_numbers(raw, _TAG["ImagePositionPatient"]), 3) if header.n_frames == 1 else None
    )
    orientation = _vector(_numbers(raw, _TAG["ImageOrientationPatient"]), 6)
    slope = _number(raw, _TAG["RescaleSlope"], 1.0)
    intercept = _number(raw, _TAG["RescaleIntercept"], 0.0)
    return [
        _Slice(header, frame, position, orientation, _pair(spacing), slope, intercept, acquisition)
        for frame in range(header.n_frames if header.pixel_keyword else 1)
    ]


def _sequence(ds: Dataset | None, keyword: str) -> list[Dataset] | None:
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
    except Exception:  # a damaged sequence is the same as a missing one here
        return None
    return list(value) if value else None


def _frame_slice(
    header: _FileHeader, index: int, item: Dataset, shared: Dataset | None, acquisition: str
) -> _Slice:
    """A slice for frame ``index`` from its (per-frame or shared) functional groups."""

    def macro(sequence: str, keyword: str) -> list[float] | None:
        for source in (item, shared):
            inner = _sequence(source, sequence)
            values = _converted_numbers(inner[0], keyword) if inner else None
            if values is not None:
                return values
        return None

    slope = macro("PixelValueTransformationSequence", "RescaleSlope")
    intercept = macro("PixelValueTransformationSequence", "RescaleIntercept")
    stack = macro("FrameContentSequence", "TemporalPositionIndex")
    return _Slice(
        file=header,
        frame=index,
        position=_vector(macro("PlanePositionSequence", "ImagePositionPatient"), 3),
        orientation=_vector(macro("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        spacing=_pair(_vector(macro("PixelMeasuresSequence", "PixelSpacing"), 2)),
        slope=slope[0] if slope else 1.0,
        intercept=intercept[0] if intercept else 0.0,
        acquisition=f"{acquisition}/{stack[0]:g}" if stack else acquisition,
    )


def _converted_numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """Numeric values of a (small, nested) element through pydicom's own conversion."""
    try:
        value = ds.get(keyword)
        items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        return None
    return values if values and all(math.isfinite(v) for v in values) else None


def _vector(values: list[float] | None, n: int) -> np.ndarray | None:
    if values is None or len(values) < n:
        return None
    return np.asarray(values[:n], dtype=float)


def _pair(values: np.ndarray | None) -> tuple[float, float] | None:
    return None if values is None else (float(values[0]), float(values[1]))


# ---------------------------------------------------------------------- grouping


def _group(parsed: list[tuple[_FileHeader, list[_Slice]]]) -> list[SeriesInfo]:
    """Series by SeriesInstanceUID, orientation and image size; CT first, largest first."""
    groups: dict[tuple, list[_Slice]] = defaultdict(list)
    for header, slices in parsed:
        for piece in slices:
            orientation = _orientation_key(piece.orientation)
            groups[(header.series_uid, orientation, header.rows, header.columns)].append(piece)
    series = [_series_info(key, slices) for key, slices in groups.items()]
    series.sort(key=lambda s: (not s.is_ct_image, -s.n_images, s.series_key))
    return series


def _orientation_key(orientation: np.ndarray | None) -> tuple[float, ...]:
    if orientation is None:
        return ()
    return tuple(float(v) + 0.0 for v in np.round(orientation, 3))


def _series_info(key: tuple, slices: list[_Slice]) -> SeriesInfo:
    uid, orientation, rows, columns = key
    first = slices[0].file
    digest = hashlib.sha256(f"{uid}|{orientation}|{rows}x{columns}".encode()).hexdigest()[:12]
    files = sorted({s.file.path for s in slices})
    is_ct = _kind_refusal(first) is None
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
    )


def _plane(orientation: np.ndarray | None) -> str:
    """axial / coronal / sagittal / oblique, from the slice normal."""
    normal = _normal(orientation)
    if normal is None:
        return ""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _normal(orientation: np.ndarray | None) -> np.ndarray | None:
    if orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = np.linalg.norm(normal)
    return normal / length if length > 1e-6 else None


def _choose(scan: _Scan, key: str | None) -> SeriesInfo:
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
        damaged = f" ({len(scan.unreadable)} damaged DICOM files)" if scan.unreadable else ""
        raise CTLoadError(f"{scan.name} contains no DICOM images{damaged}.")
    if len(scan.series) == 1:
        info = scan.series[0]
        reason = _kind_refusal(info._slices[0].file)
        raise CTLoadError(f"{scan.name} holds only one series, which {reason}.")
    counts = Counter(s.modality for s in scan.series)
    found = ", ".join(f"{n} {modality}" for modality, n in sorted(counts.items()))
    raise CTLoadError(f"{scan.name} contains no CT image series (found series: {found}).")


# ----------------------------------------------------------------------- refusals


def _file_refusal(header: _FileHeader) -> str | None:
    """Why this file cannot be (part of) a CT scan, as a predicate; None if it can.

    What kind of object it is comes first (an MR image is refused as MR even if damaged),
    unless the header itself is cut short, which makes its kind unreliable.
    """
    damage = f"is truncated or damaged: {header.problem}" if header.problem else None
    if not header.header_complete:
        return damage
    return _kind_refusal(header) or damage


def _kind_refusal(header: _FileHeader) -> str | None:
    """Why this kind of object is not a CT image (modality, no pixels, colour...), or None."""
    modality, sop = header.modality, header.sop_class
    if not header.pixel_keyword or header.rows == 0 or header.columns == 0:
        sop_name = UID(sop).name if sop else ""
        if modality in _NON_IMAGE_KINDS:
            return f"is {_NON_IMAGE_KINDS[modality]}, not an image"
        if modality == "CT" or modality in _MODALITY_KINDS or "Image" in sop_name:
            return "has no pixel data"
        if sop_name and sop_name != sop:
            return f"is a {sop_name} object, not an image"
        return "has no image data"
    if sop.startswith(_SECONDARY_CAPTURE_PREFIX):
        return "is a secondary capture image (a screenshot), not a CT scan"
    if modality != "CT" and sop not in _CT_SOP_CLASSES:
        kind = _MODALITY_KINDS.get(modality)
        if kind is None:
            kind = f"a {modality} image" if modality else "an image of unknown modality"
        return f"is {kind}, not a CT scan"
    if header.samples != 1 or not header.photometric.startswith("MONOCHROME"):
        colour = header.photometric or f"{header.samples} samples per pixel"
        return f"is a colour image ({colour}), not a CT scan"
    if header.pixel_keyword != "PixelData" or header.bits_allocated not in (8, 16, 32):
        return f"uses a pixel format ({header.bits_allocated}-bit) that CT images do not use"
    return None


def _series_refusal(info: SeriesInfo) -> str | None:
    """Why the slices of a series do not form one volume (predicate), or None."""
    slices = info._slices
    for header in {id(s.file): s.file for s in slices}.values():
        reason = _file_refusal(header)
        if reason:
            return f"cannot be used because {header.path.name} {reason}"
    formats = {(s.file.bits_allocated, s.file.signed, s.file.photometric) for s in slices}
    if len(formats) > 1:
        return "is a mixed series: its slices use different pixel formats"
    if any(s.position is None or s.orientation is None or s.spacing is None for s in slices):
        return (
            "has no patient geometry (ImagePositionPatient, ImageOrientationPatient or "
            "PixelSpacing is missing), so its voxel positions are unknown"
        )
    spacings = np.array([s.spacing for s in slices])
    if np.any(spacings <= 0):
        return "has an invalid PixelSpacing (zero or negative)"
    if np.ptp(spacings, axis=0).max() > 1e-3 * spacings.max():
        return "is a mixed series: its slices have different pixel spacings"
    if not _orthonormal(slices[0].orientation):
        return (
            "has an invalid ImageOrientationPatient (row and column directions not perpendicular)"
        )
    return None


def _orthonormal(orientation: np.ndarray) -> bool:
    row, col = orientation[:3], orientation[3:]
    lengths = np.linalg.norm(row), np.linalg.norm(col)
    if min(lengths) < 1e-3:
        return False
    return abs(float(np.dot(row, col))) / (lengths[0] * lengths[1]) < 1e-2


# ---------------------------------------------------------------------- geometry


@dataclass
class _Stack:
    slices: list[_Slice]
    affine: np.ndarray
    warnings: list[str]


def _stack(slices: list[_Slice], subject: str, single_file: bool) -> _Stack:
    """Slices sorted along the normal, duplicates dropped, the affine and its warnings."""
    iop = slices[0].orientation
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    normal = _normal(iop)
    ordered = sorted(
        slices,
        key=lambda s: (
            round(float(np.dot(s.position, normal)), 3),
            s.acquisition,
            s.file.instance_number,
            s.file.sop_uid,
            s.frame,
        ),
    )
    heights = np.array([float(np.dot(s.position, normal)) for s in ordered])
    notes = _acquisition_overlap(ordered, heights)
    keep = np.concatenate([[True], np.diff(heights) > _SAME_POSITION_MM])
    if not keep.all():
        dropped = int((~keep).sum())
        notes.append(
            f"{dropped} slice{'s' if dropped > 1 else ''} repeated the position of another "
            f"slice and {'were' if dropped > 1 else 'was'} left out."
        )
        ordered = [s for s, k in zip(ordered, keep, strict=True) if k]
        heights = heights[keep]
    if len(ordered) < 2:
        hint = "; open the folder with the whole series" if single_file else ", not a volume"
        raise CTLoadError(f"{subject} is a single 2D slice{hint}.")
    positions = np.array([s.position for s in ordered])
    steps = np.diff(heights)
    step_vector = _median(np.diff(positions, axis=0))
    notes += _spacing_notes(steps)
    notes += _tilt_note(step_vector, normal)
    affine = np.eye(4)
    affine[:3, 0] = step_vector
    affine[:3, 1] = col * ordered[0].spacing[0]
    affine[:3, 2] = row * ordered[0].spacing[1]
    affine[:3, 3] = positions[0]
    return _Stack(ordered, affine, notes)


def _median(values: np.ndarray) -> np.ndarray:
    """Median along axis 0 (np.median would import numpy.ma, ~50 ms, on first use)."""
    ordered = np.sort(values, axis=0)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def _acquisition_overlap(ordered: list[_Slice], heights: np.ndarray) -> list[str]:
    """A warning when slices of several acquisitions cover the same positions.

    Acquisitions that follow each other along the table (step-and-shoot scanners number
    every rotation) form one volume and are not reported.
    """
    ranges: dict[str, list[float]] = {}
    for piece, height in zip(ordered, heights, strict=True):
        low_high = ranges.setdefault(piece.acquisition, [height, height])
        low_high[0], low_high[1] = min(low_high[0], height), max(low_high[1], height)
    if len(ranges) < 2:
        return []
    spans = sorted(ranges.values())
    overlap = any(b[0] <= a[1] + _SAME_POSITION_MM for a, b in zip(spans, spans[1:], strict=False))
    if not overlap:
        return []
    return [
        f"The slices come from {len(ranges)} acquisitions that cover the same positions; "
        "the volume may mix different scans."
    ]


def _spacing_notes(steps: np.ndarray) -> list[str]:
    median = float(_median(steps))
    gaps = steps > 1.5 * median
    if gaps.any():
        missing = int(np.sum(np.round(steps[gaps] / median) - 1).clip(min=1))
        return [
            f"About {missing} slice{'s' if missing > 1 else ''} appear{'' if missing > 1 else 's'} "
            f"to be missing (gaps up to {steps.max():.2f} mm where slices are {median:.2f} mm apart)."
        ]
    if (steps.max() - steps.min()) > 0.01 * median:
        return [
            f"The slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm; "
            f"the median {median:.3f} mm is used."
        ]
    return []


def _tilt_note(step_vector: np.ndarray, normal: np.ndarray) -> list[str]:
    cosine = float(np.dot(step_vector, normal) / np.linalg.norm(step_vector))
    angle = math.degrees(math.acos(min(1.0, max(-1.0, cosine))))
    if angle <= 0.5:
        return []
    return [
        f"The slices are tilted by {angle:.1f} degrees (gantry tilt); the geometry keeps the "
        "tilt as a shear."
    ]


# ------------------------------------------------------------------------ pixels


def _raw_dtype(header: _FileHeader) -> np.dtype:
    return np.dtype(f"{'i' if header.signed else 'u'}{header.bits_allocated // 8}")


def _read_pixels(
    stack: _Stack, caught: list[warnings.WarningMessage]
) -> tuple[np.ndarray, list[str]]:
    """Stored values of every slice, decoded in parallel straight into one array."""
    first = stack.slices[0].file
    raw = np.empty((len(stack.slices), first.rows, first.columns), dtype=_raw_dtype(first))
    by_file: dict[_FileHeader, list[tuple[int, int]]] = defaultdict(list)  # by identity
    for index, piece in enumerate(stack.slices):
        by_file[piece.file].append((piece.frame, index))
    before = len(caught)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        try:
            for _ in pool.map(lambda job: _decode_file(job[0], job[1], raw), by_file.items()):
                pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return raw, _decoder_notes(caught[before:])


def _decode_file(header: _FileHeader, frames: list[tuple[int, int]], raw: np.ndarray) -> None:
    """Decode the wanted frames of one file into their rows of ``raw``."""
    syntax = header.transfer_syntax
    if syntax == DeflatedExplicitVRLittleEndian or header.pixel_offset is None:
        _decode_with_dataset(header, frames, raw)
    elif _encapsulated(syntax):
        _decode_encapsulated(header, frames, raw)
    else:
        _read_native(header, frames, raw)


def _read_native(header: _FileHeader, frames: list[tuple[int, int]], raw: np.ndarray) -> None:
    """Uncompressed data: read the bytes at the pixel data offset into the output rows."""
    size = header.frame_bytes
    with open(header.path, "rb", buffering=0) as handle:
        for frame, index in frames:
            handle.seek(header.pixel_offset + frame * size)
            target = raw[index]
            if handle.readinto(memoryview(target).cast("B")) != size:
                raise CTLoadError(f"{header.path.name} is truncated: its pixel data ends early.")
            if not header.transfer_syntax.is_little_endian and header.bits_allocated > 8:
                target.byteswap(inplace=True)
            _mask_unused_bits(target, header)


def _mask_unused_bits(target: np.ndarray, header: _FileHeader) -> None:
    """Ignore bits above BitsStored (PS3.5 8.1.1), sign-extending signed values."""
    unused = header.bits_allocated - header.bits_stored
    if unused <= 0:
        return
    if header.signed:
        np.left_shift(target, unused, out=target)
        np.right_shift(target, unused, out=target)
    else:
        np.bitwise_and(target, (1 << header.bits_stored) - 1, out=target)


def _decode_options(header: _FileHeader) -> dict:
    return {
        "rows": header.rows,
        "columns": header.columns,
        "samples_per_pixel": header.samples,
        "photometric_interpretation": header.photometric,
        "bits_allocated": header.bits_allocated,
        "bits_stored": header.bits_stored,
        "pixel_representation": int(header.signed),
        "number_of_frames": header.n_frames,
        "pixel_keyword": "PixelData",
    }


def _decode_encapsulated(
    header: _FileHeader, frames: list[tuple[int, int]], raw: np.ndarray
) -> None:
    """Compressed data: pydicom's decoders read the frames from the file offset."""
    from pydicom.pixels import get_decoder

    name = header.transfer_syntax.name
    try:
        decoder = get_decoder(header.transfer_syntax)
    except NotImplementedError:
        raise CTLoadError(
            f"{header.path.name} uses a compressed encoding ({name}) that this reader cannot decode."
        ) from None
    options = _decode_options(header)
    with open(header.path, "rb") as handle:
        for frame, index in frames:
            handle.seek(header.pixel_offset)
            try:
                array, _ = decoder.as_array(handle, index=frame, **options)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # plugins raise many types; Rust ones (RLE) panic
                raise CTLoadError(
                    f"{header.path.name} uses a compressed encoding ({name}) that could not "
                    f"be decoded: {_short(exc)}."
                ) from None
            _store(array, index, raw, header)


def _decode_with_dataset(
    header: _FileHeader, frames: list[tuple[int, int]], raw: np.ndarray
) -> None:
    """Deflated files (offsets refer to the inflated stream): decode via a full read."""
    try:
        ds = pydicom.dcmread(header.path, force=True)
        array = ds.pixel_array
    except Exception as exc:
        raise CTLoadError(
            f"{header.path.name} is broken: its pixel data cannot be read ({_short(exc)})."
        ) from None
    array = array.reshape((-1, header.rows, header.columns))
    for frame, index in frames:
        _store(array[frame], index, raw, header)


def _store(array: np.ndarray, index: int, raw: np.ndarray, header: _FileHeader) -> None:
    if array.shape[-2:] != raw.shape[1:] or array.size != raw[index].size:
        raise CTLoadError(
            f"{header.path.name} is broken: it decodes to {array.shape} pixels instead of "
            f"{raw.shape[1:]}."
        )
    raw[index] = array.reshape(raw.shape[1:])


def _decoder_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Decoder warnings worth a user's attention, summarised in one sentence."""
    if not caught:
        return []
    first = _short(caught[0].message)
    return [f"The pixel decoder reported {len(caught)} warning(s), e.g.: {first}."]


# ------------------------------------------------------------------------- values


def _to_hu(raw: np.ndarray, slices: list[_Slice]) -> np.ndarray:
    """HU = stored * slope + intercept per slice; padding values become air.

    Whole-number slopes and intercepts whose results fit int16 are applied in place with
    wrap-around integer arithmetic (exact, since the true results fit), so no float copy
    of the volume is made; anything else goes through float32.
    """
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    padding = _padding_mask(raw, slices)
    integral = np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))
    if integral and raw.dtype.itemsize <= 2 and _fits_int16(raw, slopes, intercepts, slices):
        hu = _rescale_int16(raw, slopes, intercepts)
    else:
        hu = raw.astype(np.float32)
        if np.any(slopes != 1):
            hu *= slopes.astype(np.float32)[:, None, None]
        hu += intercepts.astype(np.float32)[:, None, None]
    if padding is not None:
        hu[padding] = AIR_HU
    return hu


def _fits_int16(
    raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, slices: list[_Slice]
) -> bool:
    """Whether every HU value fits int16: from BitsStored, else from the actual values."""
    info = np.iinfo(np.int16)
    header = slices[0].file
    bits = header.bits_stored
    low, high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if header.signed else (0, (1 << bits) - 1)
    )

    def within(lo: float, hi: float) -> bool:
        ends = np.stack([slopes * lo + intercepts, slopes * hi + intercepts])
        return bool(ends.min() >= info.min and ends.max() <= info.max)

    if within(low, high):
        return True
    return raw.size > 0 and within(float(raw.min()), float(raw.max()))


def _rescale_int16(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """In-place integer rescale; arithmetic modulo 2**16 is exact when results fit int16."""
    if raw.dtype.itemsize == 1:
        hu = raw.astype(np.int16)
    else:
        hu = raw.view(np.int16)
    if np.any(slopes != 1):
        factors = slopes.astype(np.int64).astype(np.int16)[:, None, None]
        _parallel_slices(lambda i: np.multiply(hu[i], factors[i], out=hu[i]), len(hu))
    offsets = intercepts.astype(np.int64).astype(np.int16)
    if np.all(offsets == offsets[0]):
        if offsets[0]:
            _parallel_chunks(lambda part: np.add(part, offsets[0], out=part), hu)
    else:
        _parallel_slices(lambda i: np.add(hu[i], offsets[i], out=hu[i]), len(hu))
    return hu


def _parallel_chunks(func, array: np.ndarray) -> None:
    """Apply an in-place ufunc to slabs of ``array`` on the worker threads."""
    bounds = np.linspace(0, len(array), _WORKERS + 1).astype(int)
    slabs = [array[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(func, slabs))


def _parallel_slices(func, n: int) -> None:
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(func, range(n)))


def _padding_mask(raw: np.ndarray, slices: list[_Slice]) -> np.ndarray | None:
    """Voxels holding the PixelPaddingValue where it would not already map below air."""
    header = slices[0].file
    if header.padding is None:
        return None
    low, high = header.padding
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    padded_hu = np.maximum(slopes * low, slopes * high) + intercepts
    if np.all(padded_hu < AIR_HU):
        return None  # hu_array turns it into air anyway; spare a pass over the volume
    if low == high:
        return raw == low
    return (raw >= low) & (raw <= high)


# --------------------------------------------------------------------------- load


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
    reason = _series_refusal(info)
    if reason:
        raise CTLoadError(f"{subject} {reason}.")
    stack = _stack(info._slices, subject, single_file)
    raw, decoder_notes = _read_pixels(stack, caught)
    hu = hu_array(_to_hu(raw, stack.slices))
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


def _metadata(first: _FileHeader, info: SeriesInfo, n_slices: int) -> dict[str, str]:
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


# -------------------------------------------------------------------------- misc


@contextmanager
def _quiet_pydicom() -> Iterator[list[warnings.WarningMessage]]:
    """Record pydicom's warnings and mute its loggers while reading.

    Header chatter (odd VRs, invalid values) is noise for a user, and pydicom logs decoder
    failures with tracebacks; what matters becomes a refusal or a CTVolume warning, and
    decoder warnings are summarised by the reader.
    """
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)  # its child loggers inherit this level
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        logger.setLevel(level)


def _short(exc: object) -> str:
    """An exception or warning as a short clause (no newlines, no end punctuation).

    pydicom's "...all available plugins:" messages name the actual failure on the next
    line, so that line is kept too.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text[:150].rstrip(" .:;")
