"""Attention, Grad-CAM and Grad-CAM++ of one classifier from one forward + one backward.

MONAI's ``GradCAM`` / ``GradCAMpp`` give the map formulas. Two of their traps are
handled here: (1) their default post-processing maps (min, max) to (1, 0), i.e. it
*inverts* the map, so every map here is divided by its own maximum instead (high =
important, same scale as the attention map); (2) their hooks are registered when the
object is built and never removed, so one :class:`MemberExplainer` is built per loaded
model and reused. Both CAMs read the activations and gradients of a single shared pass
(:class:`_OnePass`) rather than running the network twice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks

from napari_covid_attention.models.calibration import IDENTITY, Calibration
from napari_covid_attention.models.dsanet import DSANet

TARGET_LAYER = "backbone.layer4"


@dataclass
class MemberExplanation:
    """One member's output on one scan; maps are on the feature grid, in [0, 1]."""

    probabilities: np.ndarray  # (classes,)
    explained_class: int  # the class Grad-CAM explains: this member's prediction
    attention: np.ndarray
    gradcam: np.ndarray
    gradcam_pp: np.ndarray
    lesion_probabilities: np.ndarray | None


class _OnePass(ModelWithHooks):
    """MONAI's hooked model, but the forward + backward runs once per input tensor.

    ``GradCAM.compute_map`` and ``GradCAMpp.compute_map`` each call the hooked model;
    the second call reuses the first call's logits, activations and gradients.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model, TARGET_LAYER, register_forward=True, register_backward=True)
        self._last: tuple[torch.Tensor, tuple] | None = None

    def __call__(self, x, class_idx=None, retain_graph=False, **kwargs):
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        result = super().__call__(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
        self._last = (x, result)
        return result

    def forget(self) -> None:
        """Drop the cached tensors (and the graph they hold) once the maps are made."""
        self._last = None
        self.activations.clear()
        self.gradients.clear()


class MemberExplainer:
    """Built once per loaded classifier; explains any number of scans.

    Only the last backbone stage and the head keep ``requires_grad``: Grad-CAM needs
    gradients at ``backbone.layer4`` and nothing below it, so the backward pass stays
    in the smallest part of the network.
    """

    def __init__(self, model: DSANet) -> None:
        self.model = model
        for name, param in model.named_parameters():
            param.requires_grad_(not name.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2", "backbone.layer3")))
        self._hooks = _OnePass(model)
        self._gradcam = GradCAM(nn_module=self._hooks, target_layers=TARGET_LAYER)
        self._gradcam_pp = GradCAMpp(nn_module=self._hooks, target_layers=TARGET_LAYER)
        self._captured: dict[str, torch.Tensor] = {}
        model.attention.register_forward_hook(self._capture("attention"))
        if model.lesion_head is not None:
            model.lesion_head.register_forward_hook(self._capture("lesion"))

    def _capture(self, key: str):
        def hook(_module, _inputs, output):
            self._captured[key] = output.detach()

        return hook

    def explain(self, image: torch.Tensor, calibration: Calibration = IDENTITY) -> MemberExplanation:
        """``image``: (1, 1, z, y, x) normalised classifier input on the model's device.

        Probabilities go through the member's calibration; the maps explain the class it
        then predicts (the scale of the logits cancels in the normalised maps).
        """
        if image.shape[0] != 1:
            raise ValueError("explain one scan at a time")
        try:
            with warnings.catch_warnings():
                # torch notes that the layer4 hook sees output gradients only (its inputs
                # are frozen); output gradients are exactly what Grad-CAM uses.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                logits, _, _ = self._hooks(image)
            probabilities = calibration.probabilities(logits.detach())[0]
            explained = int(probabilities.argmax().item())
            gradcam = self._gradcam.compute_map(image, class_idx=explained)
            gradcam_pp = self._gradcam_pp.compute_map(image, class_idx=explained)
            lesion = self._captured.get("lesion")
            return MemberExplanation(
                probabilities=probabilities.cpu().numpy(),
                explained_class=explained,
                attention=_unit_max(self._captured["attention"]),
                gradcam=_unit_max(gradcam),
                gradcam_pp=_unit_max(gradcam_pp),
                lesion_probabilities=None if lesion is None else torch.sigmoid(lesion.float())[0].cpu().numpy(),
            )
        finally:
            self._hooks.forget()
            self._captured.clear()


def _unit_max(cam: torch.Tensor) -> np.ndarray:
    """(1, 1, z, y, x) non-negative map -> (z, y, x) float32 divided by its maximum."""
    values = torch.relu(cam.detach().float())[0, 0]
    peak = values.max()
    if peak > 0:
        values = values / peak
    return values.cpu().numpy().astype(np.float32)
