"""Pneumonia or not: the decision a diagnosis makes before COVID-19 vs CAP.

The classifier only knows two classes, so every scan would be forced into one of them.
Whether there is pneumonia at all is read off the infection segmenter instead: the share
of the lungs it marks as infected, against a threshold stored in the bundle and chosen on
validation scans with and without infection (:func:`choose_threshold`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# For bundles that predate the rule (no "pneumonia" block in bundle.json): 0.5 % of the lungs
# is about one 3 cm lesion in an adult, below the smallest COVID-19 infections of the paper's
# small-infection group and above the specks a segmenter leaves in healthy lungs.
DEFAULT_MIN_INFECTION_PERCENT = 0.5


@dataclass(frozen=True)
class PneumoniaRule:
    """Pneumonia is present when the infection covers at least this share of the lungs."""

    min_infection_percent: float = DEFAULT_MIN_INFECTION_PERCENT
    chosen_on: str = "default (not fitted on validation)"

    @classmethod
    def from_dict(cls, data: dict | None) -> PneumoniaRule:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("the pneumonia rule must be an object")
        value = float(data["min_infection_percent"])
        if not np.isfinite(value) or not 0.0 <= value <= 100.0:
            raise ValueError(f"min_infection_percent must be within 0-100, not {value}")
        return cls(value, str(data.get("chosen_on", "")))

    def to_dict(self) -> dict:
        return asdict(self)

    def detects(self, infection_percent: float) -> bool:
        return bool(infection_percent >= self.min_infection_percent)


def choose_threshold(infected_percent: np.ndarray, healthy_percent: np.ndarray) -> float:
    """The infection-% threshold that best separates validation scans with and without pneumonia.

    ``infected_percent``: the predicted infection % of scans that have pneumonia;
    ``healthy_percent``: of scans that have none. Maximises balanced accuracy; among
    equally good thresholds takes the middle of the widest gap (on a log scale, since
    burdens span decades), so the rule does not sit on one validation scan. Never below
    0.05 % (a few voxels are noise, not pneumonia).
    """
    infected = np.sort(np.asarray(infected_percent, dtype=float))
    healthy = np.sort(np.asarray(healthy_percent, dtype=float))
    if infected.size == 0 or healthy.size == 0:
        raise ValueError("choosing a threshold needs scans with and without pneumonia")
    floor = 0.05
    values = np.unique(np.clip(np.concatenate([infected, healthy, [floor]]), floor, None))
    # Candidate thresholds: midpoints (log scale) between consecutive observed values.
    logs = np.log10(values)
    candidates = np.concatenate([[logs[0] - 0.1], (logs[:-1] + logs[1:]) / 2, [logs[-1] + 0.1]])
    best_key, best = None, floor
    for i, c in enumerate(candidates):
        t = 10.0**c
        balanced = 0.5 * (np.mean(infected >= t) + np.mean(healthy < t))
        gap = (logs[min(i, len(logs) - 1)] - logs[max(i - 1, 0)]) if 0 < i < len(candidates) - 1 else 0.0
        key = (round(float(balanced), 9), gap)
        if best_key is None or key > best_key:
            best_key, best = key, t
    return float(max(best, floor))
