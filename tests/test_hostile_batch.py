"""Hostile inputs and faults in batch diagnosis and the CLI (issue 13 items 3, 4, 10, 12; issue 15 item 7).

Diagnosis itself is replaced by one real diagnosis computed once (the tests are about what
the batch does around it), except where a real run is cheap enough.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import stat
import struct
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from napari_covid_attention import batch
from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from napari_covid_attention.cli import build_parser, main
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.diagnosis import diagnose
from napari_covid_attention.io import CTVolume, load_ct
from napari_covid_attention.io.nifti import save_nifti
from napari_covid_attention.models.bundle import load_bundle


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(5, label="COVID-19", shape=(32, 64, 64))


@pytest.fixture(scope="module")
def real_diagnosis(phantom, tiny_bundle):
    return diagnose(phantom.volume, load_bundle(tiny_bundle), "cpu")


@pytest.fixture
def scans(tmp_path, phantom):
    """Writes NIfTI copies of the phantom: ``scans("a", "c")`` -> their paths."""

    def write(*names: str) -> list[Path]:
        paths = []
        for name in names:
            path = tmp_path / "in" / f"{name}.nii.gz"
            save_nifti(path, phantom.volume.hu, phantom.volume.affine)
            paths.append(path)
        return paths

    return write


@pytest.fixture
def fast(monkeypatch, real_diagnosis):
    """batch.diagnose returns the precomputed diagnosis; ``fast.fail[name] = exc`` makes one scan raise."""

    class Fast:
        fail: dict[str, BaseException] = {}

    def fake(volume, model, device):
        name = Path(volume.source_path).name
        if name in Fast.fail:
            raise Fast.fail[name]
        return real_diagnosis

    monkeypatch.setattr(batch, "diagnose", fake)
    Fast.fail = {}
    return Fast


def cli(inputs, out, tiny_bundle, *extra) -> int:
    return main(["diagnose", *map(str, inputs), "--bundle", str(tiny_bundle), "--out", str(out), "--device", "cpu", *extra])


def rows_of(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------ item 3: one bad scan never kills the batch


def test_a_scan_with_a_nan_affine_gets_an_error_row_and_the_next_scan_still_runs(tmp_path, scans, fast, tiny_bundle, capsys):
    a, c = scans("a", "c")
    bad = tmp_path / "in" / "bad.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(bad))
    header = bytearray(bad.read_bytes())
    header[280:328] = struct.pack("<12f", *[float("nan")] * 12)  # srow_x, srow_y, srow_z: the sform
    bad.write_bytes(bytes(header))
    assert cli([a, bad, c], tmp_path / "out", tiny_bundle) == 2
    rows = rows_of(tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"] and "\n" not in rows[1]["error"] and "Traceback" not in rows[1]["error"]
    assert "1 of 3 scans" in capsys.readouterr().err


def test_an_unexpected_exception_or_memory_error_is_a_one_sentence_row_and_logged(tmp_path, scans, fast, tiny_bundle, caplog):
    a, b, c = scans("a", "b", "c")
    fast.fail = {"a.nii.gz": MemoryError(), "b.nii.gz": np.linalg.LinAlgError("Singular matrix\nsecond line")}
    with caplog.at_level(logging.ERROR, logger="napari_covid_attention.batch"):
        assert cli([a, b, c], tmp_path / "out", tiny_bundle) == 2
    rows = rows_of(tmp_path / "out")
    assert [r["status"] for r in rows] == ["error", "error", "ok"]
    assert rows[0]["error"] == "The scan could not be diagnosed (MemoryError)."
    assert rows[1]["error"] == "The scan could not be diagnosed (LinAlgError: Singular matrix)."
    assert "LinAlgError" in caplog.text and "b.nii.gz" in caplog.text


def test_results_csv_is_complete_after_each_scan_so_a_crash_keeps_the_scans_done(tmp_path, scans, fast, tiny_bundle):
    a, b, c = scans("a", "b", "c")
    fast.fail = {"c.nii.gz": KeyboardInterrupt()}
    assert cli([a, b, c], tmp_path / "out", tiny_bundle) == 130
    rows = rows_of(tmp_path / "out")
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("a.nii.gz", "ok"), ("b.nii.gz", "ok")]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


def test_the_csv_is_written_atomically_after_every_scan(tmp_path, scans, fast, tiny_bundle, monkeypatch):
    calls = []
    monkeypatch.setattr(batch, "write_csv_atomic", lambda path, rows, fields, **kw: calls.append(len(list(rows))) or write_csv_atomic(path, rows, fields, **kw))
    assert cli(scans("a", "b"), tmp_path / "out", tiny_bundle) == 0
    assert calls[-2:] == [1, 2]


def test_exit_2_when_every_input_failed(tmp_path, tiny_bundle, capsys):
    assert cli([tmp_path / "x.nii.gz", tmp_path / "y.nii.gz"], tmp_path / "out", tiny_bundle) == 2
    assert [r["status"] for r in rows_of(tmp_path / "out")] == ["error", "error"]
    assert "2 of 2 scans" in capsys.readouterr().err


# ------------------------------------------------------------ item 4: never write where it must not


def test_an_existing_results_csv_is_kept_unless_overwrite_is_given(tmp_path, scans, fast, tiny_bundle, capsys):
    out = tmp_path / "out"
    (a,) = scans("a")
    assert cli([a], out, tiny_bundle) == 0
    before = (out / "results.csv").read_bytes()
    assert cli([tmp_path / "missing.nii.gz"], out, tiny_bundle) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.csv").read_bytes() == before
    assert cli([a], out, tiny_bundle, "--overwrite") == 0


def test_symlinked_results_and_summary_are_replaced_not_followed(tmp_path, scans, fast, tiny_bundle):
    out = tmp_path / "out"
    (a,) = scans("a")
    assert cli([a], out, tiny_bundle) == 0
    case = next(out.glob("0000_*"))
    outside = tmp_path / "outside"
    outside.mkdir()
    for target in (out / "results.csv", case / "summary.json", case / "lung_mask.nii.gz"):
        victim = outside / target.name
        victim.write_text("precious")
        target.unlink()
        target.symlink_to(victim)
    assert cli([a], out, tiny_bundle, "--overwrite") == 0
    assert [p.read_text() for p in sorted(outside.iterdir())] == ["precious"] * 3
    for target in (out / "results.csv", case / "summary.json", case / "lung_mask.nii.gz"):
        assert target.is_file() and not target.is_symlink()


def test_an_out_folder_that_is_a_symlink_is_refused(tmp_path, scans, tiny_bundle, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    assert cli(scans("a"), tmp_path / "out", tiny_bundle) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_a_per_scan_folder_that_is_a_symlink_is_not_written_through(tmp_path, scans, fast, tiny_bundle):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    a, b = scans("a", "b")
    (out / "0000_a").symlink_to(elsewhere)
    assert cli([a, b], out, tiny_bundle) == 2
    assert list(elsewhere.iterdir()) == []
    rows = rows_of(out)
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "symbolic link" in rows[0]["error"]


@pytest.mark.parametrize("name", ["image.dcm", "IM0001.IMA", "DICOMDIR", "IM0001"])
def test_out_is_never_the_folder_of_a_dicom_file_input(tmp_path, tiny_bundle, capsys, name):
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / name).write_bytes(b"\0" * 132 + b"DICM")
    for out in (folder, folder / "out"):
        assert cli([folder / name], out, tiny_bundle) == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == [name]


def test_out_beside_a_nifti_file_is_allowed(tmp_path, scans, fast, tiny_bundle):
    (a,) = scans("a")
    assert cli([a], a.parent / "out", tiny_bundle) == 0


# ------------------------------------------------------------ item 10: no identifying names stored


def test_the_store_keeps_no_file_or_folder_name_of_the_scan(tmp_path, phantom):
    named = tmp_path / "Doe_Jane_19610412" / "Doe_Jane.nii.gz"
    save_nifti(named, phantom.volume.hu, phantom.volume.affine)
    other = CTVolume(hu=phantom.volume.hu[:, ::-1].copy(), affine=phantom.volume.affine,
                     metadata={"format": "DICOM"}, source_path=str(tmp_path / "Doe^Jane" / "series-1"))
    with AnnotationStore(tmp_path / "store") as store:
        nifti_case = store.open_case(load_ct(named))
        dicom_case = store.open_case(other)
        assert nifti_case.source_name.startswith("NIfTI file ")
        assert dicom_case.source_name.startswith("DICOM series ")
        for case in (nifti_case, dicom_case):
            assert "Doe" not in case.source_name and "series-1" not in case.source_name
        assert nifti_case.source_name.split()[-1] != dicom_case.source_name.split()[-1]
        assert store.open_case(load_ct(named)).source_name == nifti_case.source_name
    raw = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert b"Doe" not in raw


# ------------------------------------------------------------ item 12: CSV cells, permissions, exit codes


def test_csv_cells_that_would_be_formulas_are_quoted(tmp_path, tiny_bundle, fast, scans, real_diagnosis, monkeypatch):
    hostile = tmp_path / "in" / "=HYPERLINK(1).nii.gz"
    hostile.parent.mkdir(parents=True, exist_ok=True)
    hostile.write_bytes(b"")
    (a,) = scans("a")
    warned = dataclasses.replace(real_diagnosis, warnings=("+1 voxels", "@x"))
    monkeypatch.setattr(batch, "diagnose", lambda volume, model, device: warned)
    assert cli([hostile, a], tmp_path / "out", tiny_bundle) == 2
    rows = rows_of(tmp_path / "out")
    assert rows[0]["error"].startswith("'=HYPERLINK(1)")
    assert rows[1]["warnings"].startswith("'+1 voxels")
    for row in rows:
        for value in row.values():
            assert not value or value[0] not in "=+-@\t\r"


@pytest.fixture
def umask():
    def set_(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_
    os.umask(old)


def test_atomic_files_get_the_mode_a_plain_open_gives(tmp_path, umask):
    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        plain = tmp_path / f"plain-{mask:o}"
        plain.write_text("x")
        write_text_atomic(tmp_path / f"text-{mask:o}.txt", "x")
        write_json_atomic(tmp_path / f"data-{mask:o}.json", {})
        save_nifti(tmp_path / f"image-{mask:o}.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
        expected = stat.S_IMODE(plain.stat().st_mode)
        assert expected == 0o666 & ~mask
        for name in (f"text-{mask:o}.txt", f"data-{mask:o}.json", f"image-{mask:o}.nii.gz"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_every_diagnosis_output_has_the_same_mode(tmp_path, scans, fast, tiny_bundle, umask):
    umask(0o022)
    assert cli(scans("a"), tmp_path / "out", tiny_bundle) == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert len(modes) == 7 and set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------ issue 15 item 7: CLI defaults from the configs


def _capture_train(monkeypatch, tmp_path):
    from napari_covid_attention.training import trainer

    seen = []

    def fake_train(config):
        seen.append(config)
        yield from ()

    monkeypatch.setattr(trainer, "train_bundle", fake_train)
    assert main(["train", "--train", str(tmp_path / "m.csv"), "--out", str(tmp_path / "b")]) == 0
    return seen[0]


def test_train_without_options_is_exactly_the_train_config_defaults(tmp_path, monkeypatch):
    from napari_covid_attention.training.trainer import TrainConfig

    config = _capture_train(monkeypatch, tmp_path)
    expected = TrainConfig(train_manifest=tmp_path / "m.csv", out=tmp_path / "b", command=config.command)
    assert config == expected


def test_train_defaults_follow_the_dataclasses(tmp_path, monkeypatch):
    from napari_covid_attention.preprocess import pipeline
    from napari_covid_attention.training import trainer

    @dataclasses.dataclass
    class Trainer(trainer.TrainConfig):
        epochs: int = 7
        lr: float = 0.5
        batch_size: int = 3

    @dataclasses.dataclass(frozen=True)
    class Preprocess(pipeline.PreprocessConfig):
        classifier_shape: tuple[int, int, int] = (8, 16, 16)

    monkeypatch.setattr(trainer, "TrainConfig", Trainer)
    monkeypatch.setattr(pipeline, "PreprocessConfig", Preprocess)
    config = _capture_train(monkeypatch, tmp_path)
    assert (config.epochs, config.lr, config.batch_size) == (7, 0.5, 3)
    assert config.preprocessing.classifier_shape == (8, 16, 16)
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    help_text = " ".join(help_text.split())
    assert "default 7" in help_text and "default 8 16 16" in help_text


def test_finetune_defaults_follow_the_dataclass(monkeypatch):
    from napari_covid_attention.training import finetune

    seen = []

    @dataclasses.dataclass
    class Finetune(finetune.FinetuneConfig):
        val_fraction: float = 0.45

    def fake(config):
        seen.append(config)
        yield from ()
        return SimpleNamespace(promoted=False, reason="test", version="v", parent_version="p", bundle_path="b", skipped=())

    monkeypatch.setattr(finetune, "FinetuneConfig", Finetune)
    monkeypatch.setattr(finetune, "finetune", fake)
    assert main(["finetune"]) == 0
    assert seen[0] == Finetune()


def test_a_csv_list_that_is_not_text_or_has_short_rows_is_one_sentence(tmp_path, scans, fast, tiny_bundle, capsys):
    binary = tmp_path / "list.csv"
    binary.write_bytes(b"image\n\xff\xfe\x00bad\n")
    assert cli([binary], tmp_path / "out", tiny_bundle) == 2
    assert "not a readable CSV" in capsys.readouterr().err
    (a,) = scans("a")
    short = tmp_path / "short.csv"
    short.write_text(f"label,image\nCAP\nCOVID-19,{a}\n")
    assert cli([short], tmp_path / "out2", tiny_bundle) == 0
    assert [r["status"] for r in rows_of(tmp_path / "out2")] == ["ok"]
