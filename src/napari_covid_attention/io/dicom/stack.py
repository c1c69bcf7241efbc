"""Stacking a series' slices into a volume: order, spacing checks and the affine.

Slices are ordered by their position along the slice normal (ImagePositionPatient
projected on the cross product of the ImageOrientationPatient directions), never by
InstanceNumber or file name, which scanners and anonymisers do not keep reliable.
Slices at the same position are dropped; gaps, uneven spacing, overlapping
acquisitions and gantry tilt become warning sentences for the user, and the affine
keeps a tilt as a shear instead of resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_covid_attention.io.dicom.slices import Slice
from napari_covid_attention.io.volume import CTLoadError

# Positions closer than this (mm) along the slice normal are the same slice.
SAME_POSITION_MM = 0.01


def slice_normal(orientation: np.ndarray | None) -> np.ndarray | None:
    """Unit normal (row x column direction) of an ImageOrientationPatient; None if degenerate."""
    if orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    length = np.linalg.norm(normal)
    return normal / length if length > 1e-6 else None


@dataclass
class Stack:
    """Slices in volume order, the voxel (z, y, x) -> LPS mm affine and warning sentences."""

    slices: list[Slice]
    affine: np.ndarray
    warnings: list[str]


def stack_slices(
    slices: list[Slice], subject: str, single_file: bool, has_uid: bool = True
) -> Stack:
    """Slices sorted along the normal, duplicates dropped, the affine and its warnings.

    Fewer than two distinct positions is refused, saying which case it is: many slices
    all at one position (a time series of one slice), or one slice, and then, for a file
    without SeriesInstanceUID, why no other file was grouped with it.
    """
    iop = slices[0].orientation
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    normal = slice_normal(iop)
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
    keep = np.concatenate([[True], np.diff(heights) > SAME_POSITION_MM])
    if not keep.all():
        dropped = int((~keep).sum())
        notes.append(
            f"{dropped} slice{'s' if dropped > 1 else ''} repeated the position of another "
            f"slice and {'were' if dropped > 1 else 'was'} left out."
        )
        ordered = [s for s, k in zip(ordered, keep, strict=True) if k]
        heights = heights[keep]
    if len(ordered) < 2:
        if len(slices) > 1:
            raise CTLoadError(
                f"{subject} holds {len(slices)} slices all at the same position: a time series "
                "or repeated scans of one slice, not a volume."
            )
        if not has_uid:
            raise CTLoadError(
                f"{subject} is a single 2D slice, not a volume: its file has no "
                "SeriesInstanceUID and no other file shares its study, frame of reference, "
                "series number, orientation, image size and pixel spacing."
            )
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
    return Stack(ordered, affine, notes)


def _median(values: np.ndarray) -> np.ndarray:
    """Median along axis 0 (np.median would import numpy.ma, ~50 ms, on first use)."""
    ordered = np.sort(values, axis=0)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def _acquisition_overlap(ordered: list[Slice], heights: np.ndarray) -> list[str]:
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
    overlap = any(b[0] <= a[1] + SAME_POSITION_MM for a, b in zip(spans, spans[1:], strict=False))
    if not overlap:
        return []
    return [
        f"The slices come from {len(ranges)} acquisitions that cover the same positions; "
        "the volume may mix different scans."
    ]


def _spacing_notes(steps: np.ndarray) -> list[str]:
    """A warning for missing slices (gaps) or, failing that, for uneven slice spacing."""
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
    """A warning when the slices step off their normal (gantry tilt)."""
    cosine = float(np.dot(step_vector, normal) / np.linalg.norm(step_vector))
    angle = math.degrees(math.acos(min(1.0, max(-1.0, cosine))))
    if angle <= 0.5:
        return []
    return [
        f"The slices are tilted by {angle:.1f} degrees (gantry tilt); the geometry keeps the "
        "tilt as a shear."
    ]
