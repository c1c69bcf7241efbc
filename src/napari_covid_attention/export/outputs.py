"""``dicom_outputs``: the one call the CLI makes to write a diagnosis as DICOM (SEG + SR) and a report page."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from napari_covid_attention.atomic import atomic_path
from napari_covid_attention.export.seg import segmentation_dataset
from napari_covid_attention.export.sr import corrected, diagnosis_numbers, measurement_report

if TYPE_CHECKING:
    from napari_covid_attention.diagnosis import Diagnosis
    from napari_covid_attention.io.volume import CTVolume


def dicom_outputs(
    source_datasets: Sequence[Dataset],
    diagnosis: Diagnosis,
    out_dir: str | os.PathLike,
    *,
    name: str = "covid-attention",
    volume: CTVolume | None = None,
    lung_mask: np.ndarray | None = None,
    infection_mask: np.ndarray | None = None,
    annotator: str | None = None,
    mask_version: int | None = None,
) -> list[Path]:
    """Write ``<name>.seg.dcm``, ``<name>.sr.dcm`` and, given ``volume``, ``<name>.report.png`` / ``.pdf``.

    Args:
        source_datasets: the CT series' images (pydicom headers suffice, any order), e.g.
            ``read_source_datasets(path, volume.metadata.get("series_key"))`` or instances
            retrieved over DICOMweb.
        diagnosis: ``diagnose(volume, bundle)`` of that series; its masks are on
            ``diagnosis.scan_affine`` (the ``load_ct`` grid).
        out_dir: folder to write into (created if needed); files are written atomically.
        volume: the CT the diagnosis was made on; needed only for the PNG/PDF report.
        lung_mask, infection_mask: corrected masks (same grid) replacing the model's; volumes,
            percent and pneumonia decision are recomputed from them, probabilities stay.
        annotator, mask_version: who corrected the masks and the annotation store's version
            id (``Version.id``); they name the SEG series and make its UIDs.

    Returns:
        The paths written: SEG, SR, then PNG and PDF when ``volume`` is given. Pushing the
        same (series, mask version) again gives the same Series/SOP Instance UIDs.

    Raises:
        ExportError: (one sentence) the source lacks UIDs or geometry, or the masks are
            not on its grid.
    """
    edited = lung_mask is not None or infection_mask is not None
    if edited:
        diagnosis = corrected(
            diagnosis,
            diagnosis.lung_mask if lung_mask is None else lung_mask,
            diagnosis.infection_mask if infection_mask is None else infection_mask,
        )
    algorithm = (diagnosis.bundle_name, diagnosis.bundle_version)
    seg = segmentation_dataset(
        source_datasets,
        diagnosis.lung_mask,
        diagnosis.infection_mask,
        algorithm=algorithm,
        annotator=annotator,
        mask_version=mask_version,
        mask_affine=diagnosis.scan_affine,
    )
    sr = measurement_report(source_datasets, seg, diagnosis_numbers(diagnosis), annotator=annotator)
    out = Path(out_dir)
    paths = [out / f"{name}.seg.dcm", out / f"{name}.sr.dcm"]
    for dataset, path in zip((seg, sr), paths, strict=True):
        with atomic_path(path) as temp:
            dataset.save_as(temp, enforce_file_format=True)
    if volume is not None:
        from napari_covid_attention.export.report_png import write_report

        paths += write_report(volume, diagnosis, out / f"{name}.report.png", annotator=annotator, mask_version=mask_version)
    return paths
