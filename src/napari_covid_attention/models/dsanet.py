"""The dual-sampling attention network's classifier: 3D ResNet + online attention.

One member of the ensemble. The backbone is MONAI's 3D ResNet; what MONAI does not have
is the *online attention module* of Ouyang et al. (IEEE TMI 2020): a class-activation map
computed in the forward pass from the last feature map and the classifier's own weights,
normalised to [0, 1], which re-weights the features before pooling. Because it is part
of the forward pass, the attention map exists at inference for free, and during training
it can be supervised with infection masks (see ``training.losses``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.networks.nets import ResNet
from torch import nn

from napari_covid_attention.classes import LESION_TYPES


@dataclass(frozen=True)
class DSANetConfig:
    """Architecture of one classifier (stored in bundle.json).

    The defaults are the small, CPU-friendly demo network. ``layers=(3, 4, 6, 3)`` and
    ``widths=(64, 128, 256, 512)`` give the paper's ResNet-34. The stem (a (3, 7, 7) conv
    with in-plane stride 2, then max-pooling) costs ~8x less than MONAI's default stride-1
    stem; the last stage keeps stride 1 so the attention map is 1/16 of the in-plane grid
    instead of 1/32 (finer maps for little extra cost, since that stage is the smallest).
    """

    layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    stem_kernel: tuple[int, int, int] = (3, 7, 7)
    stem_stride: tuple[int, int, int] = (1, 2, 2)
    last_stage_stride: int = 1
    num_classes: int = 2
    lesion_head: bool = False
    dropout: float = 0.2
    # Features are pooled as mean(F * (1 + gain * A)): gain 1 doubles attended locations
    # at most; a larger gain lets a small lesion dominate the pooled evidence.
    attention_gain: float = 1.0

    @classmethod
    def from_dict(cls, data: dict) -> DSANetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown classifier architecture fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DSAOutput:
    """Logits (B, classes), attention (B, 1, z, y, x) in [0, 1], optional lesion logits."""

    logits: torch.Tensor
    attention: torch.Tensor
    lesion_logits: torch.Tensor | None = None


class DSANet(nn.Module):
    """3D ResNet with online attention.

    ``forward(x)`` returns logits only, so MONAI's Grad-CAM and standard tools work on
    it; ``forward(x, return_all=True)`` returns (logits, attention, lesion logits or None)
    for training (a tuple, and through ``forward`` so DistributedDataParallel sees it);
    :meth:`forward_all` wraps that in a :class:`DSAOutput`.
    """

    def __init__(self, config: DSANetConfig | None = None) -> None:
        super().__init__()
        self.config = config or DSANetConfig()
        c = self.config
        self.backbone = ResNet(
            block="basic",
            layers=list(c.layers),
            block_inplanes=list(c.widths),
            spatial_dims=3,
            n_input_channels=1,
            conv1_t_size=c.stem_kernel,
            conv1_t_stride=c.stem_stride,
            no_max_pool=False,
            feed_forward=False,
        )
        if c.last_stage_stride != 2:
            _set_first_block_stride(self.backbone.layer4, c.last_stage_stride)
        channels = c.widths[3]
        self.attention = OnlineAttention()
        self.dropout = nn.Dropout(c.dropout)
        self.classifier = nn.Linear(channels, c.num_classes)
        self.lesion_head = nn.Linear(channels, len(LESION_TYPES)) if c.lesion_head else None

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last backbone stage (``backbone.layer4``): the map attention and Grad-CAM use."""
        b = self.backbone
        x = b.maxpool(b.act(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: torch.Tensor, return_all: bool = False):
        features = self.feature_map(x)
        attention = self.attention(features, self.classifier.weight)
        pooled = self.dropout((features * (1.0 + self.config.attention_gain * attention)).mean(dim=(2, 3, 4)))
        logits = self.classifier(pooled)
        # Computed even when not returned: hooks (the explainer's) read it from the same pass.
        lesion = self.lesion_head(pooled) if self.lesion_head is not None else None
        if not return_all:
            return logits
        return logits, attention, lesion

    def forward_all(self, x: torch.Tensor) -> DSAOutput:
        return DSAOutput(*self(x, return_all=True))


class OnlineAttention(nn.Module):
    """Attention A from features F (B, C, ...) and classifier weights W (K, C).

    CAM_k = W_k . F is the evidence for class k at each location; only differences
    between classes change the softmax, so the class-mean is removed and A is the
    largest remaining evidence for *any* class (for two classes: |CAM_0 - CAM_1| / 2),
    rectified and divided by its maximum per scan so that A lies in [0, 1].
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        cam = torch.einsum("bc...,kc->bk...", features, class_weights)
        cam = cam - cam.mean(dim=1, keepdim=True)
        evidence = torch.relu(cam).amax(dim=1, keepdim=True)
        peak = evidence.flatten(1).amax(dim=1).view(-1, 1, 1, 1, 1)
        return evidence / (peak + self.eps)


def _set_first_block_stride(stage: nn.Sequential, stride: int) -> None:
    """Change the stride of a MONAI ResNet stage (its first block's conv and shortcut).

    MONAI fixes strides of 2 for stages 2-4; a stride-1 last stage is the usual way to get
    finer class-activation maps (as torchvision's ``replace_stride_with_dilation``).
    """
    block = stage[0]
    block.conv1.stride = (stride,) * 3
    if block.downsample is not None:
        block.downsample[0].stride = (stride,) * 3
