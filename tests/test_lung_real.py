"""Lung mask on the real chest CT in ../shared/data (skipped when absent): plausible lung
volumes with both lungs, a consolidation painted against the pleura kept inside, and no
chest-wall fat in the mask of the 30-slice series."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA
from scipy import ndimage
from skimage.morphology import convex_hull_image
from test_lung import paint_consolidation

from napari_covid_attention.io import load_ct
from napari_covid_attention.preprocess.lung import LEFT_LUNG, RIGHT_LUNG, lung_mask, lung_mask_of

REAL_CT = SHARED_DATA / "real-chest-ct"
SERIES = SHARED_DATA / "chest-ct-dicom-lung-pet-ct-dx"

# Scan -> (path, plausible total lung volume in litres). Adults at inspiration hold about
# 2.5-8 L; the 30-slice series (8 mm slices) gets a lower bound of 2 L.
SCANS = {
    "lidc-idri-0001": (REAL_CT / "lidc-idri-0001.nii.gz", (2.5, 8.0)),
    "lidc-idri-0002": (REAL_CT / "lidc-idri-0002.nii.gz", (2.5, 8.0)),
    "lidc-idri-0003": (REAL_CT / "lidc-idri-0003.nii.gz", (2.5, 8.0)),
    "lung-dx-a0001": (REAL_CT / "lung-dx-a0001.nii.gz", (2.5, 8.0)),
    "chest-ct-dicom-lung-pet-ct-dx": (SERIES, (2.0, 8.0)),
}


@pytest.fixture(scope="module", params=list(SCANS))
def scan(request):
    """(name, volume, lung mask, litres range) of one real scan; loaded once for its tests."""
    path, litres = SCANS[request.param]
    if not path.exists():
        pytest.skip(f"real chest CT not found at {path}")
    volume = load_ct(path)
    return request.param, volume, lung_mask_of(volume), litres


def test_lung_volumes_are_plausible(scan):
    name, volume, mask, (low, high) = scan
    assert mask.shape == volume.shape and set(np.unique(mask)) == {0, RIGHT_LUNG, LEFT_LUNG}
    litres = [np.count_nonzero(mask == lung) * volume.voxel_volume_ml / 1000 for lung in (RIGHT_LUNG, LEFT_LUNG)]
    total = sum(litres)
    print(f"{name}: right {litres[0]:.2f} L, left {litres[1]:.2f} L, total {total:.2f} L")
    assert low <= total <= high
    assert min(litres) >= 0.8  # both lungs there, neither lost to the other or to the body
    assert 0.35 <= litres[0] / total <= 0.65  # the right lung is usually ~53 %
    x = np.arange(volume.shape[2])
    centre_x = [np.dot(np.count_nonzero(mask == lung, axis=(0, 1)), x) / np.count_nonzero(mask == lung) for lung in (RIGHT_LUNG, LEFT_LUNG)]
    assert centre_x[0] < volume.shape[2] / 2 < centre_x[1]  # patient's right at small x


def test_painted_consolidation_stays_inside(scan):
    """A 2.5 cm deep consolidation (HU 30) against the costal pleura in the lower-middle of
    each lung, aerated lung above and below: >= 95 % of it inside that lung's mask.

    Before lines tilted along the pleura were added to the z bridging, 85-98 % was inside
    (the strip along the sloping wall was lost); what is still left out is the 1-3 mm rim
    where the pleura bulges outwards between ribs.
    """
    name, volume, mask, _ = scan
    hu, lesions = volume.hu, []
    for side in (RIGHT_LUNG, LEFT_LUNG):
        hu, lesion = paint_consolidation(hu, mask, volume.spacing_mm, side)
        lesions.append(lesion)
    painted_mask = lung_mask(hu, volume.spacing_mm)
    for side, lesion in zip((RIGHT_LUNG, LEFT_LUNG), lesions, strict=True):
        inside = np.count_nonzero(lesion & (painted_mask == side)) / np.count_nonzero(lesion)
        print(f"{name} lung {side}: {np.count_nonzero(lesion) * volume.voxel_volume_ml:.0f} mL consolidation, {inside:.1%} inside")
        assert inside >= 0.95
    # The lesions change the mask only where they are.
    elsewhere = ~ndimage.binary_dilation(lesions[0] | lesions[1], iterations=3)
    assert np.count_nonzero((painted_mask != mask) & elsewhere) <= 0.001 * np.count_nonzero(mask)


def _fat_away_from_air(volume, mask: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask voxels of slice z that are fat (-150..-50 HU) more than 3 mm from the slice's
    aerated lung: those on the chest-wall side (outside the aerated lung's convex hull,
    where hilar and mediastinal fat the filling takes in on purpose does not lie), and
    those on the mask's edge (where the mask runs through fat instead of along the pleura)."""
    in_mask = mask[z] > 0
    aerated = in_mask & (volume.hu[z] < -400)
    if np.count_nonzero(aerated) < 10:
        return np.zeros_like(in_mask), np.zeros_like(in_mask)
    far = ndimage.distance_transform_edt(~aerated, sampling=volume.spacing_mm[1:]) > 3.0
    fat = in_mask & far & (volume.hu[z] >= -150) & (volume.hu[z] <= -50)
    edge = in_mask & ~ndimage.binary_erosion(in_mask, border_value=1)
    return fat & ~convex_hull_image(aerated), fat & edge


def test_series_mask_keeps_out_of_chest_wall_fat(chest_series_dir):
    """The reported leak into right anterior chest-wall fat around slice 20 of the series.

    No mask voxel on any slice is chest-wall fat, and on slices 19-21 the mask's edge runs
    through fat for at most a few voxels (3-5 there; the pleura runs through the partial-
    volume band around air, not through fat). Lines bridging along z tilted by up to 0.9
    without the safeguards of ``_bridge`` put 11 chest-wall fat voxels on slice 21 and
    25-32 fat edge voxels on slices 20-21 (right anterior chest wall, pericardial fat).
    """
    volume = load_ct(chest_series_dir)
    mask = lung_mask_of(volume)
    for z in range(volume.shape[0]):
        chest_wall, edge = _fat_away_from_air(volume, mask, z)
        assert not chest_wall.any(), f"slice {z}: {np.count_nonzero(chest_wall)} chest-wall fat voxels in the lung mask"
        if z in (19, 20, 21):
            assert np.count_nonzero(edge) <= 10, f"slice {z}: the mask's edge runs through fat ({np.count_nonzero(edge)} voxels)"
