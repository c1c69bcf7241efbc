"""Attention loss, class-balanced weights, and that attention learns a mask on a toy problem."""

from __future__ import annotations

import numpy as np
import torch

from napari_covid_attention.models.dsanet import DSANet, DSANetConfig, DSAOutput
from napari_covid_attention.training.losses import (
    DSALoss,
    LossConfig,
    attention_loss,
    attention_target,
    class_balanced_weights,
)


def test_attention_target_max_and_mean():
    mask = torch.zeros(1, 1, 8, 8, 8)
    mask[0, 0, 0, 0, 0] = 1.0
    assert attention_target(mask, (2, 2, 2), "max")[0, 0, 0, 0, 0] == 1.0
    assert attention_target(mask, (2, 2, 2), "mean")[0, 0, 0, 0, 0] == 1.0 / 64


def test_attention_loss_ignores_cases_without_mask():
    attention = torch.rand(2, 1, 2, 2, 2)
    target = torch.zeros_like(attention)
    only_first = attention_loss(attention, target, torch.tensor([True, False]))
    torch.testing.assert_close(only_first, (attention[0] ** 2).mean())
    assert float(attention_loss(attention, target, torch.tensor([False, False]))) == 0.0


def test_class_balanced_weights_favour_the_rare_class():
    weights = class_balanced_weights([900, 100], beta=0.999)
    assert weights[1] > weights[0]
    assert abs(float(weights.sum()) - 2.0) < 1e-6


def test_dsa_loss_parts():
    output = DSAOutput(torch.tensor([[2.0, 0.0]]), torch.full((1, 1, 2, 2, 2), 0.5), torch.zeros(1, 5))
    batch = {
        "label": torch.tensor([0]),
        "infection": torch.ones(1, 1, 4, 4, 4),
        "has_mask": torch.tensor([True]),
        "lesion_flags": torch.ones(1, 5),
        "has_flags": torch.tensor([True]),
    }
    total, parts = DSALoss(LossConfig(attention_weight=2.0, lesion_weight=1.0))(output, batch)
    assert abs(parts["attention"] - 0.25) < 1e-6
    assert abs(parts["total"] - (parts["classification"] + 2 * 0.25 + parts["lesion"])) < 1e-5


def test_attention_loss_decreases_on_a_toy_problem():
    """Toy problem: a bright blob at a random position, whose brightness gives the class.
    Trained with the attention loss, the attention map learns to sit on the blob."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = DSANet(DSANetConfig(widths=(4, 8, 16, 16), dropout=0.0))
    criterion = DSALoss(LossConfig(attention_weight=5.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def batch(n=8):
        images = torch.rand(n, 1, 16, 32, 32) * 0.2
        masks = torch.zeros(n, 1, 16, 32, 32)
        labels = torch.tensor(rng.integers(0, 2, n))
        for i in range(n):
            z, y, x = rng.integers(0, 8), rng.integers(0, 16), rng.integers(0, 16)
            masks[i, 0, z : z + 8, y : y + 16, x : x + 16] = 1
            images[i, 0][masks[i, 0] > 0] += 0.5 + 0.4 * float(labels[i])
        return {"image": images, "infection": masks, "label": labels, "has_mask": torch.ones(n, dtype=torch.bool),
                "lesion_flags": torch.zeros(n, 5), "has_flags": torch.zeros(n, dtype=torch.bool)}

    history = []
    for _ in range(30):
        b = batch()
        loss, parts = criterion(model.forward_all(b["image"]), b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(parts["attention"])
    assert np.mean(history[-8:]) < 0.6 * np.mean(history[:8])
