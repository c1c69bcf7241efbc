"""TID 1500 Measurement Report (Comprehensive 3D SR) of one diagnosis.

What a PACS or a downstream tool can query without our software: the infection volume
and its share of the lungs, measured on the SEG's infection segment (a volumetric ROI
that references it), and, for the scan as a whole, the lung volume, the model's class
probabilities and the pneumonia decision. Every number is written as a double
(FloatingPointValue) next to its 16-character decimal string, so it reads back exactly
equal to the Diagnosis'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from napari_covid_attention import __version__
from napari_covid_attention.export import codes
from napari_covid_attention.export.seg import SOFTWARE, annotator_name
from napari_covid_attention.export.source import ExportError, copied_names_quiet, source_series
from napari_covid_attention.export.uids import derived_uid
from napari_covid_attention.io import geometry

SR_SERIES_NUMBER_OFFSET = 100  # SR series number = SEG series number + this
NUMBER_KEYS = ("infection_volume_ml", "lung_volume_ml", "infection_percent", "probabilities", "pneumonia_detected")


def diagnosis_numbers(diagnosis) -> dict:
    """The numbers an SR carries, from a ``Diagnosis`` (use :func:`corrected` first for edited masks).

    Keys: infection_volume_ml, lung_volume_ml, infection_percent, probabilities
    ({class: p}), pneumonia_detected, finding, algorithm ((name, version)).
    """
    return {
        "infection_volume_ml": float(diagnosis.infection_volume_ml),
        "lung_volume_ml": float(diagnosis.lung_volume_ml),
        "infection_percent": float(diagnosis.infection_percent),
        "probabilities": {str(k): float(v) for k, v in diagnosis.probabilities.items()},
        "pneumonia_detected": bool(diagnosis.pneumonia_detected),
        "finding": str(diagnosis.finding),
        "algorithm": (str(diagnosis.bundle_name), str(diagnosis.bundle_version)),
    }


def corrected(diagnosis, lung_mask: np.ndarray, infection_mask: np.ndarray):
    """The diagnosis with corrected masks: volumes, percent and decision follow the masks
    (counted as ``diagnose`` counts them); the class probabilities stay the model's."""
    voxel_ml = geometry.voxel_volume_ml(diagnosis.scan_affine)
    return dataclasses.replace(
        diagnosis,
        lung_mask=lung_mask,
        infection_mask=infection_mask,
        lung_volume_ml=float(np.count_nonzero(lung_mask)) * voxel_ml,
        infection_volume_ml=float(np.count_nonzero(infection_mask)) * voxel_ml,
    )


def measurement_report(
    source_datasets: Sequence[Dataset],
    seg_dataset: Dataset,
    diagnosis_numbers: dict,
    *,
    annotator: str | None = None,
    series_number: int | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The SR (a pydicom Dataset) of ``diagnosis_numbers`` (see :func:`diagnosis_numbers`).

    Its UIDs derive from the SEG's, so the same SEG version always gets the same SR.
    ``annotator``: who corrected the masks, recorded as a person observer.
    """
    missing = [k for k in NUMBER_KEYS if k not in diagnosis_numbers]
    if missing:
        raise ExportError(f"The report numbers lack {', '.join(missing)}.")
    source = source_series(list(source_datasets))
    numbers = diagnosis_numbers
    name, version = numbers.get("algorithm") or ("unknown", "unknown")
    algorithm = hd.sr.AlgorithmIdentification(name=str(name)[:64], version=str(version)[:64])
    groups = [
        _infection_group(seg_dataset, source.series_uid, numbers, algorithm),
        _scan_group(source.series_uid, numbers, algorithm),
    ]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(annotator),
        procedure_reported=codes.CT_CHEST,
        imaging_measurements=groups,
    )
    series_uid = derived_uid("covid-attention-sr-series", seg_dataset.SeriesInstanceUID)
    with copied_names_quiet():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*source.datasets, seg_dataset],
            content=report,
            series_instance_uid=series_uid,
            series_number=series_number or int(seg_dataset.SeriesNumber) + SR_SERIES_NUMBER_OFFSET,
            sop_instance_uid=derived_uid("covid-attention-sr-instance", series_uid),
            instance_number=1,
            manufacturer=SOFTWARE,
            is_complete=True,
        )
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    sr.SeriesDescription = f"COVID-19 attention measurements ({seg_dataset.get('SeriesDescription', '')})"[:64]
    return sr


def _private_scheme() -> Dataset:
    """SOP Common's declaration of the private coding scheme the report uses."""
    item = Dataset()
    item.CodingSchemeDesignator = codes.PRIVATE_SCHEME
    item.CodingSchemeName = "napari-covid-attention private concepts"
    item.CodingSchemeResponsibleOrganization = SOFTWARE
    return item


def _num(name, value: float, unit, algorithm) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)


def _infection_group(seg: Dataset, source_uid: str, numbers: dict, algorithm) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """Measurements of the infection segment, which the group references."""
    segment = next(s for s in seg.SegmentSequence if int(s.SegmentNumber) == codes.INFECTION_SEGMENT)
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.TrackingUID, identifier="Infection"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=codes.INFECTION_SEGMENT,
            source_series=hd.sr.SourceSeriesForSegmentation(source_uid),
        ),
        finding_type=codes.LESION,
        finding_category=codes.ABNORMAL_STRUCTURE,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        algorithm_id=algorithm,
        measurements=[
            _num(codes.VOLUME, numbers["infection_volume_ml"], codes.MILLILITER, algorithm),
            _num(codes.INFECTION_PERCENT, numbers["infection_percent"], codes.PERCENT, algorithm),
        ],
    )


def _scan_group(source_uid: str, numbers: dict, algorithm) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Whole-scan results: lung volume, class probabilities, pneumonia present/absent, its likely cause."""
    measurements = [_num(codes.VOLUME, numbers["lung_volume_ml"], codes.MILLILITER, algorithm)]
    measurements += [
        _num(codes.probability_code(cls), p, codes.NO_UNITS, algorithm) for cls, p in numbers["probabilities"].items()
    ]
    evaluations = [hd.sr.QualitativeEvaluation(codes.PNEUMONIA, codes.PRESENT if numbers["pneumonia_detected"] else codes.ABSENT)]
    finding = numbers.get("finding")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("covid-attention-scan-results", source_uid), identifier="Scan"),
        # TID 1501 "Finding": the more likely cause, only when pneumonia was detected.
        finding_type=codes.disease_code(finding) if numbers["pneumonia_detected"] and finding else None,
        finding_sites=[hd.sr.FindingSite(codes.LUNG)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def _observation_context(annotator: str | None) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("covid-attention-software", SOFTWARE),
            name=SOFTWARE,
            manufacturer_name=SOFTWARE,
            model_name=f"{SOFTWARE} {__version__}"[:64],
        ),
    )
    person = None
    name = annotator_name(annotator)
    if name:
        person = hd.sr.ObserverContext(
            observer_type=dicom_codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=name),
        )
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)
