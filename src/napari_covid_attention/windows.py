"""CT display windows (width / level in HU) that radiologists switch between."""

from __future__ import annotations

import numpy as np

# name -> (width, level) in HU. Lung and mediastinum follow common chest CT practice.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 40.0),
    "bone": (1800.0, 400.0),
}
DEFAULT_WINDOW = "lung"


def window_limits(preset: str, hu: np.ndarray | None = None) -> tuple[float, float]:
    """Contrast limits (low, high) in HU for a preset; ``"full range"`` needs the data."""
    if preset == "full range":
        if hu is None:
            raise ValueError("the full-range window needs the image data")
        return float(np.min(hu)), float(np.max(hu))
    try:
        width, level = WINDOW_PRESETS[preset]
    except KeyError:
        names = ", ".join([*WINDOW_PRESETS, "full range"])
        raise ValueError(f"unknown window {preset!r}; choose one of: {names}") from None
    return level - width / 2.0, level + width / 2.0


def window_names() -> tuple[str, ...]:
    return (*WINDOW_PRESETS, "full range")
