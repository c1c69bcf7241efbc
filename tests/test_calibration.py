"""Per-member calibration: the fit, the bundle round trip, and its use in diagnosis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_bundle import make_tiny_bundle

from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.models.bundle import BundleError, load_bundle
from napari_covid_attention.models.calibration import Calibration, fit_binary_calibration
from napari_covid_attention.training.metrics import roc_auc


def _logistic_sample(scale: float, shift: float, n: int = 20000, seed: int = 0):
    """Logits whose true P(class 0) is sigmoid(scale * margin + shift)."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 3.0, n)
    p0 = 1.0 / (1.0 + np.exp(-(scale * margin + shift)))
    labels = (rng.random(n) >= p0).astype(int)  # label 0 with probability p0
    logits = np.stack([margin / 2, -margin / 2], axis=1)
    return logits, labels


def test_platt_fit_recovers_a_known_miscalibration():
    logits, labels = _logistic_sample(scale=0.5, shift=1.2)
    calibration = fit_binary_calibration(logits, labels)
    assert calibration.scale == pytest.approx(0.5, abs=0.05)
    assert calibration.bias[0] - calibration.bias[1] == pytest.approx(1.2, abs=0.1)


def test_calibration_keeps_the_ranking_and_lowers_the_loss():
    logits, labels = _logistic_sample(scale=0.3, shift=-1.0, n=4000, seed=1)
    calibration = fit_binary_calibration(logits, labels)
    raw = torch.softmax(torch.from_numpy(logits), dim=1)[:, 0].numpy()
    calibrated = calibration.probabilities(torch.from_numpy(logits))[:, 0].numpy()
    assert roc_auc(calibrated, labels == 0) == pytest.approx(roc_auc(raw, labels == 0), abs=1e-12)

    def nll(p):
        return -np.mean(np.log(np.clip(np.where(labels == 0, p, 1 - p), 1e-12, 1)))

    assert nll(calibrated) < nll(raw) - 0.1


def test_single_class_validation_keeps_the_identity():
    assert fit_binary_calibration(np.zeros((5, 2)), np.zeros(5, int)).is_identity


def test_bundle_round_trip_and_old_bundles_get_the_identity(tmp_path):
    path, members = make_tiny_bundle(tmp_path / "b")
    assert all(m.calibration.is_identity for m in load_bundle(path).members)

    members[0].calibration = Calibration(scale=0.7, bias=(0.4, -0.4))
    path, _ = make_tiny_bundle(tmp_path / "c", members=members)
    assert load_bundle(path).members[0].calibration == Calibration(0.7, (0.4, -0.4))

    meta = json.loads((path / "bundle.json").read_text())
    del meta["members"][0]["calibration"]  # as written before calibration existed
    (path / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(path).members[0].calibration.is_identity

    meta["members"][0]["calibration"] = {"scale": -1.0, "bias": [0.0, 0.0]}
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="invalid calibration"):
        load_bundle(path)


def test_diagnosis_reports_calibrated_member_probabilities(tiny_bundle):
    phantom = generate_phantom(11, label="COVID-19", shape=(32, 64, 64))
    bundle = load_bundle(tiny_bundle)
    raw = diagnose(phantom.volume, bundle, "cpu")
    for member in bundle.members:
        member.calibration = Calibration(scale=1.0, bias=(6.0, -6.0))  # strongly towards COVID-19
    shifted = diagnose(phantom.volume, bundle, "cpu")
    for before, after in zip(raw.members, shifted.members, strict=True):
        p = before.probabilities["COVID-19"]
        expected = 1 / (1 + (1 - p) / p * np.exp(-12.0))
        assert after.probabilities["COVID-19"] == pytest.approx(expected, abs=1e-4)
    assert shifted.predicted_class == "COVID-19"
