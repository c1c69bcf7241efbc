"""DICOM-SEG of the lung and infection masks, on the source CT's own frames.

One BINARY Segmentation with three overlapping segments (1 right lung, 2 left lung,
3 infection) whose frames are the source slices, each referencing its source image, so a
PACS viewer overlays it on the CT it came from. Model output is AUTOMATIC with the bundle
as the algorithm; a corrected mask is SEMIAUTOMATIC (or MANUAL without a model) with the
annotator and the mask version in ContentCreatorName / SeriesDescription. UIDs are
derived from the source series and the mask version, so pushing the same version twice
replaces rather than duplicates it.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from napari_covid_attention import __version__
from napari_covid_attention.export import codes
from napari_covid_attention.export.source import (
    ExportError,
    copied_names_quiet,
    on_source_grid,
    source_series,
)
from napari_covid_attention.export.uids import derived_uid
from napari_covid_attention.preprocess.lung import LEFT_LUNG, RIGHT_LUNG

SOFTWARE = "napari-covid-attention"
DEFAULT_SEG_SERIES_NUMBER = 9100  # + mask version
_COLORS_RGB = {
    codes.RIGHT_LUNG_SEGMENT: (64, 160, 255),
    codes.LEFT_LUNG_SEGMENT: (128, 96, 255),
    codes.INFECTION_SEGMENT: (255, 64, 32),
}


def segmentation_dataset(
    source_datasets: Sequence[Dataset],
    lung_mask: np.ndarray,
    infection_mask: np.ndarray,
    *,
    algorithm: tuple[str, str] | None,
    annotator: str | None = None,
    mask_version: int | None = None,
    mask_affine: np.ndarray | None = None,
    series_number: int | None = None,
) -> hd.seg.Segmentation:
    """The DICOM-SEG (a pydicom Dataset) of ``lung_mask`` (1 right, 2 left) and ``infection_mask`` (0/1).

    Args:
        source_datasets: the CT series' images (headers suffice), in any order.
        lung_mask, infection_mask: (z, y, x) on ``mask_affine``'s grid; None means the grid
            ``load_ct`` gives for this series (``CTVolume.affine``).
        algorithm: (bundle name, bundle version) of the model that made (or started) the
            masks; None for fully manual masks.
        annotator: who corrected the masks (None: unedited model output).
        mask_version: the annotation store's version id of corrected masks.
        series_number: of the new series; default 9100 + mask version.

    Raises:
        ExportError: the source lacks UIDs or geometry, or the masks are not on its grid.
    """
    if algorithm is None and not annotator:
        raise ExportError("A segmentation needs its algorithm or its annotator: neither was given.")
    source = source_series(list(source_datasets))
    lungs = on_source_grid(_checked(lung_mask, "lung", (0, RIGHT_LUNG, LEFT_LUNG)), mask_affine, source)
    infection = on_source_grid(_checked(infection_mask, "infection", (0, 1)), mask_affine, source)
    stacked = np.stack([lungs == RIGHT_LUNG, lungs == LEFT_LUNG, infection > 0], axis=-1).astype(np.uint8)

    series_uid = seg_series_uid(source.series_uid, algorithm, mask_version)
    name = annotator_name(annotator)
    who = clean_annotator(annotator)
    with copied_names_quiet():
        seg = hd.seg.Segmentation(
            source_images=source.datasets,
            pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(source.series_uid, algorithm, who),
            series_instance_uid=series_uid,
            series_number=series_number or DEFAULT_SEG_SERIES_NUMBER + (mask_version or 0),
            sop_instance_uid=derived_uid("covid-attention-seg-instance", series_uid),
            instance_number=1,
            manufacturer=SOFTWARE,
            manufacturer_model_name=SOFTWARE,
            software_versions=__version__,
            device_serial_number="0",
            content_description=_description(algorithm, who, mask_version),
            content_creator_name=name,
            content_label="CORRECTED" if who or mask_version is not None else "AI_MASKS",
            omit_empty_frames=False,  # every source slice has its frame: the grid reads back whole
        )
    seg.SeriesDescription = _description(algorithm, who, mask_version)
    return seg


def seg_series_uid(source_series_uid: str, algorithm: tuple[str, str] | None, mask_version: int | None) -> str:
    """The SEG's SeriesInstanceUID: one per (source series, mask version or model)."""
    if mask_version is not None:
        key = f"version:{int(mask_version)}"
    else:
        key = f"model:{algorithm[0]}:{algorithm[1]}" if algorithm else "manual"
    return derived_uid("covid-attention-seg-series", source_series_uid, key)


def _checked(mask: np.ndarray, what: str, allowed: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.size and not np.isin(mask, allowed).all():
        values = ", ".join(str(v) for v in allowed)
        raise ExportError(f"The {what} mask holds values other than {values}.")
    return mask


def annotator_name(annotator: str | None) -> str | None:
    """The annotator as a PN value: a single-component name gets the trailing caret PS3.5
    asks for ("Dr X" -> "Dr X^"); no backslash or control characters; at most 64 characters."""
    cleaned = clean_annotator(annotator)
    if not cleaned:
        return None
    return cleaned if "^" in cleaned else f"{cleaned[:63]}^"


def clean_annotator(annotator: str | None) -> str | None:
    """The annotator's name as text for descriptions: printable, no DICOM separators."""
    if not annotator:
        return None
    cleaned = "".join(c for c in annotator if c.isprintable() and c not in "\\=").strip()
    return cleaned[:64] or None


def _description(algorithm: tuple[str, str] | None, annotator: str | None, mask_version: int | None) -> str:
    """SeriesDescription / ContentDescription (LO: at most 64 characters)."""
    if annotator or mask_version is not None:
        version = f" v{mask_version}" if mask_version is not None else ""
        who = f" ({annotator})" if annotator else ""
        text = f"COVID-19 attention infection{version}{who}"
    else:
        text = f"COVID-19 attention masks ({algorithm[0]} {algorithm[1]})" if algorithm else "COVID-19 attention masks"
    return text[:64]


def _segment_descriptions(
    source_uid: str, algorithm: tuple[str, str] | None, annotator: str | None
) -> list[hd.seg.SegmentDescription]:
    if algorithm is None:
        kind, identification = hd.seg.SegmentAlgorithmTypeValues.MANUAL, None
    else:
        kind = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if annotator else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        identification = hd.AlgorithmIdentificationSequence(
            name=algorithm[0][:64],
            family=dicom_codes.cid7162.ArtificialIntelligence,
            version=algorithm[1][:64],
            source=SOFTWARE,
        )
    out = []
    for number, (label, category, kind_code) in codes.SEGMENTS.items():
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=category,
                segmented_property_type=kind_code,
                algorithm_type=kind,
                algorithm_identification=identification,
                # Same finding, same tracking UID across mask versions of one series.
                tracking_uid=derived_uid("covid-attention-segment", source_uid, number),
                tracking_id=label,
                anatomic_regions=[codes.LUNG] if number == codes.INFECTION_SEGMENT else None,
                display_color=hd.color.CIELabColor.from_rgb(*_COLORS_RGB[number]),
            )
        )
    return out
