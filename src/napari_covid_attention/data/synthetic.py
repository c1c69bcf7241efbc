"""Synthetic chest CT phantoms: sample data, deterministic test inputs, demo-model training data.

A phantom is a plausible chest CT in HU (body, ribs, spine, mediastinum, lungs with airway
and vessel trees; see :mod:`.phantom_anatomy`) with COVID-19-like or CAP-like pneumonia
(see :mod:`.phantom_lesions`), its lung mask (1 = right, 2 = left lung), its infection
mask and the lesion types drawn. Everything comes from ``np.random.default_rng`` streams
derived from one integer seed, so a phantom is the same on every run and in every process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_covid_attention.atomic import write_csv_atomic
from napari_covid_attention.classes import CAP, CLASS_NAMES, COVID, LESION_TYPES, MANIFEST_COLUMNS
from napari_covid_attention.data.phantom_anatomy import HU_PADDING, Grid, build_anatomy, sample_plan
from napari_covid_attention.data.phantom_lesions import draw_infection, sample_infection_fraction
from napari_covid_attention.io.nifti import save_nifti
from napari_covid_attention.io.volume import CTVolume, hu_array

DEFAULT_SHAPE = (96, 192, 192)
SAMPLE_SHAPE = (120, 256, 256)  # the napari sample data
TRAINING_SHAPE = (64, 128, 128)  # the demo model's data sets
DEFAULT_FOV_MM = (300.0, 360.0, 360.0)  # (z, y, x) extent: a whole adult chest
COVID_PREVALENCE = 0.6  # of phantoms whose class is drawn from the seed

SYNTHETIC_MANIFEST_COLUMNS = (*MANIFEST_COLUMNS, "seed")  # the seed regenerates the case
_CASE_FILE = re.compile(r"case_\d{4,}\.nii\.gz")
_SUBFOLDERS = ("images", "lungs", "infections")


@dataclass
class Phantom:
    """One synthetic case with its ground truth.

    Attributes:
        volume: the CT (HU int16, canonical orientation, real affine).
        lung_mask: (z, y, x) uint8, 1 = right lung, 2 = left lung; includes lesions and
            intrapulmonary vessels and airways, excludes the trachea and main bronchi.
        infection_mask: (z, y, x) uint8, 1 = infected (inside the lungs); air bronchograms
            inside a consolidation are included, as radiologists delineate them.
        label: "COVID-19" or "CAP".
        lesion_flags: each of ``LESION_TYPES`` -> whether it was drawn: ground_glass (haze
            of -725..-430 HU), consolidation (-70..+45 HU), crazy_paving (septal net over
            ground glass), air_bronchogram (air-filled bronchi in a consolidation),
            septal_thickening (the septal net, also over fainter haze).
        infection_fraction: infected voxels / lung voxels, as drawn.
        seed: the seed that reproduces it.
    """

    volume: CTVolume
    lung_mask: np.ndarray
    infection_mask: np.ndarray
    label: str
    lesion_flags: dict[str, bool]
    infection_fraction: float
    seed: int


def generate_phantom(
    seed: int,
    label: str | None = None,
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    fov_mm: tuple[float, float, float] = DEFAULT_FOV_MM,
    infection_fraction: float | None = None,
    noise_sd_hu: float | None = None,
) -> Phantom:
    """Make the phantom of ``seed``.

    ``label`` None draws the class from the seed (60 % COVID-19); ``infection_fraction``
    None draws the infection size from the class's distribution. The anatomy depends only
    on the seed, so one seed with either label gives the same patient with different
    pneumonia. ``shape`` is (z, y, x); the voxel spacing is ``fov_mm / shape``.
    ``noise_sd_hu`` overrides the seed's image noise (10-25 HU), e.g. ~60 HU for a
    low-dose protocol, without changing anything else about the case.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if label is not None and label not in CLASS_NAMES:
        raise ValueError(f"label must be one of {CLASS_NAMES}, got {label!r}")
    if infection_fraction is not None and not 0.0 < infection_fraction < 0.9:
        raise ValueError(f"infection_fraction must be in (0, 0.9), got {infection_fraction!r}")
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes (z, y, x) of at least 16 voxels, got {shape!r}")
    if noise_sd_hu is not None and not 0.0 <= noise_sd_hu <= 500.0:
        raise ValueError(f"noise_sd_hu must be in [0, 500] HU, got {noise_sd_hu!r}")
    if len(fov_mm) != 3 or min(fov_mm) <= 0:
        raise ValueError(f"fov_mm must be 3 positive extents (z, y, x) in mm, got {fov_mm!r}")
    label_rng, size_rng, anatomy_rng, lesion_rng, noise_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(int(seed)).spawn(5)
    )
    if label is None:
        label = COVID if label_rng.random() < COVID_PREVALENCE else CAP
    if infection_fraction is None:
        infection_fraction = sample_infection_fraction(size_rng, label)

    grid = Grid.covering(tuple(int(n) for n in shape), tuple(float(f) for f in fov_mm))  # type: ignore[arg-type]
    plan = sample_plan(anatomy_rng, tuple(float(f) for f in fov_mm))  # type: ignore[arg-type]
    anatomy = build_anatomy(anatomy_rng, grid, plan)
    infection = draw_infection(lesion_rng, anatomy, label, infection_fraction)
    noise_sd = plan.noise_sd if noise_sd_hu is None else float(noise_sd_hu)
    hu = _acquire(noise_rng, anatomy.hu, grid, noise_sd, plan.padding)
    lung_voxels = int(np.count_nonzero(anatomy.lungs))
    volume = CTVolume(
        hu=hu,
        affine=grid.affine,
        metadata={"format": "synthetic phantom", "seed": str(int(seed)), "kind": label},
    )
    return Phantom(
        volume=volume,
        lung_mask=anatomy.lungs,
        infection_mask=infection.mask.astype(np.uint8),
        label=label,
        lesion_flags=infection.flags,
        infection_fraction=float(np.count_nonzero(infection.mask)) / max(lung_voxels, 1),
        seed=int(seed),
    )


def _acquire(rng: np.random.Generator, hu: np.ndarray, grid: Grid, noise_sd: float, padding: bool) -> np.ndarray:
    """Scanner look: partial-volume blur, correlated noise of ``noise_sd`` HU, padding, int16.

    White noise is added before the blur, so one filter pass both softens edges and gives the
    noise its fine grain; its amplitude is set so that ``noise_sd`` survives the filter.
    """
    sigma = (0.45, 0.7, 0.7)
    gain = np.prod([np.sqrt(np.sum(_gaussian_kernel(s) ** 2)) for s in sigma])
    noisy = hu + rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sd / gain)
    image = ndimage.gaussian_filter(noisy, sigma, truncate=3.0)
    if padding:
        _, y, x = grid.axes()
        radius = min(grid.shape[1] * grid.spacing[1], grid.shape[2] * grid.spacing[2]) / 2
        outside = x**2 + y**2 > radius**2
        image[np.broadcast_to(outside, image.shape)] = HU_PADDING
    return hu_array(np.rint(image))


def _gaussian_kernel(sigma: float, truncate: float = 3.0) -> np.ndarray:
    """The 1D kernel scipy's gaussian_filter uses for ``sigma`` (for the noise gain)."""
    radius = int(truncate * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return kernel / kernel.sum()


# --------------------------------------------------------------------------- data sets


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` of a data set made with ``seed`` (63-bit, disjoint)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) | (int(state[1]) >> 1)


def case_label(seed: int, index: int, covid_fraction: float) -> str:
    """The class of case ``index``: an independent draw, so a data set's prefix is stable."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
    return COVID if rng.random() < covid_fraction else CAP


def write_dataset(
    out_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = TRAINING_SHAPE,
    fov_mm: tuple[float, float, float] = DEFAULT_FOV_MM,
    covid_fraction: float = COVID_PREVALENCE,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` phantoms as NIfTI images, lung and infection masks plus ``manifest.csv``.

    Case ``i`` is ``generate_phantom(case_seed(seed, i), case_label(seed, i, covid_fraction))``:
    the same arguments give byte-identical volumes, and different ``seed`` values give
    different patients (use one for training and another for a held-out test set).
    Returns the manifest path.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= covid_fraction <= 1.0:
        raise ValueError(f"covid_fraction must be between 0 and 1, got {covid_fraction}")
    out = Path(out_dir)
    manifest = out / "manifest.csv"
    _prepare_folder(out, manifest, overwrite)
    jobs = [
        (out, i, case_seed(seed, i), case_label(seed, i, covid_fraction), tuple(shape), tuple(fov_mm))
        for i in range(n)
    ]
    rows = _run_jobs(jobs, workers, progress)
    _write_manifest(manifest, [rows[i] for i in range(n)])
    return manifest


def _prepare_folder(out: Path, manifest: Path, overwrite: bool) -> None:
    """Refuse to mix data sets; with ``overwrite`` remove only our own case files."""
    if manifest.exists():
        if not overwrite:
            raise ValueError(
                f"{out} already holds a data set (manifest.csv); choose an empty folder "
                "or pass overwrite=True to replace it."
            )
        for sub in _SUBFOLDERS:
            folder = out / sub
            if folder.is_dir():
                for path in folder.iterdir():
                    if _CASE_FILE.fullmatch(path.name):
                        path.unlink()
        manifest.unlink()
    for sub in _SUBFOLDERS:
        (out / sub).mkdir(parents=True, exist_ok=True)


def _run_jobs(
    jobs: list[tuple], workers: int | None, progress: Callable[[int, int], None] | None
) -> dict[int, dict[str, str]]:
    """Generate and save every case, in a process pool when more than one worker is wanted."""
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    total, rows = len(jobs), {}
    if workers == 1 or total == 1:
        for done, job in enumerate(jobs, start=1):
            row = _write_case(*job)
            rows[int(row.pop("_index"))] = row
            if progress:
                progress(done, total)
        return rows
    # spawn, not fork: the caller may hold threads (torch, Qt) that a fork would copy mid-use
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_write_case, *job) for job in jobs]
            for done, future in enumerate(as_completed(futures), start=1):
                row = future.result()
                rows[int(row.pop("_index"))] = row
                if progress:
                    progress(done, total)
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "The phantom worker processes stopped unexpectedly. Call write_dataset from a "
            "script guarded by `if __name__ == \"__main__\":` (or from a module), or pass workers=1."
        ) from exc
    return rows


def _write_case(
    out: Path, index: int, seed: int, label: str, shape: tuple[int, int, int], fov_mm: tuple[float, float, float]
) -> dict[str, str]:
    """Generate case ``index`` and write its three NIfTI files; returns its manifest row."""
    phantom = generate_phantom(seed, label, shape=shape, fov_mm=fov_mm)
    name = f"case_{index:04d}.nii.gz"
    affine = phantom.volume.affine
    save_nifti(out / "images" / name, phantom.volume.hu, affine)
    save_nifti(out / "lungs" / name, phantom.lung_mask, affine)
    save_nifti(out / "infections" / name, phantom.infection_mask, affine)
    row = {
        "image": f"images/{name}",
        "label": phantom.label,
        "infection_mask": f"infections/{name}",
        "lung_mask": f"lungs/{name}",
        **{key: str(int(phantom.lesion_flags[key])) for key in LESION_TYPES},
        "infection_fraction": f"{phantom.infection_fraction:.6f}",
        "seed": str(phantom.seed),
        "_index": str(index),
    }
    return row


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    write_csv_atomic(path, rows, list(SYNTHETIC_MANIFEST_COLUMNS), extrasaction="ignore")
