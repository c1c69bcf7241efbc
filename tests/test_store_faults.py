"""The annotation store under faults: busy, read-only, disk full, an emptied or foreign index.

Each is one sentence of a UserFacingError subclass, never a raw sqlite3/OS error, and
nothing already stored is lost or hidden. Root ignores file permissions, so read-only
stores are simulated (SQLite's read-only open mode, or an OS call raising EACCES/EROFS).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from napari_covid_attention import atomic
from napari_covid_attention.annotations import AnnotationStore, AnnotationStoreError
from napari_covid_attention.annotations import files as files_module
from napari_covid_attention.annotations import index as index_module
from napari_covid_attention.annotations.files import TEMP_PREFIX
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.volume import CTVolume

SHAPE = (4, 8, 8)


def volume(seed: int = 0) -> CTVolume:
    hu = np.random.default_rng(seed).integers(-1000, 400, SHAPE).astype(np.int16)
    return CTVolume(hu=hu, affine=np.diag([2.0, 1.0, 1.0, 1.0]))


def mask(value: int = 1) -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8)
    out[1:3, 2:6, 2:6] = value
    return out


def one_sentence(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, UserFacingError) and "\n" not in text and text.endswith(".")


@pytest.fixture()
def stored(tmp_path: Path) -> tuple[Path, int]:
    """A closed store with one case and its original mask."""
    root = tmp_path / "store"
    with AnnotationStore(root) as store:
        case = store.open_case(volume())
        store.set_original(case.id, mask(), model="demo")
    return root, case.id


def read_only_sqlite(monkeypatch) -> None:
    """Every SQLite connection opens read-only, as for a file the user cannot write."""
    real = sqlite3.connect

    def connect(database, *args, **kwargs):
        kwargs.pop("uri", None)
        return real(f"file:{Path(database)}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)


# -------------------------------------------------------------------------- busy


def test_a_store_locked_by_another_writer_is_busy_not_a_raw_error(stored, monkeypatch) -> None:
    root, case_id = stored
    monkeypatch.setattr(index_module, "BUSY_TIMEOUT_S", 0.1)
    with AnnotationStore(root) as store:
        other = sqlite3.connect(root / "index.sqlite", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        try:
            with pytest.raises(AnnotationStoreError, match=r"is busy: another program is writing to it; try again") as info:
                store.save_version(case_id, mask(2), annotator="ann")
            with pytest.raises(AnnotationStoreError, match="busy"):
                store.mark_reviewed(case_id, annotator="ann")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert type(info.value).__name__ == "StoreBusyError" and one_sentence(info.value)
        assert str(root) in str(info.value)
        store.save_version(case_id, mask(2), annotator="ann")  # works once the other is done
        assert len(store.history(case_id)) == 2


# --------------------------------------------------------------------- read-only


def test_a_read_only_store_is_read_only_not_damaged(stored, monkeypatch) -> None:
    root, case_id = stored
    read_only_sqlite(monkeypatch)
    with pytest.raises(AnnotationStoreError, match="is read-only: choose a folder you can write to") as info:
        with AnnotationStore(root) as store:
            assert [c.id for c in store.cases()] == [case_id]  # what is there can still be read
            store.save_version(case_id, mask(2), annotator="ann")
    assert "damaged" not in str(info.value) and "backup" not in str(info.value)
    assert type(info.value).__name__ == "StoreReadOnlyError" and one_sentence(info.value)


def test_a_read_only_index_in_rollback_journal_mode_is_read_only_not_damaged(stored, monkeypatch) -> None:
    """Switching such an index to WAL is a write: it failed as 'damaged, restore from a backup'."""
    root, _ = stored
    db = sqlite3.connect(root / "index.sqlite")
    db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    read_only_sqlite(monkeypatch)
    with pytest.raises(AnnotationStoreError, match="is read-only") as info:
        AnnotationStore(root).close()
    assert "damaged" not in str(info.value)
    assert type(info.value).__name__ == "StoreReadOnlyError" and one_sentence(info.value)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.EPERM])
def test_a_read_only_masks_folder_is_read_only(stored, monkeypatch, code) -> None:
    root, case_id = stored

    def refuse(*args, **kwargs):
        raise OSError(code, "Permission denied", str(root / "masks"))

    with AnnotationStore(root) as store:
        monkeypatch.setattr(atomic, "_create_temp", refuse)
        with pytest.raises(AnnotationStoreError, match="is read-only: choose a folder you can write to") as info:
            store.save_version(case_id, mask(2), annotator="ann")
        with pytest.raises(AnnotationStoreError, match="is read-only"):
            store.keep_scan(case_id, volume())
        monkeypatch.undo()
        assert len(store.history(case_id)) == 1
    assert type(info.value).__name__ == "StoreReadOnlyError" and one_sentence(info.value)


def test_a_store_folder_that_cannot_be_created_is_read_only(tmp_path, monkeypatch) -> None:
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(AnnotationStoreError, match="is read-only: choose a folder you can write to") as info:
        AnnotationStore(tmp_path / "store")
    assert type(info.value).__name__ == "StoreReadOnlyError" and one_sentence(info.value)


# --------------------------------------------------------------------- disk full


def test_a_full_disk_is_named_and_leaves_no_partial_file(stored, monkeypatch) -> None:
    root, case_id = stored

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with AnnotationStore(root) as store:
        monkeypatch.setattr(files_module.np, "savez_compressed", full)
        with pytest.raises(AnnotationStoreError, match="The disk holding .* is full") as info:
            store.save_version(case_id, mask(2), annotator="ann")
        with pytest.raises(AnnotationStoreError, match="is full"):
            store.keep_scan(case_id, volume())
        monkeypatch.undo()
        assert len(store.history(case_id)) == 1
        store.save_version(case_id, mask(2), annotator="ann")  # space freed: it works
    assert type(info.value).__name__ == "StoreDiskFullError" and one_sentence(info.value)
    assert not list((root / "masks").glob(TEMP_PREFIX + "*"))


def test_a_full_disk_under_sqlite_is_named(stored, monkeypatch) -> None:
    root, case_id = stored
    with AnnotationStore(root) as store:
        store._db.execute("PRAGMA max_page_count = 1")  # SQLite's own "database or disk is full"
        with pytest.raises(AnnotationStoreError, match="is full") as info:
            for value in range(2, 60):
                store.save_version(case_id, mask(value), annotator="ann" * 100, note="n" * 400)
    assert type(info.value).__name__ == "StoreDiskFullError" and one_sentence(info.value)


# --------------------------------------------------------- an emptied or foreign index


def test_a_zero_byte_index_beside_stored_masks_is_refused_not_emptied(stored) -> None:
    root, _ = stored
    index = root / "index.sqlite"
    index.write_bytes(b"")
    masks_before = sorted(p.name for p in (root / "masks").iterdir())
    with pytest.raises(AnnotationStoreError, match="empty") as info:
        AnnotationStore(root)
    assert one_sentence(info.value) and "backup" in str(info.value)
    assert index.stat().st_size == 0  # not turned into an empty store
    assert sorted(p.name for p in (root / "masks").iterdir()) == masks_before


def test_a_missing_index_beside_stored_masks_is_refused(stored) -> None:
    root, _ = stored
    (root / "index.sqlite").unlink()
    with pytest.raises(AnnotationStoreError, match="missing") as info:
        AnnotationStore(root)
    assert one_sentence(info.value) and not (root / "index.sqlite").exists()


def test_a_foreign_file_as_index_is_refused_with_how_to_recover(stored) -> None:
    root, _ = stored
    (root / "index.sqlite").write_bytes(b"PK\x03\x04 not a database" * 50)
    with pytest.raises(AnnotationStoreError, match="not an annotation index") as info:
        AnnotationStore(root)
    assert one_sentence(info.value) and "backup" in str(info.value)


def test_a_zero_byte_index_of_a_store_without_masks_starts_empty(tmp_path) -> None:
    root = tmp_path / "store"
    (root / "masks").mkdir(parents=True)
    (root / "index.sqlite").write_bytes(b"")
    with AnnotationStore(root) as store:
        assert store.cases() == []
        store.open_case(volume())
