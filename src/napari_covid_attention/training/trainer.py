"""Train a model bundle: dual-sampling classifiers, the infection segmenter, the ensemble.

One code path for a single process and for ``torchrun --nproc_per_node N`` (it reads
the ``RANK`` / ``WORLD_SIZE`` variables torchrun sets and wraps the models in
DistributedDataParallel; every rank draws its share of the same weighted stream). The
work is a generator of :class:`~napari_covid_attention.jobs.Progress` (phases: prepare,
classifier:<member>, calibrate:<member>, segmenter, ensemble, pneumonia rule, save) so the
CLI can draw progress bars and the GUI can show progress and cancel between steps. Every
optimisation step goes through :func:`~napari_covid_attention.training.steps.train_steps`.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from napari_covid_attention import __version__
from napari_covid_attention.classes import CLASS_NAMES
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.jobs import Job, Progress
from napari_covid_attention.models.bundle import Member, load_bundle, save_bundle
from napari_covid_attention.models.calibration import IDENTITY, Calibration, fit_binary_calibration
from napari_covid_attention.models.device import autocast, grad_scaler, resolve_device
from napari_covid_attention.models.dsanet import DSANet, DSANetConfig
from napari_covid_attention.models.pneumonia import PneumoniaRule, choose_threshold
from napari_covid_attention.models.segmenter import (
    SegmenterConfig,
    build_segmenter,
    infection_probability,
)
from napari_covid_attention.preprocess.pipeline import PreprocessConfig, near_lungs
from napari_covid_attention.training.datasets import (
    ClassifierDataset,
    PreparedCase,
    SegmenterDataset,
    classified,
    iter_prepared,
    manifest_sha256,
    prepare_cases,
    read_manifest,
)
from napari_covid_attention.training.losses import DSALoss, LossConfig, SegmenterLoss
from napari_covid_attention.training.metrics import dice, nll, roc_auc
from napari_covid_attention.training.sampling import (
    DEFAULT_SIZE_BIN_EDGES,
    WeightedStreamSampler,
    group_ids,
    sample_weights,
    size_bins,
)
from napari_covid_attention.training.steps import classify, segment, train_steps

SAMPLING_Q = {"uniform": 1.0}  # size_balanced uses TrainConfig.q


@dataclass
class TrainConfig:
    """Everything a training run needs; recorded in the bundle's provenance."""

    train_manifest: Path
    out: Path
    val_manifest: Path | None = None
    val_fraction: float = 0.2
    name: str = "dsa-net"
    version: str = "1.0.0"
    label: str = "research model, not for clinical use"
    class_names: tuple[str, ...] = CLASS_NAMES
    preprocessing: PreprocessConfig = field(default_factory=PreprocessConfig)
    classifier: DSANetConfig = field(default_factory=DSANetConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: str = "dual"  # uniform | size_balanced | dual
    q: float = 0.0
    size_bin_edges: tuple[float, ...] = DEFAULT_SIZE_BIN_EDGES
    epochs: int = 20
    segmenter_epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    segmenter_lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    workers: int = 2  # preprocessing processes
    intensity_augment: bool = False
    init_bundle: Path | None = None  # warm start: continue from this bundle's weights
    cache_dir: Path | None = None
    command: str = ""
    # What the data are, for the bundle's provenance: [{"name", "kind": "synthetic" | "real",
    # "licence", "citation"}]; a warm start's entries are kept too.
    training_data: tuple[dict, ...] = ()
    fold_by: str | None = None  # cross-validation: a manifest column (e.g. patient) no fold splits
    # How much more often the segmenter draws a scan without infection: healthy anatomy
    # (vessels, heart, atelectasis, tumours) is what it must learn to leave alone.
    segmenter_negative_weight: float = 1.0
    # Autocast of the training steps (models.device.PRECISIONS); validation, calibration and
    # the pneumonia threshold are always measured at diagnosis precision.
    precision: str = "auto"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["training_data"] = list(self.training_data)
        for key in ("train_manifest", "out", "val_manifest", "cache_dir", "init_bundle"):
            data[key] = None if data[key] is None else str(data[key])
        return data


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def train_bundle(config: TrainConfig) -> Job[Path | None]:
    """Train and save a bundle; yields progress. Returns the bundle path (rank 0) or None."""
    env = _init_distributed(config.device)
    try:
        return (yield from _train(config, env))
    finally:
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: TrainConfig, env: _Distributed) -> Job[Path | None]:
    started = time.time()
    device = torch.device("cuda", env.local_rank) if env.world_size > 1 and torch.cuda.is_available() else resolve_device(config.device)
    if config.out.exists() and env.is_main:
        raise UserFacingError(f"{config.out} already exists; choose a new bundle folder.")
    torch.manual_seed(config.seed)

    all_train, all_val = yield from _prepare(config, env)
    # The classifier knows COVID-19 and CAP only; scans without pneumonia teach the segmenter.
    train_cases, val_cases = classified(all_train), classified(all_val)
    if not train_cases or not val_cases:
        raise UserFacingError("Training needs COVID-19 or CAP cases in both the training and the validation set.")
    groups = _groups(train_cases, config)
    init = _init_states(config)

    members: list[Member] = []
    member_val_probs: dict[str, np.ndarray] = {}
    history: dict[str, list] = {}
    for name in _member_kinds(config.sampling):
        q = SAMPLING_Q.get(name, config.q)
        model, val_probs, member_history = yield from _fit_classifier(
            name, sample_weights(groups, q), train_cases, val_cases, config, device, env, init.get(name)
        )
        calibration = Calibration()
        if env.is_main and len(config.class_names) == 2:
            calibration = fit_binary_calibration(predict_logits(model, val_cases, device), np.array([c.label for c in val_cases]))
            val_probs = predict_probabilities(model, val_cases, device, calibration)
            yield Progress(f"calibrate:{name}", 1, 1, {"scale": calibration.scale, "bias": calibration.bias[0] - calibration.bias[1] if calibration.bias else 0.0})
        members.append(Member(name=name, sampling=name, weight=0.0, model=model.cpu(), calibration=calibration))
        member_val_probs[name] = val_probs
        history[name] = member_history

    segmenter, seg_history = yield from _fit_segmenter(all_train, all_val, config, device, env, init.get("segmenter"))
    history["segmenter"] = seg_history

    if not env.is_main:
        return None
    val_labels = np.array([c.label for c in val_cases])
    weights, ensemble_auc = choose_ensemble_weights(
        [member_val_probs[m.name] for m in members], val_labels
    )
    for member, weight in zip(members, weights, strict=True):
        member.weight = float(weight)
    yield Progress("ensemble", 1, 1, {"val_auc": ensemble_auc})
    pneumonia, pneumonia_scores = choose_pneumonia_rule(segmenter, all_val, config, device, init.get("pneumonia"))
    yield Progress("pneumonia rule", 1, 1, {"min_infection_percent": pneumonia.min_infection_percent})

    metrics = {
        "validation": {
            "n_cases": len(val_cases),
            "ensemble_auc": ensemble_auc,
            **{f"{n}_auc": _auc(p, val_labels) for n, p in member_val_probs.items()},
            "segmenter_dice": max(h["val_dice"] for h in seg_history) if seg_history else float("nan"),
            "n_without_pneumonia": len(all_val) - len(val_cases),
            **pneumonia_scores,
        }
    }
    training = {
        "train_manifest_sha256": manifest_sha256(config.train_manifest),
        "val_manifest_sha256": manifest_sha256(config.val_manifest) if config.val_manifest else None,
        "n_train": len(all_train),
        "n_val": len(all_val),
        "command": config.command or " ".join(sys.argv),
        "code_version": _code_version(),
        "torch": torch.__version__,
        "device": str(device),
        "world_size": env.world_size,
        "init_bundle": init.get("title"),
        "seconds": round(time.time() - started, 1),
        "config": config.to_dict(),
        "history": history,
    }
    # The last yield comes before the save: a job closed at a yield (Cancel) writes nothing,
    # and one that saved always returns the path.
    yield Progress("save", 0, 1, metrics["validation"])
    path = save_bundle(
        config.out,
        name=config.name,
        version=config.version,
        label=config.label,
        class_names=config.class_names,
        preprocessing=config.preprocessing,
        members=members,
        segmenter=segmenter.cpu(),
        segmenter_config=config.segmenter,
        metrics=metrics,
        training=training,
        pneumonia=pneumonia,
        training_data=_training_data(config, init),
    )
    return path


def _init_states(config: TrainConfig) -> dict:
    """Weights to start from (``--init``), by member name and "segmenter", plus the title."""
    if config.init_bundle is None:
        return {}
    bundle = load_bundle(config.init_bundle)
    if bundle.classifier_config != config.classifier or bundle.segmenter_config != config.segmenter:
        raise UserFacingError(
            f"{bundle.title} has another architecture than this run; warm starts need the same --layers, --widths and segmenter."
        )
    states = {m.name: m.model.state_dict() for m in bundle.members}
    states["segmenter"] = bundle.segmenter.state_dict()
    states["title"] = bundle.title
    states["pneumonia"] = bundle.pneumonia
    states["training_data"] = bundle.training_data
    return states


def _training_data(config: TrainConfig, init: dict) -> list[dict]:
    """This run's data sources after the warm start's (a bundle remembers all it has seen)."""
    entries = [dict(e) for e in init.get("training_data", [])]
    for entry in config.training_data:
        if dict(entry) not in entries:
            entries.append(dict(entry))
    return entries


def choose_pneumonia_rule(
    segmenter: torch.nn.Module, cases: Sequence[PreparedCase], config: TrainConfig, device: torch.device, fallback: PneumoniaRule | None = None
) -> tuple[PneumoniaRule, dict]:
    """The infection-% threshold for "pneumonia present", chosen on validation scans.

    The burden is measured as diagnosis measures it: the segmenter's mask inside the lungs
    grown by the pleural margin, over the lung volume. Needs validation scans with and
    without pneumonia; otherwise the warm start's rule (or the default) is kept.
    """
    infected, healthy = [], []
    for case in cases:
        if case.seg_lungs is None or not case.seg_lungs.any():
            continue
        percent = predicted_infection_percent(segmenter, case, config, device)
        if case.has_pneumonia and case.has_mask and case.infection_fraction > 0:
            infected.append(percent)
        elif not case.has_pneumonia:
            healthy.append(percent)
    scores = {"n_val_with_pneumonia": len(infected), "n_val_without_pneumonia": len(healthy)}
    if not infected or not healthy:
        return fallback or PneumoniaRule(), scores
    threshold = choose_threshold(np.array(infected), np.array(healthy))
    rule = PneumoniaRule(round(threshold, 4), f"validation: {len(infected)} scans with pneumonia, {len(healthy)} without")
    scores["val_pneumonia_sensitivity"] = float(np.mean(np.array(infected) >= threshold))
    scores["val_pneumonia_specificity"] = float(np.mean(np.array(healthy) < threshold))
    scores["val_max_infection_percent_without_pneumonia"] = float(max(healthy))
    return rule, scores


def predicted_infection_percent(segmenter: torch.nn.Module, case: PreparedCase, config: TrainConfig, device: torch.device) -> float:
    """Infected share of the lungs (%) the segmenter predicts for a prepared case, confined as in diagnosis."""
    segmenter.eval()
    predicted = predicted_infection(segmenter, case, config.preprocessing.segmenter_roi, config.segmenter.divisor, device)
    lungs = case.seg_lungs.astype(bool)
    allowed = near_lungs(lungs, config.preprocessing.segmenter_spacing_mm)
    return 100.0 * float(np.count_nonzero(predicted & allowed)) / max(int(np.count_nonzero(lungs)), 1)


def choose_ensemble_weights(member_probs: Sequence[np.ndarray], labels: np.ndarray, steps: int = 21) -> tuple[list[float], float]:
    """Ensemble weights chosen on validation (the paper's weighted average).

    For two members, the weight of the second is searched on a grid for the highest AUC
    (ties: the weight closest to an even split, which generalises best). One member
    gets weight 1. Probabilities are P(class 0) per case.
    """
    if len(member_probs) == 1:
        return [1.0], _auc(member_probs[0], labels)
    if len(member_probs) != 2:
        raise ValueError("ensembles of two members are supported")
    best = (-1.0, 0.0, 0.5)
    for w in np.linspace(0.0, 1.0, steps):
        auc = _auc((1 - w) * member_probs[0] + w * member_probs[1], labels)
        key = (round(auc, 6), -abs(w - 0.5))
        if key > (round(best[0], 6), -abs(best[2] - 0.5)):
            best = (auc, 0.0, float(w))
    w = round(best[2], 4)
    return [1.0 - w, w], best[0]


def _member_kinds(sampling: str) -> list[str]:
    kinds = {"uniform": ["uniform"], "size_balanced": ["size_balanced"], "dual": ["uniform", "size_balanced"]}
    if sampling not in kinds:
        raise UserFacingError(f"Unknown sampling {sampling!r}; choose uniform, size_balanced or dual.")
    return kinds[sampling]


def _prepare(config: TrainConfig, env: _Distributed) -> Job[tuple[list[PreparedCase], list[PreparedCase]]]:
    """Read manifests, split off validation, preprocess (rank 0 fills the cache first)."""
    cases = read_manifest(config.train_manifest, config.class_names)
    if config.val_manifest:
        train, val = cases, read_manifest(config.val_manifest, config.class_names)
    else:
        train, val = stratified_split(cases, config.val_fraction, config.seed)
    cache = config.cache_dir or config.out.parent / ".preprocessing-cache"
    prepared: list[PreparedCase] = []
    if env.is_main:
        prepared = yield from iter_prepared(train + val, config.preprocessing, cache, config.workers)
    env.barrier()
    if not env.is_main:  # other ranks read what rank 0 cached
        prepared = prepare_cases(train + val, config.preprocessing, cache, 1)
    return prepared[: len(train)], prepared[len(train) :]


def stratified_split(cases: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of each class for validation (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    labels = sorted({c.label for c in cases})
    for label in labels:
        members = [c for c in cases if c.label == label]
        order = rng.permutation(len(members))
        n_val = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    if not val:
        raise UserFacingError("Not enough cases to hold out a validation set; add cases or pass a validation manifest.")
    return train, val


def _groups(cases: Sequence[PreparedCase], config: TrainConfig) -> np.ndarray:
    fractions = np.array([c.infection_fraction for c in cases])
    if config.sampling != "uniform" and np.isnan(fractions).any():
        raise UserFacingError(
            "Size-balanced sampling needs every training case's infection mask (its size defines the groups); "
            "use --sampling uniform or add infection masks."
        )
    bins = size_bins(np.nan_to_num(fractions), config.size_bin_edges)
    return group_ids([c.label for c in cases], bins)


def _fit_classifier(
    name: str,
    weights: np.ndarray,
    train: Sequence[PreparedCase],
    val: Sequence[PreparedCase],
    config: TrainConfig,
    device: torch.device,
    env: _Distributed,
    init_state: dict | None = None,
) -> Job[tuple[DSANet, np.ndarray, list]]:
    """Train one member; keeps the epoch with the best validation AUC (then loss).

    A warm start's own weights compete as epoch 0, so a run cannot end worse on
    validation than where it started; with 0 epochs they are kept as they are.
    """
    torch.manual_seed(config.seed + 1000 * (1 + _member_kinds("dual").index(name)))
    model = DSANet(config.classifier)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    if config.epochs == 0 and init_state is None:
        raise UserFacingError("--epochs 0 keeps warm-started classifiers; it needs --init BUNDLE.")
    best: tuple[tuple[float, float], dict, np.ndarray] | None = None
    history = []
    labels = np.array([c.label for c in val])
    if init_state is not None and env.is_main:
        scores, key, probs = _validate_classifier(model, val, labels, device)
        history.append({"epoch": 0, **scores})
        best = (key, copy.deepcopy(model.state_dict()), probs)
        yield Progress(f"classifier:{name}", 0, max(1, config.epochs), scores)
    if config.epochs == 0:
        return model.eval(), (best[2] if best is not None else np.zeros(0)), history
    ddp = DistributedDataParallel(model) if env.world_size > 1 else model
    sampler = WeightedStreamSampler(weights, len(train), seed=config.seed, rank=env.rank, world_size=env.world_size)
    dataset = ClassifierDataset(train, augment=True, seed=config.seed + env.rank, intensity=config.intensity_augment)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler)
    counts = np.bincount([c.label for c in train], minlength=len(config.class_names))
    criterion = DSALoss(config.loss, class_counts=counts).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15)
    scaler = grad_scaler(device, config.precision)
    total_steps = config.epochs * steps_per_epoch
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        for progress in train_steps(
            ddp, optimizer, loader, criterion, forward=classify, device=device, phase=f"classifier:{name}",
            total=total_steps, done=epoch * steps_per_epoch, scheduler=scheduler, scaler=scaler, precision=config.precision,
        ):
            for k, v in progress.metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            yield progress
        env.barrier()
        if env.is_main:
            scores, key, probs = _validate_classifier(model, val, labels, device)
            history.append({"epoch": epoch + 1, **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()}, **scores})
            if best is None or key > best[0]:
                best = (key, copy.deepcopy(model.state_dict()), probs)
            yield Progress(f"classifier:{name}", (epoch + 1) * steps_per_epoch, total_steps, scores)
        env.barrier()
    if best is not None:
        model.load_state_dict(best[1])
        return model.eval(), best[2], history
    return model.eval(), np.zeros(0), history


def _validate_classifier(
    model: DSANet, val: Sequence[PreparedCase], labels: np.ndarray, device: torch.device
) -> tuple[dict, tuple[float, float], np.ndarray]:
    """Validation scores, the key epochs compete on (AUC, then lower NLL), and P(class 0)."""
    probs = predict_probabilities(model, val, device)
    auc, loss = _auc(probs, labels), nll(probs, labels)
    return {"val_auc": auc, "val_nll": loss}, (round(auc, 4), -loss), probs


def predict_logits(model: DSANet, cases: Sequence[PreparedCase], device: torch.device, batch_size: int = 8) -> np.ndarray:
    """(n, classes) float32 logits of prepared cases (the classifier alone, no explanation)."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(cases), batch_size):
            images = torch.stack([torch.from_numpy(c.cls_image.astype(np.float32))[None] for c in cases[start : start + batch_size]]).to(device)
            with autocast(device):
                logits = model(images)
            out.append(logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_classes), np.float32)


def predict_probabilities(
    model: DSANet, cases: Sequence[PreparedCase], device: torch.device, calibration: Calibration = IDENTITY
) -> np.ndarray:
    """P(class 0) of each prepared case, through the member's calibration."""
    logits = torch.from_numpy(predict_logits(model, cases, device))
    return calibration.probabilities(logits)[:, 0].numpy()


def _fit_segmenter(
    train: Sequence[PreparedCase],
    val: Sequence[PreparedCase],
    config: TrainConfig,
    device: torch.device,
    env: _Distributed,
    init_state: dict | None = None,
) -> Job[tuple[torch.nn.Module, list]]:
    """Dice + CE on whole lung boxes; keeps the epoch with the best validation Dice.

    A warm start's own weights compete as epoch 0; with 0 epochs they are kept as they
    are (their validation Dice is still measured, for the bundle's metrics).
    """
    torch.manual_seed(config.seed + 7)
    model = build_segmenter(config.segmenter)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    if config.segmenter_epochs == 0 and init_state is None:
        raise UserFacingError("--segmenter-epochs 0 keeps a warm-started segmenter; it needs --init BUNDLE.")
    best: tuple[float, dict] | None = None
    history = []
    if init_state is not None and env.is_main:
        dice = segmentation_dice(model, val, config.preprocessing.segmenter_roi, config.segmenter.divisor, device)
        history.append({"epoch": 0, "val_dice": dice})
        best = (dice, copy.deepcopy(model.state_dict()))
        yield Progress("segmenter", 0, max(1, config.segmenter_epochs), {"val_dice": dice})
    if config.segmenter_epochs == 0:
        return model.eval(), history
    ddp = DistributedDataParallel(model) if env.world_size > 1 else model
    dataset = SegmenterDataset(train, config.preprocessing.segmenter_roi, config.segmenter.divisor, seed=config.seed + env.rank)
    weights = np.array([config.segmenter_negative_weight if not c.seg_infection.any() else 1.0 for c in dataset.cases])
    sampler = WeightedStreamSampler(weights, len(dataset), seed=config.seed + 1, rank=env.rank, world_size=env.world_size)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler)  # boxes differ in size
    criterion = SegmenterLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.segmenter_lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(loader))
    total_steps = config.segmenter_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.segmenter_lr, total_steps=total_steps, pct_start=0.15)
    scaler = grad_scaler(device, config.precision)
    for epoch in range(config.segmenter_epochs):
        sampler.set_epoch(epoch)
        model.train()
        loss_sum = 0.0
        for progress in train_steps(
            ddp, optimizer, loader, criterion, forward=segment, device=device, phase="segmenter",
            total=total_steps, done=epoch * steps_per_epoch, scheduler=scheduler, scaler=scaler, precision=config.precision,
        ):
            loss_sum += progress.metrics["loss"]
            yield progress
        env.barrier()
        if env.is_main:
            dice = segmentation_dice(model, val, config.preprocessing.segmenter_roi, config.segmenter.divisor, device)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / steps_per_epoch, "val_dice": dice})
            if best is None or dice > best[0]:
                best = (dice, copy.deepcopy(model.state_dict()))
            yield Progress("segmenter", (epoch + 1) * steps_per_epoch, total_steps, {"val_dice": dice})
        env.barrier()
    if best is not None:
        model.load_state_dict(best[1])
    return model.eval(), history


def segmentation_dice(
    model: torch.nn.Module, cases: Sequence[PreparedCase], roi: Sequence[int], divisor: int, device: torch.device
) -> float:
    """Mean Dice of thresholded predictions on the segmenter grid over cases with masks."""
    model.eval()
    scores = []
    for case in cases:
        if not case.has_mask:
            continue
        scores.append(dice(case.seg_infection, predicted_infection(model, case, roi, divisor, device)))
    return float(np.mean(scores)) if scores else float("nan")


def predicted_infection(
    model: torch.nn.Module, case: PreparedCase, roi: Sequence[int], divisor: int, device: torch.device
) -> np.ndarray:
    """The segmenter's binary infection mask of a prepared case, on the segmenter grid."""
    image = torch.from_numpy(case.seg_image.astype(np.float32))[None, None].to(device)
    with autocast(device):
        prob = infection_probability(model, image, roi, divisor)
    return prob[0, 0].float().cpu().numpy() >= 0.5


def _auc(prob_class0: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC with class 0 (COVID-19) as the positive class."""
    return roc_auc(prob_class0, (labels == 0).astype(float))


def _init_distributed(device: str) -> _Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return _Distributed(rank=rank, world_size=world, local_rank=local)


def _code_version() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"napari-covid-attention {__version__}" + (f" ({commit})" if commit else "") + f", python {platform.python_version()}"


def cross_validate(config: TrainConfig, folds: int) -> Job[Path | None]:
    """k-fold cross-validation (the paper's 5-fold protocol) on the training manifest.

    Fold i trains a bundle on the other folds and validates on fold i; the per-fold
    manifests, bundles and ``cv.json`` (validation metrics, mean and sd) go under
    ``config.out``.

    With ``config.fold_by`` (e.g. leave one patient out) fold i's group is a *test* set
    (``test.csv``) that nothing in the fold sees: epochs, ensemble weights, calibration
    and the pneumonia threshold are chosen on ``config.val_fraction`` of the other groups'
    cases; rows with an empty group (e.g. phantoms) are in every fold's training data.
    Evaluate each fold's bundle on its ``test.csv``.
    """
    if folds < 2:
        raise UserFacingError("Cross-validation needs at least 2 folds.")
    if config.out.exists():
        raise UserFacingError(f"{config.out} already exists; choose a new folder for the cross-validation.")
    with open(config.train_manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or ()), list(reader)
    base = Path(config.train_manifest).parent
    for row in rows:  # fold manifests live elsewhere: make their paths absolute
        for column in ("image", "infection_mask", "lung_mask"):
            if row.get(column):
                row[column] = str((base / row[column]).resolve())
    if config.fold_by:
        if config.fold_by not in fields:
            raise UserFacingError(f"{Path(config.train_manifest).name} has no column {config.fold_by!r} to split folds by.")
        assignment = _group_fold_assignment([r[config.fold_by] for r in rows], folds)
    else:
        assignment = _fold_assignment([r["label"] for r in rows], folds, config.seed)
    held_out = "test.csv" if config.fold_by else "val.csv"
    results = []
    for fold in range(folds):
        fold_dir = config.out / f"fold-{fold + 1}"
        fold_dir.mkdir(parents=True)
        for name, keep in (("train.csv", assignment != fold), (held_out, assignment == fold)):
            with open(fold_dir / name, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(r for r, k in zip(rows, keep, strict=True) if k)
        fold_config = replace(
            config,
            train_manifest=fold_dir / "train.csv",
            val_manifest=None if config.fold_by else fold_dir / "val.csv",
            out=fold_dir / "bundle",
            version=f"{config.version}-fold{fold + 1}",
        )
        path = yield from train_bundle(fold_config)
        if path is not None:
            results.append(json.loads((path / "bundle.json").read_text())["metrics"]["validation"])
    if not results:
        return None
    summary = {"folds": folds, "per_fold": results}
    for key in results[0]:
        values = np.array([r[key] for r in results], dtype=float)
        summary[key] = {"mean": float(np.nanmean(values)), "sd": float(np.nanstd(values, ddof=1))}
    out = config.out / "cv.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return out


def _group_fold_assignment(groups: Sequence[str], folds: int) -> np.ndarray:
    """Fold index per case such that every group (patient) lies in one fold only.

    Groups go to folds in sorted order, round robin: with as many folds as groups this is
    leave-one-patient-out. An empty group gets -1: in no fold's test set, in every
    fold's training set.
    """
    names = sorted({g.strip() for g in groups if g.strip()})
    if folds > len(names):
        raise UserFacingError(f"{folds} folds need at least {folds} groups; the manifest has {len(names)}.")
    fold_of = {name: i % folds for i, name in enumerate(names)}
    return np.array([fold_of.get(g.strip(), -1) for g in groups], dtype=int)


def _fold_assignment(labels: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per case: each class is spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), dtype=int)
    for label in sorted(set(labels)):
        idx = np.flatnonzero(np.asarray(labels) == label)
        assignment[rng.permutation(idx)] = np.arange(len(idx)) % folds
    return assignment
