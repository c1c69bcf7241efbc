"""Reading our TID 1500 report back into the numbers it was written from (for checks and tools)."""

from __future__ import annotations

import os

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from napari_covid_attention.classes import NO_PNEUMONIA_DETECTED
from napari_covid_attention.export import codes
from napari_covid_attention.export.source import ExportError

_PROBABILITY_PREFIX = "Probability of "


def read_measurement_report(path_or_dataset: str | os.PathLike | Dataset) -> dict:
    """The numbers of a report :func:`~.sr.measurement_report` wrote, as :func:`~.sr.diagnosis_numbers` names them.

    Also ``infection_segment``: (SEG SOPInstanceUID, segment number) the infection
    measurements reference.
    """
    dataset = path_or_dataset if isinstance(path_or_dataset, Dataset) else pydicom.dcmread(os.fspath(path_or_dataset))
    try:
        sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
        report = sr.content[0]
        report = hd.sr.MeasurementReport.from_sequence([report])
        (infection,) = report.get_volumetric_roi_measurement_groups()
        (scan,) = report.get_image_measurement_groups()
    except (AttributeError, ValueError, TypeError, IndexError) as exc:
        raise ExportError(f"The SR is not a COVID-19 attention measurement report ({exc}).") from None
    volume = _code(codes.VOLUME)
    probabilities = {
        m.name.meaning[len(_PROBABILITY_PREFIX) :]: m.value
        for m in scan.get_measurements()
        if m.name.scheme_designator == codes.PRIVATE_SCHEME and m.name.meaning.startswith(_PROBABILITY_PREFIX)
    }
    pneumonia = scan.get_qualitative_evaluations(name=_code(codes.PNEUMONIA))[0].value
    finding = scan.finding_type
    diseases = {code.value: name for name, code in codes.CLASS_DISEASES.items()}
    segment = infection.referenced_segment
    return {
        "infection_volume_ml": infection.get_measurements(name=volume)[0].value,
        "infection_percent": infection.get_measurements(name=_code(codes.INFECTION_PERCENT))[0].value,
        "lung_volume_ml": scan.get_measurements(name=volume)[0].value,
        "probabilities": probabilities,
        "pneumonia_detected": pneumonia.value == codes.PRESENT.value,
        "finding": diseases.get(finding.value, finding.meaning) if finding is not None else NO_PNEUMONIA_DETECTED,
        "algorithm": _algorithm(infection),
        "infection_segment": (segment.referenced_sop_instance_uid, segment.referenced_segment_numbers[0]) if segment else None,
    }


def _code(code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept.from_code(code)


def _algorithm(group) -> tuple[str, str] | None:
    """(name, version) of the group's Algorithm Identification (TID 4019), if any."""
    texts = {}
    for item in group[0].ContentSequence:
        concept = item.ConceptNameCodeSequence[0]
        if item.ValueType == "TEXT":
            texts[(concept.CodeValue, concept.CodingSchemeDesignator)] = str(item.TextValue)
    keys = [(c.value, c.scheme_designator) for c in (dicom_codes.DCM.AlgorithmName, dicom_codes.DCM.AlgorithmVersion)]
    return (texts[keys[0]], texts[keys[1]]) if all(k in texts for k in keys) else None
