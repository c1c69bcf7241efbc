"""DSANet (online attention) and the infection segmenter on tiny volumes."""

from __future__ import annotations

import pytest
import torch

from napari_covid_attention.models.dsanet import LESION_TYPES, DSANet, DSANetConfig, OnlineAttention
from napari_covid_attention.models.segmenter import (
    SegmenterConfig,
    build_segmenter,
    infection_probability,
)

TINY = DSANetConfig(layers=(1, 1, 1, 1), widths=(4, 8, 8, 16), lesion_head=True)


def test_forward_shapes_and_attention_range():
    torch.manual_seed(0)
    model = DSANet(TINY).eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(2, 1, 16, 32, 32))
    assert out.logits.shape == (2, 2)
    assert out.lesion_logits.shape == (2, len(LESION_TYPES))
    # stem (1,2,2) + max-pool 2 + stages 2 and 3 (x2 each), last stage stride 1 -> (1/8, 1/16, 1/16)
    assert out.attention.shape == (2, 1, 2, 2, 2)
    assert float(out.attention.min()) >= 0.0 and float(out.attention.max()) <= 1.0
    assert torch.allclose(out.attention.flatten(1).amax(1), torch.ones(2), atol=1e-4)


def test_plain_forward_returns_logits_only():
    model = DSANet(TINY).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    assert torch.equal(model(x), model.forward_all(x).logits)


def test_online_attention_is_class_difference_for_two_classes():
    features = torch.rand(1, 3, 2, 2, 2)
    weights = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]])
    attention = OnlineAttention(eps=0.0)(features, weights)
    cam = torch.einsum("bc...,kc->bk...", features, weights)
    expected = (cam[:, 0] - cam[:, 1]).abs()
    torch.testing.assert_close(attention[:, 0], expected / expected.max())


def test_attention_reweights_features_before_pooling():
    """Changing the attention changes the logits: it is in the decision, not beside it."""
    torch.manual_seed(0)
    model = DSANet(TINY).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    baseline = model(x)
    model.attention.forward = lambda f, w: torch.zeros_like(f[:, :1])
    assert not torch.allclose(baseline, model(x))


def test_config_round_trip_and_unknown_fields():
    assert DSANetConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown classifier"):
        DSANetConfig.from_dict({"depth": 34})


def test_resnet34_configuration_builds():
    model = DSANet(DSANetConfig(layers=(3, 4, 6, 3), widths=(64, 128, 256, 512)))
    assert sum(p.numel() for p in model.parameters()) > 60e6


def test_segmenter_sliding_window_handles_any_size():
    torch.manual_seed(0)
    model = build_segmenter(SegmenterConfig(channels=(4, 8, 16), strides=(2, 2))).eval()
    image = torch.rand(1, 1, 13, 30, 41)  # not a multiple of the stride product
    prob = infection_probability(model, image, roi=(8, 16, 24), divisor=4)
    assert prob.shape == (1, 1, 13, 30, 41)
    assert float(prob.min()) >= 0.0 and float(prob.max()) <= 1.0


def test_one_core_is_left_for_the_gui_and_restored():
    import torch

    from napari_covid_attention.models.device import one_core_for_the_gui, usable_cores

    before = torch.get_num_threads()
    with one_core_for_the_gui() as threads:
        assert torch.get_num_threads() == threads == max(1, min(before, usable_cores() - 1))
    assert torch.get_num_threads() == before
