"""What this reader refuses to load, and the one sentence it says instead.

Every unusable input (an MR series, an RT plan, a screenshot, a colour image, a damaged
file, a series without patient geometry...) must end in one readable sentence, never a
traceback or a silently wrong volume. The checks here are predicates ("is an MR image,
not a CT scan"), so callers can put any subject in front of them: a file name, or "The
series <key> in <folder>". They only look at headers already read; nothing here opens a
file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydicom.uid import UID

from napari_covid_attention.io import limits
from napari_covid_attention.io.dicom.slices import FileHeader

if TYPE_CHECKING:
    from napari_covid_attention.io.dicom.series import SeriesInfo

# SOP classes of CT images, whatever their Modality says.
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


def file_refusal(header: FileHeader) -> str | None:
    """Why this file cannot be (part of) a CT scan, as a predicate; None if it can.

    What kind of object it is comes first (an MR image is refused as MR even if damaged),
    unless the header itself is cut short, which makes its kind unreliable.
    """
    damage = f"is truncated or damaged: {header.problem}" if header.problem else None
    if not header.header_complete:
        return damage
    return kind_refusal(header) or damage


def kind_refusal(header: FileHeader) -> str | None:
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
    if header.samples != 1 and header.photometric.startswith("MONOCHROME"):
        return f"is damaged: a {header.photometric} image with {header.samples} samples per pixel"
    if header.samples != 1 or not header.photometric.startswith("MONOCHROME"):
        colour = header.photometric or f"{header.samples} samples per pixel"
        return f"is a colour image ({colour}), not a CT scan"
    if header.pixel_keyword != "PixelData" or header.bits_allocated not in (8, 16, 32):
        return f"uses a pixel format ({header.bits_allocated}-bit) that CT images do not use"
    return None


def series_refusal(info: SeriesInfo) -> str | None:
    """Why the slices of a series do not form one volume (predicate), or None."""
    slices = info._slices
    for header in {id(s.file): s.file for s in slices}.values():
        reason = file_refusal(header)
        if reason:
            return f"cannot be used because {header.path.name} {reason}"
    first = slices[0].file
    too_large = limits.size_problem((len(slices), first.rows, first.columns))
    if too_large:
        noun = "slice" if len(slices) == 1 else "slices"
        return (
            f"is too large for this reader: {len(slices)} {noun} of "
            f"{first.rows}x{first.columns} pixels, {too_large}"
        )
    for piece in slices:
        problem = limits.rescale_problem(
            piece.slope, piece.intercept, ("RescaleSlope", "RescaleIntercept")
        )
        if problem:
            return f"cannot be used because in {piece.file.path.name} the {problem}"
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
