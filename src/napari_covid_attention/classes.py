"""The diagnosis classes and CT lesion types, shared by data, models, training and the GUI."""

COVID, CAP = "COVID-19", "CAP"
CLASS_NAMES = (COVID, CAP)  # label index 0 = COVID-19 (the positive class), 1 = CAP

# CT signs of pneumonia (the optional lesion head's outputs; LA-DNN, seed 003).
LESION_TYPES = ("ground_glass", "consolidation", "crazy_paving", "air_bronchogram", "septal_thickening")
