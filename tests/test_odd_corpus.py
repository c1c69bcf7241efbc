"""Robustness sweep over pydicom's corpus of odd DICOM files.

Every file and folder of the corpus must either load as a correct volume or be refused
with one clear sentence: never another exception, a traceback or a hang. The sweep runs
in a subprocess (this file run as a script) with a per-path alarm and an overall
timeout, so a hang fails the test instead of freezing CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest

PER_PATH_SECONDS = 20
SWEEP_SECONDS = 240
MAX_MESSAGE = 300


# ------------------------------------------------------------------- the sweep child


class _PathTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _PathTimeout


def _outcome(path: Path) -> dict:
    """Load one path and describe what happened (run inside the child process)."""
    import numpy as np

    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.io.volume import CTLoadError

    try:
        volume = load_ct(path)
    except CTLoadError as exc:
        return {"outcome": "refused", "message": str(exc)}
    except _PathTimeout:
        return {"outcome": "timeout", "message": f"more than {PER_PATH_SECONDS} s"}
    except Exception as exc:  # the point of the sweep: report, don't crash
        return {"outcome": "error", "message": f"{type(exc).__name__}: {exc}"}
    return {
        "outcome": "loaded",
        "shape": list(volume.shape),
        "finite": bool(np.isfinite(volume.hu).all()),
        "det": float(np.linalg.det(volume.affine[:3, :3])),
        "spacing": list(volume.spacing_mm),
        "warnings": list(volume.warnings),
        "message": f"{volume.shape} {volume.hu.dtype}",
    }


def _sweep(corpus: Path) -> None:
    """Print one JSON line when a path starts and one with its outcome."""
    signal.signal(signal.SIGALRM, _on_alarm)
    paths = [corpus, *sorted(corpus.rglob("*"))]
    for path in paths:
        rel = str(path.relative_to(corpus.parent))
        print(json.dumps({"start": rel}), flush=True)
        started = time.perf_counter()
        signal.alarm(PER_PATH_SECONDS)
        try:
            result = _outcome(path)
        finally:
            signal.alarm(0)
        result.update(path=rel, seconds=round(time.perf_counter() - started, 4))
        print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def sweep(odd_corpus_dir: Path) -> dict[str, dict]:
    """Outcome per corpus path (relative to the corpus' parent), from one child process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(
            [sys.executable, __file__, str(odd_corpus_dir)],
            capture_output=True,
            text=True,
            timeout=SWEEP_SECONDS,
            env=env,
        )
        output, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        last = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        pytest.fail(f"the sweep hung; last path started: {last[-1] if last else None}")
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    results = {line["path"]: line for line in lines if "outcome" in line}
    started = [line["start"] for line in lines if "start" in line]
    unfinished = [path for path in started if path not in results]
    assert not unfinished, f"the sweep died at {unfinished[0]}: {stderr[-2000:]}"
    assert done.returncode == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    _print_table(results)
    return results


def _print_table(results: dict[str, dict]) -> None:
    """A per-path report, shown with ``pytest -s``."""
    print(f"\n{'seconds':>8}  {'outcome':<8}  path: message")
    for path, result in results.items():
        print(f"{result['seconds']:>8.3f}  {result['outcome']:<8}  {path}: {result['message']}")
    counts = Counter(result["outcome"] for result in results.values())
    print("summary:", dict(counts))


def test_sweep_visits_every_file_and_folder(sweep: dict[str, dict], odd_corpus_dir: Path) -> None:
    expected = 1 + sum(1 for _ in odd_corpus_dir.rglob("*"))
    assert len(sweep) == expected


def test_every_path_loads_or_is_refused_in_one_sentence(sweep: dict[str, dict]) -> None:
    bad = {p: r["message"] for p, r in sweep.items() if r["outcome"] not in ("loaded", "refused")}
    assert not bad, f"exceptions other than CTLoadError, or timeouts: {bad}"
    for path, result in sweep.items():
        message = result["message"]
        if result["outcome"] == "refused":
            assert "\n" not in message and len(message) < MAX_MESSAGE, path
            assert "Traceback" not in message and message.endswith("."), path
        else:
            assert len(result["shape"]) == 3 and min(result["shape"]) >= 1, path
            assert result["shape"][0] >= 2, path
            assert result["finite"], path
            assert abs(result["det"]) > 1e-9, path
            assert all(s > 0 for s in result["spacing"]), path
        assert result["seconds"] < PER_PATH_SECONDS, path


REFUSALS = {
    "CT_small.dcm": "CT_small.dcm is a single 2D slice; open the folder with the whole series",
    "MR_small.dcm": "is an MR image, not a CT scan",
    "MR_small_jpeg_ls_lossless.dcm": "is an MR image, not a CT scan",
    "rtplan.dcm": "is an RT plan, not an image",
    "rtstruct.dcm": "is an RT structure set, not an image",
    "test-SR.dcm": "is a structured report, not an image",
    "waveform_ecg.dcm": "is a waveform (ECG), not an image",
    "rtdose.dcm": "is an RT dose grid, not a CT scan",
    "SC_rgb_rle.dcm": "is a secondary capture image",
    "SC_ybr_full_422_uncompressed.dcm": "is a secondary capture image",
    "MR_truncated.dcm": "is an MR image, not a CT scan",
    "rtplan_truncated.dcm": "is an RT plan, not an image",
    "examples_palette.dcm": "is an ultrasound image, not a CT scan",
    "liver_1frame.dcm": "is a segmentation, not a CT scan",
    "README.txt": "is neither a NIfTI file",
    "zipMR.gz": "is neither a NIfTI file",
    "dicomdirtests/DICOMDIR-empty.dcm": "is a DICOMDIR that refers to no image files",
    "dicomdirtests/TINY_ALPHA/DICOMDIR": "has no pixel data",
    "dicomdirtests/98892003": "contains no CT image series",
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_specific_refusals(sweep: dict[str, dict], name: str) -> None:
    result = sweep[f"dicom-odd-corpus/{name}"]
    assert result["outcome"] == "refused"
    assert REFUSALS[name] in result["message"]


LOADS = {
    "dicomdirtests/DICOMDIR": [5, 16, 16],
    "dicomdirtests/DICOMDIR-implicit": [5, 16, 16],
    "dicomdirtests/DICOMDIR-bigEnd": [5, 16, 16],
    "dicomdirtests/98892001/CT5N": [5, 16, 16],
    "dicomdirtests/98892001/CT5N/2392": [5, 16, 16],
    "dicomdirtests/77654033/CT2": [4, 16, 16],
}


@pytest.mark.parametrize("name", sorted(LOADS))
def test_specific_loads(sweep: dict[str, dict], name: str) -> None:
    result = sweep[f"dicom-odd-corpus/{name}"]
    assert result["outcome"] == "loaded", result["message"]
    assert result["shape"] == LOADS[name]


def test_series_with_a_200_mm_gap_warns(sweep: dict[str, dict]) -> None:
    result = sweep["dicom-odd-corpus/dicomdirtests/77654033/CT2"]
    assert any("missing" in w for w in result["warnings"])


def test_enhanced_ct_supplemental_loads_its_two_frames(sweep: dict[str, dict]) -> None:
    key = "dicom-odd-corpus/eCT_Supplemental.dcm"
    if key not in sweep:
        pytest.skip("eCT_Supplemental.dcm is not in this copy of the corpus")
    assert sweep[key]["outcome"] == "loaded", sweep[key]["message"]
    assert sweep[key]["shape"][0] == 2


@pytest.mark.parametrize("cut", ["pixels", "header"])
def test_truncated_ct_file_is_refused(odd_corpus_dir: Path, tmp_path: Path, cut: str) -> None:
    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.io.volume import CTLoadError

    data = (odd_corpus_dir / "CT_small.dcm").read_bytes()
    path = tmp_path / "CT_small_truncated.dcm"
    path.write_bytes(data[: len(data) - 5000] if cut == "pixels" else data[:700])
    with pytest.raises(CTLoadError, match="truncated or damaged") as error:
        load_ct(path)
    assert "\n" not in str(error.value)


ENCODED_GRAYSCALE = [
    "693_J2KI.dcm",  # CT, JPEG 2000, BitsStored mismatch
    "J2K_pixelrep_mismatch.dcm",  # CT, JPEG 2000 lossless, signedness mismatch
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPGExtended.dcm",  # JPEG extended, 12-bit
    "JPEG-lossy.dcm",
    "JPEG2000.dcm",
]


@pytest.mark.parametrize("name", ENCODED_GRAYSCALE)
def test_corpus_encodings_decode_like_pydicom(
    odd_corpus_dir: Path, tmp_path: Path, name: str
) -> None:
    """A corpus image relabelled as a 2-slice CT series decodes to pydicom's own values."""
    import numpy as np
    import pydicom
    from pydicom.uid import CTImageStorage, generate_uid

    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.io.volume import CTLoadError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pydicom.dcmread(odd_corpus_dir / name)
        slope = float(reference.get("RescaleSlope", 1) or 1)
        try:
            expected = reference.pixel_array * slope + float(
                reference.get("RescaleIntercept", 0) or 0
            )
        except Exception:  # pydicom cannot decode it either (JPEG-lossy.dcm): a clean refusal
            expected = None
        series_uid = generate_uid()
        for k in range(2):
            ds = pydicom.dcmread(odd_corpus_dir / name)
            ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "CT", CTImageStorage, generate_uid()
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.SeriesInstanceUID = series_uid
            ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = ds.get("PixelSpacing") or [0.5, 0.5]
            ds.save_as(tmp_path / f"{k}.dcm")
    if expected is None:
        with pytest.raises(
            CTLoadError, match="uses a compressed encoding .* that could not be decoded"
        ):
            load_ct(tmp_path)
        return
    volume = load_ct(tmp_path)
    assert volume.shape == (2, *expected.shape)
    assert volume.metadata["TransferSyntax"] == reference.file_meta.TransferSyntaxUID.name
    assert np.allclose(volume.hu[1], np.maximum(expected, -1024))


def test_fast_header_walker_agrees_with_pydicom(
    odd_corpus_dir: Path, chest_series_dir: Path
) -> None:
    """Every file the fast walker handles gives exactly the values pydicom reads."""
    import pydicom

    from napari_covid_attention.io.dicom import headers

    paths = [*odd_corpus_dir.rglob("*"), *chest_series_dir.iterdir()]
    walked = 0
    for path in (p for p in paths if p.is_file()):
        with open(path, "rb") as handle:
            window = headers._Window(handle, os.fstat(handle.fileno()).st_size)
            if not headers._looks_like_dicom(window.get(0, min(window.size, 1024))):
                continue
            try:
                fast = headers._walk_header(window)
            except headers._Fallback:
                continue
            handle.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slow = headers._from_dataset(
                    pydicom.dcmread(handle, defer_size=4096, force=True), window.size
                )
        walked += 1
        for attr in (
            "values",
            "little_endian",
            "transfer_syntax",
            "pixel_keyword",
            "pixel_offset",
            "pixel_length",
        ):
            assert getattr(fast, attr) == getattr(slow, attr), (path.name, attr)
    assert walked > 50


def test_non_dicom_files_are_not_dicom(odd_corpus_dir: Path) -> None:
    from napari_covid_attention.io import dicom

    for name in ("README.txt", "test1.json", "zipMR.gz", "crayons.icc", "rtplan.dump"):
        assert not dicom.is_dicom_file(odd_corpus_dir / name), name
    for name in (
        "CT_small.dcm",
        "rtstruct.dcm",
        "ExplVR_BigEndNoMeta.dcm",
        "ExplVR_LitEndNoMeta.dcm",
    ):
        assert dicom.is_dicom_file(odd_corpus_dir / name), name


def test_corpus_folder_copy_without_the_dicomdir_trees_loads_nothing(
    odd_corpus_dir: Path, tmp_path: Path
) -> None:
    """The top folder alone holds only single slices and non-CT objects: a clear refusal."""
    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.io.volume import CTLoadError

    folder = tmp_path / "top"
    folder.mkdir()
    for path in odd_corpus_dir.iterdir():
        if path.is_file():
            shutil.copy(path, folder / path.name)
    with pytest.raises(CTLoadError, match="single 2D slice") as error:
        load_ct(folder)
    assert "\n" not in str(error.value)


if __name__ == "__main__":
    _sweep(Path(sys.argv[1]))
