"""Helpers of the DICOM export tests: tiny synthetic CT series, a geometric frame check, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

DCIODVFY = shutil.which("dciodvfy")


def write_series(
    folder: Path,
    *,
    n: int = 4,
    rows: int = 16,
    columns: int = 16,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing_mm: tuple[float, float] = (0.7, 0.8),
    step_mm: float = 2.5,
    drop: tuple[str, ...] = (),
) -> list[Path]:
    """A small CT series with every UID (unless named in ``drop``); InstanceNumber runs against position."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.preamble = b"\x00" * 128
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, n - k
        ds.Manufacturer, ds.PositionReferenceIndicator = "Test", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.array([-10.0, -20.0, 30.0]) + k * step_mm * normal]
        ds.PixelSpacing = [float(v) for v in spacing_mm]
        ds.SliceThickness = step_mm
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.KVP, ds.AcquisitionNumber = 0, 1, 120, 1
        image = np.full((rows, columns), -1000, np.int16)
        image[rows // 4 : 3 * rows // 4, columns // 4 : 3 * columns // 4] = 40 + k
        ds.PixelData = image.tobytes()
        for keyword in drop:
            delattr(ds, keyword)
        path = folder / f"im{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=not drop)
        paths.append(path)
    return paths


def headers(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def asymmetric_masks(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lung (1 right, 2 left) and infection (0/1) masks with no symmetry, so any flip shows."""
    rng = np.random.default_rng(seed)
    lungs = np.zeros(shape, np.uint8)
    half = shape[2] // 2
    lungs[:, 1:-1, 1:half] = 1
    lungs[:, 1:-1, half:-1] = 2
    lungs[rng.random(shape) < 0.15] = 0
    infection = ((rng.random(shape) < 0.3) & (lungs > 0)).astype(np.uint8)
    infection[0] = 0  # one empty slice
    return lungs, infection


def frames_match_positions(seg: Dataset, sources: list[Dataset], mask: np.ndarray, affine: np.ndarray, segment: int) -> bool:
    """Every SEG frame of ``segment``, read by its source image, equals ``mask`` at the voxels
    whose LPS positions that image's pixels have: an independent check of the frame geometry."""
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(seg, copy=True)
    inverse = np.linalg.inv(affine)
    for ds in sources:
        frame = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID], segment_numbers=[segment], dtype=np.uint8
        )[0, ..., 0]
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0 : int(ds.Rows), 0 : int(ds.Columns)]
        lps = np.asarray(ds.ImagePositionPatient, dtype=float)[:, None] + iop[:3, None] * (c.ravel() * dx) + iop[3:, None] * (r.ravel() * dy)
        index = np.rint((inverse @ np.vstack([lps, np.ones(lps.shape[1])]))[:3]).astype(int)
        if not np.array_equal(frame.ravel(), mask[index[0], index[1], index[2]]):
            return False
    return True


def dciodvfy_errors(path: Path) -> tuple[list[str], str]:
    """(Error lines, whole output) of dciodvfy on ``path``."""
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    return [line for line in output.splitlines() if line.startswith("Error")], output
