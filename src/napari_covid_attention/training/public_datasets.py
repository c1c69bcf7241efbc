"""Turn a public COVID-19 CT dataset a user already has into a training manifest.

Each layout (see :data:`LAYOUTS`) is a folder structure as the dataset is distributed.
:func:`import_dataset` finds its scans and masks, checks that every scan loads and looks
like Hounsfield units and that every mask lies on its scan's voxel grid, and writes
``out/manifest.csv`` (the format :func:`~napari_covid_attention.training.datasets.read_manifest`
reads) plus ``out/import_summary.json`` (counts, skipped files with reasons, and the
labelling decisions taken). Files are referenced where they are; only what must change
(MetaImage scans, masks with extra labels, windowed volumes) is converted, and only into
``out``: the dataset folder itself is never written to.

None of the public collections holds community-acquired pneumonia (CAP): they are all
COVID-19 (or COVID-negative without a CAP diagnosis). CAP cases come from the user's own
scans through the ``folder`` layout with ``label="CAP"``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_covid_attention.atomic import write_csv_atomic, write_json_atomic
from napari_covid_attention.classes import CAP, CLASS_NAMES, COVID, LESION_TYPES
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io import geometry
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.nifti import is_nifti_path, save_nifti
from napari_covid_attention.io.volume import CTLoadError, CTVolume, hu_array, looks_like_hu

LAYOUTS = {
    "mosmeddata": "MosMedData COVID19_1110: studies/CT-0..CT-4/study_NNNN.nii.gz, masks/study_NNNN_mask.nii.gz",
    "covid19-ct-seg": "COVID-19-CT-Seg (Zenodo 3757476): COVID-19-CT-Seg_20cases/, Infection_Mask/, Lung_Mask/",
    "medseg": "MedSeg COVID-19 CT segmentation: rp_im/, rp_msk/ (1 ground glass, 2 consolidation, 3 effusion), rp_lung_msk/",
    "stoic2021": "STOIC2021: data/mha/<PatientID>.mha and metadata/reference.csv (needs SimpleITK)",
    "covid19-20": "COVID-19-20 lesion segmentation challenge: Train/volume-covid19-A-NNNN_ct.nii.gz with _seg.nii.gz",
    "folder": "your own NIfTI files or DICOM series, one label for all (--label); masks <name>_mask/_seg or masks/",
}
MANIFEST_NAME = "manifest.csv"
SUMMARY_NAME = "import_summary.json"
MANIFEST_COLUMNS = (
    "image",
    "label",
    "infection_mask",
    "lung_mask",
    *LESION_TYPES,
    "infection_fraction",
    "case",
)
# COVID-19-CT-Seg's Radiopaedia volumes were windowed to this range and rescaled to 0-255.
RADIOPAEDIA_WINDOW = (-1250.0, 250.0)
# Same tolerance as training's own mask check, so an accepted mask is never refused later.
GRID_ATOL_MM = 1e-3

_INFECTION_SUFFIXES = ("_mask", "_seg", "_infection")
_LUNG_SUFFIXES = ("_lung", "_lungs", "_lung_mask")
_INFECTION_FOLDERS = ("masks", "infections", "infection_masks")
_LUNG_FOLDERS = ("lungs", "lung_masks")
_DICOM_PROBES = 5  # files looked at per folder to decide whether it holds a DICOM series
_CTSEG_FOLDERS = {
    "image": ("COVID-19-CT-Seg_20cases", "ct_scans"),  # Zenodo names, then the Kaggle re-host's
    "infection": ("Infection_Mask", "infection_mask"),
    "lung": ("Lung_Mask", "lung_mask"),
}
_KAGGLE_CTSEG_NAMES = (
    (re.compile(r"coronacases_org_(\d+)"), "coronacases_{}"),
    (re.compile(r"radiopaedia_org_covid-19-pneumonia-(\d+_\d+_\d+)-dcm"), "radiopaedia_{}"),
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Candidate:
    """One scan found in a dataset folder, with what the layout says about it."""

    case: str
    image: Path
    label: str
    infection_mask: Path | None = None
    lung_mask: Path | None = None
    infection_labels: tuple[int, ...] | None = None  # None: every non-zero voxel is infection
    flag_labels: tuple[tuple[str, int], ...] = ()  # lesion flag -> mask label that shows it
    window: tuple[float, float] | None = None  # the known window of 0-255 rescaled volumes
    metaimage: bool = False


@dataclass
class _Scan:
    """What a layout's folder holds: candidates plus files or decisions to report."""

    candidates: list[_Candidate]
    notes: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class _Run:
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
        return path.relative_to(self.source).as_posix() if _inside(path, self.source) else str(path)

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


# --------------------------------------------------------------------------- public API


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
    if _inside(out, source):
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
    scan = _SCANNERS[layout](source, label)
    if not scan.candidates:
        raise UserFacingError(f"No scans to import were found in {source} for the {layout} layout.")

    out.mkdir(parents=True, exist_ok=True)
    previous = _previously_written(out)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    run = _Run(source, out, staging, convert_windowed, skipped=list(scan.skipped))
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
    _write_manifest(manifest, run.rows)
    write_json_atomic(out / SUMMARY_NAME, _summary(layout, label, run, scan.notes))
    _remove_stale(out, previous - set(run.staged))
    return manifest


def detect_layout(source: str | os.PathLike) -> str | None:
    """The layout a dataset folder has, from its folder structure alone; None if unknown.

    ``folder`` is reported for any other folder holding NIfTI files or DICOM series.
    """
    source = Path(source)
    if not source.is_dir():
        return None
    if (source / "data" / "mha").is_dir() and (source / "metadata" / "reference.csv").is_file():
        return "stoic2021"
    if _first_dir(source, _CTSEG_FOLDERS["image"]) and (
        _first_dir(source, _CTSEG_FOLDERS["infection"])
        or _first_dir(source, _CTSEG_FOLDERS["lung"])
    ):
        return "covid19-ct-seg"
    if (source / "rp_im").is_dir():
        return "medseg"
    if _mosmed_studies(source) is not None:
        return "mosmeddata"
    if any(_is_covid19_20_image(p) for pattern in ("*", "*/*") for p in source.glob(pattern)):
        return "covid19-20"
    if _folder_items(source):
        return "folder"
    return None


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


def _refuse_windowed(run: _Run) -> None:
    if run.windowed:
        names = ", ".join(p.name for p in run.windowed)
        raise UserFacingError(
            f"{len(run.windowed)} COVID-19-CT-Seg volumes ({names}) are windowed to [-1250, 250] HU and rescaled to 0-255, "
            "not Hounsfield units; import with convert_windowed=True (--convert-windowed) to convert them back to approximate HU."
        )


# --------------------------------------------------------------------------- one case


def _import_case(candidate: _Candidate, run: _Run) -> None:
    """Check one scan and its masks and add its manifest row (or the reason it is skipped)."""
    try:
        volume = (
            _read_metaimage(candidate.image) if candidate.metaimage else load_ct(candidate.image)
        )
    except CTLoadError as exc:
        run.skip(candidate.image, str(exc))
        return
    image = run.reference(candidate.image)
    if not looks_like_hu(volume.hu):
        if candidate.window is None or not _is_rescaled_0_255(volume.hu):
            run.skip(
                candidate.image,
                "its values do not look like Hounsfield units (no air below -800 HU).",
            )
            return
        if not run.convert_windowed:
            run.windowed.append(candidate.image)
            return
        volume = _unwindow(volume, candidate.window)
        image = run.stage(f"images/{candidate.case}.nii.gz", volume.hu, volume)
        run.converted_windowed += 1
    elif candidate.metaimage:
        image = run.stage(f"images/{candidate.case}.nii.gz", volume.hu, volume)
    run.warnings += [{"file": run.shown(candidate.image), "warning": w} for w in volume.warnings]

    row = {"image": image, "label": candidate.label, "case": candidate.case}
    infection = _infection(candidate, volume, run, row)
    lungs = _lungs(candidate, volume, run, row)
    if infection is not None and lungs is not None:
        row["infection_fraction"] = f"{np.count_nonzero(infection) / np.count_nonzero(lungs):.6f}"
    run.rows.append(row)


def _infection(
    candidate: _Candidate, volume: CTVolume, run: _Run, row: dict[str, str]
) -> np.ndarray | None:
    """The binary infection mask (kept in the row, converted if it has other labels)."""
    path = candidate.infection_mask
    values = None if path is None else _mask_values(path, volume, run)
    if path is None or values is None:
        return None
    if candidate.infection_labels is None:
        binary = (values > 0).astype(np.uint8)
    else:
        binary = np.isin(values, candidate.infection_labels).astype(np.uint8)
    row["infection_mask"] = _kept_or_staged(
        path, values, binary, f"masks/{candidate.case}_infection.nii.gz", volume, run
    )
    for flag, value in candidate.flag_labels:
        row[flag] = str(int(np.any(values == value)))
    return binary


def _lungs(
    candidate: _Candidate, volume: CTVolume, run: _Run, row: dict[str, str]
) -> np.ndarray | None:
    """The lung mask as training reads it: labels 0-255 as they are, anything else as lung > 0."""
    path = candidate.lung_mask
    values = None if path is None else _mask_values(path, volume, run)
    if path is None or values is None:
        return None
    if not np.any(values > 0):
        run.drop_mask(path, "it marks no lung voxel.")
        return None
    usable = np.issubdtype(values.dtype, np.integer) and values.min() >= 0 and values.max() <= 255
    mask = values if usable else (values > 0).astype(np.uint8)
    row["lung_mask"] = _kept_or_staged(
        path, values, mask, f"masks/{candidate.case}_lung.nii.gz", volume, run
    )
    return mask > 0


def _mask_values(path: Path, volume: CTVolume, run: _Run) -> np.ndarray | None:
    """A mask's values on its scan's grid, or None (with the reason recorded) if unusable."""
    try:
        mask = load_ct(path)
    except CTLoadError as exc:
        run.drop_mask(path, str(exc))
        return None
    if mask.shape != volume.shape:
        run.drop_mask(
            path,
            f"its grid has shape {mask.shape} but its scan's has {volume.shape}.",
        )
        return None
    if not np.allclose(mask.affine, volume.affine, atol=GRID_ATOL_MM):
        run.drop_mask(
            path,
            "its voxels lie elsewhere in space than its scan's (different position, spacing or orientation).",
        )
        return None
    return mask.hu


def _kept_or_staged(
    path: Path, values: np.ndarray, wanted: np.ndarray, name: str, volume: CTVolume, run: _Run
) -> str:
    """Reference the source mask when it already holds ``wanted``, else write ``wanted``."""
    if np.array_equal(values, wanted):
        return run.reference(path)
    return run.stage(name, wanted.astype(np.uint8), volume)


def _is_rescaled_0_255(values: np.ndarray) -> bool:
    return bool(values.min() >= 0 and values.max() <= 255)


def _unwindow(volume: CTVolume, window: tuple[float, float]) -> CTVolume:
    """Approximate HU of a volume windowed to ``window`` and rescaled to 0-255.

    The inverse is exact only inside the window: everything the window clipped (air
    below it, bone and contrast above it) comes back as the window's edge.
    """
    low, high = window
    hu = np.rint(volume.hu.astype(np.float32) / 255.0 * (high - low) + low)
    return CTVolume(
        hu=hu_array(hu),
        affine=volume.affine,
        metadata={
            **volume.metadata,
            "converted_from_window": f"[{low:g}, {high:g}] rescaled to 0-255",
        },
        source_path=volume.source_path,
        source_ornt=volume.source_ornt,
        warnings=volume.warnings,
    )


def _read_metaimage(path: Path) -> CTVolume:
    """A MetaImage (.mha) CT as a canonical :class:`CTVolume`.

    ITK's physical frame is LPS, like the core's, so no axis is flipped: the ITK index
    (i, j, k) is the array's (x, y, z) and the direction matrix's columns are the index
    axes' directions.
    """
    sitk = _simpleitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise CTLoadError(f"{path.name} is not a readable MetaImage file.") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CTLoadError(f"{path.name} is not a 3D single-channel CT volume.")
    kji = sitk.GetArrayFromImage(image)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    linear = direction * np.asarray(image.GetSpacing(), dtype=float)  # columns: i, j, k
    affine[:3, :3] = linear[:, ::-1]  # columns: k, j, i = the array's z, y, x
    affine[:3, 3] = image.GetOrigin()
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise CTLoadError(f"{path.name} has no valid voxel-to-world geometry.")
    canon, canon_affine, source_ornt = geometry.to_canonical(hu_array(kji), affine)
    return CTVolume(
        hu=canon,
        affine=canon_affine,
        metadata={"format": "MetaImage"},
        source_path=str(path),
        source_ornt=source_ornt,
    )


def _simpleitk():
    """SimpleITK, imported only for MetaImage input (it is not a dependency)."""
    try:
        import SimpleITK
    except ImportError as exc:
        raise UserFacingError(
            "Reading STOIC2021 .mha files needs SimpleITK: pip install SimpleITK."
        ) from exc
    return SimpleITK


# --------------------------------------------------------------------------- layouts


def _scan_mosmeddata(source: Path, label: str | None) -> _Scan:
    """CT-1..CT-4 as COVID-19, masks by study id; CT-0 (no pneumonia) is left out."""
    studies = _mosmed_studies(source)
    if studies is None:
        raise UserFacingError(f"{source} has no CT-0..CT-4 folders (MosMedData's studies).")
    masks = _first_dir(source, ("masks",)) or _first_dir(studies.parent, ("masks",))
    candidates, no_pneumonia = [], 0
    for grade in range(5):
        folder = studies / f"CT-{grade}"
        files = _nifti_files(folder) if folder.is_dir() else []
        if grade == 0:
            no_pneumonia = len(files)
            continue
        for path in files:
            stem = _nifti_stem(path)
            mask = _nifti_named(masks, f"{stem}_mask") if masks else None
            candidates.append(_Candidate(f"mosmed_{stem}", path, COVID, infection_mask=mask))
    notes = [
        f"Left out {no_pneumonia} CT-0 studies (no signs of pneumonia): this project tells COVID-19 from CAP, and a scan without pneumonia is neither.",
        "CT-1..CT-4 studies are labelled COVID-19 as MosMedData intends; their grades come from radiologists' CT reading during the Moscow epidemic, not from RT-PCR.",
    ]
    if masks:
        imported = {c.infection_mask for c in candidates}
        orphans = sorted(p.name for p in _nifti_files(masks) if p not in imported)
        if orphans:
            notes.append(
                f"{len(orphans)} masks match no CT-1..CT-4 study and were not used: {', '.join(orphans)}."
            )
    return _Scan(candidates, notes)


def _scan_covid19_ct_seg(source: Path, label: str | None) -> _Scan:
    """20 COVID-19 volumes with infection and lung masks (same file names in each folder)."""
    images = _first_dir(source, _CTSEG_FOLDERS["image"])
    if images is None:
        raise UserFacingError(f"{source} has no COVID-19-CT-Seg_20cases folder.")
    infection = _first_dir(source, _CTSEG_FOLDERS["infection"])
    lungs = _first_dir(source, _CTSEG_FOLDERS["lung"])
    candidates = []
    for path in _nifti_files(images):
        key = _ctseg_key(_nifti_stem(path))
        candidates.append(
            _Candidate(
                f"ctseg_{key}",
                path,
                COVID,
                infection_mask=_nifti_named(infection, key) if infection else None,
                lung_mask=_nifti_named(lungs, key) if lungs else None,
                window=RADIOPAEDIA_WINDOW,
            )
        )
    notes = [
        "All COVID-19-CT-Seg cases are COVID-19; lung masks (1 and 2 for the two lungs) count as lung wherever non-zero."
    ]
    return _Scan(candidates, notes)


def _scan_medseg(source: Path, label: str | None) -> _Scan:
    """9 COVID-19 volumes; infection = ground glass (1) + consolidation (2), not effusion (3)."""
    images, masks, lungs = (
        source / "rp_im",
        _first_dir(source, ("rp_msk",)),
        _first_dir(source, ("rp_lung_msk",)),
    )
    if not images.is_dir():
        raise UserFacingError(f"{source} has no rp_im folder (MedSeg's volumes).")
    candidates = []
    for path in _nifti_files(images):
        stem = _nifti_stem(path)
        candidates.append(
            _Candidate(
                f"medseg_{_safe(stem)}",
                path,
                COVID,
                infection_mask=_nifti_named(masks, stem) if masks else None,
                lung_mask=_nifti_named(lungs, stem) if lungs else None,
                infection_labels=(1, 2),
                flag_labels=(("ground_glass", 1), ("consolidation", 2)),
            )
        )
    notes = [
        "All MedSeg volumes are COVID-19. Infection masks keep labels 1 (ground glass) and 2 (consolidation) and leave out 3 "
        "(pleural effusion, which is not lung infection); masks holding other labels are written as new binary masks under masks/.",
        "The ground_glass and consolidation flags say whether a mask contains that label; the other lesion flags are unknown "
        "and left empty, so training uses no lesion flags for these cases.",
    ]
    return _Scan(candidates, notes)


def _scan_stoic2021(source: Path, label: str | None) -> _Scan:
    """RT-PCR-positive patients (probCOVID=1) as COVID-19; negatives are left out."""
    folder, reference = source / "data" / "mha", source / "metadata" / "reference.csv"
    if not folder.is_dir() or not reference.is_file():
        raise UserFacingError(
            f"{source} needs data/mha/ and metadata/reference.csv (STOIC2021's layout)."
        )
    _simpleitk()  # refuse before any work when it is missing
    prob_covid = _stoic_reference(reference)
    scan = _Scan([])
    negatives, seen = 0, set()
    for path in sorted(folder.glob("*.mha")):
        patient = path.stem
        seen.add(patient)
        value = prob_covid.get(patient)
        if value is None:
            scan.skipped.append(
                {
                    "file": path.relative_to(source).as_posix(),
                    "reason": "its PatientID is not in metadata/reference.csv.",
                }
            )
        elif value == "1":
            scan.candidates.append(
                _Candidate(f"stoic_{_safe(patient)}", path, COVID, metaimage=True)
            )
        elif value == "0":
            negatives += 1
        else:
            scan.skipped.append(
                {
                    "file": path.relative_to(source).as_posix(),
                    "reason": f"probCOVID is {value!r}, neither 0 nor 1.",
                }
            )
    scan.notes += [
        "Imported probCOVID=1 patients (RT-PCR positive) as COVID-19; converted their .mha scans to NIfTI under images/. "
        "A positive RT-PCR does not mean the CT shows pneumonia: some of these scans may be normal.",
        f"Left out {negatives} probCOVID=0 patients: they had COVID-19-like symptoms but a negative RT-PCR, which is not a "
        "diagnosis of community-acquired pneumonia (many have no pneumonia at all), so they are not imported as CAP.",
    ]
    missing = sorted(set(prob_covid) - seen)
    if missing:
        scan.notes.append(
            f"{len(missing)} patients in reference.csv have no .mha file in data/mha."
        )
    return scan


def _stoic_reference(path: Path) -> dict[str, str]:
    """PatientID -> probCOVID (as written, e.g. "1") from STOIC2021's reference.csv."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"PatientID", "probCOVID"} <= set(reader.fieldnames or ()):
            raise UserFacingError(f"{path.name} needs the columns PatientID and probCOVID.")
        return {row["PatientID"].strip(): _integral(row["probCOVID"]) for row in reader}


def _integral(value: str) -> str:
    """probCOVID as written, with a whole number such as 1.0 written as 1."""
    try:
        number = float(value)
    except ValueError:
        return value.strip()
    return str(int(number)) if number.is_integer() else value.strip()


def _scan_covid19_20(source: Path, label: str | None) -> _Scan:
    """Every ``*_ct.nii.gz`` (Train and Validation) as COVID-19, its ``*_seg`` as infection."""
    candidates = []
    for path in sorted(
        p for p in source.rglob("*_ct.nii*") if is_nifti_path(p) and not _hidden(p, source)
    ):
        base = _nifti_stem(path)[: -len("_ct")]
        candidates.append(
            _Candidate(
                _safe(base), path, COVID, infection_mask=_nifti_named(path.parent, f"{base}_seg")
            )
        )
    notes = [
        "All COVID-19-20 challenge cases are COVID-19 patients; validation cases come without lesion masks."
    ]
    return _Scan(candidates, notes)


def _scan_folder(source: Path, label: str | None) -> _Scan:
    """The user's own scans, all of class ``label``; masks found by name next to them.

    A scan is a NIfTI file or a folder holding a DICOM series. Its infection mask is
    ``<name>_mask``, ``<name>_seg`` or ``<name>_infection`` beside it, or ``<name>`` in a
    ``masks``/``infections`` folder beside it or beside its own folder; lung masks likewise
    with ``_lung``/``_lungs``/``_lung_mask`` and ``lungs``/``lung_masks``.
    """
    assert label is not None  # _check_options demands it
    candidates, names = [], set()
    for item in _folder_items(source):
        stem = _nifti_stem(item) if item.is_file() else item.name
        where = item.parent.relative_to(source).parts if item != source else ()
        candidates.append(
            _Candidate(
                _unique(_safe("_".join((*where, stem))), names),
                item,
                label,
                infection_mask=_match_mask(
                    item, stem, source, _INFECTION_SUFFIXES, _INFECTION_FOLDERS
                ),
                lung_mask=_match_mask(item, stem, source, _LUNG_SUFFIXES, _LUNG_FOLDERS),
            )
        )
    notes = [f"Every scan in the folder is labelled {label}, as requested."]
    return _Scan(candidates, notes)


_SCANNERS: dict[str, Callable[[Path, str | None], _Scan]] = {
    "mosmeddata": _scan_mosmeddata,
    "covid19-ct-seg": _scan_covid19_ct_seg,
    "medseg": _scan_medseg,
    "stoic2021": _scan_stoic2021,
    "covid19-20": _scan_covid19_20,
    "folder": _scan_folder,
}


# --------------------------------------------------------------------------- file finding


def _mosmed_studies(source: Path) -> Path | None:
    """The folder holding CT-0..CT-4: ``source/studies`` (COVID19_1110) or ``source`` itself."""
    for studies in (source / "studies", source):
        if any((studies / f"CT-{grade}").is_dir() for grade in range(5)):
            return studies
    return None


def _is_covid19_20_image(path: Path) -> bool:
    return (
        path.name.startswith("volume-covid19-")
        and _nifti_stem(path).endswith("_ct")
        and is_nifti_path(path)
    )


def _ctseg_key(stem: str) -> str:
    """The mask file name of a COVID-19-CT-Seg scan (the Kaggle re-host renamed the scans)."""
    for pattern, template in _KAGGLE_CTSEG_NAMES:
        match = pattern.fullmatch(stem)
        if match:
            return template.format(match[1])
    return stem


def _folder_items(source: Path) -> list[Path]:
    """NIfTI scans (not masks) and folders holding DICOM files, in a stable order."""
    from napari_covid_attention.io.dicom import is_dicom_file

    mask_folders = {*_INFECTION_FOLDERS, *_LUNG_FOLDERS}
    items = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in mask_folders)
        folder = Path(root)
        names = sorted(f for f in files if not f.startswith("."))
        items += [folder / n for n in names if is_nifti_path(n) and not _is_mask_name(n)]
        others = [n for n in names if not is_nifti_path(n)]
        if any(is_dicom_file(folder / n) for n in others[:_DICOM_PROBES]):
            items.append(folder)
    return items


def _match_mask(
    item: Path, stem: str, source: Path, suffixes: Iterable[str], folders: Iterable[str]
) -> Path | None:
    """The first mask named after ``stem`` beside ``item`` or in a mask folder near it."""
    with_suffix = [stem + s for s in suffixes]
    places = [(item.parent, with_suffix)]
    for folder in folders:
        places.append((item.parent / folder, [stem, *with_suffix]))
        if item.parent != source:
            places.append((item.parent.parent / folder, [stem, *with_suffix]))
    for place, stems in places:
        if _inside(place, source):
            for name in stems:
                found = _nifti_named(place, name)
                if found is not None:
                    return found
    return None


def _is_mask_name(name: str) -> bool:
    return _nifti_stem(Path(name)).endswith((*_INFECTION_SUFFIXES, *_LUNG_SUFFIXES))


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and is_nifti_path(p) and not p.name.startswith(".")
    )


def _nifti_named(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _first_dir(parent: Path, names: Iterable[str]) -> Path | None:
    return next((parent / n for n in names if (parent / n).is_dir()), None)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _hidden(path: Path, source: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(source).parts)


def _safe(text: str) -> str:
    """A file-name-safe case name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


# --------------------------------------------------------------------------- outputs


def _summary(layout: str, label: str | None, run: _Run, notes: list[str]) -> dict:
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
        if _inside(path, out) and path != out and path.is_file():
            path.unlink()


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    write_csv_atomic(path, rows, list(MANIFEST_COLUMNS), restval="")
