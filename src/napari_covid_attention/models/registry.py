"""Where bundles live, and which version of each is *current*.

The built-in demo ships inside the package (read-only). User bundles live in the user data
folder as ``bundles/<name>/<version>/``; every version ever made stays there. A small
``bundles/<name>/current.json`` names the version diagnosis uses, with a log of every
change (promotions by fine-tuning, rollbacks), written atomically. Without it, the newest
version is current (the built-in one for the demo), except versions that fine-tuning did
not promote: the gate's decision is saved inside the version's own bundle.json, in the same
atomic save, so a crash before current.json records it cannot make a rejected version
current.

Names and versions are single path components (``bundle.is_safe_name``) and every write
checks that it lands inside the registry, so a hostile bundle.json or a link cannot make
the registry write elsewhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from napari_covid_attention.atomic import write_json_atomic
from napari_covid_attention.models.bundle import (
    BUNDLE_JSON,
    BundleError,
    BundleSpec,
    is_safe_name,
    read_bundle_spec,
)
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


@dataclass(frozen=True)
class BrokenBundle:
    """A bundle folder in the registry that cannot be used, and why (one sentence)."""

    path: Path
    reason: str


def bundle_info(path: Path, builtin: bool = False, current: bool = False) -> BundleInfo:
    return _info(Path(path), read_bundle_spec(path), builtin, current)


def _info(path: Path, spec: BundleSpec, builtin: bool, current: bool = False) -> BundleInfo:
    return BundleInfo(
        name=spec.name,
        version=spec.version,
        label=spec.label,
        path=path,
        builtin=builtin,
        validation_auc=spec.validation_auc,
        parent=spec.parent,
        current=current,
    )


def _scan(root: Path) -> list[tuple[Path, bool, BundleSpec | str]]:
    """Every bundle folder (built-in first) with its checked bundle.json, or why it is broken."""
    found: list[tuple[Path, bool, BundleSpec | str]] = []
    for base, builtin in ((BUILTIN_DIR, True), (root, False)):
        if not base.is_dir():
            continue
        for json_path in sorted(base.rglob(BUNDLE_JSON)):
            if any(part.startswith(".") for part in json_path.relative_to(base).parts):
                continue  # temporary folders of saves in progress
            try:
                found.append((json_path.parent, builtin, read_bundle_spec(json_path.parent)))
            except BundleError as exc:
                found.append((json_path.parent, builtin, str(exc)))
    return found


def list_bundles(root: Path | None = None) -> list[BundleInfo]:
    """Every readable bundle (built-in first), each marked current or not; broken ones are
    left out (see :func:`broken_bundles`)."""
    root = root or user_bundles_dir()
    found = [_info(path, spec, builtin) for path, builtin, spec in _scan(root) if not isinstance(spec, str)]
    currents = {info.name: current_bundle(info.name, root) for info in found}
    return [
        BundleInfo(**{**info.__dict__, "current": info.path == currents.get(info.name)}) for info in found
    ]


def broken_bundles(root: Path | None = None) -> list[BrokenBundle]:
    """Bundle folders whose bundle.json cannot be used, each with the reason."""
    return [BrokenBundle(path, spec) for path, _, spec in _scan(root or user_bundles_dir()) if isinstance(spec, str)]


def versions(name: str, root: Path | None = None) -> list[BundleInfo]:
    """All versions of one bundle name, oldest first."""
    return sorted((b for b in list_bundles(root) if b.name == name), key=lambda b: version_key(b.version))


def current_bundle(name: str, root: Path | None = None) -> Path | None:
    """The folder of the current version of ``name`` (None when there is no such bundle).

    Without a pointer in current.json the newest version is current, skipping versions
    recorded as rejected and versions whose own bundle.json says fine-tuning did not promote
    them (or has no decision), and versions that cannot be read.
    """
    root = root or user_bundles_dir()
    if not is_safe_name(name):
        return None
    record = _read_current(root, name)
    pointer = record.get("current")
    if pointer and (root / name / pointer / BUNDLE_JSON).is_file():
        return root / name / pointer
    if name == DEMO_BUNDLE and (BUILTIN_DIR / DEMO_BUNDLE / BUNDLE_JSON).is_file():
        return BUILTIN_DIR / DEMO_BUNDLE
    rejected = set(record["rejected"])
    candidates = []
    for json_path in (root / name).glob(f"*/{BUNDLE_JSON}"):
        folder = json_path.parent
        if folder.name.startswith(".") or folder.name in rejected:
            continue
        try:
            spec = read_bundle_spec(folder)
        except BundleError:
            continue
        if spec.promoted is False:
            continue  # saved by fine-tuning without promotion: never current by default
        candidates.append(folder)
    candidates.sort(key=lambda p: version_key(p.name))
    return candidates[-1] if candidates else None


def version_dir(name: str, version: str, root: Path | None = None) -> Path:
    """Where version ``version`` of ``name`` lives in the registry (checked to stay inside it)."""
    return _inside(root or user_bundles_dir(), name, version)


def set_current(name: str, version: str, reason: str, root: Path | None = None) -> Path:
    """Make ``version`` the current one (the built-in demo counts as a version too)."""
    root = root or user_bundles_dir()
    target = _inside(root, name, version)
    builtin = BUILTIN_DIR / name
    if not (target / BUNDLE_JSON).is_file():
        if (builtin / BUNDLE_JSON).is_file() and bundle_info(builtin).version == version:
            target = builtin
        else:
            raise BundleError(f"{name} has no version {version}.")
    record = _read_current(root, name)
    if target == builtin:
        record.pop("current", None)  # no pointer: the built-in version is the default
    else:
        record["current"] = version
    record["log"].append({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "current": version, "reason": reason})
    _write_current(root, name, record)
    return target


def record_rejected(name: str, version: str, reason: str, root: Path | None = None) -> None:
    """Log a version that was kept but not promoted, so it never becomes current by default."""
    root = root or user_bundles_dir()
    _inside(root, name, version)
    record = _read_current(root, name)
    record["rejected"].append(version)
    record["log"].append({"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rejected": version, "reason": reason})
    _write_current(root, name, record)


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
    _inside(root or user_bundles_dir(), name)  # the new version is saved in this folder
    existing = [b.version for b in versions(name, root)] + ([after] if after else [])
    if not existing:
        return "1.0.0"
    latest = max(existing, key=version_key).split("-")[0]
    numbers = [int(p) for p in latest.split(".") if p.isdigit()] + [0, 0]
    return f"{numbers[0]}.{numbers[1] + 1}.0"


def resolve_bundle(spec: str | os.PathLike | None = None) -> Path:
    """A bundle folder from a path, a bundle name (its current version), or nothing (the demo).

    A bare name (no folder separator) is a registry name first: a folder called "demo" in
    the working directory must not replace the demo model.
    """
    text = None if spec is None else os.fspath(spec)
    is_bare_name = text is not None and isinstance(spec, str) and os.sep not in text and "/" not in text and text not in (".", "..")
    if text is not None and not is_bare_name and Path(text).is_dir():
        return Path(text)
    name = DEMO_BUNDLE if text is None else text
    path = current_bundle(name) if is_safe_name(name) else None
    if path is not None:
        return path
    if text is not None and Path(text).is_dir():
        return Path(text)  # a folder in the working directory named like no registry bundle
    if name == DEMO_BUNDLE:
        raise BundleError("The built-in demo bundle is missing from this installation; reinstall napari-covid-attention.")
    broken = [b for b in broken_bundles() if is_safe_name(name) and b.path.parent.name == name]
    if broken:
        raise BundleError(f"The bundle {name} is broken: {broken[-1].reason}")
    names = ", ".join(sorted({b.name for b in list_bundles()})) or "none"
    raise BundleError(f"No bundle folder or bundle named {spec!r} (known bundles: {names}).")


def version_key(version: str) -> tuple:
    parts = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece)) if piece.isdigit() else (1, piece))
    return tuple(parts)


def _read_current(root: Path, name: str) -> dict:
    """current.json as {"current"?: version, "rejected": [...], "log": [...]}; what is
    missing, damaged or not a plain version name is left out."""
    try:
        record = json.loads((root / name / CURRENT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        record = None
    record = record if isinstance(record, dict) else {}
    clean: dict = {}
    if is_safe_name(record.get("current")):
        clean["current"] = record["current"]
    rejected = record.get("rejected")
    clean["rejected"] = [v for v in rejected if is_safe_name(v)] if isinstance(rejected, list) else []
    log = record.get("log")
    clean["log"] = [e for e in log if isinstance(e, dict)] if isinstance(log, list) else []
    return clean


def _write_current(root: Path, name: str, record: dict) -> None:
    path = _inside(root, name) / CURRENT_JSON
    if path.is_symlink():
        raise BundleError(f"{path} is a link; the bundle registry writes only its own files.")
    write_json_atomic(path, record)


def _inside(root: Path, name: str, version: str | None = None) -> Path:
    """``root/name[/version]``, refused unless the names are plain and it resolves inside
    ``root`` (no traversal, no link leading out)."""
    for what, value in (("bundle name", name), ("version", version)):
        if value is not None and not is_safe_name(value):
            raise BundleError(f"{value!r:.60} is not a valid {what}: use letters, digits, '.', '_' or '-'.")
    path = root / name if version is None else root / name / version
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root) or not (root / name).resolve().is_relative_to(resolved_root):
        raise BundleError(f"{path} leads outside the bundle registry {root}; refusing to write there.")
    return path
