"""One import run: check each found scan, stage what must change, write the manifest.

:func:`import_dataset` checks its options, asks the layout's scanner for the scans, loads
and checks each one (HU values, masks on its grid), stages converted files in a hidden
folder inside ``out``, and only once every scan is done moves them into place and writes
``manifest.csv`` and ``import_summary.json``. :func:`describe_import` reads that summary back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_covid_attention.atomic import write_csv_atomic, write_json_atomic
from napari_covid_attention.classes import CAP, CLASS_NAMES, MANIFEST_COLUMNS
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.nifti import save_nifti
from napari_covid_attention.io.volume import CTLoadError, CTVolume, looks_like_hu

from .conversion import (
    add_infection_mask,
    add_lung_mask,
    is_rescaled_0_255,
    read_metaimage,
    unwindow,
)
from .files import inside
from .layouts import LAYOUTS, SCANNERS, Candidate, detect_layout

MANIFEST_NAME = "manifest.csv"
SUMMARY_NAME = "import_summary.json"
IMPORT_MANIFEST_COLUMNS = (*MANIFEST_COLUMNS, "case")  # the case's name in the source data set

Progress = Callable[[int, int], None]


@dataclass
class ImportRun:
    """State of one import: staged files, manifest rows and everything to report."""

    source: Path
    out: Path
    staging: Path
    convert_windowed: bool
    rows: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    dropped_masks: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    windowed: list[Path] = field(default_factory=list)
    converted_windowed: int = 0
    staged: list[str] = field(default_factory=list)

    def shown(self, path: Path) -> str:
        """A path for the summary: relative to the dataset folder where it is inside it."""
        return path.relative_to(self.source).as_posix() if inside(path, self.source) else str(path)

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append({"file": self.shown(path), "reason": reason})

    def drop_mask(self, path: Path, reason: str) -> None:
        self.dropped_masks.append({"file": self.shown(path), "reason": reason})

    def reference(self, path: Path) -> str:
        """How the manifest points at a file: relative to ``out`` (the manifest's folder)."""
        try:
            return Path(os.path.relpath(path, self.out)).as_posix()
        except ValueError:  # another drive on Windows: no relative path exists
            return str(path)

    def stage(self, name: str, array: np.ndarray, volume: CTVolume) -> str:
        """Write an array on ``volume``'s grid (in its file's voxel order) for ``out/name``."""
        save_nifti(self.staging / name, array, volume.affine, source_ornt=volume.source_ornt)
        self.staged.append(name)
        return name


def import_dataset(
    layout: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    label: str | None = None,
    overwrite: bool = False,
    convert_windowed: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write ``out/manifest.csv`` and ``out/import_summary.json`` for a dataset folder.

    Args:
        layout: a key of :data:`LAYOUTS`, or ``"auto"`` to recognise it (:func:`detect_layout`).
        source: the dataset folder as distributed; read only.
        out: where the manifest, the summary and converted files go (not inside ``source``).
        label: the class of every scan, for the ``folder`` layout only (the public layouts
            take their labels from the dataset and refuse one).
        overwrite: replace a manifest already in ``out`` (files only the old import wrote
            are removed once the new one is complete).
        convert_windowed: ``covid19-ct-seg`` only: convert its 0-255 windowed Radiopaedia
            volumes back to approximate HU instead of refusing the import.
        progress: called as ``progress(done, total)`` after each scan.

    Returns:
        The manifest's path. Scans that cannot be used are skipped and listed with the
        reason in the summary; masks that cannot be used are dropped and listed likewise.

    Raises:
        UserFacingError: unknown layout, bad options, an existing manifest, windowed
            volumes without ``convert_windowed``, or no usable scan at all.
    """
    source, out = Path(source).resolve(), Path(out).resolve()
    if not source.is_dir():
        raise UserFacingError(f"{source} is not a folder.")
    if inside(out, source):
        raise UserFacingError(
            f"The output folder {out} is inside the dataset folder {source}; choose one outside it so the dataset stays untouched."
        )
    layout = _resolve_layout(layout, source)
    _check_options(layout, label, convert_windowed)
    manifest = out / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise UserFacingError(
            f"{out} already holds an imported data set ({MANIFEST_NAME}); choose another folder or pass overwrite=True (--overwrite) to replace it."
        )
    scan = SCANNERS[layout](source, label)
    if not scan.candidates:
        raise UserFacingError(f"No scans to import were found in {source} for the {layout} layout.")

    out.mkdir(parents=True, exist_ok=True)
    previous = _previously_written(out)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    run = ImportRun(source, out, staging, convert_windowed, skipped=list(scan.skipped))
    try:
        total = len(scan.candidates)
        for done, candidate in enumerate(scan.candidates, start=1):
            _import_case(candidate, run)
            if progress is not None:
                progress(done, total)
        _refuse_windowed(run)
        if not run.rows:
            first = run.skipped[0]["reason"].rstrip(".") if run.skipped else "no scan was accepted"
            raise UserFacingError(
                f"None of the {total} scans found in {source} could be imported (first problem: {first})."
            )
        for name in run.staged:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_csv_atomic(manifest, run.rows, list(IMPORT_MANIFEST_COLUMNS), restval="")
    write_json_atomic(out / SUMMARY_NAME, _summary(layout, label, run, scan.notes))
    _remove_stale(out, previous - set(run.staged))
    return manifest


def describe_import(manifest: str | os.PathLike) -> str:
    """A few lines for a person about an import, from the summary next to its manifest."""
    manifest = Path(manifest)
    summary = json.loads((manifest.parent / SUMMARY_NAME).read_text(encoding="utf-8"))
    counts = ", ".join(f"{name}: {n}" for name, n in summary["counts"].items())
    lines = [
        f"Imported {summary['cases']} scans ({counts}) from the {summary['layout']} layout into {manifest}; "
        f"{summary['with_infection_mask']} with infection masks, {summary['with_lung_mask']} with lung masks."
    ]
    lines += [f"Skipped {item['file']}: {item['reason']}" for item in summary["skipped"]]
    lines += [
        f"Scan kept without its mask {item['file']}: {item['reason']}"
        for item in summary["dropped_masks"]
    ]
    lines += [f"Note: {note}" for note in summary["notes"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- checks


def _resolve_layout(layout: str, source: Path) -> str:
    if layout == "auto":
        found = detect_layout(source)
        if found is None:
            raise UserFacingError(
                f"{source} does not look like any known dataset layout; name one of {', '.join(LAYOUTS)}."
            )
        return found
    if layout not in LAYOUTS:
        raise UserFacingError(
            f"Unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)} or auto."
        )
    return layout


def _check_options(layout: str, label: str | None, convert_windowed: bool) -> None:
    if layout == "folder":
        if label is None:
            raise UserFacingError(
                "The folder layout needs the label of its scans (COVID-19 or CAP), e.g. --label CAP."
            )
        if label not in CLASS_NAMES:
            raise UserFacingError(f"Unknown label {label!r}; use one of {', '.join(CLASS_NAMES)}.")
    elif label is not None:
        raise UserFacingError(
            f"The {layout} layout takes its labels from the dataset itself; a label is only used with the folder layout."
        )
    if convert_windowed and layout != "covid19-ct-seg":
        raise UserFacingError(
            "convert_windowed only applies to the covid19-ct-seg layout, whose Radiopaedia volumes are windowed to [-1250, 250] HU."
        )


def _refuse_windowed(run: ImportRun) -> None:
    if run.windowed:
        names = ", ".join(p.name for p in run.windowed)
        raise UserFacingError(
            f"{len(run.windowed)} COVID-19-CT-Seg volumes ({names}) are windowed to [-1250, 250] HU and rescaled to 0-255, "
            "not Hounsfield units; import with convert_windowed=True (--convert-windowed) to convert them back to approximate HU."
        )


# --------------------------------------------------------------------------- one case


def _import_case(candidate: Candidate, run: ImportRun) -> None:
    """Check one scan and its masks and add its manifest row (or the reason it is skipped)."""
    try:
        volume = (
            read_metaimage(candidate.image) if candidate.metaimage else load_ct(candidate.image)
        )
    except CTLoadError as exc:
        run.skip(candidate.image, str(exc))
        return
    image = run.reference(candidate.image)
    if not looks_like_hu(volume.hu):
        if candidate.window is None or not is_rescaled_0_255(volume.hu):
            run.skip(
                candidate.image,
                "its values do not look like Hounsfield units (no air below -800 HU).",
            )
            return
        if not run.convert_windowed:
            run.windowed.append(candidate.image)
            return
        volume = unwindow(volume, candidate.window)
        image = run.stage(f"images/{candidate.case}.nii.gz", volume.hu, volume)
        run.converted_windowed += 1
    elif candidate.metaimage:
        image = run.stage(f"images/{candidate.case}.nii.gz", volume.hu, volume)
    run.warnings += [{"file": run.shown(candidate.image), "warning": w} for w in volume.warnings]

    row = {"image": image, "label": candidate.label, "case": candidate.case}
    infection = add_infection_mask(candidate, volume, run, row)
    lungs = add_lung_mask(candidate, volume, run, row)
    if infection is not None and lungs is not None:
        row["infection_fraction"] = f"{np.count_nonzero(infection) / np.count_nonzero(lungs):.6f}"
    run.rows.append(row)


# --------------------------------------------------------------------------- outputs


def _summary(layout: str, label: str | None, run: ImportRun, notes: list[str]) -> dict:
    counts = {name: sum(row["label"] == name for row in run.rows) for name in CLASS_NAMES}
    notes = list(notes)
    if run.converted_windowed:
        notes.append(
            f"Converted {run.converted_windowed} windowed Radiopaedia volumes back to approximate HU "
            "(hu = v / 255 * 1500 - 1250, steps of about 6 HU) under images/; their window had clipped everything below "
            "-1250 HU and above 250 HU (bone, contrast, metal), which cannot be recovered."
        )
    missing = [name for name in CLASS_NAMES if counts[name] == 0]
    for name in missing:
        notes.append(
            f"The manifest has no {name} cases; training needs both classes, so import {name} scans "
            f"with the folder layout (label {name})"
            + (", as no public COVID-19 collection holds CAP." if name == CAP else ".")
        )
    return {
        "layout": layout,
        "source": str(run.source),
        "manifest": MANIFEST_NAME,
        "options": {"label": label, "convert_windowed": run.convert_windowed},
        "cases": len(run.rows),
        "counts": counts,
        "with_infection_mask": sum(bool(row.get("infection_mask")) for row in run.rows),
        "with_lung_mask": sum(bool(row.get("lung_mask")) for row in run.rows),
        "skipped": run.skipped,
        "dropped_masks": run.dropped_masks,
        "warnings": run.warnings,
        "notes": notes,
        "written": sorted(run.staged),
    }


def _previously_written(out: Path) -> set[str]:
    """Files an earlier import into ``out`` wrote (from its summary), to clean up after."""
    try:
        return set(json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8")).get("written", []))
    except (OSError, ValueError, AttributeError):
        return set()


def _remove_stale(out: Path, names: Iterable[str]) -> None:
    """Delete files of a replaced import that the new one did not write again (never outside out)."""
    for name in names:
        path = (out / name).resolve()
        if inside(path, out) and path != out and path.is_file():
            path.unlink()
