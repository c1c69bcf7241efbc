"""Batch diagnosis for the CLI: many scans in, one results CSV and NIfTI maps/masks out."""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_covid_attention.diagnosis import MAP_NAMES, Diagnosis, diagnose
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.nifti import save_nifti
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.models.registry import resolve_bundle

WARNING_SEPARATOR = " | "  # between a scan's warnings in results.csv (each is one sentence)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Scans named directly, or listed in the ``image`` column of CSV files."""
    scans: list[Path] = []
    for item in map(Path, inputs):
        if item.suffix.lower() == ".csv" and item.is_file():
            with open(item, newline="") as handle:
                reader = csv.DictReader(handle)
                if "image" not in (reader.fieldnames or ()):
                    raise UserFacingError(f"{item.name} has no 'image' column listing the scans.")
                scans += [(item.parent / row["image"].strip()).resolve() for row in reader if row["image"].strip()]
        else:
            scans.append(item.resolve())
    if not scans:
        raise UserFacingError("No scans to diagnose.")
    return scans


def diagnose_many(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    bundle: str | None = None,
    device: str = "auto",
    write_maps: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Diagnose every scan; a scan that cannot be read is reported in the CSV, not fatal.

    Writes ``results.csv`` (one row per scan: the finding first, "No pneumonia detected" or
    the more likely class; then the classifier's ``predicted`` class and probabilities) and,
    per scan, a folder with ``summary.json`` and the lung and infection masks and the three
    maps as NIfTI on the scan's own voxel grid.
    """
    scans = expand_inputs(inputs)
    out = Path(out_dir).resolve()
    _refuse_inside_inputs(out, scans)
    model = load_bundle(resolve_bundle(bundle))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, scan in enumerate(scans):
        rows.append(_diagnose_one(index, scan, out, model, device, write_maps))
        if progress:
            progress(index + 1, len(scans))
    table = out / "results.csv"
    fields = sorted({key for row in rows for key in row}, key=_column_order)
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return table


def _diagnose_one(index: int, scan: Path, out: Path, model, device: str, write_maps: bool) -> dict:
    started = time.perf_counter()
    row: dict = {"input": str(scan)}
    try:
        volume = load_ct(scan)
        result = diagnose(volume, model, device)
    except UserFacingError as exc:
        row.update(status="error", error=str(exc))
        return row
    row.update(status="ok", **_result_columns(result))
    if write_maps:
        folder = out / f"{index:04d}_{_safe_name(scan)}"
        _write_case(folder, volume, result)
        row["outputs"] = str(folder)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def _result_columns(result: Diagnosis) -> dict:
    columns = {
        "finding": result.finding,
        "pneumonia_detected": result.pneumonia_detected,
        "pneumonia_threshold_percent": round(result.pneumonia_rule.min_infection_percent, 3),
        "predicted": result.predicted_class,  # the more likely class, pneumonia or not
        "bundle": f"{result.bundle_name} {result.bundle_version}",
        "infection_ml": round(result.infection_volume_ml, 1),
        "lung_ml": round(result.lung_volume_ml, 1),
        "infection_percent": round(result.infection_percent, 2),
    }
    for name, p in result.probabilities.items():
        columns[f"p_{name}"] = round(p, 4)
    for member in result.members:
        for name, p in member.probabilities.items():
            columns[f"p_{name}_{member.name}"] = round(p, 4)
    for name, p in (result.lesion_probabilities or {}).items():
        columns[f"p_lesion_{name}"] = round(p, 3)
    columns["warnings"] = WARNING_SEPARATOR.join(result.warnings)
    return columns


def _write_case(folder: Path, volume: CTVolume, result: Diagnosis) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ornt = volume.source_ornt
    save_nifti(folder / "lung_mask.nii.gz", result.lung_mask, volume.affine, source_ornt=ornt)
    save_nifti(folder / "infection_mask.nii.gz", result.infection_mask, volume.affine, source_ornt=ornt)
    for name in MAP_NAMES:
        save_nifti(folder / f"{name}.nii.gz", result.map_on_scan(name), volume.affine, source_ornt=ornt)
    (folder / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")


def _refuse_inside_inputs(out: Path, scans: Sequence[Path]) -> None:
    """Never write into a scan folder given as input (a DICOM folder must stay as it came)."""
    for folder in (s for s in scans if s.is_dir()):
        if out == folder or folder in out.parents:
            raise UserFacingError(f"The output folder {out} is inside the input folder {folder}; choose another --out.")


def _safe_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "scan"


def _column_order(name: str) -> tuple:
    first = ["input", "status", "finding", "pneumonia_detected", "predicted"]
    return (first.index(name) if name in first else len(first), name)
