"""Shared by the benchmark scripts: machine description and writing CT volumes as DICOM."""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np


def machine() -> str:
    """CPU model and usable cores (numbers in docs must say where they were measured)."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {usable} usable cores ({os.cpu_count()} logical), Python {platform.python_version()}"


def peak_rss_mb() -> float:
    """Peak RSS of this process image: VmHWM (ru_maxrss would include the parent's peak,
    since Linux keeps it across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if platform.system() == "Darwin" else peak / 1024


def write_dicom_series(folder: Path, hu: np.ndarray, spacing_mm, origin_lps) -> Path:
    """A canonical (z, y, x) HU volume as an uncompressed axial CT series.

    File names and InstanceNumbers are shuffled, as in real exports that a reader must
    sort by position.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    order = list(range(hu.shape[0]))
    random.Random(1).shuffle(order)
    series, study = generate_uid(), generate_uid()
    raw = (np.asarray(hu, dtype=np.int32) + 1024).clip(0, 4095).astype(np.uint16)
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Bench^Synthetic", "0"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = order[k] + 1
        ds.ImagePositionPatient = [float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2]) + spacing_mm[0] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [float(spacing_mm[1]), float(spacing_mm[2])], float(spacing_mm[0])
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = raw[k].tobytes()
        pydicom.dcmwrite(folder / f"{random.Random(k).getrandbits(40):010x}.dcm", ds, enforce_file_format=True)
    return folder
