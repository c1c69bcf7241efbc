"""Training data: CSV manifests, preprocessing cached on disk, and torch datasets.

A manifest is a CSV with ``image,label`` and optionally ``infection_mask``,
``lung_mask``, the five lesion flags and ``infection_fraction``; paths are relative to
the CSV (DESIGN.md section 4). Each scan is preprocessed once (lung box, classifier and
segmenter grids) and cached as ``.npz`` without pickle, keyed by the file's identity and
the preprocessing settings, so repeated training runs skip the slow part.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from monai.transforms import (
    Compose,
    DivisiblePadd,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
)
from torch.utils.data import Dataset

from napari_covid_attention.atomic import atomic_path
from napari_covid_attention.classes import CLASS_NAMES, LESION_TYPES, NO_PNEUMONIA
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.jobs import Job, Progress, run_to_end
from napari_covid_attention.preprocess.lung import lung_mask as compute_lung_mask
from napari_covid_attention.preprocess.pipeline import (
    PreprocessConfig,
    network_inputs,
    resample_to_grid,
)

_CACHE_FORMAT = 3  # 2: crops from the computed lung mask, as in diagnosis; 3: lungs on the segmenter grid
NO_PNEUMONIA_LABEL = -1  # label index of "no pneumonia" cases: segmenter negatives, never classified


class ManifestError(UserFacingError):
    """A manifest that cannot be used for training or evaluation."""


@dataclass(frozen=True)
class Case:
    """One row of a manifest, with absolute paths."""

    image: Path
    label: int
    infection_mask: Path | None = None
    lung_mask: Path | None = None
    lesion_flags: tuple[float, ...] | None = None
    row: int = 0


@dataclass
class PreparedCase:
    """A case on the network grids (float16 images keep the in-memory cache small)."""

    cls_image: np.ndarray
    cls_infection: np.ndarray  # infected fraction per classifier-grid voxel
    seg_image: np.ndarray
    seg_infection: np.ndarray  # uint8 on the segmenter grid
    label: int  # index into the class names, or NO_PNEUMONIA_LABEL
    has_mask: bool
    infection_fraction: float  # infection / lung volume; NaN without a mask
    lesion_flags: np.ndarray | None
    seg_lungs: np.ndarray | None = None  # uint8 computed lung mask on the segmenter grid

    @property
    def has_pneumonia(self) -> bool:
        return self.label != NO_PNEUMONIA_LABEL


def classified(cases: Sequence[PreparedCase]) -> list[PreparedCase]:
    """The cases the classifier learns from: those with pneumonia (COVID-19 or CAP)."""
    return [c for c in cases if c.has_pneumonia]


def read_manifest(path: str | os.PathLike, class_names: Sequence[str] = CLASS_NAMES) -> list[Case]:
    """Rows of a manifest CSV as :class:`Case` objects, checked for missing files/labels."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"Manifest {path} does not exist.")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not {"image", "label"} <= columns:
            raise ManifestError(f"Manifest {path.name} needs the columns image and label (has: {', '.join(sorted(columns)) or 'none'}).")
        rows = list(reader)
    if not rows:
        raise ManifestError(f"Manifest {path.name} has no rows.")
    base = path.parent
    cases = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        label = row["label"].strip()
        if label not in (*class_names, NO_PNEUMONIA):
            raise ManifestError(f"{path.name} row {number}: unknown label {label!r} (expected one of {', '.join((*class_names, NO_PNEUMONIA))}).")
        flags = None
        if all(t in columns for t in LESION_TYPES) and all(row[t].strip() != "" for t in LESION_TYPES):
            flags = tuple(float(row[t]) for t in LESION_TYPES)
        cases.append(
            Case(
                image=_existing(base, row["image"], path.name, number),
                label=NO_PNEUMONIA_LABEL if label == NO_PNEUMONIA else class_names.index(label),
                infection_mask=_optional(base, row.get("infection_mask"), path.name, number),
                lung_mask=_optional(base, row.get("lung_mask"), path.name, number),
                lesion_flags=flags,
                row=number,
            )
        )
    return cases


def merge_manifests(inputs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """One manifest listing the rows of several (e.g. scans from several sites or grids).

    Paths are rewritten relative to ``out``'s folder, so the files stay where they are;
    columns are the union of the inputs' (in order of first appearance, empty where a
    manifest lacks one).
    """
    out = Path(out)
    columns: list[str] = []
    rows: list[dict[str, str]] = []
    for source in map(Path, inputs):
        cases = read_manifest(source)  # checks labels and that every file exists
        with open(source, newline="") as handle:
            reader = csv.DictReader(handle)
            columns += [c for c in reader.fieldnames or () if c not in columns]
            for row, case in zip(reader, cases, strict=True):
                for column, path in (("image", case.image), ("infection_mask", case.infection_mask), ("lung_mask", case.lung_mask)):
                    if path is not None:
                        row[column] = os.path.relpath(path, out.parent.resolve())
                rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return out


def manifest_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def prepare_case(case: Case, config: PreprocessConfig) -> PreparedCase:
    """Load one case and put image and masks on the classifier and segmenter grids."""
    volume = load_ct(case.image)
    lungs = _mask_like(case.lung_mask, volume) if case.lung_mask else None
    infection = _mask_like(case.infection_mask, volume) if case.infection_mask else None
    flags = None if case.lesion_flags is None else np.asarray(case.lesion_flags, dtype=np.float32)
    return prepare_volume(volume, config, label=case.label, infection=infection, reference_lungs=lungs, lesion_flags=flags)


def prepare_volume(
    volume: CTVolume,
    config: PreprocessConfig,
    *,
    label: int,
    infection: np.ndarray | None = None,
    reference_lungs: np.ndarray | None = None,
    lesion_flags: np.ndarray | None = None,
) -> PreparedCase:
    """A scan in memory on the network grids.

    The crop always comes from the lung mask computed from HU, as in diagnosis, so the
    classifier trains on the field of view it will be shown. A dataset's reference lung
    mask (``reference_lungs``), when there is one, only measures the infected fraction of
    the lungs, which sorts the case into its size bin.
    """
    computed_lungs = compute_lung_mask(volume.hu, volume.spacing_mm)
    inputs = network_inputs(volume.hu, volume.affine, computed_lungs, config)
    lungs = computed_lungs if reference_lungs is None else reference_lungs
    has_mask = infection is not None
    inf = (infection > 0).astype(np.float32) if has_mask else np.zeros(volume.shape, np.float32)
    lung_voxels = int(np.count_nonzero(lungs))
    return PreparedCase(
        cls_image=inputs.classifier_image.astype(np.float16),
        cls_infection=resample_to_grid(inf, inputs.classifier_grid, fill=0.0).astype(np.float16),
        seg_image=inputs.segmenter_image.astype(np.float16),
        seg_infection=(resample_to_grid(inf, inputs.segmenter_grid, fill=0.0) >= 0.5).astype(np.uint8),
        label=label,
        has_mask=has_mask,
        infection_fraction=float(np.count_nonzero(inf) / lung_voxels) if has_mask and lung_voxels else float("nan"),
        lesion_flags=lesion_flags,
        seg_lungs=(resample_to_grid(computed_lungs > 0, inputs.segmenter_grid, fill=0.0) >= 0.5).astype(np.uint8),
    )


def iter_prepared(
    cases: Sequence[Case],
    config: PreprocessConfig,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
) -> Job[list[PreparedCase]]:
    """Prepare many cases, reading and filling the cache; yields ``Progress("prepare", done, n)``.

    Worker processes are spawned, not forked: a fork of a process whose torch thread pool
    is running (the GUI, a training run) can deadlock in the child.
    """
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    keys = [_cache_key(c, config) for c in cases]
    results: list[PreparedCase | None] = [_read_cache(cache / f"{k}.npz") if cache else None for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    done = len(cases) - len(todo)
    yield Progress("prepare", done, len(cases))

    def store(index: int, prepared: PreparedCase) -> None:
        results[index] = prepared
        if cache:
            _write_cache(cache / f"{keys[index]}.npz", prepared)

    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(prepare_case, cases[i], config): i for i in todo}
            for future in as_completed(futures):
                store(futures[future], future.result())
                done += 1
                yield Progress("prepare", done, len(cases))
    else:
        for i in todo:
            store(i, prepare_case(cases[i], config))
            done += 1
            yield Progress("prepare", done, len(cases))
    return results  # type: ignore[return-value]


def prepare_cases(
    cases: Sequence[Case], config: PreprocessConfig, cache_dir: str | os.PathLike | None = None, workers: int = 1
) -> list[PreparedCase]:
    """:func:`iter_prepared` without progress."""
    return run_to_end(iter_prepared(cases, config, cache_dir, workers))


class ClassifierDataset(Dataset):
    """Classifier inputs with label, infection target, lesion flags; light augmentation.

    Augmentation mirrors left-right (lesion patterns do not depend on the side they are
    on); intensity jitter is optional because HU are calibrated and the density of a
    lesion (ground glass vs consolidation) is part of the diagnosis.
    """

    def __init__(self, cases: Sequence[PreparedCase], augment: bool = False, seed: int = 0, intensity: bool = False) -> None:
        self.cases = cases
        self.transform = None
        if augment:
            steps = [RandFlipd(keys=["image", "infection"], prob=0.5, spatial_axis=2)]
            if intensity:
                steps += [
                    RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                    RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
                ]
            self.transform = Compose(steps).set_random_state(seed)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[index]
        item = {
            "image": torch.from_numpy(case.cls_image.astype(np.float32))[None],
            "infection": torch.from_numpy(case.cls_infection.astype(np.float32))[None],
        }
        if self.transform is not None:
            item = self.transform(item)
        flags = case.lesion_flags if case.lesion_flags is not None else np.zeros(len(LESION_TYPES), np.float32)
        return {
            "image": torch.as_tensor(item["image"]).float(),
            "infection": torch.as_tensor(item["infection"]).float(),
            "label": torch.tensor(case.label, dtype=torch.long),
            "has_mask": torch.tensor(case.has_mask),
            "lesion_flags": torch.from_numpy(flags),
            "has_flags": torch.tensor(case.lesion_flags is not None),
        }


class SegmenterDataset(Dataset):
    """Whole lung boxes on the segmenter grid, as inference sees them; mirrored at random.

    The U-Net normalises each instance over its field of view, so it must train on the
    field of view it infers on: the box zero-padded at the end to a multiple of
    ``divisor`` (as :func:`models.segmenter.infection_probability` pads it), cut to a
    random ``roi`` only when larger (inference then slides that window). Training on
    smaller crops centred on infection made it over-segment whole boxes, and fine-tuning
    on such crops lowered the Dice even on the training scans (docs/finetuning.md).
    Boxes differ in size: use batches of one.
    """

    def __init__(self, cases: Sequence[PreparedCase], roi: Sequence[int], divisor: int, seed: int = 0) -> None:
        self.cases = [c for c in cases if c.has_mask]
        if not self.cases:
            raise ManifestError("Training the infection segmenter needs cases with infection masks.")
        self.transform = Compose(
            [
                DivisiblePadd(keys=["image", "label"], k=divisor, method="end"),
                RandSpatialCropd(keys=["image", "label"], roi_size=tuple(int(r) for r in roi), random_size=False),
                RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
            ]
        ).set_random_state(seed)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        case = self.cases[index]
        item = {
            "image": torch.from_numpy(case.seg_image.astype(np.float32))[None],
            "label": torch.from_numpy(case.seg_infection.astype(np.float32))[None],
        }
        item = self.transform(item)
        return {"image": torch.as_tensor(item["image"]).float(), "label": torch.as_tensor(item["label"]).float()}


def _existing(base: Path, value: str, manifest: str, row: int) -> Path:
    path = (base / value.strip()).resolve()
    if not path.exists():
        raise ManifestError(f"{manifest} row {row}: {value.strip()} does not exist.")
    return path


def _optional(base: Path, value: str | None, manifest: str, row: int) -> Path | None:
    if value is None or not value.strip():
        return None
    return _existing(base, value, manifest, row)


def _mask_like(path: Path, volume: CTVolume) -> np.ndarray:
    """A mask file on the scan's grid (same shape and geometry after canonical reorientation)."""
    mask = load_ct(path)
    if mask.shape != volume.shape or not np.allclose(mask.affine, volume.affine, atol=1e-3):
        raise ManifestError(f"{path.name} is not on the same voxel grid as its scan.")
    return np.asarray(mask.hu > 0, dtype=np.uint8) if mask.hu.max() <= 1 else np.asarray(mask.hu, dtype=np.uint8)


def _cache_key(case: Case, config: PreprocessConfig) -> str:
    parts = [json.dumps(config.to_dict(), sort_keys=True), str(_CACHE_FORMAT), str(case.label), str(case.lesion_flags)]
    for path in (case.image, case.infection_mask, case.lung_mask):
        if path is not None:
            stat = path.stat()
            parts.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}")
        else:
            parts.append("-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _write_cache(path: Path, case: PreparedCase) -> None:
    arrays = {
        "cls_image": case.cls_image,
        "cls_infection": case.cls_infection,
        "seg_image": case.seg_image,
        "seg_infection": case.seg_infection,
        "scalars": np.array([case.label, float(case.has_mask), case.infection_fraction], dtype=np.float64),
    }
    if case.lesion_flags is not None:
        arrays["lesion_flags"] = case.lesion_flags
    if case.seg_lungs is not None:
        arrays["seg_lungs"] = case.seg_lungs
    with atomic_path(path, suffix=".npz") as temp:
        np.savez(temp, **arrays)


def _read_cache(path: Path) -> PreparedCase | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            label, has_mask, fraction = data["scalars"]
            return PreparedCase(
                cls_image=data["cls_image"],
                cls_infection=data["cls_infection"],
                seg_image=data["seg_image"],
                seg_infection=data["seg_infection"],
                label=int(label),
                has_mask=bool(has_mask),
                infection_fraction=float(fraction),
                lesion_flags=data["lesion_flags"] if "lesion_flags" in data else None,
                seg_lungs=data["seg_lungs"] if "seg_lungs" in data else None,
            )
    except (OSError, KeyError, ValueError):
        return None  # a damaged cache entry is simply rebuilt
