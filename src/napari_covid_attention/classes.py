"""The diagnosis classes, CT lesion types and manifest columns, shared by data, models, training and the GUI."""

COVID, CAP = "COVID-19", "CAP"
CLASS_NAMES = (COVID, CAP)  # label index 0 = COVID-19 (the positive class), 1 = CAP

# Scans without pneumonia: a manifest label (segmenter negatives, never shown to the
# classifier), a finding an annotator can confirm, and the headline of such a diagnosis.
NO_PNEUMONIA = "no pneumonia"
CONFIRMABLE_FINDINGS = (COVID, CAP, NO_PNEUMONIA)
NO_PNEUMONIA_DETECTED = "No pneumonia detected"

# CT signs of pneumonia (the optional lesion head's outputs; LA-DNN, seed 003).
LESION_TYPES = ("ground_glass", "consolidation", "crazy_paving", "air_bronchogram", "septal_thickening")

# Columns of a manifest CSV (README "Data and models"), in the order written.
MANIFEST_COLUMNS = ("image", "label", "infection_mask", "lung_mask", *LESION_TYPES, "infection_fraction")
