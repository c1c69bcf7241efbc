"""Classification metrics as the paper reports them, with bootstrap confidence intervals.

COVID-19 (class 0) is the positive class: sensitivity = COVID-19 recall, specificity =
CAP recall. F1 is reported per class and macro-averaged (the paper's 82.0 % F1 is the
macro F1 on an ~81 % COVID-19 test set).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

METRIC_NAMES = ("auc", "accuracy", "sensitivity", "specificity", "f1_covid", "f1_cap", "macro_f1")


def roc_auc(prob_positive: np.ndarray, is_positive: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present.

    torch and MONAI are imported here, not at the top: the annotation store uses this
    module's :func:`dice` and must stay light to import.
    """
    import torch
    from monai.metrics import compute_roc_auc

    if is_positive.min() == is_positive.max():
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(prob_positive, dtype=torch.float64), torch.as_tensor(is_positive, dtype=torch.float64)))


def binary_metrics(prob_covid: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """All metrics for P(COVID-19) scores and labels (0 = COVID-19, 1 = CAP)."""
    positive = labels == 0
    predicted = prob_covid >= threshold
    tp = float(np.sum(predicted & positive))
    tn = float(np.sum(~predicted & ~positive))
    fp = float(np.sum(predicted & ~positive))
    fn = float(np.sum(~predicted & positive))
    f1_covid = _safe(2 * tp, 2 * tp + fp + fn)
    f1_cap = _safe(2 * tn, 2 * tn + fn + fp)
    return {
        "auc": roc_auc(prob_covid, positive.astype(float)),
        "accuracy": _safe(tp + tn, tp + tn + fp + fn),
        "sensitivity": _safe(tp, tp + fn),
        "specificity": _safe(tn, tn + fp),
        "f1_covid": f1_covid,
        "f1_cap": f1_cap,
        "macro_f1": (f1_covid + f1_cap) / 2 if not (np.isnan(f1_covid) or np.isnan(f1_cap)) else float("nan"),
    }


def bootstrap_ci(
    statistic: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    prob: np.ndarray,
    labels: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of every metric ``statistic`` returns (cases resampled)."""
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        idx = rng.integers(0, len(labels), len(labels))
        for name, value in statistic(prob[idx], labels[idx]).items():
            draws.setdefault(name, []).append(value)
    alpha = (1.0 - level) / 2.0
    return {
        name: (float(np.nanquantile(values, alpha)), float(np.nanquantile(values, 1.0 - alpha)))
        for name, values in draws.items()
    }


def roc_curve(prob_positive: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold (for the ROC plot).

    Hand-written (a sort and two cumulative sums) because MONAI gives the AUC but not the
    curve, and scikit-learn would be a large dependency for these few lines.
    """
    order = np.argsort(-prob_positive, kind="mergesort")
    scores, truth = prob_positive[order], is_positive[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(truth)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(truth.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~truth).sum(), 1)]
    return fpr, tpr


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path, title: str) -> None:
    """ROC curves (name -> (fpr, tpr, auc)) to a PNG, without a display."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    ax.set_xlabel("1 - specificity (CAP called COVID-19)")
    ax.set_ylabel("sensitivity (COVID-19 detected)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# A slice counts as infected from this area on: a lesion section of about 5 mm. Thinner
# slivers at a lesion's top and bottom are neither positives nor negatives.
SLICE_MIN_AREA_MM2 = 20.0


def slice_detection_counts(reference: np.ndarray, predicted: np.ndarray, pixel_area_mm2: float) -> dict[str, int]:
    """Axial slices with infection found and missed: tp, fn, fp, tn over one scan's slices.

    A slice is infected when its reference area is at least :data:`SLICE_MIN_AREA_MM2`,
    clean when it has none; a slice is flagged when the predicted area reaches the same
    size. Slices with a reference sliver below the size are skipped.
    """
    ref_area = np.count_nonzero(reference, axis=(1, 2)) * pixel_area_mm2
    pred_flag = np.count_nonzero(predicted, axis=(1, 2)) * pixel_area_mm2 >= SLICE_MIN_AREA_MM2
    infected, clean = ref_area >= SLICE_MIN_AREA_MM2, ref_area == 0
    return {
        "tp": int(np.sum(infected & pred_flag)),
        "fn": int(np.sum(infected & ~pred_flag)),
        "fp": int(np.sum(clean & pred_flag)),
        "tn": int(np.sum(clean & ~pred_flag)),
    }


def dice(reference: np.ndarray, predicted: np.ndarray) -> float:
    """Dice of the foregrounds (value > 0) of two masks, boolean or label.

    Two empty masks agree perfectly (1.0): a scan without infection that the model (or an
    annotator) leaves empty is a correct answer, not an undefined one. Every Dice in the
    package (validation, evaluation, fine-tuning, the annotation store) is this one.
    """
    reference, predicted = np.asarray(reference) > 0, np.asarray(predicted) > 0
    denom = int(np.count_nonzero(reference)) + int(np.count_nonzero(predicted))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(reference & predicted)) / denom


NLL_FLOOR = 1e-7  # one confident mistake costs -log(1e-7) = 16 nats, not infinity


def nll(prob_covid: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood (log loss) of the true classes, given P(class 0) per case.

    Labels are 0 (COVID-19) or 1 (CAP); the probability of the true class is floored at
    :data:`NLL_FLOOR`. NaN when there is no case (nothing to score, not a perfect score).
    Computed in the probabilities' own dtype (float32 from the models), as validation and
    the fine-tuning gate always have been.
    """
    prob_covid, labels = np.asarray(prob_covid), np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    p_true = np.clip(np.where(labels == 0, prob_covid, 1.0 - prob_covid), NLL_FLOOR, 1.0)
    return float(-np.mean(np.log(p_true)))


def _safe(num: float, den: float) -> float:
    return num / den if den else float("nan")
