"""Reading and writing chest CT scans (DICOM, NIfTI) as :class:`CTVolume`."""

from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.nifti import load_nifti, save_nifti
from napari_covid_attention.io.volume import AIR_HU, CTLoadError, CTVolume

__all__ = ["AIR_HU", "CTLoadError", "CTVolume", "load_ct", "load_nifti", "save_nifti"]
