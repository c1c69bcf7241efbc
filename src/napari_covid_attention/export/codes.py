"""Coded concepts of the SEG and SR exports, in one place so writer and reader agree.

Standard codes (SNOMED CT "SCT", DICOM "DCM", UCUM, LOINC "LN") wherever one exists;
the few concepts with none (a model's class probability, infection share of the lungs)
use a private scheme, ``99COVIDATT`` (DICOM reserves the ``99`` prefix for private
coding schemes).
"""

from __future__ import annotations

import re

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99COVIDATT"

# Segments: number -> (label, property category, property type).
RIGHT_LUNG_SEGMENT, LEFT_LUNG_SEGMENT, INFECTION_SEGMENT = 1, 2, 3
RIGHT_LUNG = Code("3341006", "SCT", "Right lung")
LEFT_LUNG = Code("44029006", "SCT", "Left lung")
LUNG = codes.SCT.Lung  # 39607008
LESION = codes.SCT.Lesion  # 52988006
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # 91723000
ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure  # 49755003
SEGMENTS: dict[int, tuple[str, Code, Code]] = {
    RIGHT_LUNG_SEGMENT: ("Right lung", ANATOMICAL_STRUCTURE, RIGHT_LUNG),
    LEFT_LUNG_SEGMENT: ("Left lung", ANATOMICAL_STRUCTURE, LEFT_LUNG),
    INFECTION_SEGMENT: ("Infection", ABNORMAL_STRUCTURE, LESION),
}

# SR concepts.
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
COVID19_DISEASE = Code("840539006", "SCT", "COVID-19")
CAP_DISEASE = Code("385093006", "SCT", "Community acquired pneumonia")
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000
VOLUME = codes.SCT.Volume  # 118565006
CT_CHEST = Code("24627-2", "LN", "CT Chest")
INFECTION_PERCENT = Code("INFPCTLUNG", PRIVATE_SCHEME, "Infection percent of lung volume")
MILLILITER = Code("mL", "UCUM", "milliliter")
PERCENT = Code("%", "UCUM", "percent")
NO_UNITS = Code("1", "UCUM", "no units")

# Diseases the classifier's classes name, for the SR's "Finding".
CLASS_DISEASES = {"COVID-19": COVID19_DISEASE, "CAP": CAP_DISEASE}


def probability_code(class_name: str) -> Code:
    """Private concept "Probability of <class>" (code value: SH, at most 16 characters)."""
    value = "P-" + re.sub(r"[^A-Z0-9]", "", class_name.upper())[:14]
    return Code(value, PRIVATE_SCHEME, f"Probability of {class_name}"[:64])


def disease_code(class_name: str) -> Code:
    """The disease a class names: SNOMED CT for COVID-19 and CAP, else a private concept."""
    if class_name in CLASS_DISEASES:
        return CLASS_DISEASES[class_name]
    value = "DX-" + re.sub(r"[^A-Z0-9]", "", class_name.upper())[:13]
    return Code(value, PRIVATE_SCHEME, class_name[:64])
