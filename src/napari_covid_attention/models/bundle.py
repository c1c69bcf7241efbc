"""Model bundles: a folder with ``bundle.json`` and safetensors weights. Nothing is unpickled.

bundle.json records everything needed to rebuild and trust the models: format version,
name and version, class names, preprocessing and architecture, the ensemble members and
their weights, the sha256 of every weight file, training provenance and metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from napari_covid_attention.atomic import fsync_dir
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.models.calibration import Calibration
from napari_covid_attention.models.dsanet import DSANet, DSANetConfig
from napari_covid_attention.models.pneumonia import PneumoniaRule
from napari_covid_attention.models.segmenter import SegmenterConfig, build_segmenter
from napari_covid_attention.preprocess.pipeline import PreprocessConfig

BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
DEMO_LABEL = "demo model — trained on synthetic phantoms, not for clinical use"
# Files that deserialize through pickle and could run code when loaded.
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npz"}
# A name, version or member name is one plain path component: it becomes a folder or file name.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_BUNDLE_JSON_BYTES = 16 << 20
MAX_JSON_DEPTH = 64
MAX_CLASSES = 16
MAX_MEMBERS = 8
MAX_WIDTH = 1024  # channels of any layer
MAX_BLOCKS = 16  # residual blocks of one stage
# Per network: the paper's 3D ResNet-34 has ~63 million; 150 million float32 are 600 MB.
MAX_PARAMETERS = 150_000_000
SEGMENTER_NORMS = ("instance", "batch")
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


class BundleError(UserFacingError):
    """A bundle that cannot be used (damaged, tampered, incompatible)."""


@dataclass
class Member:
    """One classifier of the ensemble."""

    name: str
    sampling: str  # "uniform" or "size_balanced"
    weight: float  # ensemble weight; members' weights sum to 1
    model: DSANet
    calibration: Calibration = field(default_factory=Calibration)  # applied to logits before the average


@dataclass
class Bundle:
    path: Path
    name: str
    version: str
    label: str  # shown wherever the model is: e.g. the demo / not-for-clinical-use note
    class_names: tuple[str, ...]
    preprocessing: PreprocessConfig
    classifier_config: DSANetConfig
    segmenter_config: SegmenterConfig
    members: list[Member]
    segmenter: nn.Module
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    parent: dict | None = None  # {"name", "version"} of the bundle this one was fine-tuned from
    pneumonia: PneumoniaRule = field(default_factory=PneumoniaRule)
    # What it was trained on: [{"name", "kind": "synthetic" | "real", "cases", "licence", "citation"}]
    training_data: list[dict] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.name} {self.version}"

    @property
    def trained_on_real_scans(self) -> bool:
        """Whether any real (not synthetic) scans were in its training data."""
        return any(entry.get("kind") == "real" for entry in self.training_data)


@dataclass(frozen=True)
class WeightSpec:
    file: str  # a file name inside the bundle folder
    sha256: str


@dataclass(frozen=True)
class MemberSpec:
    name: str
    sampling: str
    weight: float
    calibration: Calibration
    file: str
    sha256: str


@dataclass(frozen=True)
class BundleSpec:
    """bundle.json as checked, typed values (see :func:`parse_bundle_json`)."""

    name: str
    version: str
    label: str
    class_names: tuple[str, ...]
    preprocessing: PreprocessConfig
    classifier_config: DSANetConfig
    segmenter_config: SegmenterConfig
    members: tuple[MemberSpec, ...]
    segmenter: WeightSpec
    metrics: dict
    training: dict
    parent: dict | None
    pneumonia: PneumoniaRule
    training_data: list[dict]
    validation_auc: float | None
    # The fine-tuning gate's decision, saved with the version: True promoted, False not
    # (or not recorded), None: not made by fine-tuning.
    promoted: bool | None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_safe_name(value: object) -> bool:
    """Whether ``value`` can name a bundle, a version or a member: one plain path component."""
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None and ".." not in value


def read_bundle_json(path: str | os.PathLike) -> dict:
    """bundle.json of a bundle folder, fully checked (no weights loaded); the raw document."""
    return _read_document(Path(path))[0]


def read_bundle_spec(path: str | os.PathLike) -> BundleSpec:
    """bundle.json of a bundle folder as checked, typed values (no weights loaded)."""
    return _read_document(Path(path))[1]


def _read_document(folder: Path) -> tuple[dict, BundleSpec]:
    json_path = folder / BUNDLE_JSON
    where = f"{folder.name}/{BUNDLE_JSON}"
    if not json_path.is_file():
        raise BundleError(f"{folder} is not a model bundle (no {BUNDLE_JSON}).")
    _refuse_outside(folder, json_path)
    try:
        if json_path.stat().st_size > MAX_BUNDLE_JSON_BYTES:
            raise BundleError(f"{where} is larger than {MAX_BUNDLE_JSON_BYTES >> 20} MB, far more than any bundle needs.")
        data = json_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{where} cannot be read ({exc.strerror or exc.__class__.__name__}).") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{where} is not UTF-8 text.") from exc
    try:
        meta = json.loads(text)
    except RecursionError as exc:
        raise BundleError(f"{where} is nested too deeply to be a bundle description.") from exc
    except ValueError as exc:
        raise BundleError(f"{where} is not valid JSON ({exc.__class__.__name__}).") from exc
    return meta, parse_bundle_json(meta, where)


def parse_bundle_json(meta: object, where: str = BUNDLE_JSON) -> BundleSpec:
    """Check a whole bundle.json document and return it as typed values.

    Every problem is one BundleError sentence naming the field (``where`` starts it);
    nothing else can escape, whatever the document holds.
    """
    check = _Check(where)
    if not isinstance(meta, dict):
        raise BundleError(f"{where} must hold a JSON object, not {_kind(meta)}.")
    if _depth(meta) > MAX_JSON_DEPTH:
        raise BundleError(f"{where} is nested too deeply to be a bundle description.")
    fmt = meta.get("format_version")
    if not _is_int(fmt) or fmt < 1:
        raise check.fail("format_version", "must be a whole number from 1")
    if fmt > BUNDLE_FORMAT_VERSION:
        name = meta.get("name") if is_safe_name(meta.get("name")) else where.split("/")[0]
        raise BundleError(
            f"{name} was made by a newer napari-covid-attention "
            f"(bundle format {fmt}, this version reads up to {BUNDLE_FORMAT_VERSION}); update the plugin."
        )
    name = check.safe_name(meta.get("name"), "name")
    version = check.safe_name(meta.get("version"), "version")
    label = check.text(meta.get("label", ""), "label", empty=True, longest=1000)

    names = meta.get("class_names")
    if not isinstance(names, list) or not 2 <= len(names) <= MAX_CLASSES:
        raise check.fail("class_names", f"must be a list of 2 to {MAX_CLASSES} class names")
    class_names = tuple(check.text(n, f"class_names[{i}]", longest=100) for i, n in enumerate(names))
    if len(set(class_names)) != len(class_names):
        raise check.fail("class_names", "must not name a class twice")

    preprocessing = _parse_preprocessing(check, meta.get("preprocessing"))
    architecture = check.obj(meta.get("architecture"), "architecture")
    classifier = _parse_classifier(check, architecture.get("classifier"))
    segmenter_config = _parse_segmenter(check, architecture.get("segmenter"))
    if classifier.num_classes != len(class_names):
        raise BundleError(f"{where.split('/')[0]}: {len(class_names)} class names for a {classifier.num_classes}-class model.")

    members = _parse_members(check, meta.get("members"), len(class_names))
    seg = check.obj(meta.get("segmenter"), "segmenter")
    segmenter = WeightSpec(check.weight_file(seg.get("file"), "segmenter.file"), check.digest(seg.get("sha256"), "segmenter.sha256"))

    metrics = check.obj(meta.get("metrics", {}), "metrics", optional=True)
    validation = check.obj(metrics.get("validation", {}), "metrics.validation", optional=True)
    auc = validation.get("ensemble_auc")
    if auc is not None and not _is_number(auc):
        raise check.fail("metrics.validation.ensemble_auc", "must be a number")
    validation_auc = float(auc) if auc is not None and math.isfinite(auc) else None
    finetune = metrics.get("finetune")
    if finetune is None:
        decision = None
    else:
        finetune = check.obj(finetune, "metrics.finetune")
        decision = finetune.get("promoted") is True  # anything but an explicit true: not promoted

    training = check.obj(meta.get("training", {}), "training", optional=True)
    parent = meta.get("parent")
    if parent is not None:
        parent = check.obj(parent, "parent")
        parent = {"name": check.safe_name(parent.get("name"), "parent.name"), "version": check.safe_name(parent.get("version"), "parent.version")}

    rule = meta.get("pneumonia")
    if rule is None:
        pneumonia = PneumoniaRule()
    else:
        rule = check.obj(rule, "pneumonia")
        percent = check.number(rule.get("min_infection_percent"), "pneumonia.min_infection_percent", 0.0, 100.0)
        pneumonia = PneumoniaRule(percent, check.text(rule.get("chosen_on", ""), "pneumonia.chosen_on", empty=True, longest=1000))

    entries = meta.get("training_data", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise check.fail("training_data", "must be a list of objects")
    return BundleSpec(
        name=name, version=version, label=label, class_names=class_names, preprocessing=preprocessing,
        classifier_config=classifier, segmenter_config=segmenter_config, members=members, segmenter=segmenter,
        metrics=dict(metrics), training=dict(training), parent=parent, pneumonia=pneumonia,
        training_data=[dict(e) for e in entries], validation_auc=validation_auc, promoted=decision,
    )


def _parse_preprocessing(check: _Check, data: object) -> PreprocessConfig:
    data = check.obj(data, "preprocessing")
    data = {k: v for k, v in data.items() if k != "segmenter_patch"}  # bundles before 1.1.0 name it
    check.known(data, PreprocessConfig, "preprocessing")
    values = {}
    if "classifier_shape" in data:
        values["classifier_shape"] = check.ints(data["classifier_shape"], "preprocessing.classifier_shape", 3, 4, 1024)
    if "segmenter_spacing_mm" in data:
        values["segmenter_spacing_mm"] = check.numbers(data["segmenter_spacing_mm"], "preprocessing.segmenter_spacing_mm", 3, 0.05, 100.0)
    if "segmenter_roi" in data:
        values["segmenter_roi"] = check.ints(data["segmenter_roi"], "preprocessing.segmenter_roi", 3, 4, 1024)
    if "hu_window" in data:
        low, high = check.numbers(data["hu_window"], "preprocessing.hu_window", 2, -10000.0, 100000.0)
        if low >= high:
            raise check.fail("preprocessing.hu_window", "must be [low, high] with low below high")
        values["hu_window"] = (low, high)
    if "margin_mm" in data:
        values["margin_mm"] = check.number(data["margin_mm"], "preprocessing.margin_mm", 0.0, 1000.0)
    return PreprocessConfig(**values)


def _parse_classifier(check: _Check, data: object) -> DSANetConfig:
    field_ = "architecture.classifier"
    data = check.obj(data, field_)
    check.known(data, DSANetConfig, field_)
    values = {}
    if "layers" in data:
        values["layers"] = check.ints(data["layers"], f"{field_}.layers", 4, 1, MAX_BLOCKS)
    if "widths" in data:
        values["widths"] = check.ints(data["widths"], f"{field_}.widths", 4, 1, MAX_WIDTH)
    if "stem_kernel" in data:
        values["stem_kernel"] = check.ints(data["stem_kernel"], f"{field_}.stem_kernel", 3, 1, 15)
    if "stem_stride" in data:
        values["stem_stride"] = check.ints(data["stem_stride"], f"{field_}.stem_stride", 3, 1, 4)
    if "last_stage_stride" in data:
        values["last_stage_stride"] = check.integer(data["last_stage_stride"], f"{field_}.last_stage_stride", 1, 2)
    if "num_classes" in data:
        values["num_classes"] = check.integer(data["num_classes"], f"{field_}.num_classes", 2, MAX_CLASSES)
    if "lesion_head" in data:
        if not isinstance(data["lesion_head"], bool):
            raise check.fail(f"{field_}.lesion_head", "must be true or false")
        values["lesion_head"] = data["lesion_head"]
    if "dropout" in data:
        values["dropout"] = check.number(data["dropout"], f"{field_}.dropout", 0.0, 0.99)
    if "attention_gain" in data:
        values["attention_gain"] = check.number(data["attention_gain"], f"{field_}.attention_gain", 0.0, 1000.0)
    return DSANetConfig(**values)


def _parse_segmenter(check: _Check, data: object) -> SegmenterConfig:
    field_ = "architecture.segmenter"
    data = check.obj(data, field_)
    check.known(data, SegmenterConfig, field_)
    values = {}
    if "channels" in data:
        values["channels"] = check.ints(data["channels"], f"{field_}.channels", (2, 8), 1, MAX_WIDTH)
    n_levels = len(values.get("channels", SegmenterConfig().channels))
    if "strides" in data:
        values["strides"] = check.ints(data["strides"], f"{field_}.strides", (n_levels - 1, n_levels - 1), 1, 4)
    elif len(SegmenterConfig().strides) != n_levels - 1:
        raise check.fail(f"{field_}.strides", f"must be a list of {n_levels - 1} whole numbers from 1 to 4")
    if "num_res_units" in data:
        values["num_res_units"] = check.integer(data["num_res_units"], f"{field_}.num_res_units", 0, 8)
    if "norm" in data:
        if data["norm"] not in SEGMENTER_NORMS:
            raise check.fail(f"{field_}.norm", f"must be one of {', '.join(SEGMENTER_NORMS)}")
        values["norm"] = data["norm"]
    return SegmenterConfig(**values)


def _parse_members(check: _Check, data: object, n_classes: int) -> tuple[MemberSpec, ...]:
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_MEMBERS:
        raise check.fail("members", f"must be a list of 1 to {MAX_MEMBERS} classifier members")
    members = []
    for i, spec in enumerate(data):
        at = f"members[{i}]"
        spec = check.obj(spec, at)
        name = check.safe_name(spec.get("name"), f"{at}.name")
        weight = spec.get("weight")
        if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
            raise check.fail(f"{at}.weight", "(an ensemble weight) is negative or not a number")
        calibration = _parse_calibration(spec.get("calibration"), n_classes)
        if isinstance(calibration, str):
            raise check.fail(f"{at}.calibration", f"is an invalid calibration ({calibration})")
        members.append(
            MemberSpec(
                name=name,
                sampling=check.text(spec.get("sampling", "uniform"), f"{at}.sampling", longest=64),
                weight=float(weight),
                calibration=calibration,
                file=check.weight_file(spec.get("file"), f"{at}.file"),
                sha256=check.digest(spec.get("sha256"), f"{at}.sha256"),
            )
        )
    if len({m.name for m in members}) != len(members):
        raise check.fail("members", "must not name a member twice")
    total = sum(m.weight for m in members)
    if abs(total - 1.0) > 1e-3:
        raise BundleError(f"{check.where.split('/')[0]}: ensemble weights sum to {total:.3f}, not 1.")
    return tuple(members)


def _parse_calibration(data: object, n_classes: int) -> Calibration | str:
    """The member's calibration, or what is wrong with it."""
    if data is None or data == {}:
        return Calibration()  # bundles written before calibration existed
    if not isinstance(data, dict):
        return f"an object is needed, not {_kind(data)}"
    scale, bias = data.get("scale", 1.0), data.get("bias", [])
    if not _is_number(scale) or not math.isfinite(scale) or not 1e-6 <= scale <= 1e6:
        return "the scale must be a positive number up to 1e+06"
    if not isinstance(bias, list) or len(bias) not in (0, n_classes) or not all(
        _is_number(b) and math.isfinite(b) and abs(b) <= 1e6 for b in bias
    ):
        return f"the bias must be a list of {n_classes} numbers"
    return Calibration(float(scale), tuple(float(b) for b in bias))


class _Check:
    """Field checks of one document; each failure is a sentence naming the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field_: str, problem: str) -> BundleError:
        return BundleError(f"{self.where}: {field_} {problem}.")

    def obj(self, value: object, field_: str, optional: bool = False) -> dict:
        if optional and value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(field_, f"must be an object, not {_kind(value)}")
        return value

    def known(self, data: dict, cls: type, field_: str) -> None:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            shown = ", ".join(sorted(_show(k) for k in unknown)[:5])
            raise self.fail(field_, f"has unknown fields ({shown})")

    def integer(self, value: object, field_: str, low: int, high: int) -> int:
        if not _is_int(value) or not low <= value <= high:
            raise self.fail(field_, f"must be a whole number from {low} to {high}")
        return int(value)

    def ints(self, value: object, field_: str, count: int | tuple[int, int], low: int, high: int) -> tuple[int, ...]:
        fewest, most = (count, count) if isinstance(count, int) else count
        size = f"{fewest}" if fewest == most else f"{fewest} to {most}"
        if not isinstance(value, list) or not fewest <= len(value) <= most or not all(_is_int(v) and low <= v <= high for v in value):
            raise self.fail(field_, f"must be a list of {size} whole numbers from {low} to {high}")
        return tuple(int(v) for v in value)

    def number(self, value: object, field_: str, low: float, high: float) -> float:
        if not _is_number(value) or not math.isfinite(value) or not low <= value <= high:
            raise self.fail(field_, f"must be a number from {low:g} to {high:g}")
        return float(value)

    def numbers(self, value: object, field_: str, count: int | tuple[int, int], low: float, high: float) -> tuple[float, ...]:
        fewest, most = (count, count) if isinstance(count, int) else count
        size = f"{fewest}" if fewest == most else f"{fewest} to {most}"
        if (
            not isinstance(value, list)
            or not fewest <= len(value) <= most
            or not all(_is_number(v) and math.isfinite(v) and low <= v <= high for v in value)
        ):
            raise self.fail(field_, f"must be a list of {size} numbers from {low:g} to {high:g}")
        return tuple(float(v) for v in value)

    def text(self, value: object, field_: str, *, empty: bool = False, longest: int = 500) -> str:
        if not isinstance(value, str) or (not value and not empty) or len(value) > longest:
            raise self.fail(field_, f"must be {'a' if empty else 'a non-empty'} text of at most {longest} characters")
        return value

    def safe_name(self, value: object, field_: str) -> str:
        if not is_safe_name(value):
            raise self.fail(
                field_,
                "must be 1 to 64 letters, digits, '.', '_' or '-', start with a letter or digit "
                f"and hold no '..' (got {_show(value)})",
            )
        return value  # type: ignore[return-value]

    def weight_file(self, value: object, field_: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(field_, "must name a weight file")
        if not value.endswith(".safetensors"):
            raise BundleError(f"{self.where.split('/')[0]}: weights must be .safetensors files, got {_show(value)}.")
        if not is_safe_name(value):
            raise self.fail(field_, f"must be a plain file name inside the bundle folder (got {_show(value)})")
        return value

    def digest(self, value: object, field_: str) -> str:
        if not isinstance(value, str) or re.fullmatch(r"[0-9a-f]{64}", value) is None:
            raise self.fail(field_, "must be a sha256 (64 hexadecimal digits)")
        return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _depth(document: object) -> int:
    """How deeply lists and objects nest (iteratively: a deep document cannot overflow the stack)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load and verify a bundle: no pickle files, sha256 of every weight file, shapes.

    Everything is checked before any network is built: the whole bundle.json, every
    weight file (inside the folder, its sha256, its tensors' names and shapes read from
    the safetensors header against the architecture built on the meta device).
    """
    folder = Path(path)
    spec = read_bundle_spec(folder)
    _refuse_pickles(folder)
    classifier_shapes = _expected_tensors(folder, "classifier", lambda: DSANet(spec.classifier_config))
    segmenter_shapes = _expected_tensors(folder, "segmenter", lambda: build_segmenter(spec.segmenter_config))
    files = [(m.file, m.sha256, classifier_shapes) for m in spec.members]
    files.append((spec.segmenter.file, spec.segmenter.sha256, segmenter_shapes))
    for file, digest, expected in files:
        _check_weight_file(folder, file, digest, expected, spec.preprocessing)

    members = []
    for member in spec.members:
        model = DSANet(spec.classifier_config)
        _load_weights(model, folder, member.file)
        members.append(Member(member.name, member.sampling, member.weight, model.to(device).eval(), member.calibration))
    segmenter = build_segmenter(spec.segmenter_config)
    _load_weights(segmenter, folder, spec.segmenter.file)
    return Bundle(
        path=folder,
        name=spec.name,
        version=spec.version,
        label=spec.label,
        class_names=spec.class_names,
        preprocessing=spec.preprocessing,
        classifier_config=spec.classifier_config,
        segmenter_config=spec.segmenter_config,
        members=members,
        segmenter=segmenter.to(device).eval(),
        metrics=spec.metrics,
        training=spec.training,
        parent=spec.parent,
        pneumonia=spec.pneumonia,
        training_data=spec.training_data,
    )


def save_bundle(
    folder: str | os.PathLike,
    *,
    name: str,
    version: str,
    label: str,
    class_names: tuple[str, ...],
    preprocessing: PreprocessConfig,
    members: list[Member],
    segmenter: nn.Module,
    segmenter_config: SegmenterConfig,
    metrics: dict | None = None,
    training: dict | None = None,
    parent: dict | None = None,
    pneumonia: PneumoniaRule | None = None,
    training_data: list[dict] | None = None,
) -> Path:
    """Write a bundle atomically: a temporary sibling folder renamed into place at the end.

    An interrupted save leaves no half-written bundle behind (and never touches an
    existing one: the target must not exist yet).
    """
    folder = Path(folder)
    check = _Check(f"{folder.name}/{BUNDLE_JSON}")
    check.safe_name(name, "name")
    check.safe_name(version, "version")
    for i, member in enumerate(members):
        check.safe_name(member.name, f"members[{i}].name")
    if folder.exists():
        raise BundleError(f"{folder} already exists; bundles are never overwritten.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        shape = ",".join(str(s) for s in preprocessing.classifier_shape)
        member_specs = []
        for member in members:
            file = f"member-{member.name}.safetensors"
            digest = _save_weights(member.model, tmp / file, {"role": "classifier", "classifier_shape": shape})
            member_specs.append(
                {
                    "name": member.name,
                    "sampling": member.sampling,
                    "weight": member.weight,
                    "calibration": member.calibration.to_dict(),
                    "file": file,
                    "sha256": digest,
                }
            )
        seg_digest = _save_weights(segmenter, tmp / "segmenter.safetensors", {"role": "segmenter", "classifier_shape": shape})
        meta = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "name": name,
            "version": version,
            "label": label,
            "class_names": list(class_names),
            "preprocessing": preprocessing.to_dict(),
            "architecture": {
                "classifier": members[0].model.config.to_dict(),
                "segmenter": segmenter_config.to_dict(),
            },
            "members": member_specs,
            "segmenter": {"file": "segmenter.safetensors", "sha256": seg_digest},
            "metrics": metrics or {},
            "training": training or {},
            "parent": parent,
            "pneumonia": (pneumonia or PneumoniaRule()).to_dict(),
            "training_data": list(training_data or []),
        }
        text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
        parse_bundle_json(json.loads(text), check.where)  # never write a bundle that would not load
        (tmp / BUNDLE_JSON).write_text(text, encoding="utf-8")
        fsync_dir(tmp)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> str:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
    return sha256_of(path)


def _expected_tensors(folder: Path, role: str, build) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Names, shapes and float-ness of the tensors a network holds, from a meta-device build
    (no memory is allocated); refuses networks too large to load."""
    try:
        with torch.device("meta"):
            model = build()
    except (ValueError, TypeError, RuntimeError, AssertionError, IndexError) as exc:
        raise BundleError(f"{folder.name}: the {role} architecture in bundle.json cannot be built ({exc.__class__.__name__}).") from exc
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise BundleError(
            f"{folder.name}: the {role} architecture in bundle.json has {n:,} parameters, "
            f"more than the {MAX_PARAMETERS:,} a bundle may have."
        )
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in model.state_dict().items()}


def _check_weight_file(
    folder: Path, name: str, digest: str, expected: dict[str, tuple[tuple[int, ...], bool]], preprocessing: PreprocessConfig
) -> None:
    """A weight file is the bundle's own, untampered, and holds the architecture's tensors
    (read from its header: nothing is loaded)."""
    file = folder / name
    if not file.is_file():
        raise BundleError(f"{folder.name} is missing its weight file {name}.")
    _refuse_outside(folder, file)
    if sha256_of(file) != digest:
        raise BundleError(
            f"{file.name} in {folder.name} does not match the sha256 in bundle.json; the weights were modified or damaged."
        )
    try:
        with safe_open(str(file), framework="pt") as handle:
            file_meta = handle.metadata() or {}
            found = {}
            for key in handle.keys():  # noqa: SIM118
                piece = handle.get_slice(key)
                found[key] = (tuple(piece.get_shape()), piece.get_dtype())
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{file.name} in {folder.name} is not a readable safetensors file.") from exc
    expected_shape = ",".join(str(s) for s in preprocessing.classifier_shape)
    if file_meta.get("classifier_shape", expected_shape) != expected_shape:
        raise BundleError(
            f"{folder.name} was made for input grid {file_meta['classifier_shape'][:40]}, but its bundle.json says {expected_shape}."
        )
    matches = set(found) == set(expected) and all(
        found[k][0] == shape and (found[k][1] in _FLOAT_DTYPES) == is_float for k, (shape, is_float) in expected.items()
    )
    if not matches:
        raise BundleError(f"{file.name} does not match the architecture described in {folder.name}/bundle.json.")


def _load_weights(model: nn.Module, folder: Path, name: str) -> None:
    """Load a checked weight file (see :func:`_check_weight_file`)."""
    file = folder / name
    try:
        with safe_open(str(file), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{file.name} in {folder.name} is not a readable safetensors file.") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{file.name} does not match the architecture described in {folder.name}/bundle.json.") from exc


def _refuse_outside(folder: Path, file: Path) -> None:
    """A bundle's files are its own: no link (or any path) leading out of its folder."""
    try:
        outside = file.is_symlink() or file.resolve(strict=True).parent != folder.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise BundleError(f"{folder.name}: {file.name} cannot be resolved inside the bundle folder.") from exc
    if outside:
        raise BundleError(
            f"{folder.name}: {file.name} is a link to a file outside the bundle folder; a bundle holds its own files."
        )


def _refuse_pickles(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.suffix.lower() in _PICKLE_SUFFIXES:
            raise BundleError(
                f"{folder.name} contains {file.name}, a pickle-based file that could run code; "
                "bundles hold weights only as .safetensors."
            )
