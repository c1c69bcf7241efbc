"""The correction loop without a GUI: store -> fine-tune -> validated new version, or nothing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.explain.localization import localization_scores
from napari_covid_attention.jobs import Progress, run_to_end
from napari_covid_attention.models.bundle import BundleError, load_bundle
from napari_covid_attention.models.registry import current_bundle, list_bundles, rollback
from napari_covid_attention.training import finetune as finetune_module
from napari_covid_attention.training.finetune import FinetuneConfig, decide, finetune

N_CASES = 10


@pytest.fixture(scope="module")
def corrected_store(tmp_path_factory, tiny_bundle):
    """10 reviewed cases: the model's masks as originals, the true masks as corrections."""
    root = tmp_path_factory.mktemp("store")
    bundle = load_bundle(tiny_bundle)
    with AnnotationStore(root) as store:
        for seed in range(N_CASES):
            phantom = generate_phantom(100 + seed, shape=(32, 64, 64))
            case = store.open_case(phantom.volume, source_name=f"phantom-{seed}")
            store.keep_scan(case.id, phantom.volume)
            predicted = diagnose(phantom.volume, bundle, "cpu").infection_mask
            store.set_original(case.id, predicted, model="tiny-test 0.0.1")
            store.save_version(case.id, phantom.infection_mask, annotator="test annotator")
            store.mark_reviewed(case.id, annotator="test annotator", label=phantom.label)
    return root


def _config(store_root, registry_root, bundle, **overrides):
    values = dict(bundle=str(bundle), store_root=store_root, registry_root=registry_root, segmenter_epochs=12,
                  classifier_epochs=1, segmenter_lr=3e-3, device="cpu")
    values.update(overrides)
    return FinetuneConfig(**values)


def _run(job):
    events = []
    return run_to_end(job, events.append), events


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_finetuning_saves_a_candidate_and_promotes_by_the_rule(corrected_store, tiny_bundle, tmp_path):
    """Mechanics at toy size (the demo-bundle test below checks the Dice gain itself)."""
    registry = tmp_path / "bundles"
    result, events = _run(finetune(_config(corrected_store, registry, tiny_bundle)))
    assert [e.phase for e in events][-1] == "evaluate new"  # the commit comes after the last yield
    assert {e.phase for e in events} >= {"prepare", "evaluate current", "segmenter", "classifier:uniform"}
    assert all(isinstance(e, Progress) and "loss" in e.metrics for e in events if e.phase.startswith(("segmenter", "classifier")))
    assert result.n_train + result.n_val == N_CASES and result.n_val >= 3
    new = load_bundle(result.bundle_path)
    decision = decide(result.before, new.metrics["finetune"]["tuned"])
    assert (result.promoted, result.reason, result.after) == (decision.promoted, decision.reason, decision.metrics)
    assert new.parent == {"name": "tiny-test", "version": "0.0.1"} and result.version == "0.1.0"
    assert new.metrics["finetune"]["after"] == result.after
    # a rejected candidate is kept for inspection but never becomes current by default
    assert (current_bundle("tiny-test", registry) == result.bundle_path) == result.promoted


def test_a_worse_candidate_is_kept_but_not_promoted():
    decision = decide({"dice": 0.6, "nll": 0.4}, {"dice": 0.55, "nll": 0.5})
    assert not decision.promoted
    assert "Dice fell from 0.600 to 0.550" in decision.reason and "classification loss rose" in decision.reason
    assert decide({"dice": 0.6, "nll": float("nan")}, {"dice": 0.6, "nll": float("nan")}).promoted


def test_the_part_that_got_worse_stays_as_it_was():
    """Segmenter and classifiers are scored apart, so each is judged on its own metric."""
    only_segmenter = decide({"dice": 0.6, "nll": 0.4}, {"dice": 0.7, "nll": 0.5})
    assert only_segmenter.promoted and only_segmenter.take_segmenter and not only_segmenter.take_classifiers
    assert only_segmenter.metrics == {"dice": 0.7, "nll": 0.4}
    assert "classifiers stay as they were (their held-out classification loss rose from 0.400 to 0.500)" in only_segmenter.reason
    only_classifiers = decide({"dice": 0.6, "nll": 0.4}, {"dice": 0.55, "nll": 0.3})
    assert only_classifiers.promoted and only_classifiers.take_classifiers and not only_classifiers.take_segmenter
    assert only_classifiers.metrics == {"dice": 0.6, "nll": 0.3}
    assert only_classifiers.reason.endswith("; held-out classification loss 0.400 -> 0.300")
    # Without labelled held-out cases there is no loss to quote.
    no_labels = decide({"dice": 0.6, "nll": float("nan")}, {"dice": 0.5, "nll": float("nan")})
    assert "nan" not in no_labels.reason and not no_labels.take_segmenter


def test_a_partly_promoted_version_keeps_the_current_part(corrected_store, tiny_bundle, tmp_path, monkeypatch):
    import torch

    registry = tmp_path / "bundles"
    monkeypatch.setattr(finetune_module, "decide", lambda before, tuned, tolerance: finetune_module.Decision(
        True, True, False, "test: segmenter only", {"dice": tuned["dice"], "nll": before["nll"]}))
    result, _ = _run(finetune(_config(corrected_store, registry, tiny_bundle)))
    new, start = load_bundle(result.bundle_path), load_bundle(tiny_bundle)
    for tuned, kept in zip(new.members, start.members, strict=True):
        for key, value in kept.model.state_dict().items():
            assert torch.equal(tuned.model.state_dict()[key], value)
    assert new.metrics["finetune"]["took"] == {"segmenter": True, "classifiers": False}
    assert any(not torch.equal(v, start.segmenter.state_dict()[k]) for k, v in new.segmenter.state_dict().items())


def test_cancel_mid_way_leaves_bundle_registry_and_store_untouched(corrected_store, tiny_bundle, tmp_path):
    registry = tmp_path / "bundles"
    before = (_digest(corrected_store), _digest(tiny_bundle))
    job = finetune(_config(corrected_store, registry, tiny_bundle))
    for event in job:
        if event.phase == "segmenter":
            break
    job.close()  # what the GUI's Cancel does to the worker's generator
    assert not registry.exists() or not any(registry.rglob("bundle.json"))
    assert (_digest(corrected_store), _digest(tiny_bundle)) == before


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """4 reviewed cases (the least fine-tuning accepts), so a job has few yields to cancel at."""
    root = tmp_path_factory.mktemp("small-store")
    with AnnotationStore(root) as store:
        for seed in range(4):
            phantom = generate_phantom(200 + seed, shape=(32, 64, 64))
            case = store.open_case(phantom.volume, source_name=f"phantom-{seed}")
            store.keep_scan(case.id, phantom.volume)
            store.set_original(case.id, np.zeros_like(phantom.infection_mask), model="tiny-test 0.0.1")
            store.save_version(case.id, phantom.infection_mask, annotator="test annotator")
            store.mark_reviewed(case.id, annotator="test annotator", label=phantom.label)
    return root


@pytest.mark.parametrize("tolerance", [1.0, -1.0], ids=["promoted", "refused"])
def test_a_cancel_at_any_yield_saves_nothing_and_the_commit_is_never_split(small_store, tiny_bundle, tmp_path, tolerance):
    """The GUI's Cancel closes the job at its next yield: at every one of them, the registry
    (versions, current pointer, log) and the store stay as they were; uncancelled, the new
    version is saved and current exactly when the result says it was promoted."""
    import shutil

    from napari_covid_attention.models.registry import set_current, versions

    def registry_in_use(root):
        shutil.copytree(tiny_bundle, root / "tiny-test" / "0.0.1")
        set_current("tiny-test", "0.0.1", "test: the version in use", root)
        return root

    def config(root):
        return _config(small_store, root, root / "tiny-test" / "0.0.1", segmenter_epochs=1, tolerance=tolerance)

    n_yields = sum(1 for _ in finetune(config(registry_in_use(tmp_path / "count"))))
    registry = registry_in_use(tmp_path / "bundles")
    before = (_digest(small_store), _digest(registry))
    for cancel_at in range(n_yields):
        job = finetune(config(registry))
        for _ in range(cancel_at + 1):
            next(job)
        job.close()
        assert (_digest(small_store), _digest(registry)) == before, f"cancel at yield {cancel_at + 1} of {n_yields} changed something"
    result, _ = _run(finetune(config(registry)))
    assert [v.version for v in versions("tiny-test", registry)] == ["0.0.1", result.version]
    assert result.promoted == (tolerance > 0)
    current = registry / "tiny-test" / (result.version if result.promoted else "0.0.1")
    assert current_bundle("tiny-test", registry) == current


def test_an_error_mid_way_leaves_everything_untouched(corrected_store, tiny_bundle, tmp_path, monkeypatch):
    registry = tmp_path / "bundles"
    before = (_digest(corrected_store), _digest(tiny_bundle))

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure during training")

    monkeypatch.setattr(finetune_module, "_tune_classifier", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        _run(finetune(_config(corrected_store, registry, tiny_bundle)))
    assert not registry.exists() or not any(registry.rglob("bundle.json"))
    assert (_digest(corrected_store), _digest(tiny_bundle)) == before


def test_rollback_makes_the_parent_current_again(corrected_store, tiny_bundle, tmp_path, monkeypatch):
    registry = tmp_path / "bundles"
    monkeypatch.setattr("napari_covid_attention.models.registry.user_bundles_dir", lambda: registry)
    result, _ = _run(finetune(_config(corrected_store, registry, tiny_bundle, segmenter_epochs=1, tolerance=1.0)))
    assert result.promoted and current_bundle("tiny-test", registry) == result.bundle_path
    with pytest.raises(BundleError, match="tiny-test has no version 0.0.1"):
        rollback("tiny-test", registry)  # the parent lives outside this registry
    titles = [b.title for b in list_bundles(registry) if b.name == "tiny-test"]
    assert any("0.1.0 (current)" in t for t in titles)


def test_too_few_reviewed_cases_is_a_clear_error(tmp_path, tiny_bundle):
    AnnotationStore(tmp_path / "empty").close()
    with pytest.raises(UserFacingError, match="at least 4 reviewed cases"):
        _run(finetune(_config(tmp_path / "empty", tmp_path / "bundles", tiny_bundle)))


def test_localization_scores_have_their_ranges_and_favour_maps_in_the_mask(tiny_bundle):
    """Every map of a diagnosis scores in range; a map on the lesion beats one beside it."""
    phantom = generate_phantom(101, label="COVID-19", shape=(32, 64, 64))
    diagnosis = diagnose(phantom.volume, load_bundle(tiny_bundle), "cpu")
    scores = diagnosis.localization(phantom.infection_mask)
    assert set(scores) == {"attention", "gradcam", "gradcam_pp"}
    for name, score in scores.items():
        assert score is not None, name
        assert 0.0 <= score.energy_inside <= 1.0 and 0.0 <= score.map_auc <= 1.0
        assert isinstance(score.pointing_game, bool)

    mask = np.zeros((16, 32, 32), bool)
    mask[4:10, 6:14, 6:14] = True
    z, y, x = np.indices(mask.shape)

    def blob(centre):
        return np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / 6.0)

    inside = localization_scores(blob((7, 10, 10)), mask)
    outside = localization_scores(blob((7, 24, 24)), mask)
    assert inside.pointing_game and not outside.pointing_game
    assert inside.energy_inside > 0.5 > outside.energy_inside
    assert inside.map_auc > 0.9 and outside.map_auc < 0.5


@pytest.mark.slow
def test_corrections_raise_the_demo_bundles_held_out_dice(tmp_path):
    """The loop of issue 5 end to end with the built-in demo bundle (CPU, ~10 min): target +0.10."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from napari_covid_attention.models.registry import BUILTIN_DIR

    if not (BUILTIN_DIR / "demo" / "bundle.json").exists():
        pytest.skip("the demo bundle is not built (bash scripts/make_demo_bundle.sh)")
    script = Path(__file__).resolve().parents[1] / "scripts" / "finetune_report.py"
    out = tmp_path / "report.json"
    env = {**os.environ, "NAPARI_COVID_ATTENTION_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, str(script), "--n", "10", "--test", "6", "--out", str(out)], check=True, env=env)
    report = json.loads(out.read_text())
    assert report["promoted"], report["reason"]
    assert report["held_out_dice"]["after"] >= report["held_out_dice"]["before"] + 0.10
    assert report["unseen_dice"]["after"]["mean"] > report["unseen_dice"]["before"]["mean"]


def test_cli_help_states_the_fine_tuning_defaults():
    """The CLI repeats FinetuneConfig's epochs in --help (to keep --help free of torch)."""
    from napari_covid_attention.cli import build_parser

    parser = build_parser()
    finetune_parser = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("finetune"))
    helps = {a.dest: a.help for a in finetune_parser._actions}
    assert helps["segmenter_epochs"] == f"default {FinetuneConfig.segmenter_epochs}"
    assert helps["classifier_epochs"] == f"default {FinetuneConfig.classifier_epochs}"
