"""Hostile bundles: traversing names, huge architectures, malformed bundle.json, links out,
and a crash between saving a fine-tuned version and recording the gate's decision.

Every refusal is a one-sentence BundleError; none builds a network first.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from test_bundle import make_tiny_bundle

from napari_covid_attention import cli
from napari_covid_attention.models import bundle as bundle_module
from napari_covid_attention.models.bundle import BundleError, load_bundle, read_bundle_json
from napari_covid_attention.models.registry import (
    broken_bundles,
    current_bundle,
    list_bundles,
    next_version,
    record_rejected,
    resolve_bundle,
    set_current,
    user_bundles_dir,
)


def rewrite(path, change):
    """Apply ``change`` to the bundle.json of ``path`` (a dict -> dict function)."""
    meta = json.loads((path / "bundle.json").read_text())
    meta = change(meta) or meta
    (path / "bundle.json").write_text(json.dumps(meta))


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and "Traceback" not in message


@pytest.fixture()
def no_real_network(monkeypatch):
    """Fail the test if a network is built with real (not meta-device) memory."""
    built = []

    def guard(factory):
        def wrapped(*args, **kwargs):
            if torch.empty(0).device.type != "meta":
                built.append(factory.__name__)
                raise AssertionError(f"{factory.__name__} built before the bundle was checked")
            return factory(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(bundle_module, "DSANet", guard(bundle_module.DSANet))
    monkeypatch.setattr(bundle_module, "build_segmenter", guard(bundle_module.build_segmenter))
    return built


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, _ = make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "tiny")
    return path


@pytest.fixture()
def copy(tiny, tmp_path):
    """A fresh copy of the tiny bundle to damage."""
    target = tmp_path / "b"
    shutil.copytree(tiny, target)
    return target


# ------------------------------------------------------------------ 5: path traversal


@pytest.mark.parametrize("field", ["name", "version"])
@pytest.mark.parametrize("value", ["../../../X", "..", "a/b", "", ".hidden", "x" * 65, "a\\b", "1..2"])
def test_names_and_versions_that_could_leave_the_registry_are_refused(copy, field, value):
    rewrite(copy, lambda m: m.update({field: value}))
    for read in (read_bundle_json, load_bundle):
        with pytest.raises(BundleError, match=field) as info:
            read(copy)
        assert one_sentence(str(info.value))


def test_registry_writes_stay_inside_the_registry(tmp_path):
    root, outside = tmp_path / "registry", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    with pytest.raises(BundleError):
        record_rejected("../outside", "1.1.0", "worse", root)
    with pytest.raises(BundleError):
        set_current("tiny", "../../outside", "x", root)
    assert not (outside / "current.json").exists() and not (tmp_path / "current.json").exists()


def test_a_bundle_folder_linked_out_of_the_registry_is_not_written_through(tmp_path):
    root, outside = tmp_path / "registry", tmp_path / "outside"
    root.mkdir()
    make_tiny_bundle(outside / "1.0.0")
    (root / "tiny").symlink_to(outside, target_is_directory=True)
    for write in (
        lambda: record_rejected("tiny", "1.1.0", "worse", root),
        lambda: set_current("tiny", "1.0.0", "x", root),
        lambda: next_version("tiny", root),  # fine-tuning asks it where the new version goes
    ):
        with pytest.raises(BundleError, match="outside"):
            write()
    assert not (outside / "current.json").exists()


# --------------------------------------------------- 6: architecture checked before building


@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        (("architecture", "classifier", "widths"), [4, 8, 8, 10**9], "widths"),
        (("architecture", "classifier", "widths"), [2000, 2000, 2000, 2000], "widths"),
        (("architecture", "classifier", "widths"), [0, 8, 8, 16], "widths"),
        (("architecture", "classifier", "widths"), [4, 8, 8], "widths"),
        (("architecture", "classifier", "widths"), [4.5, 8, 8, 16], "widths"),
        (("architecture", "classifier", "widths"), [True, 8, 8, 16], "widths"),
        (("architecture", "classifier", "layers"), [17, 1, 1, 1], "layers"),
        (("architecture", "classifier", "stem_stride"), [0, 2, 2], "stem_stride"),
        (("architecture", "classifier", "stem_kernel"), [3, 7, 700], "stem_kernel"),
        (("architecture", "classifier", "last_stage_stride"), 9, "last_stage_stride"),
        (("architecture", "classifier", "num_classes"), 10**6, "num_classes"),
        (("architecture", "classifier", "dropout"), 1.5, "dropout"),
        (("architecture", "classifier", "lesion_head"), "yes", "lesion_head"),
        (("architecture", "segmenter", "channels"), [10**6, 8, 16], "channels"),
        (("architecture", "segmenter", "channels"), [4], "channels"),
        (("architecture", "segmenter", "strides"), [2, 2, 2, 2, 2], "strides"),
        (("architecture", "segmenter", "strides"), [2, 0], "strides"),
        (("architecture", "segmenter", "num_res_units"), 1000, "num_res_units"),
        (("architecture", "segmenter", "norm"), "evil", "norm"),
        (("preprocessing", "classifier_shape"), [10**6, 32, 32], "classifier_shape"),
        (("preprocessing", "segmenter_roi"), [0, 32, 32], "segmenter_roi"),
        (("preprocessing", "segmenter_spacing_mm"), [4.0, 0.0, 2.0], "segmenter_spacing_mm"),
        (("preprocessing", "hu_window"), [500.0, -1000.0], "hu_window"),
        (("preprocessing", "margin_mm"), -1, "margin_mm"),
    ],
)
def test_an_insane_architecture_is_refused_before_any_network_is_built(copy, no_real_network, where, value, field):
    def change(meta):
        node = meta
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value

    rewrite(copy, change)
    started = time.perf_counter()
    with pytest.raises(BundleError, match=field) as info:
        load_bundle(copy)
    assert time.perf_counter() - started < 5.0
    assert one_sentence(str(info.value)) and not no_real_network


def test_a_network_too_large_to_build_is_refused_before_building(copy, no_real_network):
    """Every field within its range, but 3.6 billion parameters (14 GB) together."""

    def change(meta):
        meta["architecture"]["classifier"].update(widths=[1024] * 4, layers=[16] * 4)

    rewrite(copy, change)
    with pytest.raises(BundleError, match="parameters") as info:
        load_bundle(copy)
    assert one_sentence(str(info.value)) and not no_real_network


def test_weights_of_another_architecture_are_refused_from_the_file_header(copy, no_real_network):
    rewrite(copy, lambda m: m["architecture"]["classifier"].update(widths=[8, 16, 16, 32]))
    with pytest.raises(BundleError, match="does not match the architecture") as info:
        load_bundle(copy)
    assert one_sentence(str(info.value)) and not no_real_network


def test_a_sound_bundle_still_loads_under_the_guard(copy, monkeypatch):
    bundle = load_bundle(copy)
    assert bundle.title == "tiny 1.0.0" and len(bundle.members) == 2


# ------------------------------------------------------ 8: malformed bundle.json documents


MALFORMED = {
    "a JSON list": b"[1, 2, 3]",
    "a JSON string": b'"abc"',
    "not UTF-8": b'{"format_version": 1, "name": "\xff\xfe"}',
    "deeply nested": b'{"format_version": 1, "metrics": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "empty": b"",
    "not JSON": b"{format_version: 1",
}

MALFORMED_FIELDS = {
    "members is a string": lambda m: m.update(members="abc"),
    "members is empty": lambda m: m.update(members=[]),
    "a member without fields": lambda m: m.update(members=[{}]),
    "a member without a file": lambda m: m["members"][0].pop("file"),
    "a member without a sha256": lambda m: m["members"][0].pop("sha256"),
    "a member that is a number": lambda m: m["members"].__setitem__(0, 5),
    "a member weight as a string": lambda m: m["members"][0].update(weight="0.4"),
    "a member weight NaN": lambda m: m["members"][0].update(weight=float("nan")),
    "a calibration that is a string": lambda m: m["members"][0].update(calibration="abc"),
    "a calibration bias of strings": lambda m: m["members"][0].update(calibration={"scale": 1.0, "bias": ["a", "b"]}),
    "a calibration scale NaN": lambda m: m["members"][0].update(calibration={"scale": float("nan")}),
    "two members with one name": lambda m: m["members"][1].update(name=m["members"][0]["name"]),
    "widths as strings": lambda m: m["architecture"]["classifier"].update(widths=["4", "8", "8", "16"]),
    "widths as a string": lambda m: m["architecture"]["classifier"].update(widths="abcd"),
    "an unknown architecture field": lambda m: m["architecture"]["classifier"].update(evil=1),
    "architecture missing": lambda m: m.pop("architecture"),
    "architecture a list": lambda m: m.update(architecture=[1]),
    "preprocessing missing": lambda m: m.pop("preprocessing"),
    "preprocessing null": lambda m: m.update(preprocessing=None),
    "attention gain NaN": lambda m: m["architecture"]["classifier"].update(attention_gain=float("nan")),
    "hu window infinite": lambda m: m["preprocessing"].update(hu_window=[float("-inf"), 500.0]),
    "class names a number": lambda m: m.update(class_names=5),
    "class names of numbers": lambda m: m.update(class_names=[1, 2]),
    "class names too few": lambda m: m.update(class_names=["COVID-19"]),
    "format version a string": lambda m: m.update(format_version="1"),
    "format version zero": lambda m: m.update(format_version=0),
    "name a number": lambda m: m.update(name=5),
    "version missing": lambda m: m.pop("version"),
    "label a list": lambda m: m.update(label=["x"]),
    "metrics a string": lambda m: m.update(metrics="abc"),
    "validation metrics a string": lambda m: m.update(metrics={"validation": "abc"}),
    "training a list": lambda m: m.update(training=[1]),
    "parent a string": lambda m: m.update(parent="x"),
    "parent version traversing": lambda m: m.update(parent={"name": "tiny", "version": "../../x"}),
    "pneumonia rule a string": lambda m: m.update(pneumonia="abc"),
    "pneumonia threshold a string": lambda m: m.update(pneumonia={"min_infection_percent": "x"}),
    "pneumonia threshold NaN": lambda m: m.update(pneumonia={"min_infection_percent": float("nan")}),
    "training data a string": lambda m: m.update(training_data="abc"),
    "training data of numbers": lambda m: m.update(training_data=[1, 2]),
    "segmenter weights a string": lambda m: m.update(segmenter="abc"),
    "segmenter weights without a file": lambda m: m["segmenter"].pop("file"),
    "a weight file name that is a number": lambda m: m["segmenter"].update(file=5),
}


def _write_malformed(folder, case):
    if case in MALFORMED:
        (folder / "bundle.json").write_bytes(MALFORMED[case])
    else:
        rewrite(folder, MALFORMED_FIELDS[case])


@pytest.mark.parametrize("case", [*MALFORMED, *MALFORMED_FIELDS])
def test_a_malformed_bundle_json_is_one_sentence_bundle_error(copy, no_real_network, case):
    _write_malformed(copy, case)
    for read in (read_bundle_json, load_bundle):
        with pytest.raises(BundleError) as info:
            read(copy)
        assert one_sentence(str(info.value)), str(info.value)
    assert not no_real_network


@pytest.mark.parametrize("case", ["a JSON list", "members is a string", "metrics a string", "not UTF-8", "deeply nested"])
def test_a_broken_bundle_in_the_registry_is_listed_as_broken(tiny, case, capsys):
    root = user_bundles_dir()
    shutil.copytree(tiny, root / "tiny" / "1.0.0")
    broken = root / "broken" / "1.0.0"
    shutil.copytree(tiny, broken)
    _write_malformed(broken, case)

    names = [(b.name, b.version) for b in list_bundles()]
    assert ("tiny", "1.0.0") in names and all(n != "broken" for n, _ in names)
    [(path, reason)] = [(b.path, b.reason) for b in broken_bundles()]
    assert path == broken and one_sentence(reason)

    assert cli.main(["bundles"]) == 0
    out = capsys.readouterr().out
    assert "tiny 1.0.0" in out and "broken" in out and str(broken) in out

    with pytest.raises(BundleError) as info:  # the error path of `diagnose --bundle broken`
        resolve_bundle("broken")
    assert one_sentence(str(info.value))


def test_a_hostile_current_json_does_not_break_the_listing(tiny):
    root = user_bundles_dir()
    shutil.copytree(tiny, root / "tiny" / "1.0.0")
    for record in ([1, 2], {"current": 5}, {"current": "../../etc"}, {"rejected": "abc", "log": 3}):
        (root / "tiny" / "current.json").write_text(json.dumps(record))
        assert [b.version for b in list_bundles() if b.name == "tiny"] == ["1.0.0"]
        assert current_bundle("tiny") in (None, root / "tiny" / "1.0.0")


# ---------------------------------------------------------------- 12: weights linked out


def test_a_weight_file_linked_from_outside_the_bundle_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    weights = copy / "member-uniform.safetensors"
    shutil.move(weights, outside)
    weights.symlink_to(outside)  # same bytes: the sha256 still matches
    with pytest.raises(BundleError, match="link") as info:
        load_bundle(copy)
    assert one_sentence(str(info.value))


@pytest.mark.parametrize("name", ["../elsewhere.safetensors", "/etc/passwd", "sub/../member-uniform.safetensors"])
def test_a_weight_file_named_outside_the_bundle_is_refused(copy, name):
    rewrite(copy, lambda m: m["members"][0].update(file=name))
    with pytest.raises(BundleError) as info:
        load_bundle(copy)
    assert one_sentence(str(info.value))


def test_a_bundle_json_linked_from_outside_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(copy / "bundle.json", outside)
    (copy / "bundle.json").symlink_to(outside)
    with pytest.raises(BundleError, match="link"):
        load_bundle(copy)


# ------------------------------------------- 7: crash between saving and recording the gate


def _finetuned(root, version, finetune):
    """A version saved the way fine-tuning saves one (its gate's decision in bundle.json)."""
    metrics = {"validation": {"ensemble_auc": 0.5}}
    if finetune is not None:
        metrics["finetune"] = finetune
    path, _ = make_tiny_bundle(
        root / "tiny" / version, version=version, parent={"name": "tiny", "version": "1.0.0"}, metrics=metrics
    )
    return path


@pytest.mark.parametrize(
    "finetune",
    [{"promoted": False, "reason": "worse"}, {"reason": "no decision recorded"}, {"promoted": "yes"}],
)
def test_a_version_saved_without_promotion_never_becomes_current_after_a_crash(tmp_path, finetune):
    """The process died after save_bundle and before record_rejected: no current.json."""
    root = tmp_path / "registry"
    first, _ = make_tiny_bundle(root / "tiny" / "1.0.0")
    _finetuned(root, "1.1.0", finetune)
    assert not (root / "tiny" / "current.json").exists()
    assert current_bundle("tiny", root) == first
    assert [b.current for b in list_bundles(root) if b.name == "tiny"] == [True, False]
    assert next_version("tiny", root) == "1.2.0"  # still never reused


def test_a_promoted_version_saved_before_a_crash_is_current(tmp_path):
    root = tmp_path / "registry"
    make_tiny_bundle(root / "tiny" / "1.0.0")
    promoted = _finetuned(root, "1.1.0", {"promoted": True, "reason": "better"})
    assert current_bundle("tiny", root) == promoted


def test_finetuning_killed_before_recording_a_rejection_leaves_the_old_version_current(tiny_bundle, tmp_path, monkeypatch):
    """The real save path of fine-tuning: the gate's decision is inside the saved version."""
    from napari_covid_attention.annotations import AnnotationStore
    from napari_covid_attention.data.synthetic import generate_phantom
    from napari_covid_attention.jobs import run_to_end
    from napari_covid_attention.training import finetune as finetune_module

    registry_root = tmp_path / "bundles"
    first = registry_root / "tiny-test" / "0.0.1"
    shutil.copytree(tiny_bundle, first)  # a user bundle: no current.json yet
    store_root = tmp_path / "store"
    with AnnotationStore(store_root) as store:
        for seed in range(5):
            phantom = generate_phantom(300 + seed, shape=(32, 64, 64))
            case = store.open_case(phantom.volume)
            store.keep_scan(case.id, phantom.volume)
            store.set_original(case.id, phantom.infection_mask, model="tiny-test 0.0.1")
            store.mark_reviewed(case.id, annotator="ann", label=phantom.label)

    def rejected(*args, **kwargs):
        return finetune_module.Decision(False, False, False, "worse (forced by the test)", {"dice": 0.0, "nll": 1.0})

    def killed(*args, **kwargs):
        raise SystemExit("killed between saving the version and recording the rejection")

    monkeypatch.setattr(finetune_module, "decide", rejected)
    monkeypatch.setattr(finetune_module, "record_rejected", killed)
    config = finetune_module.FinetuneConfig(
        bundle=str(first), store_root=store_root, registry_root=registry_root,
        segmenter_epochs=1, classifier_epochs=1, device="cpu",
    )
    with pytest.raises(SystemExit):
        run_to_end(finetune_module.finetune(config), lambda event: None)
    assert (registry_root / "tiny-test" / "0.1.0" / "bundle.json").is_file()
    assert not (registry_root / "tiny-test" / "current.json").exists()
    assert current_bundle("tiny-test", registry_root) == first
