"""Training losses: classification + lambda * attention loss (+ optional lesion-type loss).

The attention loss is what makes corrected infection masks matter: the attention map A is
pulled towards the infection mask M downsampled to A's grid (GAIN-style squared error,
or a Dice distance), on the cases that have a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from napari_covid_attention.models.dsanet import DSAOutput


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.999) -> torch.Tensor:
    """Class weights (1 - beta) / (1 - beta^n_c) (Cui et al. 2019, used by Deep Pneumonia),
    scaled to sum to the number of classes."""
    counts = np.maximum(np.asarray(class_counts, dtype=float), 1.0)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    weights = weights / weights.sum() * len(counts)
    return torch.as_tensor(weights, dtype=torch.float32)


def attention_target(infection: torch.Tensor, attention_shape: Sequence[int], mode: str = "max") -> torch.Tensor:
    """The infection mask (B, 1, Z, Y, X) on the attention grid.

    ``max``: a cell is 1 when any of it is infected (small lesions stay visible on the
    coarse grid); ``mean``: the infected fraction of the cell.
    """
    if mode == "max":
        return F.adaptive_max_pool3d(infection, tuple(attention_shape))
    if mode == "mean":
        return F.adaptive_avg_pool3d(infection, tuple(attention_shape))
    raise ValueError(f"unknown attention target mode {mode!r} (max or mean)")


_DICE = DiceLoss(sigmoid=False, softmax=False, reduction="none")


def attention_loss(attention: torch.Tensor, target: torch.Tensor, has_mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean attention loss over the cases that have an infection mask (0 when none do)."""
    a, t = attention.float(), target.float()
    if kind == "mse":
        per_case = ((a - t) ** 2).flatten(1).mean(dim=1)
    elif kind == "dice":
        per_case = _DICE(a, t).flatten(1).mean(dim=1)
    else:
        raise ValueError(f"unknown attention loss {kind!r} (mse or dice)")
    # Masked mean (not indexing) keeps the graph identical for every batch.
    has = has_mask.float()
    return (per_case * has).sum() / has.sum().clamp(min=1.0)


@dataclass
class LossConfig:
    attention_weight: float = 1.0  # lambda
    attention_kind: str = "mse"
    attention_target_mode: str = "max"
    classification: str = "ce"  # "ce" or "class_balanced"
    class_balance_beta: float = 0.999
    lesion_weight: float = 0.5


class DSALoss(torch.nn.Module):
    """L = L_cls + lambda * L_att (+ mu * lesion BCE); returns the total and its parts."""

    def __init__(self, config: LossConfig, class_counts: Sequence[int] | None = None) -> None:
        super().__init__()
        self.config = config
        weight = None
        if config.classification == "class_balanced":
            if class_counts is None:
                raise ValueError("the class-balanced loss needs the training class counts")
            weight = class_balanced_weights(class_counts, config.class_balance_beta)
        elif config.classification != "ce":
            raise ValueError(f"unknown classification loss {config.classification!r} (ce or class_balanced)")
        self.register_buffer("class_weight", weight if weight is not None else torch.ones(0))

    def forward(self, output: DSAOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        weight = self.class_weight if self.class_weight.numel() else None
        cls = F.cross_entropy(output.logits.float(), batch["label"], weight=weight)
        target = attention_target(batch["infection"], output.attention.shape[2:], self.config.attention_target_mode)
        att = attention_loss(output.attention, target, batch["has_mask"], self.config.attention_kind)
        total = cls + self.config.attention_weight * att
        parts = {"classification": float(cls.detach()), "attention": float(att.detach())}
        if output.lesion_logits is not None:
            # Masked rather than indexed, so the head is always in the graph (DDP needs
            # every parameter to receive a gradient, even in batches without flags).
            has = batch["has_flags"].float()
            per_case = F.binary_cross_entropy_with_logits(
                output.lesion_logits.float(), batch["lesion_flags"], reduction="none"
            ).mean(dim=1)
            lesion = (per_case * has).sum() / has.sum().clamp(min=1.0)
            total = total + self.config.lesion_weight * lesion
            parts["lesion"] = float(lesion.detach())
        parts["total"] = float(total.detach())
        return total, parts


class SegmenterLoss(torch.nn.Module):
    """Dice + cross-entropy of the infection logits (scored in fp32) against the mask.

    Returns ``(loss, parts)`` like :class:`DSALoss`, so both go through the same step loop
    (:func:`napari_covid_attention.training.steps.train_steps`); it has no parts to report.
    """

    def __init__(self) -> None:
        super().__init__()
        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.criterion(logits.float(), batch["label"]), {}
