"""Where bundles live, and which version of each is *current*.

The built-in demo ships inside the package (read-only). User bundles live in the user data
folder as ``bundles/<name>/<version>/``; every version ever made stays there. A small
``bundles/<name>/current.json`` names the version diagnosis uses, with a log of every
change (promotions by fine-tuning, rollbacks), written atomically. Without it, the newest
version is current (the built-in one for the demo).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from napari_covid_attention.atomic import write_json_atomic
from napari_covid_attention.models.bundle import BUNDLE_JSON, BundleError, read_bundle_json
from napari_covid_attention.paths import data_home

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "bundles"
DEMO_BUNDLE = "demo"
CURRENT_JSON = "current.json"


@dataclass(frozen=True)
class BundleInfo:
    """What a picker shows without loading weights."""

    name: str
    version: str
    label: str
    path: Path
    builtin: bool
    validation_auc: float | None
    parent: dict | None = None
    current: bool = False

    @property
    def title(self) -> str:
        auc = f", val. AUC {self.validation_auc:.3f}" if self.validation_auc is not None else ""
        mark = " (current)" if self.current else ""
        return f"{self.name} {self.version}{mark}{auc}"


def user_bundles_dir() -> Path:
    return data_home() / "bundles"


def bundle_info(path: Path, builtin: bool = False, current: bool = False) -> BundleInfo:
    meta = read_bundle_json(path)
    auc = (meta.get("metrics") or {}).get("validation", {}).get("ensemble_auc")
    return BundleInfo(
        name=str(meta.get("name", path.name)),
        version=str(meta.get("version", "?")),
        label=str(meta.get("label", "")),
        path=Path(path),
        builtin=builtin,
        validation_auc=float(auc) if isinstance(auc, (int, float)) else None,
        parent=meta.get("parent"),
        current=current,
    )


def list_bundles(root: Path | None = None) -> list[BundleInfo]:
    """Every readable bundle (built-in first), each marked current or not; damaged ones skipped."""
    root = root or user_bundles_dir()
    found: list[BundleInfo] = []
    for base, builtin in ((BUILTIN_DIR, True), (root, False)):
        if not base.is_dir():
            continue
        for json_path in sorted(base.rglob(BUNDLE_JSON)):
            if any(part.startswith(".") for part in json_path.relative_to(base).parts):
                continue  # temporary folders of saves in progress
            try:
                found.append(bundle_info(json_path.parent, builtin))
            except BundleError:
                continue
    currents = {info.name: current_bundle(info.name, root) for info in found}
    return [
        BundleInfo(**{**info.__dict__, "current": info.path == currents.get(info.name)}) for info in found
    ]


def versions(name: str, root: Path | None = None) -> list[BundleInfo]:
    """All versions of one bundle name, oldest first."""
    return sorted((b for b in list_bundles(root) if b.name == name), key=lambda b: version_key(b.version))


def current_bundle(name: str, root: Path | None = None) -> Path | None:
    """The folder of the current version of ``name`` (None when there is no such bundle)."""
    root = root or user_bundles_dir()
    record = _read_current(root, name)
    pointer = (record or {}).get("current")
    if pointer and (root / name / pointer / BUNDLE_JSON).is_file():
        return root / name / pointer
    if name == DEMO_BUNDLE and (BUILTIN_DIR / DEMO_BUNDLE / BUNDLE_JSON).is_file():
        return BUILTIN_DIR / DEMO_BUNDLE
    rejected = set((record or {}).get("rejected", []))
    candidates = sorted(
        (
            p.parent
            for p in (root / name).glob(f"*/{BUNDLE_JSON}")
            if not p.parent.name.startswith(".") and p.parent.name not in rejected
        ),
        key=lambda p: version_key(p.name),
    )
    return candidates[-1] if candidates else None


def set_current(name: str, version: str, reason: str, root: Path | None = None) -> Path:
    """Make ``version`` the current one (the built-in demo counts as a version too)."""
    root = root or user_bundles_dir()
    target = root / name / version
    builtin = BUILTIN_DIR / name
    if not (target / BUNDLE_JSON).is_file():
        if (builtin / BUNDLE_JSON).is_file() and bundle_info(builtin).version == version:
            target = builtin
        else:
            raise BundleError(f"{name} has no version {version}.")
    record = _read_current(root, name) or {"log": []}
    if target == builtin:
        record.pop("current", None)  # no pointer: the built-in version is the default
    else:
        record["current"] = version
    record["log"].append({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "current": version, "reason": reason})
    write_json_atomic(root / name / CURRENT_JSON, record)
    return target


def record_rejected(name: str, version: str, reason: str, root: Path | None = None) -> None:
    """Log a version that was kept but not promoted, so it never becomes current by default."""
    root = root or user_bundles_dir()
    record = _read_current(root, name) or {"log": []}
    record.setdefault("rejected", []).append(version)
    record["log"].append({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rejected": version, "reason": reason})
    write_json_atomic(root / name / CURRENT_JSON, record)


def rollback(name: str, root: Path | None = None) -> Path:
    """Make the current version's parent current again (one click in the GUI)."""
    current = current_bundle(name, root)
    if current is None:
        raise BundleError(f"There is no bundle named {name}.")
    parent = bundle_info(current).parent
    if not parent:
        raise BundleError(f"{name} {bundle_info(current).version} has no earlier version to roll back to.")
    return set_current(name, str(parent["version"]), f"rolled back from {bundle_info(current).version}", root)


def next_version(name: str, root: Path | None = None, after: str | None = None) -> str:
    """The next minor version after every existing version of ``name`` and ``after``
    (1.0.0 -> 1.1.0); ``after`` is the parent, which may live elsewhere."""
    existing = [b.version for b in versions(name, root)] + ([after] if after else [])
    if not existing:
        return "1.0.0"
    latest = max(existing, key=version_key).split("-")[0]
    numbers = [int(p) for p in latest.split(".") if p.isdigit()] + [0, 0]
    return f"{numbers[0]}.{numbers[1] + 1}.0"


def resolve_bundle(spec: str | os.PathLike | None = None) -> Path:
    """A bundle folder from a path, a bundle name (its current version), or nothing (the demo)."""
    if spec is not None and Path(spec).is_dir():
        return Path(spec)
    name = DEMO_BUNDLE if spec is None else str(spec)
    path = current_bundle(name)
    if path is not None:
        return path
    if name == DEMO_BUNDLE:
        raise BundleError("The built-in demo bundle is missing from this installation; reinstall napari-covid-attention.")
    names = ", ".join(sorted({b.name for b in list_bundles()})) or "none"
    raise BundleError(f"No bundle folder or bundle named {spec!r} (known bundles: {names}).")


def version_key(version: str) -> tuple:
    parts = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece)) if piece.isdigit() else (1, piece))
    return tuple(parts)


def _read_current(root: Path, name: str) -> dict | None:
    path = root / name / CURRENT_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
