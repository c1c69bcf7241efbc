"""Per-member probability calibration: ``softmax(scale * logits + bias)``.

The two ensemble members are trained on different sampling distributions, so their raw
probabilities sit on different scales: the size-balanced member sees rare groups
(small COVID-19, large CAP) as often as common ones and is less sure of everything.
Averaging uncalibrated probabilities lets the more confident member decide most cases.
Fitting a scale and a bias per member on validation (Platt scaling; vector scaling of
Guo et al. 2017 for two classes) puts both on the same footing before the weighted
average. The transform is monotone, so each member's AUC is unchanged.

Hand-written because MONAI has no post-hoc calibration and the fit is two parameters
(scipy's optimizer does the work).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize


@dataclass(frozen=True)
class Calibration:
    """Logit scale (> 0) and per-class bias; the default is the identity."""

    scale: float = 1.0
    bias: tuple[float, ...] = ()  # empty: zeros

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and not any(self.bias)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated logits of a (batch, classes) tensor."""
        out = logits * self.scale
        if self.bias:
            out = out + torch.tensor(self.bias, dtype=out.dtype, device=out.device)
        return out

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.apply(logits.float()), dim=1)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration:
        """From bundle.json; bundles written before calibration existed get the identity."""
        if not data:
            return cls()
        scale = float(data.get("scale", 1.0))
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"calibration scale must be positive, got {scale}")
        return cls(scale=scale, bias=tuple(float(b) for b in data.get("bias", ())))


IDENTITY = Calibration()


def fit_binary_calibration(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """Platt scaling of a two-class member on validation logits (labels: class indices).

    Minimises the negative log-likelihood of P(class 0) = sigmoid(a * (z0 - z1) + c)
    over a > 0 and c; returned as scale a and bias (c/2, -c/2). Falls back to the
    identity when validation has a single class (nothing to fit).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError("binary calibration needs (n, 2) logits")
    is_class0 = (np.asarray(labels) == 0).astype(np.float64)
    if is_class0.min() == is_class0.max():
        return Calibration()
    margin = logits[:, 0] - logits[:, 1]

    def nll(params: np.ndarray) -> tuple[float, np.ndarray]:
        log_a, c = params
        a = np.exp(log_a)  # the scale stays positive: calibration must not reverse the ranking
        s = a * margin + c
        # -log sigmoid(s) for class 0, -log sigmoid(-s) otherwise; logaddexp is stable
        loss = np.logaddexp(0.0, -s) * is_class0 + np.logaddexp(0.0, s) * (1 - is_class0)
        residual = 1.0 / (1.0 + np.exp(-s)) - is_class0
        grad = np.array([np.mean(residual * margin) * a, np.mean(residual)])
        return float(np.mean(loss)), grad

    result = minimize(nll, x0=np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(-5.0, 5.0), (-20.0, 20.0)])
    a, c = float(np.exp(result.x[0])), float(result.x[1])
    return Calibration(scale=round(a, 6), bias=(round(c / 2, 6), round(-c / 2, 6)))
