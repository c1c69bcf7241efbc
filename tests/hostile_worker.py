"""Child process for the hostile-input and fuzz tests: load inputs under a memory cap.

``python hostile_worker.py --mem BYTES --seconds S PATH...`` loads each path with
``load_ct`` and ``python hostile_worker.py --mem BYTES --seconds S --fuzz nifti|dicom
--cases N --seed K --work DIR`` loads N mutated copies of a tiny seed scan. Either way the
address space is capped with ``RLIMIT_AS``, every load has an alarm, and one JSON line is
printed when a case starts and one with its outcome, so the parent knows which case hung
or crashed the process. A refusal whose cause is a ``MemoryError`` counts as a memory
failure: the cap, not the reader, stopped it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np

MAX_MESSAGE = 300


class CaseTimeout(KeyboardInterrupt):
    """Raised by the alarm; a KeyboardInterrupt so no ``except Exception`` swallows it."""


def _on_alarm(signum, frame):
    raise CaseTimeout


def limit_memory(max_bytes: int) -> None:
    import resource  # POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _memory_error_in_chain(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def load_outcome(path: Path, seconds: int) -> dict:
    """What ``load_ct(path)`` did: loaded, refused, memory, error or timeout."""
    from napari_covid_attention.errors import UserFacingError
    from napari_covid_attention.io.load import load_ct

    started = time.perf_counter()
    signal.alarm(seconds)
    try:
        volume = load_ct(path)
        result = {
            "outcome": "loaded",
            "message": f"{volume.shape} {volume.hu.dtype}",
            "finite": bool(np.isfinite(volume.hu).all()),
        }
    except CaseTimeout:
        result = {"outcome": "timeout", "message": f"more than {seconds} s"}
    except UserFacingError as exc:
        outcome = "memory" if _memory_error_in_chain(exc) else "refused"
        result = {"outcome": outcome, "message": str(exc)}
    except MemoryError as exc:
        result = {"outcome": "memory", "message": f"MemoryError: {exc}"}
    except Exception as exc:  # the point of the worker: report, don't crash
        result = {"outcome": "error", "message": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - started, 4)
    return result


def _emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


# --------------------------------------------------------------------------- seeds


def nifti_seed(path: Path) -> Path:
    """An 8x16x16 (x, y, z = 16, 16, 8) int16 chest-like NIfTI in HU."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 400, (16, 16, 8)).astype(np.int16)
    data[:2] = -1000
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def dicom_seed(folder: Path, n: int = 4, size: int = 16) -> list[Path]:
    """A 4-slice 16x16 int16 CT series (explicit VR little endian), written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "CT", 3, k + 1, 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 1500, (size, size)).astype(np.int16).tobytes()
        path = folder / f"IM{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# ------------------------------------------------------------------ NIfTI mutations

# (offset, struct code) of the NIfTI-1 header fields worth breaking.
_NIFTI_FIELDS = [
    (0, "<i"),  # sizeof_hdr
    *[(40 + 2 * i, "<h") for i in range(8)],  # dim[0..7]
    (70, "<h"),  # datatype
    (72, "<h"),  # bitpix
    *[(76 + 4 * i, "<f") for i in range(8)],  # pixdim
    (108, "<f"),  # vox_offset
    (112, "<f"),  # scl_slope
    (116, "<f"),  # scl_inter
    (252, "<h"),  # qform_code
    (254, "<h"),  # sform_code
    *[(256 + 4 * i, "<f") for i in range(6)],  # quatern b, c, d, qoffset x, y, z
    *[(280 + 4 * i, "<f") for i in range(12)],  # srow_x, srow_y, srow_z
    (348, "<i"),  # extension flag
    (352, "<i"),  # first extension's esize
]
_ABSURD_INT = [0, 1, -1, 2, 3, 4, 5, 7, 8, 9, 255, 256, 2048, 2049, 4096, 32767, -32768, 2**31 - 1]
_ABSURD_FLOAT = [0.0, -1.0, 1e-30, 1e30, 1e10, -1e10, float("nan"), float("inf"), -float("inf"), 3.4e38]
_DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 3, 99]


def _mutate_nifti(header: bytes, rng: np.random.Generator) -> bytes:
    """A header with 1-4 fields set to absurd values, or bits flipped."""
    data = bytearray(header)
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.integers(0, 10)
        if kind < 3:  # random bit flips anywhere in the header
            for _ in range(int(rng.integers(1, 9))):
                pos = int(rng.integers(0, min(len(data), 356)))
                data[pos] ^= 1 << int(rng.integers(0, 8))
            continue
        offset, code = _NIFTI_FIELDS[int(rng.integers(0, len(_NIFTI_FIELDS)))]
        if offset + struct.calcsize(code) > len(data):
            continue
        if offset == 70:
            value = _DATATYPES[int(rng.integers(0, len(_DATATYPES)))]
        elif code == "<f":
            value = _ABSURD_FLOAT[int(rng.integers(0, len(_ABSURD_FLOAT)))]
        else:
            value = _ABSURD_INT[int(rng.integers(0, len(_ABSURD_INT)))]
            if code == "<h":
                value = max(-32768, min(32767, value))
        struct.pack_into(code, data, offset, value)
    return bytes(data)


def nifti_cases(seed_file: Path, work: Path, n: int, seed: int):
    """Yield (case id, path) of ``n`` mutated copies of the seed NIfTI."""
    raw = seed_file.read_bytes()
    rng = np.random.default_rng(seed)
    for case in range(n):
        kind = int(rng.integers(0, 10))
        mutated = _mutate_nifti(raw, rng) if kind < 8 else raw
        if kind >= 6 or rng.random() < 0.2:  # truncations, also of a mutated header
            mutated = mutated[: int(rng.integers(0, len(mutated)))]
        gz = bool(rng.integers(0, 2))
        path = work / f"case{case:04d}.nii{'.gz' if gz else ''}"
        if gz:
            packed = gzip.compress(mutated, compresslevel=1, mtime=0)
            if rng.random() < 0.15:  # damage the compressed stream itself
                packed = bytearray(packed)
                pos = int(rng.integers(0, len(packed)))
                packed[pos] ^= 1 << int(rng.integers(0, 8))
                packed = bytes(packed)
            path.write_bytes(packed)
        else:
            path.write_bytes(mutated)
        yield f"nifti-{seed}-{case}", path


# ------------------------------------------------------------------ DICOM mutations

_SYNTAXES = [
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.1.99",  # deflated
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.3.4.5",  # unknown
    "",
    "garbage",
]


def _absurd_dicom_value(rng: np.random.Generator):
    """(keyword, value) of an absurd header value; None value means delete it."""
    choices = [
        ("Rows", [0, 1, 2, 3, 2048, 2049, 4096, 65535]),
        ("Columns", [0, 1, 2, 3, 2048, 2049, 4096, 65535]),
        ("NumberOfFrames", ["0", "-1", "abc", "1000000000", "65535", "2", "4"]),
        ("PixelSpacing", [["0", "0"], ["-1", "-1"], ["nan", "nan"], ["1e30", "1e30"], ["1"], None]),
        ("RescaleSlope", ["0", "-1", "1e10", "1e-30", "nan", "inf", "x", "2", None]),
        ("RescaleIntercept", ["1e10", "-1e10", "nan", "-3.4e38", "0.5", None]),
        ("BitsAllocated", [0, 1, 7, 8, 12, 32, 33, 64, 65535]),
        ("BitsStored", [0, 1, 8, 17, 40, 65535]),
        ("HighBit", [0, 40, 65535]),
        ("PixelRepresentation", [0, 2, 65535]),
        ("SamplesPerPixel", [0, 2, 3, 65535]),
        ("PhotometricInterpretation", ["RGB", "PALETTE COLOR", "YBR_FULL_422", "", "X"]),
        ("ImagePositionPatient", [["1e300", "0", "0"], ["nan", "0", "0"], ["0"], None]),
        ("ImageOrientationPatient", [["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["nan"] * 6, None]),
        ("SliceThickness", ["0", "-5", "nan", "1e30"]),
        ("SeriesInstanceUID", [None, "", "1.2.3"]),
        ("Modality", ["MR", "", "SR", None]),
        ("SOPClassUID", ["1.2.840.10008.5.1.4.1.1.7", "", "1.2.3"]),
        ("PixelPaddingValue", [0, 65535, -32768]),
        ("PixelData", [b"", b"\x00" * 7, None]),
    ]
    keyword, values = choices[int(rng.integers(0, len(choices)))]
    return keyword, values[int(rng.integers(0, len(values)))]


def _structured(path: Path, rng: np.random.Generator) -> None:
    """Set 1-3 header values of one file to absurd values with pydicom."""
    import pydicom
    from pydicom.datadict import keyword_dict
    from pydicom.dataelem import DataElement
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)
    for _ in range(int(rng.integers(1, 4))):
        if rng.random() < 0.15:
            ds.file_meta.TransferSyntaxUID = _SYNTAXES[int(rng.integers(0, len(_SYNTAXES)))]
            continue
        keyword, value = _absurd_dicom_value(rng)
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
            continue
        tag = keyword_dict[keyword]
        try:
            if keyword == "PixelPaddingValue":
                ds.add(DataElement(tag, "SS" if value < 0 else "US", value))
            else:
                setattr(ds, keyword, value)
        except (ValueError, TypeError, OverflowError):  # pydicom refuses it as typed
            text = "\\".join(value) if isinstance(value, list) else str(value)
            ds.add(DataElement(tag, "LO", text))
    # Usually the data stays explicit little endian whatever the (mutated) transfer
    # syntax claims; sometimes it is really written implicit or big endian.
    little, implicit = True, False
    if rng.random() < 0.3:
        little, implicit = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        implicit = implicit and little
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if "PixelData" in ds and (not syntax.is_transfer_syntax or syntax.is_encapsulated):
        if rng.random() < 0.7:  # raw bytes as the "compressed" frame: garbage to a decoder
            ds.PixelData = encapsulate([bytes(ds.PixelData) or b"\x00\x00"])
            ds["PixelData"].VR = "OB"
    try:
        pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=little, force_encoding=True)
    except Exception:  # an encoding pydicom will not write: the plain one
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, force_encoding=True)


def _flip_bits(path: Path, rng: np.random.Generator) -> None:
    data = bytearray(path.read_bytes())
    end = max(1, len(data) - 16 * 16 * 2)  # the header, not the pixels
    for _ in range(int(rng.integers(1, 17))):
        pos = int(rng.integers(0, end))
        data[pos] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))


def _truncate(path: Path, rng: np.random.Generator) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(rng.integers(0, len(data)))])


def dicom_cases(seed_folder: Path, work: Path, n: int, seed: int):
    """Yield (case id, path) of ``n`` mutated copies of the seed series (folder or one file)."""
    rng = np.random.default_rng(seed)
    for case in range(n):
        folder = work / f"case{case:04d}"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(seed_folder, folder)
        files = sorted(folder.iterdir())
        targets = files if rng.random() < 0.3 else [files[int(rng.integers(0, len(files)))]]
        for target in targets:
            kind = rng.random()
            if kind < 0.5:
                try:
                    _structured(target, rng)
                except Exception:  # a dataset pydicom will not write at all: cut it instead
                    _truncate(target, rng)
            elif kind < 0.85:
                _flip_bits(target, rng)
            else:
                _truncate(target, rng)
        path = folder if rng.random() < 0.7 else targets[0]
        yield f"dicom-{seed}-{case}", path


# --------------------------------------------------------------------- the parent


def run_worker(args: list[str], timeout: float) -> dict[str, dict]:
    """Run this file as a child with ``args``; outcome per case id.

    A child that hangs past ``timeout`` or dies gets the case it was working on reported
    as "hang" or "crash" instead of losing the whole run.
    """
    import subprocess

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            [sys.executable, __file__, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        output, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr, code = "", "timeout"
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    results = {line["case"]: line for line in lines if "case" in line}
    started = [line["start"] for line in lines if "start" in line]
    for case in started:
        if case not in results:
            what = "hang" if code == "timeout" else "crash"
            results[case] = {"outcome": what, "message": f"exit {code}: {stderr[-1000:]}"}
    if not started:
        results["<worker>"] = {"outcome": "crash", "message": f"exit {code}: {stderr[-2000:]}"}
    return results


# ----------------------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mem", type=int, default=1 << 30)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--fuzz", choices=["nifti", "dicom"])
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path)
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    import napari_covid_attention.io.dicom  # noqa: F401
    import napari_covid_attention.io.load  # noqa: F401  (imports before the cap)

    signal.signal(signal.SIGALRM, _on_alarm)
    if args.fuzz:
        args.work.mkdir(parents=True, exist_ok=True)
        if args.fuzz == "nifti":
            cases = nifti_cases(nifti_seed(args.work / "seed.nii"), args.work, args.cases, args.seed)
        else:
            dicom_seed(args.work / "seed")
            cases = dicom_cases(args.work / "seed", args.work, args.cases, args.seed)
    else:
        cases = ((str(p), p) for p in args.paths)
    limit_memory(args.mem)
    for case_id, path in cases:
        _emit(start=case_id)
        result = load_outcome(path, args.seconds)
        _emit(case=case_id, **result)
        if args.fuzz and result["outcome"] in ("loaded", "refused") and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1:])
