"""Lesions inserted into real chest CT: exact masks, inside the lungs, right densities, reproducible."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest

from napari_covid_attention.classes import CAP, COVID, NO_PNEUMONIA
from napari_covid_attention.data.host_annotations import box_avoid_mask, lidc_avoid_mask
from napari_covid_attention.data.lesion_insertion import (
    IDENTITY_LOOK,
    generate_inserted_case,
    load_host,
    make_host,
    write_inserted_dataset,
)
from napari_covid_attention.data.synthetic import generate_phantom


@pytest.fixture(scope="module")
def host():
    """A healthy-looking host: a phantom's anatomy, with its lesions left out of the way.

    The phantom's own (tiny) infection is avoided, so the host is healthy where lesions go.
    """
    phantom = generate_phantom(5, COVID, shape=(48, 128, 128), infection_fraction=0.003)
    return make_host("phantom-5", phantom.volume, avoid=phantom.infection_mask > 0)


def test_lesions_are_exact_inside_the_lungs_and_away_from_avoided_regions(host):
    case = generate_inserted_case(host, 11, COVID, infection_fraction=0.06, look=IDENTITY_LOOK)
    infection = case.infection_mask > 0
    assert infection.any()
    assert not (infection & (case.lung_mask == 0)).any()
    assert not (infection & host.avoid).any()
    # Exact: outside the lesions (and the one-voxel blur of their edge) the host is untouched.
    changed = np.abs(case.volume.hu.astype(float) - np.rint(host.hu)) > 1
    from scipy import ndimage

    near = ndimage.binary_dilation(infection, iterations=3)
    assert not (changed & ~near).any()
    assert changed[infection].mean() > 0.8
    assert case.infection_fraction == pytest.approx(0.06, rel=0.25)


def test_ground_glass_raises_hu_partly_and_consolidation_is_dense(host):
    covid = generate_inserted_case(host, 3, COVID, infection_fraction=0.08, look=IDENTITY_LOOK)
    cap = generate_inserted_case(host, 4, CAP, infection_fraction=0.04, look=IDENTITY_LOOK)
    covid_hu = covid.volume.hu[covid.infection_mask > 0].astype(float)
    cap_hu = cap.volume.hu[cap.infection_mask > 0].astype(float)
    host_lung = host.hu[host.lungs > 0]
    # Ground glass: denser than aerated lung, well below soft tissue.
    assert np.median(host_lung) < -750
    if covid.lesion_flags["ground_glass"] and not covid.lesion_flags["consolidation"]:
        assert -800 < np.median(covid_hu) < -300
    assert np.median(covid_hu) > np.median(host_lung) + 150
    # Consolidation: near soft tissue.
    assert cap.lesion_flags["consolidation"]
    assert np.percentile(cap_hu, 75) > -150


def test_ground_glass_keeps_vessels_visible(host):
    changes = []
    for seed in range(21, 26):
        case = generate_inserted_case(host, seed, COVID, infection_fraction=0.15, look=IDENTITY_LOOK)
        vessels = (case.infection_mask > 0) & (host.hu > -450)  # vessels the lesions passed over (partial volume at 2.8 mm)
        changes.append(case.volume.hu[vessels] - host.hu[vessels])
    changes = np.concatenate(changes)
    assert changes.size > 20
    # Never lowered: a vessel under ground glass stays as dense as it was (within the blur).
    assert np.median(changes) > -30


def test_same_seed_same_case_other_seed_other_case(host):
    a = generate_inserted_case(host, 7, CAP)
    b = generate_inserted_case(host, 7, CAP)
    c = generate_inserted_case(host, 8, CAP)
    assert a.look == b.look
    np.testing.assert_array_equal(a.volume.hu, b.volume.hu)
    np.testing.assert_array_equal(a.infection_mask, b.infection_mask)
    assert a.volume.hu.shape != c.volume.hu.shape or not np.array_equal(a.volume.hu, c.volume.hu)


def test_no_pneumonia_case_has_no_infection_and_the_host_unchanged(host):
    case = generate_inserted_case(host, 1, NO_PNEUMONIA, look=IDENTITY_LOOK)
    assert not case.infection_mask.any()
    np.testing.assert_array_equal(case.volume.hu, np.rint(host.hu).astype(case.volume.hu.dtype))


def test_mirroring_swaps_the_lung_labels_to_their_new_sides(host):
    case = generate_inserted_case(host, 2, NO_PNEUMONIA, look=replace(IDENTITY_LOOK, mirror=True))
    x = np.arange(case.lung_mask.shape[2])
    right_x = np.average(np.broadcast_to(x, case.lung_mask.shape)[case.lung_mask == 1])
    left_x = np.average(np.broadcast_to(x, case.lung_mask.shape)[case.lung_mask == 2])
    assert right_x < left_x  # the right lung is at small x, whatever the host's mirror image


def test_thick_slabs_average_thin_slices_and_keep_the_geometry(host):
    case = generate_inserted_case(host, 5, COVID, infection_fraction=0.05, look=replace(IDENTITY_LOOK, slab=3))
    assert case.volume.shape[0] == host.hu.shape[0] // 3
    assert case.volume.spacing_mm[0] == pytest.approx(3 * host.spacing_mm[0])
    assert not (case.infection_mask.astype(bool) & (case.lung_mask == 0)).any()
    # The first thick slice's centre sits at the middle of the three thin ones.
    assert case.volume.affine[2, 3] == pytest.approx(host.affine[2, 3] + host.affine[2, 0])


def test_site_look_adds_noise_and_sharpness(host):
    plain = generate_inserted_case(host, 9, NO_PNEUMONIA, look=IDENTITY_LOOK)
    noisy = generate_inserted_case(host, 9, NO_PNEUMONIA, look=replace(IDENTITY_LOOK, noise_hu=40.0))
    smooth = generate_inserted_case(host, 9, NO_PNEUMONIA, look=replace(IDENTITY_LOOK, kernel="smooth", kernel_strength=1.0))
    lungs = host.lungs > 0

    def roughness(volume):
        hu = volume.hu.astype(float)
        return np.median(np.abs(np.diff(hu, axis=2)[lungs[:, :, 1:]]))  # robust to vessel edges

    assert roughness(noisy.volume) > 1.5 * roughness(plain.volume)
    assert roughness(smooth.volume) < roughness(plain.volume)


def test_dataset_has_patients_labels_and_exact_masks(host, tmp_path):
    manifest = write_inserted_dataset([("phantom-5", lambda: host)], tmp_path / "set", 5, seed=3, healthy_share=0.2)
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 5
    assert {r["patient"] for r in rows} == {"phantom-5"}
    assert sorted(r["label"] for r in rows).count(NO_PNEUMONIA) == 1
    from napari_covid_attention.io.load import load_ct

    for row in rows:
        infection = load_ct(tmp_path / "set" / row["infection_mask"]).hu > 0
        lungs = load_ct(tmp_path / "set" / row["lung_mask"]).hu > 0
        assert infection.any() == (row["label"] != NO_PNEUMONIA)
        assert not (infection & ~lungs).any()


def test_lidc_contours_and_boxes_become_avoid_masks(tmp_path):
    xml = tmp_path / "case.xml"
    xml.write_text(
        """<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><readingSession>
        <unblindedReadNodule><roi><imageZposition>-95.0</imageZposition><inclusion>TRUE</inclusion>
        <edgeMap><xCoord>30</xCoord><yCoord>20</yCoord></edgeMap><edgeMap><xCoord>36</xCoord><yCoord>20</yCoord></edgeMap>
        <edgeMap><xCoord>36</xCoord><yCoord>26</yCoord></edgeMap><edgeMap><xCoord>30</xCoord><yCoord>26</yCoord></edgeMap>
        </roi></unblindedReadNodule>
        <nonNodule><imageZposition>-90.0</imageZposition><locus><xCoord>50</xCoord><yCoord>50</yCoord></locus></nonNodule>
        </readingSession></LidcReadMessage>"""
    )
    affine = np.array([[0, 0, 1.0, 0], [0, 1.0, 0, 0], [2.5, 0, 0, -100.0], [0, 0, 0, 1]])
    mask = lidc_avoid_mask(xml, (10, 64, 64), affine)
    assert mask[2, 23, 33] and mask[4, 50, 50]  # z = (-95 + 100) / 2.5 = 2; (-90 + 100) / 2.5 = 4
    assert not mask[2, 5, 5] and not mask[9].any()
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / "1.2.3.xml").write_text("<annotation><object><bndbox><xmin>10</xmin><ymin>12</ymin><xmax>20</xmax><ymax>22</ymax></bndbox></object></annotation>")
    column = box_avoid_mask(boxes, (4, 64, 64), affine)
    assert column[:, 15, 15].all() and not column[:, 40, 40].any()


def test_lesions_go_into_a_real_scans_lungs_and_never_onto_its_nodules(real_ct_dir):
    host = load_host(real_ct_dir / "lidc-idri-0001.nii.gz", real_ct_dir / "annotations")
    assert host.avoid.any()  # its nodules
    assert 3000 < np.count_nonzero(host.lungs) * np.prod(host.spacing_mm) / 1000 < 8000  # mL
    for seed, label in ((1, COVID), (2, CAP)):
        case = generate_inserted_case(host, seed, label)
        infection = case.infection_mask > 0
        assert infection.any() and not (infection & (case.lung_mask == 0)).any()
    case = generate_inserted_case(host, 1, COVID, look=IDENTITY_LOOK)
    assert not (case.infection_mask.astype(bool) & host.avoid).any()
