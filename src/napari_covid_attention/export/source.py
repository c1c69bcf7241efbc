"""The source CT series of an export: its datasets in volume order and its voxel grid.

A DICOM-SEG frame must say which source image it was drawn on, and our masks live on the
canonical grid of :func:`napari_covid_attention.io.load.load_ct`. This module sorts the
source datasets the way the reader stacks slices (by position along the slice normal,
never by InstanceNumber or file name), rebuilds that stack's affine, and moves a mask from
the volume grid onto it with flips/permutations only (no interpolation). Series without
the UIDs a SEG must reference are refused: inventing them would make a SEG that points at
nothing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from nibabel import orientations as nib_ornt
from pydicom.dataset import Dataset

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io import geometry
from napari_covid_attention.io.dicom.stack import SAME_POSITION_MM, slice_normal

# A mask grid may differ from the source stack by this much (mm) and still be "the same".
_GRID_TOLERANCE_MM = 0.01
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")


class ExportError(UserFacingError, ValueError):
    """An export that cannot be made; the message is one sentence for the user."""


@dataclass(frozen=True)
class SourceSeries:
    """Source images in volume order (ascending along the slice normal) and their grid."""

    datasets: list[Dataset]
    affine: np.ndarray  # voxel (z, y, x) of ``datasets`` order -> LPS mm

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.datasets[0]
        return (len(self.datasets), int(first.Rows), int(first.Columns))

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def canonical_affine(self) -> np.ndarray:
        """Affine of the grid ``load_ct`` gives for this series (canonical orientation)."""
        return _reoriented_affine(self.affine, self.shape, geometry.CANONICAL_ORNT)


def read_source_datasets(path: str | os.PathLike, series_key: str | None = None) -> list[Dataset]:
    """Headers (no pixel data) of the CT series ``load_ct(path, series_key)`` loads.

    ``series_key`` is ``CTVolume.metadata["series_key"]`` for folders holding several series.
    """
    from napari_covid_attention.io.dicom import list_series

    series = list_series(path)
    if series_key is not None:
        chosen = [s for s in series if s.series_key == series_key]
    else:
        chosen = [s for s in series if s.is_ct_image][:1]
    if not chosen:
        raise ExportError(f"{Path(path).name} holds no CT series to reference in a DICOM export.")
    return [pydicom.dcmread(str(p), stop_before_pixels=True) for p in chosen[0].files]


def source_series(datasets: list[Dataset]) -> SourceSeries:
    """Check the source images and sort them into volume order; refuse in one sentence."""
    if not datasets:
        raise ExportError("No source images were given: a DICOM-SEG must reference its CT series.")
    for keyword in _REQUIRED_UIDS:
        if any(not str(ds.get(keyword, "") or "").strip() for ds in datasets):
            raise ExportError(f"The source series has no {keyword}: a DICOM-SEG cannot reference it.")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if len({str(ds.get(keyword)) for ds in datasets}) > 1:
            raise ExportError(f"The source images have several {keyword}s: a DICOM-SEG references one series.")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ExportError("The source series is a multi-frame image, which DICOM export does not support yet.")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        if any(ds.get(keyword) is None for ds in datasets):
            raise ExportError(f"A source image has no {keyword}: its slices cannot be placed in a DICOM-SEG.")
    if len({(int(ds.Rows), int(ds.Columns)) for ds in datasets}) > 1:
        raise ExportError("The source images differ in size: they are not one volume.")
    return _stacked(datasets)


def _stacked(datasets: list[Dataset]) -> SourceSeries:
    """Sort by position along the normal, drop repeated positions (as the reader), build the affine."""
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient], dtype=float)
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] / np.linalg.norm(iop[3:])
    normal = slice_normal(iop)  # the reader's: slices are stacked exactly as load_ct stacks them
    if normal is None:
        raise ExportError("The source series' ImageOrientationPatient has no slice normal: it cannot be stacked.")

    def height(ds: Dataset) -> float:
        return float(np.dot(_position(ds), normal))

    ordered = sorted(
        datasets,
        key=lambda ds: (
            round(height(ds), 3),
            str(ds.get("AcquisitionNumber", "") or ""),
            int(ds.get("InstanceNumber", 0) or 0),
            str(ds.SOPInstanceUID),
        ),
    )
    heights = np.array([height(ds) for ds in ordered])
    keep = np.concatenate([[True], np.diff(heights) > SAME_POSITION_MM])
    ordered = [ds for ds, k in zip(ordered, keep, strict=True) if k]
    if len(ordered) < 2:
        raise ExportError("The source series has a single slice position: it is not a volume.")
    positions = np.array([_position(ds) for ds in ordered])
    steps = np.sort(np.diff(positions, axis=0), axis=0)
    n = len(steps)
    step = (steps[(n - 1) // 2] + steps[n // 2]) / 2  # the reader's median step
    spacing = [float(v) for v in ordered[0].PixelSpacing]
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col * spacing[0]
    affine[:3, 2] = row * spacing[1]
    affine[:3, 3] = positions[0]
    return SourceSeries(ordered, affine)


def _position(ds: Dataset) -> np.ndarray:
    return np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)


def _reoriented_affine(affine: np.ndarray, shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
    transform = nib_ornt.ornt_transform(geometry.orientation_of(affine), target)
    return np.asarray(affine, dtype=float) @ nib_ornt.inv_ornt_aff(transform, shape)


def on_source_grid(mask: np.ndarray, mask_affine: np.ndarray | None, source: SourceSeries) -> np.ndarray:
    """``mask`` (z, y, x) moved from its grid onto the source stack's (frame k = datasets[k]).

    ``mask_affine`` None means the grid ``load_ct`` gives for this series. Only flips and
    axis permutations are applied; a mask on any other grid is refused.
    """
    mask = np.asarray(mask)
    affine = source.canonical_affine if mask_affine is None else np.asarray(mask_affine, dtype=float)
    if mask.ndim != 3:
        raise ExportError(f"A mask must have 3 dimensions (z, y, x), this one has {mask.ndim}.")
    moved, moved_affine = geometry.reorient(mask, affine, geometry.orientation_of(source.affine))
    if moved.shape != source.shape or not np.allclose(moved_affine, source.affine, atol=_GRID_TOLERANCE_MM):
        raise ExportError(
            f"The mask (shape {tuple(mask.shape)}) is not on the voxel grid of its source series "
            f"(shape {source.shape}); export it with the scan it was made on."
        )
    return np.ascontiguousarray(moved)


@contextmanager
def copied_names_quiet() -> Iterator[None]:
    """Mute highdicom's warning about single-component person names copied from the source
    (anonymisers write "Lung_Dx-A0002"): patient attributes are copied as they are, never edited."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield
