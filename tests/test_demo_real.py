"""The shipped demo bundle on the real chest CT of ../shared/data (none has pneumonia;
skipped when absent): "No pneumonia detected" on each, infection only near the lungs, and
at most 0.5 % of the lungs (issue 12), except where it is known not to be yet."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATA
from scipy import ndimage

from napari_covid_attention.classes import NO_PNEUMONIA_DETECTED
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.io import load_ct
from napari_covid_attention.io.geometry import spacing_mm
from napari_covid_attention.models.bundle import load_bundle
from napari_covid_attention.models.registry import BUILTIN_DIR, DEMO_BUNDLE

REAL_CT = SHARED_DATA / "real-chest-ct"
TUMOUR = "lung-dx-a0001: its left upper lobe adenocarcinoma and the opacity around it are marked (1.45 % in 2.1.0)"
SCANS = [
    pytest.param(REAL_CT / "lidc-idri-0001.nii.gz", True, id="lidc-idri-0001"),
    pytest.param(REAL_CT / "lidc-idri-0002.nii.gz", True, id="lidc-idri-0002"),
    pytest.param(REAL_CT / "lidc-idri-0003.nii.gz", True, id="lidc-idri-0003"),
    pytest.param(REAL_CT / "lung-dx-a0001.nii.gz", False, id="lung-dx-a0001"),
    pytest.param(SHARED_DATA / "chest-ct-dicom-lung-pet-ct-dx", True, id="chest-ct-dicom-lung-pet-ct-dx"),
]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUILTIN_DIR / DEMO_BUNDLE)


@pytest.mark.parametrize(("path", "within_half_percent"), SCANS)
def test_the_demo_bundle_finds_no_pneumonia_on_real_scans_without_it(bundle, path, within_half_percent, request):
    if not path.exists():
        pytest.skip(f"real chest CT not found at {path}")
    volume = load_ct(path)
    d = diagnose(volume, bundle, "cpu")
    assert d.finding == NO_PNEUMONIA_DETECTED
    assert not d.pneumonia_detected
    # Infection only in the lungs plus the pleural margin: nothing further than 6 mm away.
    lungs = d.lung_mask > 0
    if d.infection_mask.any():
        distance_mm = ndimage.distance_transform_edt(~lungs, sampling=spacing_mm(volume.affine))
        assert float(distance_mm[d.infection_mask > 0].max()) <= 6.0
    if not within_half_percent:
        request.applymarker(pytest.mark.xfail(strict=True, reason=TUMOUR))
    assert d.infection_percent <= 0.5  # NaN fails too
