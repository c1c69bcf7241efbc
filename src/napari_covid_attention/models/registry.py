"""Where bundles live: the built-in demo inside the package, user bundles in the user data folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from napari_covid_attention.models.bundle import BUNDLE_JSON, BundleError, read_bundle_json
from napari_covid_attention.paths import data_home

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "bundles"
DEMO_BUNDLE = "demo"


@dataclass(frozen=True)
class BundleInfo:
    """What a picker shows without loading weights."""

    name: str
    version: str
    label: str
    path: Path
    builtin: bool
    validation_auc: float | None

    @property
    def title(self) -> str:
        auc = f", val. AUC {self.validation_auc:.3f}" if self.validation_auc is not None else ""
        return f"{self.name} {self.version}{auc}"


def user_bundles_dir() -> Path:
    return data_home() / "bundles"


def bundle_info(path: Path, builtin: bool = False) -> BundleInfo:
    meta = read_bundle_json(path)
    auc = (meta.get("metrics") or {}).get("validation", {}).get("ensemble_auc")
    return BundleInfo(
        name=str(meta.get("name", path.name)),
        version=str(meta.get("version", "?")),
        label=str(meta.get("label", "")),
        path=path,
        builtin=builtin,
        validation_auc=float(auc) if isinstance(auc, (int, float)) else None,
    )


def list_bundles() -> list[BundleInfo]:
    """Built-in bundles first, then every readable user bundle (damaged ones are skipped)."""
    found = []
    for root, builtin in ((BUILTIN_DIR, True), (user_bundles_dir(), False)):
        if not root.is_dir():
            continue
        for json_path in sorted(root.rglob(BUNDLE_JSON)):
            if any(part.startswith(".") for part in json_path.relative_to(root).parts):
                continue  # temporary folders of saves in progress
            try:
                found.append(bundle_info(json_path.parent, builtin))
            except BundleError:
                continue
    return found


def resolve_bundle(spec: str | os.PathLike | None = None) -> Path:
    """A bundle folder from a path, a bundle name, or nothing (the built-in demo)."""
    if spec is None or str(spec) == DEMO_BUNDLE:
        path = BUILTIN_DIR / DEMO_BUNDLE
        if not (path / BUNDLE_JSON).is_file():
            raise BundleError("The built-in demo bundle is missing from this installation; reinstall napari-covid-attention.")
        return path
    path = Path(spec)
    if path.is_dir():
        return path
    matches = [b for b in list_bundles() if b.name == str(spec)]
    if not matches:
        names = ", ".join(sorted({b.name for b in list_bundles()})) or "none"
        raise BundleError(f"No bundle folder or bundle named {spec!r} (known bundles: {names}).")
    return max(matches, key=lambda b: _version_key(b.version)).path


def _version_key(version: str) -> tuple:
    parts = []
    for piece in version.split("."):
        parts.append((0, int(piece)) if piece.isdigit() else (1, piece))
    return tuple(parts)
