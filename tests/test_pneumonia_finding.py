"""'No pneumonia detected' first, COVID-19 vs CAP only second: the card, the review choice,
the batch CSV, the demo summary, the layer metadata, and fine-tuning on such a case."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_covid_attention import _demo, batch
from napari_covid_attention._layer_data import ct_layer_data, plugin_meta
from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.classes import CONFIRMABLE_FINDINGS, NO_PNEUMONIA, NO_PNEUMONIA_DETECTED
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.jobs import run_to_end
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.models.pneumonia import PneumoniaRule
from napari_covid_attention.training import finetune as finetune_module
from napari_covid_attention.training.finetune import FinetuneConfig, finetune
from napari_covid_attention.widgets import layers as ops
from napari_covid_attention.widgets.card import percent_of_lungs, result_card_html
from napari_covid_attention.widgets.correct import _confirmable_guess

SHAPE = (32, 64, 64)
WARNINGS = ["Slices are 5 mm apart; small lesions may be missed.", "The GPU ran out of memory; <continued> on the CPU."]


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(21, label="COVID-19", shape=SHAPE)


@pytest.fixture(scope="module")
def diagnosis(phantom, tiny_bundle):
    return diagnose(phantom.volume, load_bundle(tiny_bundle), "cpu")


def forced(d, infection_percent: float, threshold: float = 0.5, warnings=()):
    """The diagnosis with its infection burden and pneumonia threshold set."""
    return dataclasses.replace(
        d,
        infection_volume_ml=d.lung_volume_ml * infection_percent / 100.0,
        pneumonia_rule=PneumoniaRule(min_infection_percent=threshold),
        warnings=list(warnings),
    )


@pytest.fixture(scope="module")
def absent(diagnosis):
    d = forced(diagnosis, 0.1, warnings=WARNINGS)
    assert not d.pneumonia_detected and d.finding == NO_PNEUMONIA_DETECTED
    return d


@pytest.fixture(scope="module")
def present(diagnosis):
    d = forced(diagnosis, 5.0)
    assert d.pneumonia_detected and d.finding == d.predicted_class
    return d


# ---------------------------------------------------------------------- result card


def test_card_headline_without_pneumonia(absent):
    html = result_card_html(absent)
    assert html.startswith("<p style='font-size:13pt'><b>No pneumonia detected</b></p>")
    assert "infection 0.1 % of the lungs, below the 0.5 % threshold" in html
    classes = " vs ".join(f"{n} {100 * absent.probabilities[n]:.1f} %" for n in absent.class_names)
    secondary = f"<p style='color:gray; font-size:small'>if this were pneumonia: {classes}</p>"
    assert secondary in html
    assert "Pneumonia detected" not in html and "most likely" not in html
    # the members' probabilities are greyed too
    assert "<div style='color:gray'><p>Ensemble members:" in html


def test_card_headline_with_pneumonia(present):
    html = result_card_html(present)
    assert f"Pneumonia detected — most likely <b>{present.predicted_class}</b>" in html
    assert html.index("Pneumonia detected") < html.index("P(COVID-19)")
    assert f"P(CAP) <b>{100 * present.probabilities['CAP']:.1f} %</b>" in html
    assert "infection 5 % of the lungs (threshold 0.5 %)" in html
    assert NO_PNEUMONIA_DETECTED not in html and "if this were pneumonia" not in html
    assert "color:gray'><p>Ensemble members" not in html
    assert "not for clinical use" in html


def test_card_shows_each_warning_once_and_escaped(absent, present):
    html = result_card_html(absent)
    assert f"<p style='color:#ff9933'>{WARNINGS[0]}</p>" in html
    assert "&lt;continued&gt;" in html and "<continued>" not in html
    assert all(html.count(w.split(";")[0]) == 1 for w in WARNINGS)
    assert "ff9933'>Slices" not in result_card_html(present)


def test_infection_share_formatting():
    assert percent_of_lungs(0.0) == "0 %"
    assert percent_of_lungs(0.004) == "< 0.01 %"
    assert percent_of_lungs(0.1234) == "0.123 %"
    assert percent_of_lungs(12.34) == "12.3 %"
    assert percent_of_lungs(100.0) == "100 %"


# ---------------------------------------------------------------------- layers and review choice


def test_the_infection_mask_layer_carries_the_finding(phantom, absent, present):
    viewer = ViewerModel()
    data, kwargs, _ = ct_layer_data(phantom.volume, "ct")
    viewer.add_image(data, **kwargs)
    made = ops.add_diagnosis_layers(viewer, viewer.layers["ct"], absent)
    meta = plugin_meta(made["infection_mask"].metadata)
    assert meta["finding"] == NO_PNEUMONIA_DETECTED and meta["predicted"] == absent.predicted_class
    made = ops.add_diagnosis_layers(viewer, viewer.layers["ct"], present)
    assert plugin_meta(made["infection_mask"].metadata)["finding"] == present.predicted_class


@pytest.mark.parametrize(
    ("meta", "guess"),
    [
        ({"finding": NO_PNEUMONIA_DETECTED, "predicted": "CAP"}, NO_PNEUMONIA),
        ({"finding": "CAP", "predicted": "CAP"}, "CAP"),
        ({"predicted": "COVID-19"}, "COVID-19"),  # a mask layer made before findings existed
        ({"finding": "something else"}, None),
        ({}, None),
    ],
)
def test_review_preselection(meta, guess):
    assert _confirmable_guess(meta) == guess


def test_review_offers_no_pneumonia_and_preselects_it(make_napari_viewer, phantom, absent, present):
    from napari_covid_attention.session import ManualScheduler, session_for

    viewer = make_napari_viewer()
    session = session_for(viewer, ManualScheduler)  # background work runs at once
    data, kwargs, _ = ct_layer_data(phantom.volume, "ct")
    viewer.add_image(data, **kwargs)
    _, correct = viewer.window.add_plugin_dock_widget("napari-covid-attention", "Corrections")
    correct.annotator.setText("Dr Test")
    combo = correct.label_combo
    assert [combo.itemText(i) for i in range(combo.count())] == list(CONFIRMABLE_FINDINGS)

    ops.add_diagnosis_layers(viewer, viewer.layers["ct"], present)
    assert combo.currentText() == present.predicted_class
    ops.add_diagnosis_layers(viewer, viewer.layers["ct"], absent)
    correction = session.active.correction
    assert correction.case is not None and combo.currentText() == NO_PNEUMONIA
    correct.mark_reviewed()
    case = session.store.get_case(correction.case.id)
    assert case.reviewed and case.label == NO_PNEUMONIA
    assert "(no pneumonia)" in correct.status.text()


# ---------------------------------------------------------------------- batch CSV and demo summary


def test_results_csv_has_the_finding_first_and_the_warnings(tmp_path, tiny_bundle, phantom, absent, present, monkeypatch):
    results = {"absent.nii.gz": absent, "present.nii.gz": dataclasses.replace(present, warnings=WARNINGS[:1])}
    monkeypatch.setattr(batch, "load_ct", lambda path: phantom.volume)
    monkeypatch.setattr(batch, "diagnose", lambda volume, model, device: results[current.pop(0)])
    current = list(results)
    table = batch.diagnose_many([tmp_path / name for name in results], tmp_path / "out", bundle=str(tiny_bundle),
                                write_maps=False)
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames[:5] == ["input", "status", "finding", "pneumonia_detected", "predicted"]
        rows = list(reader)
    assert [r["finding"] for r in rows] == [NO_PNEUMONIA_DETECTED, present.predicted_class]
    assert [r["pneumonia_detected"] for r in rows] == ["False", "True"]
    assert [r["predicted"] for r in rows] == [absent.predicted_class, present.predicted_class]
    assert [r["pneumonia_threshold_percent"] for r in rows] == ["0.5", "0.5"]
    assert rows[0]["warnings"] == " | ".join(WARNINGS)
    assert rows[1]["warnings"] == WARNINGS[0]
    assert float(rows[0]["infection_percent"]) == pytest.approx(0.1)


def test_demo_summary_and_line_put_the_finding_first(tmp_path, phantom, absent, present):
    summary = _demo.demo_summary("ct", absent, phantom, [tmp_path / "a.png"])
    assert list(summary)[:2] == ["finding", "pneumonia_detected"]
    assert (summary["finding"], summary["pneumonia_detected"]) == (NO_PNEUMONIA_DETECTED, False)
    from_json = json.loads(json.dumps(summary))["diagnosis"]
    line = _demo.finding_line(from_json)
    assert line.startswith("No pneumonia detected (infection 0.1 % of the lungs, below the 0.5 % threshold")
    assert "if this were pneumonia: COVID-19" in line

    summary = _demo.demo_summary("ct", present, phantom, [])
    assert (summary["finding"], summary["pneumonia_detected"]) == (present.predicted_class, True)
    line = _demo.finding_line(json.loads(json.dumps(summary))["diagnosis"])
    assert line.startswith(f"Pneumonia detected, most likely {present.predicted_class} (COVID-19 ")
    assert NO_PNEUMONIA_DETECTED not in line


# ---------------------------------------------------------------------- fine-tuning


def test_finetuning_with_reviewed_no_pneumonia_cases(tmp_path, tiny_bundle, monkeypatch):
    """'no pneumonia' cases train and test the segmenter (empty mask) and never the classifier."""
    labels = ["COVID-19", "CAP", NO_PNEUMONIA, "COVID-19", NO_PNEUMONIA]
    with AnnotationStore(tmp_path / "store") as store:
        for seed, label in enumerate(labels):
            scan = generate_phantom(60 + seed, label="CAP" if label == "CAP" else "COVID-19", shape=SHAPE)
            case = store.open_case(scan.volume, source_name=f"phantom-{seed}")
            store.keep_scan(case.id, scan.volume)
            store.set_original(case.id, scan.infection_mask, model="tiny-test 0.0.1")
            if label == NO_PNEUMONIA:
                store.save_version(case.id, np.zeros(SHAPE, np.uint8), annotator="ann")
            store.mark_reviewed(case.id, annotator="ann", label=label)

    def split(cases, config):  # one case without pneumonia in each part
        healthy = [c for c in cases if c.prepared.label < 0]
        sick = [c for c in cases if c.prepared.label >= 0]
        assert len(healthy) == 2 and len(sick) == 3
        return [healthy[0], *sick[:2]], [healthy[1], sick[2]]

    seen = {"segmenter": [], "classifier": [], "evaluate": []}
    tune_segmenter, tune_classifier, evaluate = (
        finetune_module._tune_segmenter, finetune_module._tune_classifier, finetune_module.evaluate,
    )

    def record_segmenter(model, cases, *args):
        seen["segmenter"].append(cases)
        return tune_segmenter(model, cases, *args)

    def record_classifier(model, name, cases, *args):
        seen["classifier"].append(cases)
        return tune_classifier(model, name, cases, *args)

    def record_evaluate(bundle, cases, device):
        seen["evaluate"].append(cases)
        return evaluate(bundle, cases, device)

    monkeypatch.setattr(finetune_module, "split_cases", split)
    monkeypatch.setattr(finetune_module, "_tune_segmenter", record_segmenter)
    monkeypatch.setattr(finetune_module, "_tune_classifier", record_classifier)
    monkeypatch.setattr(finetune_module, "evaluate", record_evaluate)
    config = FinetuneConfig(bundle=str(tiny_bundle), store_root=tmp_path / "store", registry_root=tmp_path / "bundles",
                            segmenter_epochs=1, classifier_epochs=1, device="cpu")
    result = run_to_end(finetune(config))

    assert (result.n_train, result.n_val) == (3, 2) and result.skipped == []
    (segmenter_cases,) = seen["segmenter"]
    assert sorted(c.label for c in segmenter_cases) == [-1, 0, 1]
    healthy = next(c for c in segmenter_cases if c.label < 0)
    assert healthy.has_mask and not healthy.seg_infection.any()  # the annotator's empty mask
    assert len(seen["classifier"]) == 2  # one run per member, on the labelled cases only
    assert all(sorted(c.label for c in cases) == [0, 1] for cases in seen["classifier"])
    assert all(sorted(c.label for c in cases) == [-1, 0] for cases in seen["evaluate"])
    for metrics in (result.before, result.after):
        assert np.isfinite(metrics["dice"]) and np.isfinite(metrics["nll"])  # nll: the labelled held-out case
