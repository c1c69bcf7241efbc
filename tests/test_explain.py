"""Grad-CAM / Grad-CAM++ / attention: one pass, high = important, no hook pile-up; scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM

from napari_covid_attention.explain.cams import MemberExplainer, _unit_max
from napari_covid_attention.explain.localization import localization_scores
from napari_covid_attention.models.dsanet import DSANet, DSANetConfig

TINY = DSANetConfig(widths=(4, 8, 8, 16), lesion_head=True)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return DSANet(TINY).eval()


def test_one_forward_and_maps_in_unit_range(model):
    calls = []
    model.backbone.conv1.register_forward_hook(lambda *args: calls.append(1))
    result = MemberExplainer(model).explain(torch.randn(1, 1, 16, 32, 32))
    assert len(calls) == 1  # attention, Grad-CAM and Grad-CAM++ from a single pass
    for name in ("attention", "gradcam", "gradcam_pp"):
        values = getattr(result, name)
        assert values.shape == (2, 2, 2)
        assert values.min() >= 0 and values.max() <= 1
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.lesion_probabilities.shape == (5,)


def test_gradcam_matches_monai_without_its_inverting_normaliser(model):
    x = torch.randn(1, 1, 16, 32, 32)
    ours = MemberExplainer(model).explain(x)
    reference = DSANet(TINY).eval()
    reference.load_state_dict(model.state_dict())
    raw = GradCAM(nn_module=reference, target_layers="backbone.layer4").compute_map(x, class_idx=ours.explained_class)
    np.testing.assert_allclose(ours.gradcam, _unit_max(raw), atol=1e-5)


def test_hooks_do_not_pile_up_over_repeated_use(model):
    explainer = MemberExplainer(model)
    for _ in range(3):
        explainer.explain(torch.randn(1, 1, 16, 32, 32))
    assert len(model.backbone.layer4._forward_hooks) == 1
    assert len(model.backbone.layer4._backward_hooks) == 1


def test_localization_scores_perfect_and_uninformative_maps():
    mask = np.zeros((4, 8, 8), bool)
    mask[1:3, 2:5, 2:5] = True
    perfect = localization_scores(mask.astype(float), mask)
    assert perfect.energy_inside == 1.0 and perfect.pointing_game and perfect.map_auc == 1.0
    flat = localization_scores(np.ones(mask.shape), mask)
    assert flat.energy_inside == pytest.approx(mask.mean())
    assert flat.map_auc == pytest.approx(0.5)
    assert localization_scores(np.ones(mask.shape), np.zeros(mask.shape, bool)) is None
