"""What one file's header means for this reader: a compact header and its slices.

A :class:`RawHeader` (undecoded bytes of the wanted tags) becomes a :class:`FileHeader`,
which keeps only what loading needs (pixel format, pixel data offset, kind of object,
damage found without reading the pixels) and no identifiers, plus one :class:`Slice`
per frame with its geometry and rescale. Enhanced multi-frame files take per-frame
positions and rescales from their functional groups; classic files have one slice.

The de-identified technical fields that end up in ``CTVolume.metadata`` (modality,
manufacturer, kernel...) are picked here too, so no later stage sees a name, ID, date,
UID or free-text description.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from napari_covid_attention.io.dicom.headers import TAG, RawHeader, encapsulated, stripped_text

# De-identified technical fields copied into the volume's metadata.
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
class FileHeader:
    """What one file's header says, kept instead of the pydicom dataset (no identifiers)."""

    path: Path
    series_uid: str  # "" when the file has none
    # What else identifies the series (study, frame of reference, series number), for
    # grouping files whose anonymiser removed the SeriesInstanceUID.
    series_identity: tuple[str, str, str]
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
class Slice:
    """One 2D image: a classic single-frame file or one frame of a multi-frame file."""

    file: FileHeader
    frame: int
    position: np.ndarray | None  # ImagePositionPatient (3,)
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    spacing: tuple[float, float] | None  # PixelSpacing (row spacing, column spacing)
    slope: float
    intercept: float
    acquisition: str


def parse_header(path: Path, raw: RawHeader) -> tuple[FileHeader, list[Slice]]:
    """The compact header of one file and its slices (one per frame)."""
    signed = bool(_binary_int(raw, TAG["PixelRepresentation"]) or 0)
    bits_allocated = _binary_int(raw, TAG["BitsAllocated"]) or 0
    bits_stored = _binary_int(raw, TAG["BitsStored"]) or bits_allocated
    n_frames = max(1, int(_number(raw, TAG["NumberOfFrames"], 1)))
    # Every frame takes at least 8 bytes, so a larger count is a damaged header
    # (and must not make us build millions of slices).
    frames_ok = n_frames <= max(1, raw.size // 8)
    header = FileHeader(
        path=path,
        series_uid=_text(raw, TAG["SeriesInstanceUID"]) or "",
        series_identity=(
            _text(raw, TAG["StudyInstanceUID"]) or "",
            _text(raw, TAG["FrameOfReferenceUID"]) or "",
            _series_number(raw),
        ),
        sop_uid=_text(raw, TAG["SOPInstanceUID"]) or str(path),
        modality=(_text(raw, TAG["Modality"]) or "").upper(),
        sop_class=_text(raw, TAG["SOPClassUID"]) or "",
        transfer_syntax=raw.transfer_syntax,
        instance_number=int(_number(raw, TAG["InstanceNumber"], 0)),
        rows=_binary_int(raw, TAG["Rows"]) or 0,
        columns=_binary_int(raw, TAG["Columns"]) or 0,
        samples=_binary_int(raw, TAG["SamplesPerPixel"]) or 1,
        photometric=(_text(raw, TAG["PhotometricInterpretation"]) or "").upper(),
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


def _series_number(raw: RawHeader) -> str:
    """SeriesNumber as a canonical string ("3" for "3", " 3" or "3.0"), "" if absent."""
    value = _numbers(raw, TAG["SeriesNumber"])
    if value:
        return f"{value[0]:g}"
    return _text(raw, TAG["SeriesNumber"]) or ""


def _padding(raw: RawHeader, signed: bool) -> tuple[int, int] | None:
    value = _binary_int(raw, TAG["PixelPaddingValue"], signed)
    if value is None:
        return None
    limit = _binary_int(raw, TAG["PixelPaddingRangeLimit"], signed)
    limit = value if limit is None else limit
    return (min(value, limit), max(value, limit))


def _technical(raw: RawHeader) -> dict[str, str]:
    """De-identified technical fields only (no names, IDs, dates, UIDs, descriptions)."""
    out = {}
    for keyword in _TECHNICAL_KEYWORDS:
        value = _text(raw, TAG[keyword])
        if value:
            out[keyword] = " ".join(value.replace("\\", " ").split())[:64]
    return out


def _damage(header: FileHeader, size: int) -> str | None:
    """Why the pixel data cannot be complete (end of a sentence), judged without reading it."""
    if header.pixel_offset is None or encapsulated(header.transfer_syntax):
        return None
    if header.transfer_syntax == DeflatedExplicitVRLittleEndian or header.bits_allocated < 8:
        return None
    needed = header.frame_bytes * header.n_frames
    if header.pixel_offset + needed > size:
        return "its pixel data ends before the end of the image"
    if header.pixel_length is not None and header.pixel_length < needed:
        return "its pixel data is shorter than its image size"
    return None


def _slices(raw: RawHeader, header: FileHeader) -> list[Slice]:
    """One slice per frame, with per-frame geometry for enhanced multi-frame images."""
    acquisition = _text(raw, TAG["AcquisitionNumber"]) or ""
    per_frame = _sequence(raw.dataset, "PerFrameFunctionalGroupsSequence")
    if per_frame is not None and header.pixel_keyword and len(per_frame) == header.n_frames:
        shared = _sequence(raw.dataset, "SharedFunctionalGroupsSequence")
        shared_item = shared[0] if shared else None
        return [
            _frame_slice(header, i, item, shared_item, acquisition)
            for i, item in enumerate(per_frame)
        ]
    spacing = _vector(_numbers(raw, TAG["PixelSpacing"]), 2)
    # Frames without per-frame positions: the geometry of all but one is unknown.
    position = (
        _vector(_numbers(raw, TAG["ImagePositionPatient"]), 3) if header.n_frames == 1 else None
    )
    orientation = _vector(_numbers(raw, TAG["ImageOrientationPatient"]), 6)
    slope = _number(raw, TAG["RescaleSlope"], 1.0)
    intercept = _number(raw, TAG["RescaleIntercept"], 0.0)
    return [
        Slice(header, frame, position, orientation, _pair(spacing), slope, intercept, acquisition)
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
    header: FileHeader, index: int, item: Dataset, shared: Dataset | None, acquisition: str
) -> Slice:
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
    return Slice(
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


# ------------------------------------------------------------------- tag values


def _text(raw: RawHeader, tag: int) -> str | None:
    value = raw.values.get(tag)
    return None if value is None else stripped_text(value)


def _numbers(raw: RawHeader, tag: int) -> list[float] | None:
    """Decimal/integer string values (DS, IS), or None if absent or not numbers."""
    text = _text(raw, tag)
    if not text:
        return None
    try:
        values = [float(part) for part in text.split("\\")]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _number(raw: RawHeader, tag: int, default: float) -> float:
    values = _numbers(raw, tag)
    return values[0] if values else default


def _binary_int(raw: RawHeader, tag: int, signed: bool = False) -> int | None:
    """A US/SS value in the file's byte order."""
    value = raw.values.get(tag)
    if value is None or len(value) < 2:
        return None
    code = f"{'<' if raw.little_endian else '>'}{'h' if signed else 'H'}"
    return int(struct.unpack_from(code, value)[0])
