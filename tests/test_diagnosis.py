"""diagnose(): outputs, geometry, volumes, stage progress; batch CLI; evaluation report."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from napari_covid_attention.cli import main
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.diagnosis import MAP_NAMES, STAGES, diagnose
from napari_covid_attention.io import CTVolume, load_ct
from napari_covid_attention.jobs import run_to_end
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.preprocess.lung import NoLungsFoundError
from napari_covid_attention.training.evaluate import evaluate_bundle


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(11, label="COVID-19", shape=(32, 64, 64))


@pytest.fixture(scope="module")
def result(phantom, tiny_bundle):
    stages = []
    diagnosis = diagnose(phantom.volume, load_bundle(tiny_bundle), "cpu", progress=lambda p: stages.append(p.phase))
    return diagnosis, stages


def test_probabilities_members_and_stages(result):
    diagnosis, stages = result
    assert stages == list(STAGES)
    assert sum(diagnosis.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    ensemble = sum(m.weight * m.probabilities["COVID-19"] for m in diagnosis.members)
    assert diagnosis.probabilities["COVID-19"] == pytest.approx(ensemble, abs=1e-6)
    assert set(diagnosis.lesion_probabilities) == {"ground_glass", "consolidation", "crazy_paving", "air_bronchogram", "septal_thickening"}
    assert diagnosis.bundle_name == "tiny-test" and "not for clinical use" in diagnosis.bundle_label
    assert set(diagnosis.timings_s) == {*STAGES, "total"}


def test_masks_on_scan_grid_and_volumes(result, phantom):
    diagnosis, _ = result
    assert diagnosis.lung_mask.shape == diagnosis.infection_mask.shape == phantom.volume.shape
    assert set(np.unique(diagnosis.lung_mask)) <= {0, 1, 2}
    assert not np.any(diagnosis.infection_mask & (diagnosis.lung_mask == 0))
    ml = phantom.volume.voxel_volume_ml
    assert diagnosis.lung_volume_ml == pytest.approx(np.count_nonzero(diagnosis.lung_mask) * ml)
    assert 0 <= diagnosis.infection_percent <= 100


def test_maps_sit_inside_the_lung_box(result, phantom):
    diagnosis, _ = result
    for name in MAP_NAMES:
        saliency = diagnosis.maps[name]
        assert saliency.values.min() >= 0 and saliency.values.max() <= 1
        corners = np.array([[0, 0, 0, 1], [*(np.array(saliency.values.shape) - 1), 1]], dtype=float)
        index = (np.linalg.inv(phantom.volume.affine) @ (saliency.affine @ corners.T)).T[:, :3]
        assert np.all(index >= -1) and np.all(index <= np.array(phantom.volume.shape))
        assert diagnosis.map_on_scan(name).shape == phantom.volume.shape


def test_summary_is_json_and_has_no_arrays(result):
    text = json.dumps(result[0].summary())
    assert "probabilities" in text and "timings_s" in text


def test_localization_against_the_true_mask(result, phantom):
    scores = result[0].localization(phantom.infection_mask)
    assert set(scores) == set(MAP_NAMES)
    for value in scores.values():
        assert value is None or 0 <= value.energy_inside <= 1


def test_not_a_chest_ct_is_refused(tiny_bundle):
    water = np.full((24, 48, 48), -1000, np.int16)
    yy, xx = np.mgrid[:48, :48]
    water[:, (yy - 24) ** 2 + (xx - 24) ** 2 < 400] = 0
    volume = CTVolume(hu=water, affine=np.diag([2.0, 2.0, 4.0, 1.0])[[2, 1, 0, 3]] + np.eye(4) * 0)
    volume.affine = np.array([[0, 0, 2.0, 0], [0, 2.0, 0, 0], [4.0, 0, 0, 0], [0, 0, 0, 1]])
    with pytest.raises(NoLungsFoundError):
        diagnose(volume, load_bundle(tiny_bundle), "cpu")


def test_cli_diagnose_writes_results_and_maps_on_the_source_grid(tiny_dataset, tiny_bundle, tmp_path):
    image = tiny_dataset.parent / "images" / "case_0000.nii.gz"
    out = tmp_path / "out"
    assert main(["diagnose", str(image), str(tmp_path / "missing.nii.gz"), "--bundle", str(tiny_bundle), "--out", str(out), "--device", "cpu"]) == 2  # one input failed
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert "does not exist" in rows[1]["error"]
    assert float(rows[0]["p_COVID-19"]) + float(rows[0]["p_CAP"]) == pytest.approx(1, abs=1e-3)
    case = next(out.glob("0000_*"))
    source = nib.load(str(image))
    for name in ("lung_mask", "infection_mask", "attention", "gradcam", "gradcam_pp"):
        written = nib.load(str(case / f"{name}.nii.gz"))
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)
        assert written.shape == source.shape
    assert json.loads((case / "summary.json").read_text())["bundle"] == "tiny-test 0.0.1"


def test_cli_diagnose_refuses_to_write_into_a_dicom_input_folder(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "series"
    folder.mkdir()
    assert main(["diagnose", str(folder), "--bundle", str(tiny_bundle), "--out", str(folder / "out")]) == 2
    assert "inside the input folder" in capsys.readouterr().err


def test_evaluation_report(tiny_dataset, tiny_bundle, tmp_path):
    run = evaluate_bundle(load_bundle(tiny_bundle), tiny_dataset, tmp_path / "report", device="cpu", n_bootstrap=50)
    steps = []
    report = run_to_end(run, steps.append)
    assert (steps[-1].phase, steps[-1].step, steps[-1].total) == ("evaluate", 12, 12)
    for name in ("report.json", "report.md", "roc.png", "cases.csv"):
        assert (tmp_path / "report" / name).is_file()
    overall = report["overall"]["ensemble"]
    assert set(overall["metrics"]) >= {"auc", "accuracy", "sensitivity", "specificity", "macro_f1"}
    assert {"ensemble", "uniform", "size_balanced"} == set(report["ablation"]["models"])
    assert "attention" in report["localization"]
    assert "Dual sampling ablation" in (tmp_path / "report" / "report.md").read_text()
    assert load_ct(tiny_dataset.parent / "images" / "case_0000.nii.gz").shape == (32, 64, 64)


def test_ablation_scores_the_rare_groups_apart_from_calibration():
    """A model that calls everything COVID-19 wins small-COVID accuracy; the rare-pair AUC sees through it."""
    from types import SimpleNamespace

    from napari_covid_attention.training.evaluate import _ablation

    labels = np.array([0, 0, 1, 1, 0, 1])  # 0 = COVID-19
    fractions = np.array([0.005, 0.02, 0.2, 0.3, 0.2, 0.005])  # two small COVID, two large CAP, two common
    biased = [0.9, 0.8, 0.95, 0.7, 0.9, 0.1]  # says COVID-19 to every rare case, ranks them badly
    ranked = [0.45, 0.4, 0.2, 0.1, 0.9, 0.1]  # below 0.5 on small COVID, but ranks them right
    results = [SimpleNamespace(prob_covid={"biased": b, "ranked": r}) for b, r in zip(biased, ranked, strict=True)]
    table = _ablation(results, ["biased", "ranked"], labels, fractions, [0.0, 0.03, 0.1])
    assert table["n_small_infection_covid"] == 2 and table["n_large_infection_cap"] == 2
    assert table["models"]["biased"]["small_infection_covid_accuracy"] == 1.0
    assert table["models"]["ranked"]["small_infection_covid_accuracy"] == 0.0
    assert table["models"]["biased"]["rare_groups_auc"] == pytest.approx(0.5)
    assert table["models"]["ranked"]["rare_groups_auc"] == pytest.approx(1.0)
