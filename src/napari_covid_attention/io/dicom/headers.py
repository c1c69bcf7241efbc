"""Reading one file's header, once, with its pixel data left on disk.

Only the few elements this reader needs are kept, as the bytes stored in the file
(:class:`RawHeader`, decoded later by :mod:`.slices`). The pixel data element is not
read: its file offset and length are recorded so the pixels can later be read straight
into the output array.

Two parsers produce the same :class:`RawHeader`:

* a fast walker for the common encodings (little endian with a file meta header): it
  steps from element header to element header, slices out the wanted values, steps
  over sequences and stops at the pixel data, without building a dataset;
* ``pydicom.dcmread`` (pixel data deferred) for everything else: big endian, deflated,
  files without preamble, enhanced multi-frame files (their per-frame functional
  groups are sequences this reader needs) and DICOMDIRs.

Files that are not DICOM are told apart from damaged DICOM files, since folder scans
skip the first silently and report the second.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

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

from napari_covid_attention.io.dicom.messages import short_message
from napari_covid_attention.io.files import (
    NotRegularFile,
    open_regular,
    reason_unreadable,
)
from napari_covid_attention.io.volume import CTLoadError

# Elements up to this size are read with the header; larger ones (pixel data, vendor
# blobs) are skipped and, for pixel data, read later straight from their file offset.
_DEFER_BYTES = 4096
_PROBE_BYTES = 1024
_READ_BYTES = 16384  # one read covers the whole header of most files
_MAX_NESTING = 16
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# Explicit VRs, and those with a 4-byte length field, for the no-preamble probe.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC "
    b"UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())

# Tags read from every header (raw, without pydicom's value conversion, for speed).
TAG = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "Modality": 0x00080060,
    "Manufacturer": 0x00080070,
    "ManufacturerModelName": 0x00081090,
    "BodyPartExamined": 0x00180015,
    "SliceThickness": 0x00180050,
    "KVP": 0x00180060,
    "ConvolutionKernel": 0x00181210,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SeriesNumber": 0x00200011,
    "AcquisitionNumber": 0x00200012,
    "InstanceNumber": 0x00200013,
    "ImagePositionPatient": 0x00200032,
    "ImageOrientationPatient": 0x00200037,
    "FrameOfReferenceUID": 0x00200052,
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
_WANTED = frozenset(TAG.values())
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


@dataclass(slots=True, eq=False)
class RawHeader:
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


class NotDicom(Exception):
    """The file is not DICOM (skipped silently in folders)."""


class Unreadable(Exception):
    """The file looks like DICOM but its header cannot be parsed."""


class CannotRead(Unreadable):
    """The file cannot be opened or read at all (permission denied, I/O error)."""


class _Fallback(Exception):
    """The fast header walker cannot handle this file; pydicom will."""


class _PastEnd(_Fallback):
    """An element runs past the end of the file."""


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file, judged from its first kilobyte only."""
    try:
        with open_regular(path) as handle:
            return _looks_like_dicom(handle.read(_PROBE_BYTES))
    except OSError:  # also pipes, sockets and devices, which are never opened blocking
        return False


def read_file(path: Path) -> RawHeader:
    """The header of one file, read once, with the pixel data left on disk.

    The common encodings (little endian with a meta header) are walked by
    :func:`_walk_header`; anything else goes through ``pydicom.dcmread``. Pipes,
    sockets and devices are not DICOM files (and are never opened blocking).
    """
    try:
        with open_regular(path, capped=True) as handle:
            window = _Window(handle, os.fstat(handle.fileno()).st_size)
            if not _looks_like_dicom(window.get(0, min(window.size, _PROBE_BYTES))):
                raise NotDicom
            try:
                return _walk_header(window)
            except _Fallback:
                pass
            handle.seek(0)
            try:
                ds = pydicom.dcmread(handle, defer_size=_DEFER_BYTES, force=True)
            except Exception as exc:  # pydicom raises many types on damaged headers
                raise Unreadable(short_message(exc)) from exc
            return _from_dataset(ds, window.size)
    except NotRegularFile:
        raise NotDicom from None
    except OSError as exc:
        raise CannotRead(reason_unreadable(exc)) from exc


def read_single(path: Path) -> RawHeader:
    """Header of a file the user pointed at, or a one-sentence refusal."""
    try:
        return read_file(path)
    except NotDicom:
        raise CTLoadError(f"{path.name} is not a DICOM file.") from None
    except CannotRead as exc:
        raise CTLoadError(f"{path.name} cannot be read: {exc}.") from None
    except Unreadable as exc:
        raise CTLoadError(
            f"{path.name} is truncated or damaged: its DICOM header cannot be read ({exc})."
        ) from None


def is_dicomdir(raw: RawHeader) -> bool:
    """Whether the file is a DICOMDIR (an index of other files, not an image)."""
    return raw.media_sop_class == _MEDIA_STORAGE_DIRECTORY or (
        raw.dataset is not None and _DIRECTORY_RECORDS in raw.dataset
    )


# ------------------------------------------------------------ is it DICOM at all


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


def _walk_header(window: _Window) -> RawHeader:
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
    syntax = UID(stripped_text(meta.get(0x00020010, b"")))
    media = stripped_text(meta.get(0x00020002, b""))
    fast = syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian) or (
        encapsulated(syntax)
        and syntax.is_transfer_syntax
        and syntax != DeflatedExplicitVRLittleEndian
    )
    if not fast:
        raise _Fallback
    if media == _MEDIA_STORAGE_DIRECTORY:  # folder scans skip it; scan_dicomdir parses it
        return RawHeader({}, True, syntax, "", None, None, window.size, media)
    implicit = syntax == ImplicitVRLittleEndian
    values: dict[int, bytes] = {}
    try:
        while pos + 8 <= window.size:
            tag, vr, length, size = _element(window, pos, implicit)
            if tag in _PIXEL_KEYWORDS:
                total = None if length == _UNDEFINED else length
                keyword = _PIXEL_KEYWORDS[tag]
                return RawHeader(
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
        return RawHeader(values, True, syntax, "", None, None, window.size, media, truncated=True)
    return RawHeader(values, True, syntax, "", None, None, window.size, media)


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


# --------------------------------------------------------- pydicom fallback


def _from_dataset(ds: Dataset, size: int) -> RawHeader:
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
    media = stripped_text(_element_bytes(meta.get_item(0x00020002), True) or b"") if meta else ""
    return RawHeader(
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
    uid = stripped_text(_element_bytes(meta.get_item(0x00020010), True) or b"") if meta else ""
    if uid:
        return UID(uid)
    if getattr(ds, "original_encoding", (None, None))[0]:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


# ------------------------------------------------------------------- shared helpers


def encapsulated(syntax: UID) -> bool:
    """Compressed pixel data; an unknown transfer syntax counts as a compression we lack."""
    return not syntax.is_transfer_syntax or syntax.is_encapsulated


def stripped_text(value: bytes) -> str:
    """A stored string value without its padding (spaces, NULs)."""
    return value.decode("latin-1").strip(" \x00")
