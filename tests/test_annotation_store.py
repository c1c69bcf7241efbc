"""The annotation store: immutable originals, append-only history, crash safety, no identifiers."""

from __future__ import annotations

import gzip
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from napari_covid_attention.annotations import (
    AnnotationStore,
    AnnotationStoreError,
    DamagedMaskError,
    foreground_dice,
)
from napari_covid_attention.annotations.files import TEMP_PREFIX, mask_digest
from napari_covid_attention.data.synthetic import generate_phantom
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io import load_ct, save_nifti

SHAPE = (24, 48, 48)
WRITER = Path(__file__).with_name("store_writer.py")


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(5, shape=SHAPE)


@pytest.fixture()
def store(tmp_path: Path):
    with AnnotationStore(tmp_path / "store") as opened:
        yield opened


def edited(mask: np.ndarray, z: int, value: int = 1) -> np.ndarray:
    """The mask with slice ``z`` partly painted, as an annotator's correction."""
    out = mask.copy()
    out[z, 10:30, 10:30] = value
    return out


# ------------------------------------------------------------------- versions


def test_original_is_written_once_and_never_replaced(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    first = store.set_original(case.id, phantom.infection_mask, model="demo 1.0")
    assert first.kind == "original" and first.model == "demo 1.0" and first.annotator is None
    same = phantom.infection_mask.astype(np.int64)
    assert store.set_original(case.id, same, model="demo 1.0") == first
    with pytest.raises(AnnotationStoreError, match="never replaced"):
        store.set_original(case.id, edited(phantom.infection_mask, 3), model="demo 1.1")
    store.save_version(case.id, edited(phantom.infection_mask, 3), annotator="ann")
    assert [v.kind for v in store.history(case.id)] == ["original", "edit"]
    assert np.array_equal(store.load_version(case.id, first.id), phantom.infection_mask)
    assert store.get_case(case.id).original_id == first.id


def test_rows_are_append_only_even_for_raw_sql(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    store.set_original(case.id, phantom.infection_mask, model="demo")
    store.mark_reviewed(case.id, annotator="ann", label="COVID-19")
    db = sqlite3.connect(store.root / "index.sqlite")
    for statement in (
        "UPDATE versions SET sha256 = 'x'", "DELETE FROM versions", "DELETE FROM reviews"
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    db.close()


def test_versions_accumulate_in_order_and_the_final_is_the_latest(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    original = store.set_original(case.id, phantom.infection_mask, model="demo")
    masks = [edited(phantom.infection_mask, z) for z in (2, 8, 14)]
    saved = [
        store.save_version(case.id, mask, annotator=name, note=f"pass {i}")
        for i, (mask, name) in enumerate(zip(masks, ("ann", "bob", "ann"), strict=True))
    ]
    history = store.history(case.id)
    assert [v.id for v in history] == [original.id] + [v.id for v in saved]
    assert [v.annotator for v in history[1:]] == ["ann", "bob", "ann"]
    assert [v.note for v in history[1:]] == ["pass 0", "pass 1", "pass 2"]
    assert [v.created for v in history] == sorted(v.created for v in history)
    assert all(v.created.endswith("+00:00") for v in history)
    for version, mask in zip(saved, masks, strict=True):
        assert version.sha256 == mask_digest(mask)
        assert (version.shape, version.dtype) == (SHAPE, "|u1")
        assert np.array_equal(store.load_version(case.id, version.id), mask)
    assert np.array_equal(store.latest(case.id), masks[-1])
    assert store.get_case(case.id).final == saved[-1]

    # The same content as the latest again is not a new version; as an older one, it is.
    assert store.save_version(case.id, masks[-1].astype(np.int32), annotator="bob") == saved[-1]
    again = store.save_version(case.id, masks[0], annotator="bob")
    assert again.id > saved[-1].id and again.file == saved[0].file
    assert len(store.history(case.id)) == 5


def test_small_integer_labels_are_kept_and_out_of_range_labels_refused(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    labels = edited(phantom.infection_mask, 5, value=2).astype(np.int32)
    store.save_version(case.id, labels, annotator="ann")
    assert store.latest(case.id).dtype == np.uint8
    assert set(np.unique(store.latest(case.id))) == {0, 1, 2}
    for bad in (labels.astype(float) + 0.5, labels - 1, labels * 300):
        with pytest.raises(AnnotationStoreError, match="whole-number labels"):
            store.save_version(case.id, bad, annotator="ann")


def test_restore_saves_the_old_mask_again_as_a_new_version(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    original = store.set_original(case.id, phantom.infection_mask, model="demo")
    first = store.save_version(case.id, edited(phantom.infection_mask, 4), annotator="ann")
    store.save_version(case.id, edited(phantom.infection_mask, 9), annotator="ann")
    restored = store.restore(case.id, first.id, annotator="bob")
    assert restored.kind == "restore" and restored.annotator == "bob"
    assert restored.restored_from == first.id
    assert np.array_equal(store.latest(case.id), edited(phantom.infection_mask, 4))
    back_to_model = store.restore(case.id, original.id, annotator="bob")
    assert np.array_equal(store.latest(case.id), phantom.infection_mask)
    assert store.restore(case.id, original.id, annotator="bob") == back_to_model
    assert len(store.history(case.id)) == 5  # nothing deleted, ever


def test_dice_original_final_follows_every_save(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    first = store.save_version(case.id, edited(phantom.infection_mask, 6), annotator="ann")
    assert store.dice_original_final(case.id) is None  # no original yet
    original = store.set_original(case.id, phantom.infection_mask, model="demo")
    expected = foreground_dice(phantom.infection_mask, edited(phantom.infection_mask, 6))
    assert 0.0 < expected < 1.0
    assert store.dice_original_final(case.id) == pytest.approx(expected)
    assert store.get_case(case.id).final == first  # a late original does not become final
    store.save_version(case.id, np.zeros(SHAPE, np.uint8), annotator="ann")
    assert store.dice_original_final(case.id) == 0.0
    store.restore(case.id, original.id, annotator="ann")
    assert store.dice_original_final(case.id) == 1.0
    assert foreground_dice(np.zeros(SHAPE), np.zeros(SHAPE)) == 1.0


def test_reviewed_flag_label_and_the_cases_fine_tuning_gets(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    with pytest.raises(AnnotationStoreError, match="before marking it reviewed"):
        store.mark_reviewed(case.id, annotator="ann", label="CAP")
    store.set_original(case.id, phantom.infection_mask, model="demo")
    store.save_version(case.id, edited(phantom.infection_mask, 7), annotator="ann")
    reviewed = store.mark_reviewed(case.id, annotator="bob", label=phantom.label)
    assert (reviewed.reviewed, reviewed.label, reviewed.reviewed_by) == (True, phantom.label, "bob")
    other = store.open_case(generate_phantom(6, shape=SHAPE).volume)
    assert [c.id for c in store.cases()] == [case.id, other.id]
    (for_training,) = store.reviewed_cases()
    assert for_training.id == case.id and for_training.label == phantom.label
    assert for_training.shape == SHAPE and np.allclose(for_training.affine, phantom.volume.affine)
    with np.load(for_training.final_path, allow_pickle=False) as archive:
        assert np.array_equal(archive["mask"], edited(phantom.infection_mask, 7))

    cleared = store.mark_reviewed(case.id, annotator="ann", reviewed=False)
    assert not cleared.reviewed and cleared.label == phantom.label
    assert store.reviewed_cases() == []
    db = sqlite3.connect(store.root / "index.sqlite")
    log = db.execute("SELECT annotator, reviewed, label FROM reviews ORDER BY id").fetchall()
    db.close()
    assert log == [("bob", 1, phantom.label), ("ann", 0, None)]


def test_a_case_reviewed_as_no_pneumonia_round_trips(tmp_path, phantom) -> None:
    """The label an annotator confirms when there is no pneumonia, with the mask erased."""
    from napari_covid_attention.classes import CONFIRMABLE_FINDINGS, NO_PNEUMONIA

    with AnnotationStore(tmp_path / "store") as store:
        case = store.open_case(phantom.volume)
        store.set_original(case.id, phantom.infection_mask, model="demo")
        store.save_version(case.id, np.zeros(SHAPE, np.uint8), annotator="ann")
        for label in CONFIRMABLE_FINDINGS:  # every finding the review widget offers
            assert store.mark_reviewed(case.id, annotator="ann", label=label).label == label
    with AnnotationStore(tmp_path / "store") as reopened:
        (for_training,) = reopened.reviewed_cases()
        assert (for_training.id, for_training.label, for_training.reviewed) == (case.id, NO_PNEUMONIA, True)
        assert not reopened.latest(case.id).any() and for_training.dice == 0.0
        assert reopened.get_case(case.id).label == NO_PNEUMONIA


def test_refusals_are_one_sentence_user_errors(store, phantom) -> None:
    case = store.open_case(phantom.volume)
    attempts = [
        lambda: store.save_version(case.id, np.zeros((4, 4, 4), np.uint8), annotator="ann"),
        lambda: store.save_version(case.id, phantom.infection_mask, annotator="  "),
        lambda: store.save_version(case.id, phantom.infection_mask[0], annotator="ann"),
        lambda: store.save_version(999, phantom.infection_mask, annotator="ann"),
        lambda: store.load_version(case.id, 12345),
        lambda: store.latest(case.id),
        lambda: store.export_final(case.id, store.root.parent / "x.nii.gz"),
    ]
    for attempt in attempts:
        with pytest.raises(UserFacingError) as info:
            attempt()
        message = str(info.value)
        assert message.endswith(".") and "\n" not in message, message


# --------------------------------------------------------- files and reopening


def test_export_final_overlays_the_source_file_voxel_for_voxel(tmp_path, phantom) -> None:
    # A scan file stored z-flipped (inferior slice last), as some scanners write them.
    scan_path = save_nifti(
        tmp_path / "scan.nii.gz", phantom.volume.hu, phantom.volume.affine,
        source_ornt=np.array([[2, -1], [1, 1], [0, 1]], dtype=float),
    )
    scan = load_ct(scan_path)
    mask = (scan.hu > -300).astype(np.uint8)
    with AnnotationStore(tmp_path / "store") as store:
        case_id = store.open_case(scan).id
        store.save_version(case_id, mask, annotator="ann")
    with AnnotationStore(tmp_path / "store") as store:  # the scan is not needed to export
        out = store.export_final(case_id, tmp_path / "final.nii.gz")
    exported = load_ct(out)
    assert np.array_equal(exported.hu, mask) and np.allclose(exported.affine, scan.affine)
    scan_img, mask_img = nib.load(scan_path), nib.load(out)
    assert np.allclose(mask_img.affine, scan_img.affine)
    assert np.array_equal(np.asanyarray(mask_img.dataobj), np.asanyarray(scan_img.dataobj) > -300)


def test_reopened_store_has_everything_and_finds_the_reloaded_scan(tmp_path, phantom) -> None:
    root = tmp_path / "store"
    with AnnotationStore(root) as store:
        case = store.open_case(phantom.volume, source_name="phantom-5")
        store.set_original(case.id, phantom.infection_mask, model="demo")
        store.save_version(case.id, edited(phantom.infection_mask, 3), annotator="ann")
        store.mark_reviewed(case.id, annotator="ann", label="COVID-19")
        before = store.history(case.id)
    saved = save_nifti(tmp_path / "phantom.nii.gz", phantom.volume.hu, phantom.volume.affine)
    reloaded = load_ct(saved)
    with AnnotationStore(root) as store:
        assert store.problems == () and store.check(full=True) == []
        found = store.find_case(reloaded)
        assert found is not None and found.id == case.id and found.source_name == "phantom-5"
        assert store.open_case(reloaded).id == case.id
        assert store.history(case.id) == before
        assert np.array_equal(store.latest(case.id), edited(phantom.infection_mask, 3))
        assert found.reviewed and found.label == "COVID-19"
        correction = foreground_dice(phantom.infection_mask, edited(phantom.infection_mask, 3))
        assert found.dice == pytest.approx(correction)
        assert store.find_case(generate_phantom(6, shape=SHAPE).volume) is None


def test_damage_outside_the_store_is_reported_and_repaired_by_saving_again(
    tmp_path, phantom
) -> None:
    root = tmp_path / "store"
    with AnnotationStore(root) as store:
        case = store.open_case(phantom.volume)
        first = store.save_version(case.id, phantom.infection_mask, annotator="ann")
        second = store.save_version(case.id, edited(phantom.infection_mask, 2), annotator="ann")
        store.mask_path(first).write_bytes(b"not a mask")
        with pytest.raises(DamagedMaskError, match="changed or damaged outside"):
            store.load_version(case.id, first.id)
        assert len(store.check(full=True)) == 1
        store.save_version(case.id, phantom.infection_mask, annotator="ann")  # same content
        assert np.array_equal(store.load_version(case.id, first.id), phantom.infection_mask)
        store.mask_path(second).unlink()
    with AnnotationStore(root) as store:
        (problem,) = store.problems
        assert f"version {second.id}" in problem and "missing" in problem


def test_a_damaged_index_is_refused_with_a_clear_message(tmp_path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "index.sqlite").write_bytes(b"garbage " * 1000)
    with pytest.raises(AnnotationStoreError, match="is damaged"):
        AnnotationStore(root)


def test_default_root_is_under_the_plugin_data_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAPARI_COVID_ATTENTION_HOME", str(tmp_path / "home"))
    with AnnotationStore() as store:
        assert store.root == tmp_path / "home" / "annotations"
        assert (store.root / "index.sqlite").is_file() and (store.root / "masks").is_dir()


def test_saves_from_threads_and_two_store_objects_all_land(tmp_path, phantom) -> None:
    root = tmp_path / "store"
    stores = [AnnotationStore(root), AnnotationStore(root)]
    case_id = stores[0].open_case(phantom.volume).id
    errors: list[BaseException] = []
    saved: list[int] = []

    def save_many(store: AnnotationStore, offset: int) -> None:
        try:
            for z in range(offset, SHAPE[0], 4):
                mask = edited(phantom.infection_mask, z)
                saved.append(store.save_version(case_id, mask, annotator=f"t{offset}").id)
        except BaseException as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=save_many, args=(stores[i % 2], i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(saved) == [v.id for v in stores[1].history(case_id)] and len(saved) == SHAPE[0]
    for store in stores:
        store.close()


# ----------------------------------------------------------------- no identifiers


def write_identified_series(folder: Path, n: int = 6, size: int = 32) -> None:
    """A tiny axial CT series whose headers carry a patient's name, ID and birth date."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(n):
        ds = Dataset()
        ds.PatientName, ds.PatientID = "Doe^Jane", "PID-12345"
        ds.PatientBirthDate, ds.StudyDate, ds.AccessionNumber = "19610422", "20200315", "ACC-98765"
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, generate_uid(), "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-20.0, -20.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.25, 1.25], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = rng.integers(0, 1400, size=(size, size), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)


IDENTIFIERS = (b"Jane", b"PID-12345", b"19610422", b"20200315", b"ACC-98765")


def readable_views(path: Path) -> list[tuple[bytes, bool]]:
    """(bytes, compressed?) for the file and for the decompressed contents of zip/gzip files."""
    raw = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            members = [(archive.read(name), False) for name in names]
        return [(raw, True), (" ".join(names).encode(), False), *members]
    if raw[:2] == b"\x1f\x8b":
        return [(raw, True), (gzip.decompress(raw), False)]
    return [(raw, False)]


def identifiers_in(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for view, compressed in readable_views(path):
            # Compressed bytes are near-random: a 3-byte token would match by chance there.
            tokens = IDENTIFIERS if compressed else (*IDENTIFIERS, b"Doe")
            found += [f"{token.decode()} in {path.name}" for token in tokens if token in view]
    return found


def test_no_patient_identifier_reaches_any_stored_or_exported_byte(tmp_path) -> None:
    series = tmp_path / "series"
    write_identified_series(series)
    assert pydicom.dcmread(next(series.iterdir())).PatientName == "Doe^Jane"
    volume = load_ct(series)
    root = tmp_path / "store"
    store = AnnotationStore(root)
    case = store.open_case(volume)
    assert case.source_name == f"DICOM series {volume.identity[:8]}"  # not the folder's name
    mask = (volume.hu > 0).astype(np.uint8)
    store.set_original(case.id, mask, model="demo")
    store.save_version(case.id, edited(mask, 1), annotator="ann", note="fixed the apex")
    store.mark_reviewed(case.id, annotator="ann", label="COVID-19")
    export = store.export_final(case.id, tmp_path / "final.nii.gz")
    assert (root / "index.sqlite-wal").is_file()
    assert identifiers_in([p for p in root.rglob("*") if p.is_file()] + [export]) == []
    store.close()  # checkpoints the WAL into the database file
    assert identifiers_in([p for p in root.rglob("*") if p.is_file()]) == []


# ------------------------------------------------------------------ crash safety


def next_line(lines: queue.Queue, stderr: Path, timeout: float = 30.0) -> str:
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"the crash-test writer stopped answering:\n{stderr.read_text()}")


def record_save(line: str, reported: dict[int, str]) -> bool:
    """Note a "saved <version_id> <sha256>" line; False for any other line."""
    word, *fields = line.split()
    if word != "saved":
        return False
    reported[int(fields[0])] = fields[1]
    return True


def kill_writers_at_random(
    root: Path, kills: int, shape: tuple[int, int, int], delay_s: tuple[float, float], seed: int
) -> dict[int, str]:
    """Fork ``kills`` writers one after another and SIGKILL each at a random moment.

    Each is killed a random ``delay_s`` after it started (k = 0) or after its k-th reported
    save (k = 1, 2): anywhere in opening, hashing, writing, renaming or committing.
    Returns the reported saves {version_id: sha256}.
    """
    rng = np.random.default_rng(seed)
    stderr = root.parent / "writer-stderr.txt"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, str(WRITER), str(root), *map(str, shape)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
        )
    lines: queue.Queue = queue.Queue()

    def forward() -> None:
        for line in process.stdout:
            lines.put(line.strip())

    threading.Thread(target=forward, daemon=True).start()
    reported: dict[int, str] = {}
    running = None  # the writer's pid until its exit is reported (then the pid may be reused)
    try:
        for i in range(kills):
            process.stdin.write(f"go {seed * 100000 + i}\n")
            process.stdin.flush()
            word, pid = next_line(lines, stderr).split()
            assert word == "pid"
            running = int(pid)
            for _ in range(int(rng.integers(0, 3))):
                line = next_line(lines, stderr)
                assert record_save(line, reported), f"{line}\n{stderr.read_text()}"
            time.sleep(rng.uniform(*delay_s))
            os.kill(int(pid), signal.SIGKILL)
            while record_save(line := next_line(lines, stderr), reported):
                pass
            if line.startswith(f"exit {pid} "):
                running = None
            assert line == f"exit {pid} -9", f"{line}\n{stderr.read_text()}"
    finally:
        if running is not None:  # a failed run must not leave a writer saving forever
            os.kill(running, signal.SIGKILL)
        process.stdin.close()
        process.wait(timeout=30)
    return reported


def assert_store_intact(root: Path, reported: dict[int, str]) -> dict:
    with AnnotationStore(root) as store:
        assert store.problems == ()
        assert store.check(full=True) == []
        (case,) = store.cases()
        history = {v.id: v for v in store.history(case.id)}
        for version_id, sha in reported.items():
            assert history[version_id].sha256 == sha
            assert mask_digest(store.load_version(case.id, version_id)) == sha
        referenced = {v.file for v in history.values()}
    db = sqlite3.connect(root / "index.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    files = [p.name for p in (root / "masks").iterdir()]
    return {
        "versions": len(history),
        "orphans": len([f for f in files if not f.startswith(TEMP_PREFIX) and f not in referenced]),
        "temporary": len([f for f in files if f.startswith(TEMP_PREFIX)]),
    }


def run_crash_test(
    tmp_path: Path, kills: int, shape: tuple[int, int, int], delay_s: tuple[float, float]
) -> None:
    root = tmp_path / "store"
    start = time.perf_counter()
    reported = kill_writers_at_random(root, kills, shape, delay_s, seed=1)
    counts = assert_store_intact(root, reported)
    print(
        f"\ncrash test: {kills} SIGKILLs, {len(reported)} saves reported and intact, "
        f"{counts['versions']} versions stored, {counts['orphans']} orphan mask files, "
        f"{counts['temporary']} temporary files, {time.perf_counter() - start:.1f} s"
    )
    assert len(reported) >= kills // 2  # the kills landed among saves, not only at startup
    assert counts["versions"] >= len(reported)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash-test writer forks")
def test_saves_survive_sigkill_at_random_moments(tmp_path) -> None:
    run_crash_test(tmp_path, kills=60, shape=(16, 64, 64), delay_s=(0.005, 0.080))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash-test writer forks")
def test_saves_of_large_masks_survive_many_sigkills(tmp_path) -> None:
    # Making and saving one mask takes ~80 ms here: the kills spread over whole saves.
    run_crash_test(tmp_path, kills=200, shape=(48, 256, 256), delay_s=(0.0, 0.25))


def test_kept_scan_comes_back_verified_and_without_header(tmp_path):
    from napari_covid_attention.data.synthetic import generate_phantom

    volume = generate_phantom(3, shape=(24, 48, 48)).volume
    store = AnnotationStore(tmp_path / "store")
    case = store.open_case(volume)
    assert store.load_scan(case.id) is None
    path = store.keep_scan(case.id, volume)
    kept = store.load_scan(case.id)
    np.testing.assert_array_equal(kept.hu, volume.hu)
    np.testing.assert_allclose(kept.affine, volume.affine)
    assert kept.identity == case.identity
    with np.load(path, allow_pickle=False) as archive:
        assert list(archive.keys()) == ["hu"]
