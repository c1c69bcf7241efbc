"""Infection segmenter: a small MONAI 3D U-Net predicting the infection mask in the lungs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture of the infection segmenter (stored in bundle.json)."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "instance"

    @classmethod
    def from_dict(cls, data: dict) -> SegmenterConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown segmenter architecture fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (the product of the strides)."""
        total = 1
        for s in self.strides:
            total *= s
        return total


def build_segmenter(config: SegmenterConfig | None = None) -> UNet:
    """Two output channels (background, infection), softmax probabilities at inference."""
    c = config or SegmenterConfig()
    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=c.channels,
        strides=c.strides,
        num_res_units=c.num_res_units,
        norm=c.norm,
    )


def infection_probability(
    model: torch.nn.Module,
    image: torch.Tensor,
    roi: tuple[int, int, int],
    divisor: int,
    overlap: float = 0.25,
) -> torch.Tensor:
    """P(infection) for a (B, 1, z, y, x) normalised image, sliding-window when larger than ``roi``.

    The U-Net needs sizes divisible by ``divisor``, so the image is zero-padded (0 is air
    after normalisation) up to a multiple of it and the result cropped back.
    """
    size = image.shape[2:]
    padded = [-(-s // divisor) * divisor for s in size]
    pad = []
    for s, p in zip(reversed(size), reversed(padded), strict=True):
        pad += [0, p - s]
    x = torch.nn.functional.pad(image, pad)
    window = tuple(min(r, p) for r, p in zip(roi, padded, strict=True))
    with torch.no_grad():
        logits = sliding_window_inference(
            x, roi_size=window, sw_batch_size=2, predictor=model, overlap=overlap, mode="gaussian"
        )
    prob = torch.softmax(logits, dim=1)[:, 1:2]
    return prob[:, :, : size[0], : size[1], : size[2]]
