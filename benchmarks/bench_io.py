"""Benchmark: DICOM series loading with ``load_ct`` against SimpleITK's ImageSeriesReader.

The project's target is ``load_ct`` <= 0.5x the time of SimpleITK (GetGDCMSeriesFileNames +
Execute + GetArrayFromImage) on the same files in the same run. Each reader runs in a fresh
subprocess per dataset, so its peak RSS is its own: the first run there is "cold-ish" (fresh
process, files in the page cache), then the best of ``--repeats`` runs is reported.

    python benchmarks/bench_io.py [--slices 300] [--repeats 5] [--real PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, write_dicom_series  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVID_ATTENTION_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_REAL = SHARED_DATA / "chest-ct-dicom-lung-pet-ct-dx"


# ----------------------------------------------------------------------- workers


def _load_ours(folder: str) -> np.ndarray:
    from napari_covid_attention.io.load import load_ct

    return load_ct(folder).hu


def _load_sitk(folder: str) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    return sitk.GetArrayFromImage(reader.Execute())


READERS = {"load_ct": _load_ours, "SimpleITK": _load_sitk}


def _worker(reader: str, folder: str, repeats: int) -> None:
    """Time one reader in this (fresh) process and print JSON: first, best, peak RSS."""
    load = READERS[reader]
    if reader == "SimpleITK":
        import SimpleITK  # noqa: F401  (import cost is not load cost)
    else:
        import napari_covid_attention.io.dicom  # noqa: F401
    baseline = peak_rss_mb()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        array = load(folder)
        times.append(time.perf_counter() - start)
        del array
    result = {
        "first": times[0],
        "best": min(times[1:]),
        "peak_mb": peak_rss_mb(),
        "baseline_mb": baseline,
    }
    print(json.dumps(result))


def _run_worker(reader: str, folder: Path, repeats: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            reader,
            "--folder",
            str(folder),
            "--repeats",
            str(repeats),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{reader} worker failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- datasets


def write_synthetic_series(folder: Path, slices: int, size: int = 512) -> Path:
    """An uncompressed CT series with shuffled file names and InstanceNumbers."""
    rng = np.random.default_rng(0)
    body = rng.integers(900, 1200, size=(size, size), dtype=np.uint16).astype(np.int16) - 1024
    yy, xx = np.mgrid[:size, :size]
    body[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 > (0.45 * size) ** 2] = -1000  # air
    hu = np.stack([body + (k % 50) for k in range(slices)])
    return write_dicom_series(folder, hu, (1.25, 0.625, 0.625), (-160.0, -160.0, 0.0))


# ------------------------------------------------------------------------- report


def same_values(folder: Path) -> bool:
    """Both readers give the same HU (SimpleITK's padding below -1024 counted as air)."""
    ours, theirs = _load_ours(str(folder)), _load_sitk(str(folder))
    return ours.shape == theirs.shape and bool(np.array_equal(ours, np.maximum(theirs, -1024)))


def bench(name: str, folder: Path, repeats: int) -> list[str]:
    results = {reader: _run_worker(reader, folder, repeats) for reader in READERS}
    ratio_best = results["load_ct"]["best"] / results["SimpleITK"]["best"]
    ratio_first = results["load_ct"]["first"] / results["SimpleITK"]["first"]
    rows = []
    for reader, r in results.items():
        rows.append(
            f"{name:<24} {reader:<10} {r['first']:>9.3f} {r['best']:>9.3f} "
            f"{r['peak_mb']:>9.0f} {r['peak_mb'] - r['baseline_mb']:>9.0f}"
        )
    rows.append(
        f"{'':<24} {'ratio':<10} {ratio_first:>9.2f} {ratio_best:>9.2f}   "
        f"(load_ct / SimpleITK; target <= 0.50; same values: {same_values(folder)})"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slices", type=int, default=300, help="slices of the synthetic 512x512 series"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the first one")
    parser.add_argument(
        "--real", type=Path, default=DEFAULT_REAL, help="a real DICOM series folder"
    )
    parser.add_argument("--worker", choices=sorted(READERS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.folder, args.repeats)
        return

    print(f"machine: {machine()}")
    print(
        f"{'dataset':<24} {'reader':<10} {'first s':>9} {'best s':>9} {'peak MB':>9} {'+load MB':>9}"
    )
    if args.real.is_dir():
        n = sum(1 for p in args.real.iterdir() if p.suffix == ".dcm")
        print("\n".join(bench(f"real {n} slices", args.real, args.repeats)))
    else:
        print(f"(real series not found at {args.real}; skipped)")
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        start = time.perf_counter()
        folder = write_synthetic_series(Path(tmp), args.slices)
        print(f"(synthetic series written in {time.perf_counter() - start:.1f} s)")
        print("\n".join(bench(f"synthetic {args.slices}x512x512", folder, args.repeats)))


if __name__ == "__main__":
    main()
