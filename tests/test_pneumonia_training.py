"""Scans without pneumonia in training, the pneumonia threshold, leave-one-patient-out folds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SHAPE, tiny_train_args

from napari_covid_attention.cli import main
from napari_covid_attention.data.lesion_insertion import make_host, write_inserted_dataset
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.models.pneumonia import (
    DEFAULT_MIN_INFECTION_PERCENT,
    PneumoniaRule,
    choose_threshold,
)
from napari_covid_attention.training.datasets import NO_PNEUMONIA_LABEL, read_manifest
from napari_covid_attention.training.trainer import _group_fold_assignment


def test_threshold_separates_infected_from_healthy_scans():
    infected = np.array([0.8, 1.5, 3.0, 12.0])
    healthy = np.array([0.0, 0.02, 0.1, 0.2])
    t = choose_threshold(infected, healthy)
    assert 0.2 < t <= 0.8
    assert np.all(infected >= t) and np.all(healthy < t)


def test_threshold_trades_off_when_the_groups_overlap():
    infected = np.array([0.3, 2.0, 4.0, 6.0])
    healthy = np.array([0.0, 0.1, 0.5, 0.05])
    t = choose_threshold(infected, healthy)
    def balanced(x):
        return 0.5 * (np.mean(infected >= x) + np.mean(healthy < x))

    best = max(balanced(x) for x in np.logspace(-3, 2, 2001))
    assert balanced(t) == pytest.approx(best) == pytest.approx(0.875)  # only the 0.3 % case is missed
    assert 0.5 < t < 2.0


def test_threshold_never_below_the_noise_floor():
    assert choose_threshold(np.array([0.01, 0.02]), np.array([0.0, 0.0])) >= 0.05


def test_rule_round_trips_and_refuses_nonsense():
    rule = PneumoniaRule(0.7, "validation")
    assert PneumoniaRule.from_dict(rule.to_dict()) == rule
    assert PneumoniaRule.from_dict(None).min_infection_percent == DEFAULT_MIN_INFECTION_PERCENT
    assert rule.detects(0.7) and not rule.detects(0.69)
    for bad in ({"min_infection_percent": float("nan")}, {"min_infection_percent": -1}, {"min_infection_percent": 200}, "x"):
        with pytest.raises((ValueError, KeyError, TypeError)):
            PneumoniaRule.from_dict(bad)  # type: ignore[arg-type]


def test_patients_stay_in_one_fold_and_ungrouped_rows_train_everywhere():
    groups = ["b", "a", "c", "a", "", "b", " "]
    folds = _group_fold_assignment(groups, 3)
    assert folds[1] == folds[3] and folds[0] == folds[5]
    assert len({folds[0], folds[1], folds[2]}) == 3
    assert folds[4] == -1 and folds[6] == -1


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory) -> Path:
    """Two 'patients' (phantom hosts) with inserted lesions and healthy cases, at toy size."""
    out = tmp_path_factory.mktemp("mixed")
    hosts = []
    for seed in (3, 4):
        phantom = generate_phantom(seed, "CAP", shape=TINY_SHAPE, infection_fraction=0.003)
        hosts.append((f"host-{seed}", lambda p=phantom, s=seed: make_host(f"host-{s}", p.volume, avoid=p.infection_mask > 0)))
    return write_inserted_dataset(hosts, out, 6, seed=1, healthy_share=0.34)


def test_healthy_cases_are_read_as_no_pneumonia(mixed_manifest):
    cases = read_manifest(mixed_manifest)
    labels = [c.label for c in cases]
    assert labels.count(NO_PNEUMONIA_LABEL) == 4  # 2 of 6 per host
    assert {0, 1} <= set(labels)


def test_training_with_healthy_scans_fits_a_pneumonia_rule_and_records_the_data(mixed_manifest, tmp_path):
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps([{"name": "hosts", "kind": "real", "licence": "test"}]))
    out = tmp_path / "bundle"
    assert main([*tiny_train_args(mixed_manifest, out), "--data-sources", str(sources)]) == 0
    bundle = load_bundle(out)
    assert bundle.trained_on_real_scans
    assert bundle.training_data == [{"name": "hosts", "kind": "real", "licence": "test"}]
    validation = json.loads((out / "bundle.json").read_text())["metrics"]["validation"]
    assert validation["n_without_pneumonia"] >= 1
    if validation["n_val_with_pneumonia"] and validation["n_val_without_pneumonia"]:
        assert bundle.pneumonia.chosen_on.startswith("validation")
    else:
        assert bundle.pneumonia == PneumoniaRule()


def test_leave_one_patient_out_never_shows_a_fold_its_test_patient(mixed_manifest, tmp_path):
    out = tmp_path / "lopo"
    assert main([*tiny_train_args(mixed_manifest, out), "--folds", "2", "--fold-by", "patient"]) == 0
    for fold in (1, 2):
        folder = out / f"fold-{fold}"
        train = {r["patient"] for r in csv.DictReader(open(folder / "train.csv"))}
        test = {r["patient"] for r in csv.DictReader(open(folder / "test.csv"))}
        assert len(test) == 1 and not (train & test)
        assert not (folder / "val.csv").exists()
        assert load_bundle(folder / "bundle").version.endswith(f"fold{fold}")


def test_fold_by_a_missing_column_is_one_sentence(tiny_dataset, tmp_path, capsys):
    assert main([*tiny_train_args(tiny_dataset, tmp_path / "x"), "--folds", "2", "--fold-by", "patient"]) == 2
    assert "no column 'patient'" in capsys.readouterr().err
