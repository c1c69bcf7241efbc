"""The dataset layouts: recognising one and listing the scans it holds.

Each layout's scanner reads a dataset folder as its publishers distribute it and returns
:class:`Candidate` scans with their masks and labels, plus notes on the labelling decisions
taken and files left out. Scanners only look; checking and converting happen in the run.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from napari_covid_attention.classes import COVID
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.nifti import is_nifti_path

from .conversion import simpleitk
from .files import (
    INFECTION_FOLDERS,
    INFECTION_SUFFIXES,
    LUNG_FOLDERS,
    LUNG_SUFFIXES,
    first_dir,
    folder_items,
    hidden,
    match_mask,
    nifti_files,
    nifti_named,
    nifti_stem,
    safe_name,
    unique_name,
)

LAYOUTS = {
    "mosmeddata": "MosMedData COVID19_1110: studies/CT-0..CT-4/study_NNNN.nii.gz, masks/study_NNNN_mask.nii.gz",
    "covid19-ct-seg": "COVID-19-CT-Seg (Zenodo 3757476): COVID-19-CT-Seg_20cases/, Infection_Mask/, Lung_Mask/",
    "medseg": "MedSeg COVID-19 CT segmentation: rp_im/, rp_msk/ (1 ground glass, 2 consolidation, 3 effusion), rp_lung_msk/",
    "stoic2021": "STOIC2021: data/mha/<PatientID>.mha and metadata/reference.csv (needs SimpleITK)",
    "covid19-20": "COVID-19-20 lesion segmentation challenge: Train/volume-covid19-A-NNNN_ct.nii.gz with _seg.nii.gz",
    "folder": "your own NIfTI files or DICOM series, one label for all (--label); masks <name>_mask/_seg or masks/",
}
# COVID-19-CT-Seg's Radiopaedia volumes were windowed to this range and rescaled to 0-255.
RADIOPAEDIA_WINDOW = (-1250.0, 250.0)

_CTSEG_FOLDERS = {
    "image": ("COVID-19-CT-Seg_20cases", "ct_scans"),  # Zenodo names, then the Kaggle re-host's
    "infection": ("Infection_Mask", "infection_mask"),
    "lung": ("Lung_Mask", "lung_mask"),
}
_KAGGLE_CTSEG_NAMES = (
    (re.compile(r"coronacases_org_(\d+)"), "coronacases_{}"),
    (re.compile(r"radiopaedia_org_covid-19-pneumonia-(\d+_\d+_\d+)-dcm"), "radiopaedia_{}"),
)


@dataclass(frozen=True)
class Candidate:
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
class LayoutScan:
    """What a layout's folder holds: candidates plus files or decisions to report."""

    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def detect_layout(source: str | os.PathLike) -> str | None:
    """The layout a dataset folder has, from its folder structure alone; None if unknown.

    ``folder`` is reported for any other folder holding NIfTI files or DICOM series.
    """
    source = Path(source)
    if not source.is_dir():
        return None
    if (source / "data" / "mha").is_dir() and (source / "metadata" / "reference.csv").is_file():
        return "stoic2021"
    if first_dir(source, _CTSEG_FOLDERS["image"]) and (
        first_dir(source, _CTSEG_FOLDERS["infection"]) or first_dir(source, _CTSEG_FOLDERS["lung"])
    ):
        return "covid19-ct-seg"
    if (source / "rp_im").is_dir():
        return "medseg"
    if _mosmed_studies(source) is not None:
        return "mosmeddata"
    if any(_is_covid19_20_image(p) for pattern in ("*", "*/*") for p in source.glob(pattern)):
        return "covid19-20"
    if folder_items(source):
        return "folder"
    return None


def _scan_mosmeddata(source: Path, label: str | None) -> LayoutScan:
    """CT-1..CT-4 as COVID-19, masks by study id; CT-0 (no pneumonia) is left out."""
    studies = _mosmed_studies(source)
    if studies is None:
        raise UserFacingError(f"{source} has no CT-0..CT-4 folders (MosMedData's studies).")
    masks = first_dir(source, ("masks",)) or first_dir(studies.parent, ("masks",))
    candidates, no_pneumonia = [], 0
    for grade in range(5):
        folder = studies / f"CT-{grade}"
        files = nifti_files(folder) if folder.is_dir() else []
        if grade == 0:
            no_pneumonia = len(files)
            continue
        for path in files:
            stem = nifti_stem(path)
            mask = nifti_named(masks, f"{stem}_mask") if masks else None
            candidates.append(Candidate(f"mosmed_{stem}", path, COVID, infection_mask=mask))
    notes = [
        f"Left out {no_pneumonia} CT-0 studies (no signs of pneumonia): this project tells COVID-19 from CAP, and a scan without pneumonia is neither.",
        "CT-1..CT-4 studies are labelled COVID-19 as MosMedData intends; their grades come from radiologists' CT reading during the Moscow epidemic, not from RT-PCR.",
    ]
    if masks:
        imported = {c.infection_mask for c in candidates}
        orphans = sorted(p.name for p in nifti_files(masks) if p not in imported)
        if orphans:
            notes.append(
                f"{len(orphans)} masks match no CT-1..CT-4 study and were not used: {', '.join(orphans)}."
            )
    return LayoutScan(candidates, notes)


def _mosmed_studies(source: Path) -> Path | None:
    """The folder holding CT-0..CT-4: ``source/studies`` (COVID19_1110) or ``source`` itself."""
    for studies in (source / "studies", source):
        if any((studies / f"CT-{grade}").is_dir() for grade in range(5)):
            return studies
    return None


def _scan_covid19_ct_seg(source: Path, label: str | None) -> LayoutScan:
    """20 COVID-19 volumes with infection and lung masks (same file names in each folder)."""
    images = first_dir(source, _CTSEG_FOLDERS["image"])
    if images is None:
        raise UserFacingError(f"{source} has no COVID-19-CT-Seg_20cases folder.")
    infection = first_dir(source, _CTSEG_FOLDERS["infection"])
    lungs = first_dir(source, _CTSEG_FOLDERS["lung"])
    candidates = []
    for path in nifti_files(images):
        key = _ctseg_key(nifti_stem(path))
        candidates.append(
            Candidate(
                f"ctseg_{key}",
                path,
                COVID,
                infection_mask=nifti_named(infection, key) if infection else None,
                lung_mask=nifti_named(lungs, key) if lungs else None,
                window=RADIOPAEDIA_WINDOW,
            )
        )
    notes = [
        "All COVID-19-CT-Seg cases are COVID-19; lung masks (1 and 2 for the two lungs) count as lung wherever non-zero."
    ]
    return LayoutScan(candidates, notes)


def _ctseg_key(stem: str) -> str:
    """The mask file name of a COVID-19-CT-Seg scan (the Kaggle re-host renamed the scans)."""
    for pattern, template in _KAGGLE_CTSEG_NAMES:
        match = pattern.fullmatch(stem)
        if match:
            return template.format(match[1])
    return stem


def _scan_medseg(source: Path, label: str | None) -> LayoutScan:
    """9 COVID-19 volumes; infection = ground glass (1) + consolidation (2), not effusion (3)."""
    images, masks, lungs = (
        source / "rp_im",
        first_dir(source, ("rp_msk",)),
        first_dir(source, ("rp_lung_msk",)),
    )
    if not images.is_dir():
        raise UserFacingError(f"{source} has no rp_im folder (MedSeg's volumes).")
    candidates = []
    for path in nifti_files(images):
        stem = nifti_stem(path)
        candidates.append(
            Candidate(
                f"medseg_{safe_name(stem)}",
                path,
                COVID,
                infection_mask=nifti_named(masks, stem) if masks else None,
                lung_mask=nifti_named(lungs, stem) if lungs else None,
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
    return LayoutScan(candidates, notes)


def _scan_stoic2021(source: Path, label: str | None) -> LayoutScan:
    """RT-PCR-positive patients (probCOVID=1) as COVID-19; negatives are left out."""
    folder, reference = source / "data" / "mha", source / "metadata" / "reference.csv"
    if not folder.is_dir() or not reference.is_file():
        raise UserFacingError(
            f"{source} needs data/mha/ and metadata/reference.csv (STOIC2021's layout)."
        )
    simpleitk()  # refuse before any work when it is missing
    prob_covid = _stoic_reference(reference)
    scan = LayoutScan([])
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
                Candidate(f"stoic_{safe_name(patient)}", path, COVID, metaimage=True)
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


def _scan_covid19_20(source: Path, label: str | None) -> LayoutScan:
    """Every ``*_ct.nii.gz`` (Train and Validation) as COVID-19, its ``*_seg`` as infection."""
    candidates = []
    for path in sorted(
        p for p in source.rglob("*_ct.nii*") if is_nifti_path(p) and not hidden(p, source)
    ):
        base = nifti_stem(path)[: -len("_ct")]
        candidates.append(
            Candidate(
                safe_name(base), path, COVID, infection_mask=nifti_named(path.parent, f"{base}_seg")
            )
        )
    notes = [
        "All COVID-19-20 challenge cases are COVID-19 patients; validation cases come without lesion masks."
    ]
    return LayoutScan(candidates, notes)


def _is_covid19_20_image(path: Path) -> bool:
    return (
        path.name.startswith("volume-covid19-")
        and nifti_stem(path).endswith("_ct")
        and is_nifti_path(path)
    )


def _scan_folder(source: Path, label: str | None) -> LayoutScan:
    """The user's own scans, all of class ``label``; masks found by name next to them.

    A scan is a NIfTI file or a folder holding a DICOM series. Its infection mask is
    ``<name>_mask``, ``<name>_seg`` or ``<name>_infection`` beside it, or ``<name>`` in a
    ``masks``/``infections`` folder beside it or beside its own folder; lung masks likewise
    with ``_lung``/``_lungs``/``_lung_mask`` and ``lungs``/``lung_masks``.
    """
    assert label is not None  # run._check_options demands it
    candidates, names = [], set()
    for item in folder_items(source):
        stem = nifti_stem(item) if item.is_file() else item.name
        where = item.parent.relative_to(source).parts if item != source else ()
        candidates.append(
            Candidate(
                unique_name(safe_name("_".join((*where, stem))), names),
                item,
                label,
                infection_mask=match_mask(
                    item, stem, source, INFECTION_SUFFIXES, INFECTION_FOLDERS
                ),
                lung_mask=match_mask(item, stem, source, LUNG_SUFFIXES, LUNG_FOLDERS),
            )
        )
    notes = [f"Every scan in the folder is labelled {label}, as requested."]
    return LayoutScan(candidates, notes)


# The scanner of each layout: (dataset folder, the folder layout's label) -> what it holds.
SCANNERS: dict[str, Callable[[Path, str | None], LayoutScan]] = {
    "mosmeddata": _scan_mosmeddata,
    "covid19-ct-seg": _scan_covid19_ct_seg,
    "medseg": _scan_medseg,
    "stoic2021": _scan_stoic2021,
    "covid19-20": _scan_covid19_20,
    "folder": _scan_folder,
}
