"""Training end to end at toy size: bundle, provenance, ensemble, CV, DDP on 2 CPU processes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_train_args

from napari_covid_attention.cli import main
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.training.datasets import ManifestError, merge_manifests, read_manifest
from napari_covid_attention.training.trainer import stratified_split


def test_manifest_is_read_with_flags_and_masks(tiny_dataset):
    cases = read_manifest(tiny_dataset)
    assert len(cases) == 12
    assert all(c.infection_mask is not None and c.lung_mask is not None for c in cases)
    assert all(len(c.lesion_flags) == 5 for c in cases)


def test_bad_manifests_are_refused(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,diagnosis\nx.nii,COVID-19\n")
    with pytest.raises(ManifestError, match="image and label"):
        read_manifest(bad)
    bad.write_text("image,label\nmissing.nii,COVID-19\n")
    with pytest.raises(ManifestError, match="row 2: missing.nii does not exist"):
        read_manifest(bad)


def test_merged_manifest_lists_every_case_with_its_files_and_columns(tiny_dataset, tmp_path):
    other = tmp_path / "site-b"
    other.mkdir()
    (other / "manifest.csv").write_text("image,label\n../site-b-scan.nii.gz,CAP\n")
    first = read_manifest(tiny_dataset)
    (tmp_path / "site-b-scan.nii.gz").write_bytes(first[0].image.read_bytes())

    merged = merge_manifests([tiny_dataset, other / "manifest.csv"], tmp_path / "runs" / "mixed.csv")

    cases = read_manifest(merged)
    assert [c.image for c in cases] == [c.image for c in first] + [(tmp_path / "site-b-scan.nii.gz").resolve()]
    assert [c.label for c in cases[:12]] == [c.label for c in first] and cases[12].label == 1
    assert cases[3].infection_mask == first[3].infection_mask and cases[12].infection_mask is None
    assert cases[3].lesion_flags == first[3].lesion_flags
    with open(merged, newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:2] == ["image", "label"] and "infection_fraction" in header


def test_stratified_split_keeps_both_classes():
    class C:
        def __init__(self, label):
            self.label = label

    cases = [C(0)] * 10 + [C(1)] * 6
    train, val = stratified_split(cases, 0.25, seed=0)
    assert sorted(c.label for c in val) == [0, 0, 1, 1]  # round(2.5) and round(1.5) per class
    assert len(train) == 12


def test_train_writes_a_loadable_bundle_with_provenance(tiny_dataset, tmp_path):
    out = tmp_path / "bundle"
    assert main(tiny_train_args(tiny_dataset, out)) == 0
    bundle = load_bundle(out)
    assert [m.name for m in bundle.members] == ["uniform", "size_balanced"]
    assert abs(sum(m.weight for m in bundle.members) - 1) < 1e-6
    meta = json.loads((out / "bundle.json").read_text())
    assert len(meta["training"]["train_manifest_sha256"]) == 64
    assert meta["training"]["command"].startswith("napari-covid-attention train")
    assert {"ensemble_auc", "uniform_auc", "size_balanced_auc", "segmenter_dice"} <= set(meta["metrics"]["validation"])
    assert meta["training"]["history"]["uniform"][0]["epoch"] == 1
    assert all(m["calibration"]["scale"] > 0 and len(m["calibration"]["bias"]) == 2 for m in meta["members"])


def test_a_training_job_cancelled_at_its_last_yield_writes_nothing(tiny_dataset, tmp_path):
    """Every step yields jobs.Progress with its loss; the save comes after the last yield."""
    from napari_covid_attention.jobs import Progress
    from napari_covid_attention.models.dsanet import DSANetConfig
    from napari_covid_attention.models.segmenter import SegmenterConfig
    from napari_covid_attention.preprocess.pipeline import PreprocessConfig
    from napari_covid_attention.training.trainer import TrainConfig, train_bundle

    config = TrainConfig(
        train_manifest=tiny_dataset, out=tmp_path / "bundle", epochs=1, segmenter_epochs=1, batch_size=4, workers=1,
        val_fraction=0.34, device="cpu", cache_dir=tmp_path / "cache", sampling="uniform",
        preprocessing=PreprocessConfig(classifier_shape=(16, 32, 32), segmenter_spacing_mm=(8.0, 4.0, 4.0), segmenter_roi=(32, 64, 64)),
        classifier=DSANetConfig(widths=(4, 8, 8, 16), lesion_head=True), segmenter=SegmenterConfig(channels=(4, 8, 16), strides=(2, 2)),
    )
    job = train_bundle(config)
    events = []
    for event in job:
        events.append(event)
        if event.phase == "save":
            break
    job.close()
    assert not config.out.exists()
    assert all(isinstance(e, Progress) for e in events) and events[0].phase == "prepare"
    steps = [e for e in events if e.phase in ("classifier:uniform", "segmenter") and "loss" in e.metrics]
    assert steps and all(0 < e.step <= e.total for e in steps)
    assert {"classification", "attention", "lesion"} <= set(next(e for e in steps if e.phase != "segmenter").metrics)


def test_training_refuses_an_existing_output(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    assert main(tiny_train_args(tiny_dataset, out)) == 2
    assert "already exists" in capsys.readouterr().err


def test_ddp_smoke_with_two_cpu_processes(tiny_dataset, tmp_path):
    """torchrun with 2 processes on the gloo backend trains and saves one bundle."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "napari_covid_attention.cli", *tiny_train_args(tiny_dataset, out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["training"]["world_size"] == 2
    load_bundle(out)


def test_cross_validation_trains_one_bundle_per_fold(tiny_dataset, tmp_path):
    out = tmp_path / "cv"
    args = tiny_train_args(tiny_dataset, out)
    assert main([*args, "--folds", "2"]) == 0
    summary = json.loads((out / "cv.json").read_text())
    assert summary["folds"] == 2 and len(summary["per_fold"]) == 2
    assert set(summary["ensemble_auc"]) == {"mean", "sd"}
    for fold in (1, 2):
        assert load_bundle(out / f"fold-{fold}" / "bundle").version.endswith(f"fold{fold}")


def test_warm_start_continues_from_a_bundle(tiny_dataset, tiny_bundle, tmp_path):
    import torch

    out = tmp_path / "warm"
    args = tiny_train_args(tiny_dataset, out)
    args[args.index("--segmenter-epochs") + 1] = "0"
    assert main([*args, "--init", str(tiny_bundle)]) == 0
    warm, start = load_bundle(out), load_bundle(tiny_bundle)
    for key, value in start.segmenter.state_dict().items():  # 0 segmenter epochs: kept as it was
        assert torch.equal(warm.segmenter.state_dict()[key], value)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["training"]["init_bundle"] == "tiny-test 0.0.1"
    # The starting weights competed as epoch 0 (a warm start cannot end worse on validation).
    assert meta["training"]["history"]["uniform"][0]["epoch"] == 0
    assert [h["epoch"] for h in meta["training"]["history"]["segmenter"]] == [0]


def test_zero_classifier_epochs_keep_the_warm_started_members(tiny_dataset, tiny_bundle, tmp_path, capsys):
    """Retrain only the segmenter: ``--epochs 0 --init B`` keeps B's classifiers as they are."""
    import torch

    args = tiny_train_args(tiny_dataset, tmp_path / "seg-only")
    args[args.index("--epochs") + 1] = "0"
    assert main([*args, "--init", str(tiny_bundle)]) == 0
    kept, start = load_bundle(tmp_path / "seg-only"), load_bundle(tiny_bundle)
    for new, old in zip(kept.members, start.members, strict=True):
        for key, value in old.model.state_dict().items():
            assert torch.equal(new.model.state_dict()[key], value)
    assert main([*args[:args.index("--out") + 1], str(tmp_path / "cold"), *args[args.index("--out") + 2:]]) == 2
    assert "--epochs 0 keeps warm-started classifiers" in capsys.readouterr().err


def _prepared(seg_shape: tuple[int, int, int]):
    from napari_covid_attention.training.datasets import PreparedCase

    image = np.random.default_rng(0).random(seg_shape).astype(np.float16) + 0.5
    infection = np.zeros(seg_shape, np.uint8)
    infection[2:5, 3:6, 4:8] = 1
    return PreparedCase(
        cls_image=np.zeros((4, 4, 4), np.float16), cls_infection=np.zeros((4, 4, 4), np.float32),
        seg_image=image, seg_infection=infection, label=0, has_mask=True, infection_fraction=0.01, lesion_flags=None,
    )


def test_segmenter_trains_on_the_field_of_view_inference_sees():
    """Whole lung boxes padded at the end to the U-Net's divisor, like infection_probability;
    cut to the window only when larger. (Crops centred on infection made the instance-normed
    U-Net over-segment whole boxes.)"""
    from napari_covid_attention.training.datasets import SegmenterDataset

    small = _prepared((13, 20, 30))
    item = SegmenterDataset([small], roi=(16, 32, 32), divisor=8)[0]
    assert item["image"].shape == item["label"].shape == (1, 16, 24, 32)
    assert float(item["image"][0, 13:].abs().max()) == 0.0  # padding is air, at the end
    assert int(item["label"].sum()) == int(small.seg_infection.sum())  # no lesion cut away
    large = _prepared((40, 20, 30))
    assert SegmenterDataset([large], roi=(16, 32, 32), divisor=8)[0]["image"].shape == (1, 16, 24, 32)


def test_training_crops_like_diagnosis_whatever_the_reference_lung_mask(tiny_dataset, tmp_path):
    """The classifier input comes from the lung mask computed from HU, as in diagnose();
    a dataset's own lung mask only measures the infected fraction. (Training crops from
    the reference mask's box made validation AUC 0.956 in training but 0.947 through
    diagnose on the same scans.)"""
    import dataclasses

    import nibabel as nib

    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.preprocess.lung import lung_mask as compute_lung_mask
    from napari_covid_attention.preprocess.pipeline import PreprocessConfig, network_inputs
    from napari_covid_attention.training.datasets import prepare_case

    case = read_manifest(tiny_dataset)[0]
    reference = nib.load(case.lung_mask)
    wide = np.zeros(reference.shape, np.uint8)
    wide[2:-2, 2:-2, 2:-2] = 1  # a reference mask whose box is far wider than the lungs'
    wide_path = tmp_path / "wide-lungs.nii.gz"
    nib.save(nib.Nifti1Image(wide, reference.affine, reference.header), wide_path)
    case = dataclasses.replace(case, lung_mask=wide_path)

    config = PreprocessConfig(classifier_shape=(16, 32, 32), segmenter_spacing_mm=(8.0, 4.0, 4.0))
    prepared = prepare_case(case, config)
    volume = load_ct(case.image)
    expected = network_inputs(volume.hu, volume.affine, compute_lung_mask(volume.hu, volume.spacing_mm), config)
    np.testing.assert_allclose(prepared.cls_image, expected.classifier_image, atol=1e-3)
    np.testing.assert_allclose(prepared.seg_image, expected.segmenter_image, atol=1e-3)
    infected = np.count_nonzero(np.asarray(nib.load(case.infection_mask).dataobj))
    assert prepared.infection_fraction == pytest.approx(infected / wide.sum())
