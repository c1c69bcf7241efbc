"""``diagnose(volume, bundle)``: the one entry point from a CT scan to a full result.

Stages: lung mask -> crop + resample -> each ensemble member's forward (attention) and one
backward (Grad-CAM, Grad-CAM++) -> infection segmentation -> masks back on the scan.
The widget runs :func:`diagnose_steps` in a worker (it yields a Progress after each stage, which is
where progress is shown and where a cancel takes effect); the CLI calls :func:`diagnose`.
"""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_covid_attention.classes import LESION_TYPES, NO_PNEUMONIA_DETECTED
from napari_covid_attention.explain.cams import MemberExplainer, MemberExplanation
from napari_covid_attention.explain.localization import (
    LocalizationScores,
    localization_scores,
    mask_on_grid,
    upsample_map,
)
from napari_covid_attention.io.geometry import spacing_mm
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.jobs import Job, Progress, run_to_end
from napari_covid_attention.models.bundle import Bundle
from napari_covid_attention.models.device import autocast, is_out_of_memory, resolve_device
from napari_covid_attention.models.pneumonia import PneumoniaRule
from napari_covid_attention.models.segmenter import infection_probability
from napari_covid_attention.preprocess.lung import LEFT_LUNG, RIGHT_LUNG
from napari_covid_attention.preprocess.lung import lung_mask as compute_lung_mask
from napari_covid_attention.preprocess.pipeline import (
    Grid,
    grid_to_box,
    grid_to_scan,
    near_lungs,
    network_inputs,
    resample_to_grid,
    subgrid_of,
)
from napari_covid_attention.preprocess.scan_checks import scan_warnings

STAGES = ("lung mask", "preprocess", "classify + explain", "segment infection", "map back")
MAP_NAMES = ("attention", "gradcam", "gradcam_pp")


@dataclass
class SaliencyMap:
    """A map on its own (usually coarse) grid, with that grid's exact affine to LPS mm."""

    values: np.ndarray  # (z, y, x) float32 in [0, 1]
    affine: np.ndarray


@dataclass
class MemberResult:
    name: str
    sampling: str
    weight: float
    probabilities: dict[str, float]


@dataclass
class Diagnosis:
    """Everything one diagnosis produces; masks are on the scan's full grid."""

    class_names: tuple[str, ...]
    probabilities: dict[str, float]  # the ensemble's
    members: list[MemberResult]
    lesion_probabilities: dict[str, float] | None
    maps: dict[str, SaliencyMap]  # "attention", "gradcam", "gradcam_pp" (ensemble-weighted)
    lung_mask: np.ndarray  # uint8: 1 right lung, 2 left lung
    infection_mask: np.ndarray  # uint8 binary
    lung_volume_ml: float
    infection_volume_ml: float
    scan_affine: np.ndarray
    classifier_grid: Grid
    timings_s: dict[str, float]
    bundle_name: str
    bundle_version: str
    bundle_label: str
    device: str
    warnings: list[str] = field(default_factory=list)
    pneumonia_rule: PneumoniaRule = field(default_factory=PneumoniaRule)

    @property
    def predicted_class(self) -> str:
        """The more likely of the classifier's classes (COVID-19 or CAP), pneumonia or not."""
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def pneumonia_detected(self) -> bool:
        """Whether the infection burden reaches the bundle's pneumonia threshold."""
        return self.pneumonia_rule.detects(self.infection_percent)

    @property
    def finding(self) -> str:
        """The headline: "No pneumonia detected", or the more likely cause of the pneumonia."""
        return self.predicted_class if self.pneumonia_detected else NO_PNEUMONIA_DETECTED

    @property
    def infection_percent(self) -> float:
        return 100.0 * self.infection_volume_ml / self.lung_volume_ml if self.lung_volume_ml else 0.0

    def localization(self, reference_mask: np.ndarray) -> dict[str, LocalizationScores | None]:
        """Scores of each map against a reference infection mask on the scan grid.

        Compared on the classifier grid: maps are resampled up to it, the mask down to it.
        """
        reference = mask_on_grid(reference_mask, self.classifier_grid)
        return {
            name: localization_scores(upsample_map(m.values, self.classifier_grid.shape), reference)
            for name, m in self.maps.items()
        }

    def map_on_scan(self, name: str) -> np.ndarray:
        """A map resampled onto the full scan grid (for NIfTI export; the viewer shows the
        coarse map through its own affine instead)."""
        on_grid = upsample_map(self.maps[name].values, self.classifier_grid.shape)
        return grid_to_scan(on_grid, self.classifier_grid, self.lung_mask.shape)

    def summary(self) -> dict:
        """JSON-ready summary (no arrays, no patient data)."""
        return {
            "bundle": f"{self.bundle_name} {self.bundle_version}",
            "bundle_label": self.bundle_label,
            "finding": self.finding,
            "pneumonia_detected": self.pneumonia_detected,
            "pneumonia_threshold_percent": round(self.pneumonia_rule.min_infection_percent, 3),
            "predicted_class": self.predicted_class,
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
            "members": [
                {"name": m.name, "sampling": m.sampling, "weight": m.weight, "probabilities": {k: round(v, 4) for k, v in m.probabilities.items()}}
                for m in self.members
            ],
            "lesion_probabilities": None if self.lesion_probabilities is None else {k: round(v, 3) for k, v in self.lesion_probabilities.items()},
            "lung_volume_ml": round(self.lung_volume_ml, 1),
            "infection_volume_ml": round(self.infection_volume_ml, 1),
            "infection_percent": round(self.infection_percent, 2),
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "device": self.device,
            "warnings": list(self.warnings),
        }


# One explainer per loaded model: MONAI's CAM hooks are never removed, so they must not
# be registered again on every diagnosis.
_EXPLAINERS: weakref.WeakKeyDictionary[torch.nn.Module, MemberExplainer] = weakref.WeakKeyDictionary()


def explainer_for(model: torch.nn.Module) -> MemberExplainer:
    if model not in _EXPLAINERS:
        _EXPLAINERS[model] = MemberExplainer(model)
    return _EXPLAINERS[model]


def diagnose(
    volume: CTVolume,
    bundle: Bundle,
    device: str | torch.device = "auto",
    progress: Callable[[Progress], None] | None = None,
) -> Diagnosis:
    """Run the full diagnosis; ``progress`` gets a :class:`Progress` after each stage."""
    return run_to_end(diagnose_steps(volume, bundle, device), progress)


def diagnose_steps(
    volume: CTVolume, bundle: Bundle, device: str | torch.device = "auto"
) -> Job[Diagnosis]:
    """Generator form: yields :class:`Progress` (phase = stage name) as each stage finishes,
    returns the Diagnosis.

    On a GPU out-of-memory error the network stages fall back to the CPU with a warning.
    """
    target = resolve_device(device)
    notes: list[str] = []
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    lungs = compute_lung_mask(volume.hu, volume.spacing_mm)
    timings["lung mask"] = time.perf_counter() - t0
    yield Progress(STAGES[0], 1, len(STAGES))

    t0 = time.perf_counter()
    inputs = network_inputs(volume.hu, volume.affine, lungs, bundle.preprocessing)
    cls_grid, seg_grid = inputs.classifier_grid, inputs.segmenter_grid
    cls_input, seg_input = inputs.classifier_image, inputs.segmenter_image
    timings["preprocess"] = time.perf_counter() - t0
    yield Progress(STAGES[1], 2, len(STAGES))

    t0 = time.perf_counter()
    explanations, target = _with_cpu_fallback(
        lambda dev: _explain_members(bundle, cls_input, dev), target, notes
    )
    timings["classify + explain"] = time.perf_counter() - t0
    yield Progress(STAGES[2], 3, len(STAGES))

    t0 = time.perf_counter()
    seg_prob, target = _with_cpu_fallback(lambda dev: _segment(bundle, seg_input, dev), target, notes)
    timings["segment infection"] = time.perf_counter() - t0
    yield Progress(STAGES[3], 4, len(STAGES))

    t0 = time.perf_counter()
    infection, lungs = _infection_on_scan(seg_prob, seg_grid, lungs)
    timings["map back"] = time.perf_counter() - t0
    timings["total"] = sum(timings.values())
    yield Progress(STAGES[4], 5, len(STAGES))

    return _assemble(volume, bundle, lungs, infection, cls_grid, explanations, timings, target, notes)


def _infection_on_scan(seg_prob: np.ndarray, seg_grid: Grid, lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Infection mask on the scan, confined to the lungs, and the lung mask with it added.

    The segmenter sees the whole lung box (heart, chest wall, upper abdomen), so what it
    predicts is cut at the lung mask grown by a few mm (:func:`near_lungs`); the infected
    tissue in that margin then counts as lung, labelled by side, so the infection % of
    the lungs never exceeds 100. Work is confined to the crop box.
    """
    lungs_on_grid = resample_to_grid(lungs > 0, seg_grid, fill=0.0) >= 0.5
    kept = np.where(near_lungs(lungs_on_grid, spacing_mm(seg_grid.affine)), seg_prob, 0.0)
    up, region = grid_to_box(kept, seg_grid, lungs.shape)
    infected = up >= 0.5
    infection = np.zeros(lungs.shape, dtype=np.uint8)
    infection[region] = infected
    added = infected & (lungs[region] == 0)
    if added.any():
        lungs = lungs.copy()
        x = np.arange(region[2].start, region[2].stop)
        side = np.where(x < _midline_x(lungs), RIGHT_LUNG, LEFT_LUNG).astype(lungs.dtype)
        lungs_region = lungs[region]
        lungs_region[added] = np.broadcast_to(side, added.shape)[added]
    return infection, lungs


def _midline_x(lungs: np.ndarray) -> float:
    """x index between the two lungs' centres (canonical x runs patient right -> left).

    Every 4th row and slice is plenty for a centre and 16x cheaper on a full scan.
    """
    sample = lungs[::4, ::4]
    centres = []
    for label in (RIGHT_LUNG, LEFT_LUNG):
        counts = np.count_nonzero(sample == label, axis=(0, 1))
        if counts.sum():
            centres.append(float(np.average(np.arange(lungs.shape[2]), weights=counts)))
    return float(np.mean(centres)) if len(centres) == 2 else lungs.shape[2] / 2.0


def _explain_members(bundle: Bundle, cls_input: np.ndarray, device: torch.device) -> list[MemberExplanation]:
    image = torch.from_numpy(cls_input)[None, None].to(device)
    results = []
    for member in bundle.members:
        member.model.to(device)
        with autocast(device):
            results.append(explainer_for(member.model).explain(image, member.calibration))
    return results


def _segment(bundle: Bundle, seg_input: np.ndarray, device: torch.device) -> np.ndarray:
    image = torch.from_numpy(seg_input)[None, None].to(device)
    model = bundle.segmenter.to(device)
    with autocast(device):
        prob = infection_probability(model, image, bundle.preprocessing.segmenter_roi, bundle.segmenter_config.divisor)
    return prob[0, 0].float().cpu().numpy()


def _with_cpu_fallback(run, device: torch.device, notes: list[str]):
    """Run a network stage; on GPU out-of-memory, warn and redo it on the CPU."""
    try:
        return run(device), device
    except Exception as exc:
        if device.type == "cpu" or not is_out_of_memory(exc):
            raise
        message = f"The GPU ({device}) ran out of memory; this diagnosis continued on the CPU (slower)."
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        notes.append(message)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        return run(cpu), cpu


def _assemble(
    volume: CTVolume,
    bundle: Bundle,
    lungs: np.ndarray,
    infection: np.ndarray,
    cls_grid: Grid,
    explanations: list[MemberExplanation],
    timings: dict[str, float],
    device: torch.device,
    notes: list[str],
) -> Diagnosis:
    weights = np.array([m.weight for m in bundle.members])
    probs = sum(w * e.probabilities for w, e in zip(weights, explanations, strict=True))
    maps = {}
    for name in MAP_NAMES:
        values = sum(w * getattr(e, name) for w, e in zip(weights, explanations, strict=True)).astype(np.float32)
        maps[name] = SaliencyMap(values, subgrid_of(cls_grid.affine, cls_grid.shape, values.shape))
    lesion = None
    if all(e.lesion_probabilities is not None for e in explanations):
        lesion_p = sum(w * e.lesion_probabilities for w, e in zip(weights, explanations, strict=True))
        lesion = {name: float(p) for name, p in zip(LESION_TYPES, lesion_p, strict=True)}
    voxel_ml = volume.voxel_volume_ml
    names = bundle.class_names
    return Diagnosis(
        class_names=names,
        probabilities={n: float(p) for n, p in zip(names, probs, strict=True)},
        members=[
            MemberResult(m.name, m.sampling, m.weight, {n: float(p) for n, p in zip(names, e.probabilities, strict=True)})
            for m, e in zip(bundle.members, explanations, strict=True)
        ],
        lesion_probabilities=lesion,
        maps=maps,
        lung_mask=lungs,
        infection_mask=infection,
        lung_volume_ml=float(np.count_nonzero(lungs)) * voxel_ml,
        infection_volume_ml=float(np.count_nonzero(infection)) * voxel_ml,
        scan_affine=volume.affine,
        classifier_grid=cls_grid,
        timings_s=timings,
        bundle_name=bundle.name,
        bundle_version=bundle.version,
        bundle_label=bundle.label,
        device=str(device),
        warnings=[*volume.warnings, *scan_warnings(volume, lungs, bundle_trained_on_real_scans=bundle.trained_on_real_scans), *notes],
        pneumonia_rule=bundle.pneumonia,
    )
