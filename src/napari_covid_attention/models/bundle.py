"""Model bundles: a folder with ``bundle.json`` and safetensors weights. Nothing is unpickled.

bundle.json records everything needed to rebuild and trust the models: format version,
name and version, class names, preprocessing and architecture, the ensemble members and
their weights, the sha256 of every weight file, training provenance and metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle_json(path: str | os.PathLike) -> dict:
    """bundle.json of a bundle folder, checked for format version (no weights loaded)."""
    folder = Path(path)
    json_path = folder / BUNDLE_JSON
    if not json_path.is_file():
        raise BundleError(f"{folder} is not a model bundle (no {BUNDLE_JSON}).")
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{json_path} is not valid JSON ({exc.__class__.__name__}).") from exc
    fmt = meta.get("format_version")
    if not isinstance(fmt, int) or fmt > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"{meta.get('name', folder.name)} was made by a newer napari-covid-attention "
            f"(bundle format {fmt}, this version reads up to {BUNDLE_FORMAT_VERSION}); update the plugin."
        )
    return meta


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load and verify a bundle: no pickle files, sha256 of every weight file, shapes."""
    folder = Path(path)
    meta = read_bundle_json(folder)
    _refuse_pickles(folder)
    try:
        preprocessing = PreprocessConfig.from_dict(meta["preprocessing"])
        classifier_config = DSANetConfig.from_dict(meta["architecture"]["classifier"])
        segmenter_config = SegmenterConfig.from_dict(meta["architecture"]["segmenter"])
        class_names = tuple(meta["class_names"])
        member_specs = meta["members"]
        segmenter_spec = meta["segmenter"]
        pneumonia = PneumoniaRule.from_dict(meta.get("pneumonia"))
        training_data = [dict(entry) for entry in meta.get("training_data", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{folder.name}/bundle.json is incomplete or invalid ({exc}).") from exc
    if len(class_names) != classifier_config.num_classes:
        raise BundleError(f"{folder.name}: {len(class_names)} class names for a {classifier_config.num_classes}-class model.")

    members = []
    for spec in member_specs:
        model = DSANet(classifier_config)
        _load_weights(model, folder, spec, preprocessing)
        try:
            calibration = Calibration.from_dict(spec.get("calibration"))
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{folder.name}/bundle.json: member {spec['name']} has an invalid calibration ({exc}).") from exc
        if calibration.bias and len(calibration.bias) != len(class_names):
            raise BundleError(f"{folder.name}/bundle.json: member {spec['name']} has a calibration bias for {len(calibration.bias)} classes, not {len(class_names)}.")
        members.append(
            Member(
                name=spec["name"],
                sampling=spec.get("sampling", "uniform"),
                weight=float(spec["weight"]),
                model=model.to(device).eval(),
                calibration=calibration,
            )
        )
    if not members:
        raise BundleError(f"{folder.name} has no classifier members.")
    if not all(np.isfinite(m.weight) and m.weight >= 0 for m in members):
        raise BundleError(f"{folder.name}: an ensemble weight is negative or not a number.")
    total = sum(m.weight for m in members)
    if abs(total - 1.0) > 1e-3:
        raise BundleError(f"{folder.name}: ensemble weights sum to {total:.3f}, not 1.")
    segmenter = build_segmenter(segmenter_config)
    _load_weights(segmenter, folder, segmenter_spec, preprocessing)
    return Bundle(
        path=folder,
        name=str(meta["name"]),
        version=str(meta["version"]),
        label=str(meta.get("label", "")),
        class_names=class_names,
        preprocessing=preprocessing,
        classifier_config=classifier_config,
        segmenter_config=segmenter_config,
        members=members,
        segmenter=segmenter.to(device).eval(),
        metrics=dict(meta.get("metrics", {})),
        training=dict(meta.get("training", {})),
        parent=meta.get("parent"),
        pneumonia=pneumonia,
        training_data=training_data,
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
        (tmp / BUNDLE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n")
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


def _load_weights(model: nn.Module, folder: Path, spec: dict, preprocessing: PreprocessConfig) -> None:
    file = folder / spec["file"]
    if file.parent != folder or not file.is_file():
        raise BundleError(f"{folder.name} is missing its weight file {spec['file']}.")
    if file.suffix != ".safetensors":
        raise BundleError(f"{folder.name}: weights must be .safetensors files, got {file.name}.")
    if sha256_of(file) != spec.get("sha256"):
        raise BundleError(
            f"{file.name} in {folder.name} does not match the sha256 in bundle.json; the weights were modified or damaged."
        )
    try:
        with safe_open(str(file), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            file_meta = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{file.name} in {folder.name} is not a readable safetensors file.") from exc
    expected_shape = ",".join(str(s) for s in preprocessing.classifier_shape)
    if file_meta.get("classifier_shape", expected_shape) != expected_shape:
        raise BundleError(
            f"{folder.name} was made for input grid {file_meta['classifier_shape']}, but its bundle.json says {expected_shape}."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{file.name} does not match the architecture described in {folder.name}/bundle.json.") from exc


def _refuse_pickles(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.suffix.lower() in _PICKLE_SUFFIXES:
            raise BundleError(
                f"{folder.name} contains {file.name}, a pickle-based file that could run code; "
                "bundles hold weights only as .safetensors."
            )
