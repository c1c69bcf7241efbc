"""Fine-tune the current bundle from annotators' corrections, and promote it only if it is not worse.

Reviewed cases of the annotation store (their final masks, and their confirmed class)
are split into a training part and a held-out validation part. The infection segmenter
learns the corrected masks (Dice + CE) and each classifier member learns them through
the attention loss (plus the classification loss on the confirmed classes). Cases
confirmed as "no pneumonia" train and test the segmenter only. The new
version is saved to the registry in every case, with its metrics and parent, but becomes
*current* only when, on the held-out cases, its infection Dice is not lower and its
classification loss not higher than the current version's. The two parts are judged apart:
a part that would make the new version worse is kept from the current one (and the reason
recorded); when both would, the current version stays.

Nothing is written until the very end (one atomic bundle save, then the registry
pointer), so a cancelled or failed run leaves the current bundle and the store untouched.
It is a generator of :class:`~napari_covid_attention.jobs.Progress` (phases: prepare,
evaluate current, segmenter, classifier:<member>, evaluate new) for CLI progress bars, GUI
progress and plots, and Cancel, which takes effect at a yield. The decision, the save and
the promotion come after the last yield, so no Cancel can split them.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from napari_covid_attention.annotations.store import AnnotationStore
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.jobs import Job, Progress
from napari_covid_attention.models.bundle import Bundle, Member, load_bundle, save_bundle
from napari_covid_attention.models.device import grad_scaler, resolve_device
from napari_covid_attention.models.dsanet import DSANet
from napari_covid_attention.models.registry import (
    next_version,
    record_rejected,
    resolve_bundle,
    set_current,
    user_bundles_dir,
)
from napari_covid_attention.models.segmenter import build_segmenter
from napari_covid_attention.training.datasets import (
    ClassifierDataset,
    PreparedCase,
    SegmenterDataset,
    prepare_volume,
)
from napari_covid_attention.training.losses import DSALoss, LossConfig, SegmenterLoss
from napari_covid_attention.training.metrics import nll
from napari_covid_attention.training.sampling import WeightedStreamSampler
from napari_covid_attention.training.steps import classify, segment, train_steps
from napari_covid_attention.training.trainer import predict_probabilities, segmentation_dice


@dataclass
class FinetuneConfig:
    bundle: str | Path | None = None  # the current bundle (default: the demo's current version)
    store_root: Path | None = None
    registry_root: Path | None = None
    val_fraction: float = 0.3
    min_train_cases: int = 2
    min_val_cases: int = 2
    classifier_epochs: int = 3
    segmenter_epochs: int = 6
    # The networks were trained on thousands of scans: gentle steps keep what they learned
    # (docs/finetuning.md: classifier 1e-4 doubled the held-out loss, 3e-5 lowered it).
    classifier_lr: float = 3e-5
    segmenter_lr: float = 3e-4
    batch_size: int = 2  # classifier batches (the segmenter takes one lung box at a time)
    attention_weight: float = 1.0
    tolerance: float = 0.0  # allowed worsening when deciding promotion
    seed: int = 0
    device: str = "auto"


@dataclass
class FinetuneResult:
    promoted: bool
    reason: str
    bundle_path: Path
    version: str
    parent_version: str
    before: dict[str, float]
    after: dict[str, float]
    n_train: int
    n_val: int
    skipped: list[str]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bundle_path"] = str(self.bundle_path)
        return data


@dataclass
class _Reviewed:
    key: str  # a short hash of the case identity (never a patient identifier)
    prepared: PreparedCase
    labelled: bool


def finetune(config: FinetuneConfig) -> Job[FinetuneResult]:
    """Run a fine-tuning job; see the module docstring. Returns what was decided and why.

    A cancel before the final commit saves nothing; the commit itself is never split. The
    commit (decide, save the new version, promote or refuse it) is the job's last step, after
    its last yield: closing the generator at any yield (what the GUI's Cancel does) leaves
    the registry and the store as they were.
    """
    started = time.time()
    device = resolve_device(config.device)
    current_path = resolve_bundle(config.bundle)
    current = load_bundle(current_path)
    reviewed, skipped = yield from _prepare_reviewed(config, current)
    train, val = split_cases(reviewed, config)

    yield Progress("evaluate current", 0, 1)
    before = evaluate(current, [r.prepared for r in val], device)
    yield Progress("evaluate current", 1, 1, before)

    segmenter = _fresh_copy(current.segmenter, build_segmenter(current.segmenter_config)).to(device)
    yield from _tune_segmenter(segmenter, [r.prepared for r in train], current, config, device)
    members = []
    labelled = [r.prepared for r in train if r.labelled]
    loss = LossConfig(attention_weight=config.attention_weight, attention_kind=attention_loss_kind(current))
    for member in current.members:
        model = _fresh_copy(member.model, DSANet(current.classifier_config)).to(device)
        if labelled:
            yield from _tune_classifier(model, member.name, labelled, loss, config, device)
        members.append(Member(member.name, member.sampling, member.weight, model.eval(), member.calibration))
    candidate = copy.copy(current)
    candidate.members, candidate.segmenter = members, segmenter.eval()

    yield Progress("evaluate new", 0, 1)
    tuned = evaluate(candidate, [r.prepared for r in val], device)
    yield Progress("evaluate new", 1, 1, tuned)

    # The commit. No yield from here on: a Cancel acts at a yield, so it either came before
    # and nothing was saved, or the saved version is also decided (promoted or refused).
    decision = decide(before, tuned, config.tolerance)
    promoted, reason, after = decision.promoted, decision.reason, decision.metrics
    if promoted and not decision.take_segmenter:
        segmenter = current.segmenter
    if promoted and not decision.take_classifiers:
        members = current.members
    version = next_version(current.name, config.registry_root, after=current.version)
    path = save_bundle(
        (config.registry_root or user_bundles_dir()) / current.name / version,
        name=current.name,
        version=version,
        label=current.label,
        class_names=current.class_names,
        preprocessing=current.preprocessing,
        members=[Member(m.name, m.sampling, m.weight, m.model.cpu(), m.calibration) for m in members],
        segmenter=segmenter.cpu(),
        segmenter_config=current.segmenter_config,
        metrics={
            **current.metrics,
            "finetune": {
                "before": before, "tuned": tuned, "after": after, "promoted": promoted, "reason": reason,
                "took": {"segmenter": decision.take_segmenter, "classifiers": decision.take_classifiers},
                "n_train": len(train), "n_val": len(val),
            },
        },
        training={
            "kind": "fine-tuning from annotator corrections",
            "parent_training": current.training.get("command"),
            "cases_train": [r.key for r in train],
            "cases_val": [r.key for r in val],
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "attention_loss": loss.attention_kind,
            "seconds": round(time.time() - started, 1),
        },
        parent={"name": current.name, "version": current.version},
        pneumonia=current.pneumonia,
        training_data=[*current.training_data, {"name": "annotator corrections", "kind": "real", "cases": len(train)}],
    )
    if promoted:
        set_current(current.name, version, f"fine-tuned from {current.version}: {reason}", config.registry_root)
    else:
        record_rejected(current.name, version, reason, config.registry_root)
    return FinetuneResult(promoted, reason, path, version, current.version, before, after, len(train), len(val), skipped)


@dataclass(frozen=True)
class Decision:
    """What becomes the new version: the tuned segmenter, the tuned classifiers, or both.

    The two parts are judged apart (the segmenter by held-out infection Dice, the
    classifiers by held-out classification loss; each is scored without the other), so a
    part that got worse stays as it was instead of costing the other part its gain.
    ``metrics`` are those of the version this decision makes.
    """

    promoted: bool
    take_segmenter: bool
    take_classifiers: bool
    reason: str
    metrics: dict[str, float]


def decide(before: dict[str, float], tuned: dict[str, float], tolerance: float = 0.0) -> Decision:
    """Promote when neither held-out infection Dice nor classification loss gets worse,
    keeping the current version of whichever part would make it worse."""
    dice_ok = tuned["dice"] >= before["dice"] - tolerance
    nll_ok = np.isnan(before["nll"]) or tuned["nll"] <= before["nll"] + tolerance
    fell = f"infection Dice fell from {before['dice']:.3f} to {tuned['dice']:.3f}"
    rose = f"classification loss rose from {before['nll']:.3f} to {tuned['nll']:.3f}"
    # No labelled held-out case: there is no loss to report.
    loss_change = "" if np.isnan(before["nll"]) else f"classification loss {before['nll']:.3f} -> {tuned['nll']:.3f}"
    if not (dice_ok or nll_ok):
        return Decision(False, False, False, f"kept the current version: {fell} and {rose} on the held-out cases", tuned)
    if not dice_ok:
        reason = f"the segmenter stays as it was (its held-out {fell})" + (f"; held-out {loss_change}" if loss_change else "")
        return Decision(True, False, True, reason, {"dice": before["dice"], "nll": tuned["nll"]})
    gained = f"held-out infection Dice {before['dice']:.3f} -> {tuned['dice']:.3f}"
    if not nll_ok:
        reason = f"{gained}; the classifiers stay as they were (their held-out {rose})"
        return Decision(True, True, False, reason, {"dice": tuned["dice"], "nll": before["nll"]})
    return Decision(True, True, True, gained + (f", {loss_change}" if loss_change else ""), dict(tuned))


def evaluate(bundle: Bundle, cases: Sequence[PreparedCase], device: torch.device) -> dict[str, float]:
    """Held-out infection Dice (segmenter grid) and ensemble classification loss (labelled cases)."""
    dice = segmentation_dice(bundle.segmenter.to(device), cases, bundle.preprocessing.segmenter_roi, bundle.segmenter_config.divisor, device)
    labelled = [c for c in cases if c.label >= 0]
    loss = float("nan")
    if labelled:
        prob = sum(m.weight * predict_probabilities(m.model.to(device), labelled, device, m.calibration) for m in bundle.members)
        loss = nll(prob, np.array([c.label for c in labelled]))
    return {"dice": dice, "nll": loss}


def attention_loss_kind(bundle: Bundle) -> str:
    """The attention loss the bundle was trained with (fine-tuning keeps pulling the same way)."""
    training = bundle.training or {}
    return training.get("attention_loss") or training.get("config", {}).get("loss", {}).get("attention_kind") or "mse"


def split_cases(cases: Sequence[_Reviewed], config: FinetuneConfig) -> tuple[list[_Reviewed], list[_Reviewed]]:
    """A held-out part, the same for the same cases and seed (ordered by case key)."""
    needed = config.min_train_cases + config.min_val_cases
    if len(cases) < needed:
        raise UserFacingError(
            f"Fine-tuning needs at least {needed} reviewed cases with their scans kept; the store has {len(cases)}."
        )
    ordered = sorted(cases, key=lambda c: c.key)
    order = np.random.default_rng(config.seed).permutation(len(ordered))
    n_val = min(max(config.min_val_cases, round(config.val_fraction * len(ordered))), len(ordered) - config.min_train_cases)
    return [ordered[i] for i in order[n_val:]], [ordered[i] for i in order[:n_val]]


def _prepare_reviewed(config: FinetuneConfig, bundle: Bundle) -> Job[tuple[list[_Reviewed], list[str]]]:
    store = AnnotationStore(config.store_root)
    try:
        cases = store.reviewed_cases()
        reviewed, skipped = [], []
        for i, case in enumerate(cases):
            scan = store.load_scan(case.id)
            if scan is None:
                skipped.append(f"case {case.id} ({case.source_name or 'unnamed'}): its scan was not kept; open it again to fine-tune on it")
                continue
            # The classifier knows only its classes (COVID-19, CAP): a case confirmed as
            # "no pneumonia" (or with no confirmed class) teaches the segmenter its final mask,
            # empty or corrected, and stays out of the classification loss and held-out score.
            label = bundle.class_names.index(case.label) if case.label in bundle.class_names else -1
            prepared = prepare_volume(scan, bundle.preprocessing, label=label, infection=store.latest(case.id))
            reviewed.append(_Reviewed(hashlib.sha256(case.identity.encode()).hexdigest()[:12], prepared, label >= 0))
            yield Progress("prepare", i + 1, len(cases))
    finally:
        store.close()
    return reviewed, skipped


def _tune_segmenter(
    model: torch.nn.Module, cases: list[PreparedCase], bundle: Bundle, config: FinetuneConfig, device: torch.device
) -> Job[None]:
    dataset = SegmenterDataset(cases, bundle.preprocessing.segmenter_roi, bundle.segmenter_config.divisor, seed=config.seed)
    sampler = WeightedStreamSampler(np.ones(len(dataset)), len(dataset), seed=config.seed)
    loader = DataLoader(dataset, batch_size=1, sampler=sampler)  # boxes differ in size
    criterion = SegmenterLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.segmenter_lr)
    scaler = grad_scaler(device)
    total = config.segmenter_epochs * len(loader)
    for epoch in range(config.segmenter_epochs):
        sampler.set_epoch(epoch)
        model.train()
        yield from train_steps(
            model, optimizer, loader, criterion, forward=segment, device=device, phase="segmenter",
            total=total, done=epoch * len(loader), scaler=scaler,
        )
    model.eval()


def _tune_classifier(
    model: torch.nn.Module, name: str, cases: list[PreparedCase], loss: LossConfig, config: FinetuneConfig, device: torch.device
) -> Job[None]:
    sampler = WeightedStreamSampler(np.ones(len(cases)), len(cases), seed=config.seed)
    loader = DataLoader(ClassifierDataset(cases, augment=True, seed=config.seed), batch_size=config.batch_size, sampler=sampler)
    criterion = DSALoss(loss).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.classifier_lr)
    scaler = grad_scaler(device)
    total = config.classifier_epochs * len(loader)
    for epoch in range(config.classifier_epochs):
        sampler.set_epoch(epoch)
        # Batch-norm statistics adapt to the reviewed scans (the site's own). Freezing them
        # made the loss jump between steps even on the training scans (docs/finetuning.md).
        model.train()
        yield from train_steps(
            model, optimizer, loader, criterion, forward=classify, device=device, phase=f"classifier:{name}",
            total=total, done=epoch * len(loader), scaler=scaler,
        )
    model.eval()


def _fresh_copy(source: torch.nn.Module, blank: torch.nn.Module) -> torch.nn.Module:
    """The weights of ``source`` in a new module: a deep copy would also copy the explainer's
    hooks and frozen ``requires_grad`` flags that a model used for diagnosis carries."""
    blank.load_state_dict(source.state_dict())
    return blank
