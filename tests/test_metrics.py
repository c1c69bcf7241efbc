"""Classification metrics, bootstrap CIs, ROC curve, ensemble weight choice."""

from __future__ import annotations

import numpy as np
import pytest

from napari_covid_attention.training.metrics import (
    NLL_FLOOR,
    binary_metrics,
    bootstrap_ci,
    dice,
    nll,
    roc_curve,
)
from napari_covid_attention.training.trainer import choose_ensemble_weights


def test_binary_metrics_on_a_known_confusion_matrix():
    # labels: 0 = COVID-19 (positive), 1 = CAP
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    prob = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.2, 0.3, 0.1, 0.4])
    m = binary_metrics(prob, labels)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["f1_covid"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["f1_cap"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    assert m["macro_f1"] == pytest.approx((m["f1_covid"] + m["f1_cap"]) / 2)
    assert m["auc"] == pytest.approx(20.5 / 24)  # one tie (0.2 vs 0.2) counts half


def test_roc_curve_endpoints_and_area():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    prob = np.clip(0.5 + (0.5 - labels) * 0.4 + rng.normal(0, 0.25, 200), 0, 1)
    fpr, tpr = roc_curve(prob, labels == 0)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(binary_metrics(prob, labels)["auc"], abs=1e-9)


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    prob = np.clip(0.5 + (0.5 - labels) * 0.3 + rng.normal(0, 0.3, 300), 0, 1)
    ci = bootstrap_ci(binary_metrics, prob, labels, n_resamples=200, seed=0)
    point = binary_metrics(prob, labels)
    for name in ("auc", "accuracy", "macro_f1"):
        assert ci[name][0] <= point[name] <= ci[name][1]


def test_ensemble_weights_prefer_the_better_member_and_even_split_on_ties():
    labels = np.array([0, 0, 1, 1])
    good = np.array([0.9, 0.8, 0.2, 0.1])
    bad = np.array([0.1, 0.9, 0.8, 0.2])
    weights, auc = choose_ensemble_weights([bad, good], labels)
    assert weights[1] > weights[0] and auc == 1.0
    tie, _ = choose_ensemble_weights([good, good], labels)
    assert tie == [0.5, 0.5]


def test_dice_on_known_masks():
    reference = np.zeros((4, 4), bool)
    reference[:2] = True  # 8 voxels
    predicted = np.zeros((4, 4), bool)
    predicted[1:3] = True  # 8 voxels, 4 shared
    assert dice(reference, predicted) == pytest.approx(2 * 4 / 16)
    assert dice(reference, reference) == 1.0
    assert dice(reference, ~reference) == 0.0


def test_dice_counts_label_masks_by_their_foreground_and_empty_agrees_with_empty():
    """The annotation store's label masks (0 / 1 / 2) and boolean masks score alike."""
    labels = np.array([0, 2, 1, 0, 0], np.uint8)
    assert dice(labels, labels > 0) == 1.0
    assert dice(labels, np.array([0, 1, 0, 0, 0])) == pytest.approx(2 * 1 / 3)
    assert dice(np.zeros(5), np.zeros(5, bool)) == 1.0  # a clean scan left clean is right
    assert dice(np.zeros(5), labels) == 0.0


def test_nll_on_known_probabilities():
    # P(COVID-19) per case; labels 0 = COVID-19, 1 = CAP: true-class probabilities 0.8, 0.5, 0.9
    prob = np.array([0.8, 0.5, 0.1])
    labels = np.array([0, 1, 1])
    assert nll(prob, labels) == pytest.approx(-(np.log(0.8) + np.log(0.5) + np.log(0.9)) / 3)
    assert nll(np.array([1.0]), np.array([1])) == pytest.approx(-np.log(NLL_FLOOR))  # floored, not infinite
    assert nll(np.array([1.0, 0.0]), np.array([0, 1])) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(nll(np.zeros(0), np.zeros(0, int)))
