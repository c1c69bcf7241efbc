"""import_dataset on miniature copies of each public layout, built from tiny phantoms."""

from __future__ import annotations

import csv
import json
import sys
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_covid_attention.classes import CAP, COVID, LESION_TYPES
from napari_covid_attention.data.synthetic import Phantom, generate_phantom
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io import geometry, load_ct, save_nifti
from napari_covid_attention.training.datasets import read_manifest
from napari_covid_attention.training.public_datasets import (
    LAYOUTS,
    describe_import,
    detect_layout,
    import_dataset,
)

SHAPE = (24, 48, 48)
# Files are stored in an unusual voxel order (x, y reversed first), which load_ct undoes.
FILE_ORNT = np.array([[0, -1], [1, -1], [2, 1]], dtype=float)
# MetaImage test scans run superior -> inferior and posterior -> anterior: a non-identity direction.
MHA_ORNT = np.array([[2, -1], [1, -1], [0, 1]], dtype=float)
# Windowing quantises 1500 HU into 255 steps: half a step plus rounding.
WINDOW_ATOL_HU = 1500 / 255 / 2 + 0.5


@lru_cache
def phantom(seed: int) -> Phantom:
    return generate_phantom(seed, COVID, shape=SHAPE)


def write(path: Path, array: np.ndarray, seed: int) -> Path:
    """An array on phantom ``seed``'s grid as NIfTI, in FILE_ORNT voxel order."""
    return save_nifti(path, array, phantom(seed).volume.affine, source_ornt=FILE_ORNT)


def write_scan(path: Path, seed: int) -> Path:
    return write(path, phantom(seed).volume.hu, seed)


def broken(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a NIfTI file")
    return path


def windowed(hu: np.ndarray) -> np.ndarray:
    """What COVID-19-CT-Seg did to its Radiopaedia volumes: window [-1250, 250] -> 0..255."""
    return np.clip(np.rint((hu.astype(float) + 1250) / 1500 * 255), 0, 255).astype(np.uint8)


def listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    )


def run_import(
    layout: str, source: Path, out: Path, **options
) -> tuple[list[dict[str, str]], dict, list]:
    """Import and check the invariants every import keeps; returns rows, summary, cases."""
    before = listing(source)
    manifest = import_dataset(layout, source, out, **options)
    assert listing(source) == before, "the dataset folder was modified"
    assert manifest == out.resolve() / "manifest.csv"
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((out / "import_summary.json").read_text())
    return rows, summary, read_manifest(manifest)


def assert_same_grid(a: Path, b: Path) -> None:
    """Same canonical grid (what training checks) and same voxel order in the files."""
    va, vb = load_ct(a), load_ct(b)
    assert va.shape == vb.shape
    np.testing.assert_allclose(va.affine, vb.affine, atol=1e-4)
    np.testing.assert_allclose(nib.load(str(a)).affine, nib.load(str(b)).affine, atol=1e-4)


# --------------------------------------------------------------------------- layouts


def test_mosmeddata_labels_ct1_to_ct4_covid_and_leaves_ct0_out(tmp_path: Path) -> None:
    root = tmp_path / "COVID19_1110"
    studies = root / "studies"
    write_scan(studies / "CT-0" / "study_0001.nii.gz", 0)
    write_scan(studies / "CT-1" / "study_0255.nii.gz", 1)
    write_scan(studies / "CT-1" / "study_0256.nii.gz", 2)
    write_scan(studies / "CT-2" / "study_0939.nii.gz", 3)
    broken(studies / "CT-3" / "study_1064.nii.gz")
    write(root / "masks" / "study_0255_mask.nii.gz", phantom(1).infection_mask, 1)
    assert detect_layout(root) == "mosmeddata"
    assert detect_layout(studies) == "mosmeddata"

    calls: list[tuple[int, int]] = []
    rows, summary, cases = run_import(
        "auto", root, tmp_path / "out", progress=lambda done, total: calls.append((done, total))
    )

    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [r["case"] for r in rows] == [
        "mosmed_study_0255",
        "mosmed_study_0256",
        "mosmed_study_0939",
    ]
    assert {r["label"] for r in rows} == {COVID} and {c.label for c in cases} == {0}
    assert (
        rows[0]["infection_mask"] == "../COVID19_1110/masks/study_0255_mask.nii.gz"
    )  # referenced, not copied
    assert cases[0].infection_mask == (root / "masks" / "study_0255_mask.nii.gz").resolve()
    assert rows[1]["infection_mask"] == rows[2]["infection_mask"] == ""
    assert all(r["infection_fraction"] == "" for r in rows)  # no lung masks in MosMedData
    assert summary["counts"] == {COVID: 3, CAP: 0}
    assert summary["written"] == []
    [skipped] = summary["skipped"]
    assert skipped["file"] == "studies/CT-3/study_1064.nii.gz" and "NIfTI" in skipped["reason"]
    assert any(note.startswith("Left out 1 CT-0 studies") for note in summary["notes"])
    assert any("no CAP cases" in note for note in summary["notes"])
    text = describe_import(tmp_path / "out" / "manifest.csv")
    assert text.startswith("Imported 3 scans (COVID-19: 3, CAP: 0)") and "study_1064" in text


def ctseg_source(tmp_path: Path) -> Path:
    """One HU volume and one windowed Radiopaedia volume, each with infection and lung masks."""
    root = tmp_path / "COVID-19-CT-Seg"
    for seed, name, hu in (
        (4, "coronacases_001", phantom(4).volume.hu),
        (5, "radiopaedia_4_85506_1", windowed(phantom(5).volume.hu)),
    ):
        write(root / "COVID-19-CT-Seg_20cases" / f"{name}.nii.gz", hu, seed)
        write(root / "Infection_Mask" / f"{name}.nii.gz", phantom(seed).infection_mask, seed)
        write(
            root / "Lung_Mask" / f"{name}.nii.gz", phantom(seed).lung_mask, seed
        )  # 1 and 2: two lungs
    return root


def test_covid19_ct_seg_refuses_windowed_volumes_naming_them(tmp_path: Path) -> None:
    source, out = ctseg_source(tmp_path), tmp_path / "out"
    before = listing(source)
    with pytest.raises(
        UserFacingError,
        match=r"^1 COVID-19-CT-Seg volumes \(radiopaedia_4_85506_1\.nii\.gz\) are windowed .*convert_windowed=True",
    ):
        import_dataset("covid19-ct-seg", source, out)
    assert listing(source) == before
    assert list(out.iterdir()) == []  # nothing half-written


def test_covid19_ct_seg_converts_windowed_volumes_on_request(tmp_path: Path) -> None:
    source, out = ctseg_source(tmp_path), tmp_path / "out"
    assert detect_layout(source) == "covid19-ct-seg"
    rows, summary, cases = run_import("covid19-ct-seg", source, out, convert_windowed=True)

    hu_row, windowed_row = rows
    assert hu_row["image"] == "../COVID-19-CT-Seg/COVID-19-CT-Seg_20cases/coronacases_001.nii.gz"
    assert windowed_row["image"] == "images/ctseg_radiopaedia_4_85506_1.nii.gz"
    assert summary["written"] == ["images/ctseg_radiopaedia_4_85506_1.nii.gz"]
    converted = out / windowed_row["image"]
    assert_same_grid(converted, source / "COVID-19-CT-Seg_20cases" / "radiopaedia_4_85506_1.nii.gz")
    expected = np.maximum(
        np.clip(phantom(5).volume.hu, -1250, 250), -1024
    )  # the window clipped; air floor of the core
    assert np.abs(load_ct(converted).hu.astype(float) - expected).max() <= WINDOW_ATOL_HU
    for row, seed in zip(rows, (4, 5), strict=True):
        assert row["lung_mask"].startswith(
            "../COVID-19-CT-Seg/Lung_Mask/"
        )  # labels 1/2 are usable as they are
        assert row["infection_mask"].startswith("../COVID-19-CT-Seg/Infection_Mask/")
        assert float(row["infection_fraction"]) == pytest.approx(
            phantom(seed).infection_fraction, abs=1e-6
        )
    assert all(c.lung_mask is not None and c.infection_mask is not None for c in cases)
    assert any("-1250 HU and above 250 HU" in note for note in summary["notes"])


def test_covid19_ct_seg_kaggle_names_match_their_masks(tmp_path: Path) -> None:
    root = tmp_path / "covid19-ct-scans"
    write_scan(root / "ct_scans" / "coronacases_org_001.nii", 4)
    write(root / "infection_mask" / "coronacases_001.nii", phantom(4).infection_mask, 4)
    write(root / "lung_mask" / "coronacases_001.nii", phantom(4).lung_mask, 4)
    assert detect_layout(root) == "covid19-ct-seg"
    [row], _, _ = run_import("auto", root, tmp_path / "out")
    assert row["infection_mask"] == "../covid19-ct-scans/infection_mask/coronacases_001.nii"
    assert row["lung_mask"] == "../covid19-ct-scans/lung_mask/coronacases_001.nii"


def test_medseg_leaves_effusion_out_of_the_infection_mask(tmp_path: Path) -> None:
    root = tmp_path / "medseg"
    first, second = phantom(6), phantom(7)
    upper = np.arange(SHAPE[0])[:, None, None] >= SHAPE[0] // 2
    labels = np.where(first.infection_mask > 0, np.where(upper, 2, 1), 0).astype(
        np.uint8
    )  # GGO below, consolidation above
    outside = labels == 0
    outside[:, 24:, :] = False
    labels[outside & (first.lung_mask == 0)] = 3  # "pleural effusion" outside the lungs
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    write_scan(root / "rp_im" / "1.nii.gz", 6)
    write(root / "rp_msk" / "1.nii.gz", labels, 6)
    write(root / "rp_lung_msk" / "1.nii.gz", first.lung_mask, 6)
    write_scan(root / "rp_im" / "2.nii.gz", 7)
    write(
        root / "rp_msk" / "2.nii.gz", second.infection_mask, 7
    )  # ground glass only: already binary
    assert detect_layout(root) == "medseg"

    rows, summary, cases = run_import("medseg", root, tmp_path / "out")

    one, two = rows
    assert one["infection_mask"] == "masks/medseg_1_infection.nii.gz"
    converted = tmp_path / "out" / one["infection_mask"]
    assert_same_grid(converted, root / "rp_msk" / "1.nii.gz")
    np.testing.assert_array_equal(load_ct(converted).hu, np.isin(labels, (1, 2)))
    assert (one["ground_glass"], one["consolidation"]) == ("1", "1")
    assert float(one["infection_fraction"]) == pytest.approx(first.infection_fraction, abs=1e-6)
    assert two["infection_mask"] == "../medseg/rp_msk/2.nii.gz"
    assert (two["ground_glass"], two["consolidation"]) == ("1", "0")
    assert all(r[flag] == "" for r in rows for flag in LESION_TYPES[2:])  # unknown, not "absent"
    assert all(c.lesion_flags is None for c in cases)
    assert {r["label"] for r in rows} == {COVID}
    assert summary["written"] == ["masks/medseg_1_infection.nii.gz"]


def write_mha(path: Path, seed: int) -> None:
    """Phantom ``seed`` as MetaImage, stored in MHA_ORNT voxel order (ITK index (i, j, k) = x, y, z)."""
    sitk = pytest.importorskip("SimpleITK")
    hu, affine = geometry.reorient(phantom(seed).volume.hu, phantom(seed).volume.affine, MHA_ORNT)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)  # (z, y, x)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image.SetDirection([float(v) for v in (affine[:3, :3] / spacing)[:, ::-1].ravel()])
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    # The test's geometry checked against ITK itself: index (i, j, k) lands where the affine says.
    np.testing.assert_allclose(
        image.TransformIndexToPhysicalPoint((3, 5, 7)), (affine @ [7, 5, 3, 1])[:3]
    )
    assert hu[7, 5, 3] == image[3, 5, 7]
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_stoic2021_metaimage_round_trip_and_negatives_left_out(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    root = tmp_path / "stoic2021"
    for patient in (101, 102, 103):
        write_mha(root / "data" / "mha" / f"{patient}.mha", 8)
    (root / "metadata").mkdir()
    (root / "metadata" / "reference.csv").write_text(
        "PatientID,age,sex,probCOVID,probSevere\n101,065Y,M,1,0\n102,045Y,F,0,0\n104,055Y,F,1,1\n"
    )
    assert detect_layout(root) == "stoic2021"

    [row], summary, _ = run_import("auto", root, tmp_path / "out")

    assert (row["case"], row["label"], row["image"]) == (
        "stoic_101",
        COVID,
        "images/stoic_101.nii.gz",
    )
    converted = load_ct(tmp_path / "out" / row["image"])
    np.testing.assert_array_equal(converted.hu, phantom(8).volume.hu)
    np.testing.assert_allclose(converted.affine, phantom(8).volume.affine, atol=1e-4)
    assert summary["skipped"] == [
        {"file": "data/mha/103.mha", "reason": "its PatientID is not in metadata/reference.csv."}
    ]
    assert any(note.startswith("Left out 1 probCOVID=0 patients") for note in summary["notes"])
    assert any(
        note.startswith("1 patients in reference.csv have no .mha") for note in summary["notes"]
    )


def test_stoic2021_without_simpleitk_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "stoic2021"
    broken(root / "data" / "mha" / "101.mha")
    (root / "metadata").mkdir()
    (root / "metadata" / "reference.csv").write_text("PatientID,probCOVID,probSevere\n101,1,0\n")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now raises ImportError
    with pytest.raises(UserFacingError, match=r"needs SimpleITK: pip install SimpleITK\.$"):
        import_dataset("stoic2021", root, tmp_path / "out")


def test_covid19_20_keeps_scans_whose_mask_is_off_grid(tmp_path: Path) -> None:
    root = tmp_path / "COVID-19-20_v2"
    write_scan(root / "Train" / "volume-covid19-A-0001_ct.nii.gz", 11)
    write(root / "Train" / "volume-covid19-A-0001_seg.nii.gz", phantom(11).infection_mask, 11)
    write_scan(root / "Train" / "volume-covid19-A-0002_ct.nii.gz", 12)
    save_nifti(
        root / "Train" / "volume-covid19-A-0002_seg.nii.gz",
        phantom(12).infection_mask[2:],
        phantom(12).volume.affine,
    )
    write_scan(root / "Validation" / "volume-covid19-A-0100_ct.nii.gz", 13)
    assert detect_layout(root) == "covid19-20"

    rows, summary, _ = run_import("covid19-20", root, tmp_path / "out")

    assert [r["case"] for r in rows] == [
        "volume-covid19-A-0001",
        "volume-covid19-A-0002",
        "volume-covid19-A-0100",
    ]
    assert {r["label"] for r in rows} == {COVID}
    assert rows[0]["infection_mask"] == "../COVID-19-20_v2/Train/volume-covid19-A-0001_seg.nii.gz"
    assert rows[1]["infection_mask"] == rows[2]["infection_mask"] == ""
    [dropped] = summary["dropped_masks"]
    assert (
        dropped["file"] == "Train/volume-covid19-A-0002_seg.nii.gz"
        and "shape (22, 48, 48)" in dropped["reason"]
    )


def write_dicom_series(folder: Path, seed: int) -> None:
    """Phantom ``seed`` as an axial CT DICOM series (one file per slice)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    volume = phantom(seed).volume
    _, dy, dx = volume.spacing_mm
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    for z, plane in enumerate(volume.hu):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, generate_uid(), "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (volume.affine @ [z, 0, 0, 1])[:3]]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = [f"{dy:g}", f"{dx:g}"]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = plane.astype(np.int16).tobytes()
        ds.save_as(
            folder / f"IM{z:04d}.dcm",
            enforce_file_format=True,
            little_endian=True,
            implicit_vr=False,
        )


def test_folder_of_own_cap_scans_nifti_and_dicom(tmp_path: Path) -> None:
    root = tmp_path / "my_cap"
    write_scan(root / "b.nii", 15)
    write(root / "b_seg.nii", phantom(15).infection_mask, 15)
    write(root / "b_lung.nii", phantom(15).lung_mask, 15)
    broken(root / "broken.nii.gz")
    write_dicom_series(root / "dicom" / "c", 16)
    write(root / "dicom" / "c_mask.nii.gz", phantom(16).infection_mask, 16)
    write_scan(root / "images" / "a.nii.gz", 14)
    write(root / "masks" / "a.nii.gz", phantom(14).infection_mask, 14)
    (root / "README.txt").write_text("my CAP cases\n")
    assert detect_layout(root) == "folder"
    with pytest.raises(UserFacingError, match="needs the label"):
        import_dataset("folder", root, tmp_path / "out")

    rows, summary, cases = run_import("folder", root, tmp_path / "out", label=CAP)

    assert [r["case"] for r in rows] == ["b", "dicom_c", "images_a"]
    assert {r["label"] for r in rows} == {CAP} and {c.label for c in cases} == {1}
    b, c, a = rows
    assert (b["infection_mask"], b["lung_mask"]) == ("../my_cap/b_seg.nii", "../my_cap/b_lung.nii")
    assert float(b["infection_fraction"]) == pytest.approx(phantom(15).infection_fraction, abs=1e-6)
    assert (
        c["image"] == "../my_cap/dicom/c" and c["infection_mask"] == "../my_cap/dicom/c_mask.nii.gz"
    )
    np.testing.assert_array_equal(load_ct(cases[1].image).hu, phantom(16).volume.hu)
    assert a["infection_mask"] == "../my_cap/masks/a.nii.gz"
    assert [s["file"] for s in summary["skipped"]] == ["broken.nii.gz"]
    assert summary["counts"] == {COVID: 0, CAP: 3}
    assert summary["dropped_masks"] == [] and summary["written"] == []


# --------------------------------------------------------------------------- refusals


def medseg_source(root: Path, seed: int) -> Path:
    """One MedSeg volume whose mask has an effusion label, so the import writes a mask."""
    labels = phantom(seed).infection_mask.copy()
    labels[:2, :4, :4] = 3
    write_scan(root / "rp_im" / "1.nii.gz", seed)
    write(root / "rp_msk" / "1.nii.gz", labels, seed)
    return root


def test_an_existing_manifest_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_import("medseg", medseg_source(tmp_path / "medseg", 6), out)
    assert (out / "masks" / "medseg_1_infection.nii.gz").is_file()
    other = tmp_path / "COVID-19-20"
    write_scan(other / "volume-covid19-A-0001_ct.nii.gz", 11)
    with pytest.raises(UserFacingError, match="already holds an imported data set"):
        import_dataset("covid19-20", other, out)
    assert "medseg_1" in (out / "manifest.csv").read_text()

    rows, summary, _ = run_import("covid19-20", other, out, overwrite=True)

    assert [r["case"] for r in rows] == ["volume-covid19-A-0001"] and summary[
        "layout"
    ] == "covid19-20"
    assert not (
        out / "masks" / "medseg_1_infection.nii.gz"
    ).exists()  # the replaced import's own file


def test_bad_requests_are_refused_with_one_sentence(tmp_path: Path) -> None:
    source = medseg_source(tmp_path / "medseg", 6)
    empty = tmp_path / "empty"
    empty.mkdir()
    all_broken = tmp_path / "broken"
    broken(all_broken / "rp_im" / "1.nii.gz")
    cases = [
        (("medseg", source, source / "imported"), {}, "inside the dataset folder"),
        (("medseg", source, tmp_path / "out"), {"label": CAP}, "only used with the folder layout"),
        (
            ("medseg", source, tmp_path / "out"),
            {"convert_windowed": True},
            "only applies to the covid19-ct-seg",
        ),
        (("folder", source, tmp_path / "out"), {"label": "flu"}, "Unknown label 'flu'"),
        (("kaggle", source, tmp_path / "out"), {}, "Unknown dataset layout 'kaggle'"),
        (("auto", empty, tmp_path / "out"), {}, "does not look like any known dataset layout"),
        (("medseg", all_broken, tmp_path / "out"), {}, r"None of the 1 scans .* could be imported"),
    ]
    before = listing(source)
    for args, options, message in cases:
        with pytest.raises(UserFacingError, match=message):
            import_dataset(*args, **options)
    assert listing(source) == before
    assert detect_layout(empty) is None
    assert set(LAYOUTS) == {
        "mosmeddata",
        "covid19-ct-seg",
        "medseg",
        "stoic2021",
        "covid19-20",
        "folder",
    }
