"""The one optimisation step loop every training and fine-tuning run goes through.

Training (classifier members, segmenter) and fine-tuning (the same two) used to have four
hand-written loops; mixed precision, loss scaling or gradient clipping had to be added to
each. :func:`train_steps` is that loop once: zero the gradients, forward under
:func:`~napari_covid_attention.models.device.autocast`, the loss in full precision,
backward (scaled where fp16 needs it), optimiser and scheduler steps, and one
:class:`~napari_covid_attention.jobs.Progress` per step (each a point where Cancel can act).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any

import torch

from napari_covid_attention.jobs import Progress
from napari_covid_attention.models.device import autocast
from napari_covid_attention.models.dsanet import DSAOutput

Batch = dict[str, torch.Tensor]
# A loss takes the forward's output and the batch; returns the loss to minimise and the
# numbers worth showing (as DSALoss does; a "total" entry is the loss itself).
LossFn = Callable[[Any, Batch], tuple[torch.Tensor, dict[str, float]]]
Forward = Callable[[torch.nn.Module, Batch], Any]


def classify(model: torch.nn.Module, batch: Batch) -> DSAOutput:
    """Classifier forward with attention and lesion outputs (what :class:`DSALoss` scores)."""
    return DSAOutput(*model(batch["image"], return_all=True))


def segment(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Segmenter forward: infection logits of the lung box."""
    return model(batch["image"])


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    loss_fn: LossFn,
    *,
    forward: Forward,
    device: torch.device,
    phase: str,
    total: int,
    done: int = 0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip: float | None = None,
    precision: str = "auto",
) -> Generator[Progress, None, None]:
    """One pass over ``batches`` (an epoch); yields ``Progress(phase, done + i, total, metrics)``.

    ``metrics`` are ``{"loss": ...}`` plus what ``loss_fn`` reports. ``scaler`` (from
    :func:`~napari_covid_attention.models.device.grad_scaler`, created once per run so its
    scale carries over epochs) scales fp16 losses; ``clip`` caps the gradient norm
    (unscaled first); ``precision`` is passed to ``autocast``. Without either, the operations are exactly those of a plain
    fp32 step, so CPU results do not change with this helper. The caller puts the model in
    train mode and sets the sampler's epoch.
    """
    for i, batch in enumerate(batches, start=1):
        batch = {k: v.to(device) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            output = forward(model, batch)
        loss, parts = loss_fn(output, batch)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(optimizer)
                _clip(optimizer, clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip is not None:
                _clip(optimizer, clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        metrics = {"loss": float(loss.detach()), **{k: v for k, v in parts.items() if k != "total"}}
        yield Progress(phase, done + i, total, metrics)


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)
