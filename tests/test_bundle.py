"""Bundles: save -> load gives identical outputs; tampering, pickles and mismatches refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_covid_attention.models.bundle import (
    DEMO_LABEL,
    BundleError,
    Member,
    load_bundle,
    read_bundle_json,
    save_bundle,
)
from napari_covid_attention.models.dsanet import DSANet, DSANetConfig
from napari_covid_attention.models.segmenter import SegmenterConfig, build_segmenter
from napari_covid_attention.preprocess.pipeline import PreprocessConfig

TINY = DSANetConfig(widths=(4, 8, 8, 16), lesion_head=True)
SEG = SegmenterConfig(channels=(4, 8, 16), strides=(2, 2))
PRE = PreprocessConfig(classifier_shape=(16, 32, 32), segmenter_roi=(16, 32, 32))


def make_tiny_bundle(folder, **overrides):
    torch.manual_seed(0)
    members = [Member("uniform", "uniform", 0.4, DSANet(TINY).eval()), Member("size_balanced", "size_balanced", 0.6, DSANet(TINY).eval())]
    kwargs = dict(
        name="tiny",
        version="1.0.0",
        label=DEMO_LABEL,
        class_names=("COVID-19", "CAP"),
        preprocessing=PRE,
        members=members,
        segmenter=build_segmenter(SEG).eval(),
        segmenter_config=SEG,
        metrics={"validation": {"ensemble_auc": 0.5}},
        training={"command": "test"},
    )
    kwargs.update(overrides)
    return save_bundle(folder, **kwargs), members


def test_save_load_gives_identical_outputs(tmp_path):
    path, members = make_tiny_bundle(tmp_path / "b")
    bundle = load_bundle(path)
    x = torch.randn(1, 1, 16, 32, 32)
    for saved, loaded in zip(members, bundle.members, strict=True):
        assert torch.equal(saved.model(x), loaded.model(x))
    assert bundle.label == DEMO_LABEL and bundle.title == "tiny 1.0.0"
    assert [m.weight for m in bundle.members] == [0.4, 0.6]
    assert bundle.preprocessing == PRE and bundle.segmenter_config == SEG


def test_bundle_json_records_hashes_and_provenance(tmp_path):
    path, _ = make_tiny_bundle(tmp_path / "b")
    meta = read_bundle_json(path)
    assert meta["format_version"] == 1
    assert all(len(m["sha256"]) == 64 for m in meta["members"])
    assert meta["training"]["command"] == "test"


def test_bundles_are_never_overwritten(tmp_path):
    path, _ = make_tiny_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="never overwritten"):
        make_tiny_bundle(path)


def test_tampered_weights_are_refused(tmp_path):
    path, _ = make_tiny_bundle(tmp_path / "b")
    weights = path / "member-uniform.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(path)


def test_pickle_files_are_refused_before_anything_loads(tmp_path):
    path, _ = make_tiny_bundle(tmp_path / "b")
    (path / "extra.pt").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(path)


def test_newer_format_is_refused(tmp_path):
    path, _ = make_tiny_bundle(tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = 99
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="newer"):
        load_bundle(path)


def test_other_input_size_is_refused(tmp_path):
    path, _ = make_tiny_bundle(tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["preprocessing"]["classifier_shape"] = [32, 64, 64]
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="made for input grid 16,32,32"):
        load_bundle(path)


def test_architecture_mismatch_is_refused(tmp_path):
    path, _ = make_tiny_bundle(tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["architecture"]["classifier"]["widths"] = [8, 16, 16, 32]
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not match the architecture"):
        load_bundle(path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("weights", [(float("nan"), 0.5), (1.5, -0.5)])
def test_ensemble_weights_that_are_not_a_number_or_negative_are_refused(tmp_path, weights):
    """A NaN weight passed the old sum check (abs(nan - 1) > 1e-3 is False) and gave p = nan."""
    path, _ = make_tiny_bundle(tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    for member, weight in zip(meta["members"], weights, strict=True):
        member["weight"] = weight
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="negative or not a number"):
        load_bundle(path)


def test_a_bare_name_is_a_registry_name_before_a_folder_of_the_working_directory(tmp_path, monkeypatch):
    """Fine-tuning started from a folder that has a demo/ subfolder used to load that folder."""
    from napari_covid_attention.models.registry import BUILTIN_DIR, resolve_bundle

    (tmp_path / "demo").mkdir()
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_bundle("demo") == BUILTIN_DIR / "demo"
    assert resolve_bundle("./demo") == Path("./demo")  # a path stays a path
    assert resolve_bundle("mine") == Path("mine")  # no such name: the folder
