"""The annotation store: every infection mask a model predicted or an annotator saved, kept forever.

Layout under the store root (default ``data_home()/"annotations"``)::

    index.sqlite (+ -wal, -shm)   cases, versions, reviews (SQLite in WAL mode; index.py)
    masks/<sha256>.npz            one file per distinct mask content (files.py)
    scans/<identity>.npz          a copy of a case's voxels (int16 HU, no header) kept for
                                  fine-tuning, so training never depends on where the
                                  original DICOM folder or NIfTI file went

Per case (keyed by :attr:`CTVolume.identity`, a hash of geometry and voxels, never by a
patient identifier) the store keeps the model's ``original`` mask, written once and never
replaced, and an append-only history of versions saved by annotators. The case's ``final``
mask is its latest saved version, or the original when nobody saved one. Nothing is ever
deleted: restoring an old version saves its mask again as a new version.

Durability: a mask file is complete on disk (fsync, rename, directory fsync) before the row
naming it is committed, so a crash at any moment leaves at worst an unreferenced file (kept:
harmless, and deleting it could race another process between its rename and its commit),
never a row without its file. Loading a version re-hashes the mask, so damage done outside
the store is reported instead of being shown or trained on.

Threads and processes: one connection per store object, serialised by a lock, so the GUI may
save from a worker thread; SQLite's locking (with a busy timeout) serialises writers from
several processes. Mask files are written outside the lock, so reads are not held up by a
large save.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from napari_covid_attention.annotations.files import (
    AnnotationStoreError,
    DamagedMaskError,
    as_mask,
    mask_digest,
    os_error,
    read_mask,
    remove_stale_temp_files,
    store_writes,
    write_mask,
    write_npz_atomic,
)
from napari_covid_attention.annotations.index import (
    FINAL_SQL,
    ORIGINAL_SQL,
    Case,
    Version,
    case_from_row,
    connect,
    version_from_row,
)
from napari_covid_attention.atomic import fsync_dir
from napari_covid_attention.io.nifti import save_nifti
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.paths import data_home
from napari_covid_attention.training.metrics import dice as foreground_dice  # one Dice everywhere

MAX_TEXT = 500  # names, labels and notes are short; a pasted document is a mistake


def default_root() -> Path:
    return data_home() / "annotations"


class AnnotationStore:
    """Versioned infection masks per scan; see the module docstring for the guarantees.

    ``problems`` lists, after opening, versions whose mask file is missing (see ``check``).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.masks_dir = self.root / "masks"
        self.scans_dir = self.root / "scans"
        self._lock = threading.RLock()
        self._original_cache: tuple[str, np.ndarray] | None = None
        self._create_folders()
        self._db = connect(self.root / "index.sqlite", self.masks_dir)
        self.problems: tuple[str, ...] = tuple(self.check())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ cases

    def open_case(self, volume: CTVolume, *, source_name: str | None = None) -> Case:
        """The case of this scan, created on first use with the scan's geometry.

        ``source_name`` defaults to a neutral description such as "DICOM series 3fa2b1c0"
        (the kind of source and the start of the scan's identity), never a file or folder
        name: folders and files are often named after the patient. It is recorded when the
        case is created. No DICOM metadata is stored.
        """
        name = _source_description(volume) if source_name is None else source_name
        ornt = volume.source_ornt
        row = (
            volume.identity,
            name,
            json.dumps(volume.shape),
            json.dumps(volume.affine.tolist()),
            None if ornt is None else json.dumps(np.asarray(ornt).tolist()),
            _now(),
        )
        with self._writing():
            self._db.execute(
                "INSERT OR IGNORE INTO cases"
                " (identity, source_name, shape, affine, source_ornt, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            return self._case_where("identity = ?", volume.identity)

    def find_case(self, volume: CTVolume) -> Case | None:
        """The case of this scan (same voxels and geometry, from any file), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM cases WHERE identity = ?", (volume.identity,)
            ).fetchone()
            return None if row is None else self._case(row)

    def get_case(self, case_id: int) -> Case:
        with self._lock:
            return self._case_where("id = ?", case_id)

    def cases(self) -> list[Case]:
        with self._lock:
            return [self._case(row) for row in self._db.execute("SELECT * FROM cases ORDER BY id")]

    def reviewed_cases(self) -> list[Case]:
        """Cases an annotator confirmed: fine-tuning trains on their final masks and labels."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM cases WHERE reviewed = 1 ORDER BY id")
            return [self._case(row) for row in rows]

    def mark_reviewed(
        self, case_id: int, *, annotator: str, label: str | None = None, reviewed: bool = True
    ) -> Case:
        """Set (or clear) the reviewed flag; ``label`` (e.g. "COVID-19") replaces the stored one.

        Every call is also logged, with the annotator and the final version they saw.
        """
        annotator = _text(annotator, "the annotator's name")
        label = None if label is None else _text(label, "the diagnosis label")
        with self._writing():
            self._case_where("id = ?", case_id)
            final = self._final(case_id)
            if reviewed and final is None:
                raise AnnotationStoreError("Save a mask for this case before marking it reviewed.")
            now, seen = _now(), None if final is None else final.id
            self._db.execute(
                "INSERT INTO reviews (case_id, created, annotator, reviewed, label, version_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (case_id, now, annotator, int(reviewed), label, seen),
            )
            self._db.execute(
                "UPDATE cases SET reviewed = ?, label = COALESCE(?, label), reviewed_by = ?,"
                " reviewed_at = ? WHERE id = ?",
                (int(reviewed), label, annotator, now, case_id),
            )
            return self._case_where("id = ?", case_id)

    def dice_original_final(self, case_id: int) -> float | None:
        """Dice(original, final): 1.0 means the annotators changed nothing; None: no original."""
        return self.get_case(case_id).dice

    # --------------------------------------------------------------------- versions

    def set_original(self, case_id: int, mask: np.ndarray, *, model: str) -> Version:
        """Store the model's prediction once; the same mask again is a no-op, another is refused."""
        model = _text(model, "the model name")
        mask = _fit(self.get_case(case_id), mask)
        digest = mask_digest(mask)
        existing = self._original(case_id)
        if existing is not None:
            return _same_original(existing, digest)
        with store_writes(self.root):
            file = write_mask(self.masks_dir, mask, digest)  # durable before any row names it
        with self._writing():
            existing = self._original(case_id)
            if existing is not None:  # another process stored one meanwhile
                return _same_original(existing, digest)
            final = self._final(case_id)
            dice = 1.0 if final is None else foreground_dice(mask, self._read(final))
            version = self._insert(case_id, "original", mask, digest, file, model=model)
            self._db.execute("UPDATE cases SET dice = ? WHERE id = ?", (dice, case_id))
            return version

    def save_version(
        self, case_id: int, mask: np.ndarray, *, annotator: str, note: str = ""
    ) -> Version:
        """Save an annotator's mask as the case's new final version.

        A mask identical to the current final (latest version, or the original) creates no
        new version: the existing one is returned, so saving twice does not pad the history.
        """
        annotator = _text(annotator, "the annotator's name")
        note = _text(note, "the note", empty=True)
        return self._save(case_id, mask, "edit", annotator=annotator, note=note)

    def restore(self, case_id: int, version_id: int, *, annotator: str) -> Version:
        """Make an earlier version final again by saving its mask as a new version."""
        annotator = _text(annotator, "the annotator's name")
        mask = self.load_version(case_id, version_id)
        note = f"restored version {version_id}"
        return self._save(
            case_id, mask, "restore", annotator=annotator, note=note, restored_from=version_id
        )

    def history(self, case_id: int) -> list[Version]:
        """Every stored version of the case (the original included), oldest first."""
        with self._lock:
            self._case_where("id = ?", case_id)
            rows = self._db.execute(
                "SELECT * FROM versions WHERE case_id = ? ORDER BY id", (case_id,)
            )
            return [version_from_row(row) for row in rows]

    def load_version(self, case_id: int, version_id: int) -> np.ndarray:
        """A version's mask, verified against its sha256 (DamagedMaskError otherwise)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM versions WHERE id = ? AND case_id = ?", (version_id, case_id)
            ).fetchone()
        if row is None:
            raise AnnotationStoreError(f"Case {case_id} has no mask version {version_id}.")
        return self._read(version_from_row(row))

    def latest(self, case_id: int) -> np.ndarray:
        """The case's final mask."""
        final = self._final(case_id)
        if final is None:
            raise AnnotationStoreError(f"Case {case_id} has no saved mask yet.")
        return self._read(final)

    def keep_scan(self, case_id: int, volume: CTVolume) -> Path:
        """Keep the scan's voxels with its case (once; slow for big scans: call it off the GUI thread).

        Only the voxel array is written: geometry is in the index and no header or patient
        data goes to disk.
        """
        case = self.get_case(case_id)
        if volume.identity != case.identity:
            raise AnnotationStoreError(f"This scan is not the scan of case {case_id}.")
        target = self.scans_dir / f"{case.identity}.npz"
        if not target.is_file():
            with store_writes(self.root):
                self.scans_dir.mkdir(exist_ok=True)
                write_npz_atomic(target, hu=np.ascontiguousarray(volume.hu))
        return target

    def load_scan(self, case_id: int) -> CTVolume | None:
        """The kept scan of a case (verified against its identity), or None if none was kept."""
        case = self.get_case(case_id)
        path = self.scans_dir / f"{case.identity}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                hu = archive["hu"]
        except Exception as exc:  # a damaged zip raises many types
            raise DamagedMaskError(f"The kept scan of case {case_id} is damaged; open the scan again to re-keep it.") from exc
        volume = CTVolume(hu=hu, affine=case.affine, source_path=case.source_name, source_ornt=case.source_ornt)
        if volume.identity != case.identity:
            raise DamagedMaskError(f"The kept scan of case {case_id} does not match the case; open the scan again to re-keep it.")
        return volume

    def export_final(self, case_id: int, path: str | Path) -> Path:
        """Write the final mask as NIfTI on the scan's own voxel grid (overlays the source)."""
        case = self.get_case(case_id)
        return save_nifti(path, self.latest(case_id), case.affine, source_ornt=case.source_ornt)

    def mask_path(self, version: Version) -> Path:
        return self.masks_dir / version.file

    def check(self, *, full: bool = False) -> list[str]:
        """Sentences about versions whose mask file is missing (``full``: or fails its hash)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM versions ORDER BY id").fetchall()
        problems = []
        for version in map(version_from_row, rows):
            if not full and self.mask_path(version).is_file():
                continue
            try:
                self._read(version)
            except DamagedMaskError as exc:
                problems.append(f"Case {version.case_id}, version {version.id}: {exc}")
        return problems

    # -------------------------------------------------------------------- internals

    def _create_folders(self) -> None:
        try:
            self.masks_dir.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.root)
        except OSError as exc:
            raise os_error(exc, self.root) from exc
        remove_stale_temp_files(self.masks_dir)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction; taking SQLite's write lock first makes reads inside current."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _save(
        self,
        case_id: int,
        mask: np.ndarray,
        kind: str,
        *,
        annotator: str,
        note: str,
        restored_from: int | None = None,
    ) -> Version:
        case = self.get_case(case_id)
        mask = _fit(case, mask)
        digest = mask_digest(mask)
        if case.final is not None and case.final.sha256 == digest:
            return case.final
        original = self._original(case_id)
        dice = self._dice_with_original(original, mask)
        with store_writes(self.root):
            file = write_mask(self.masks_dir, mask, digest)  # durable before any row names it
        with self._writing():
            final = self._final(case_id)
            if final is not None and final.sha256 == digest:  # the same save from elsewhere
                return final
            if self._original(case_id) != original:  # an original arrived meanwhile
                original = self._original(case_id)
                dice = self._dice_with_original(original, mask)
            version = self._insert(
                case_id, kind, mask, digest, file,
                annotator=annotator, note=note, restored_from=restored_from,
            )
            self._db.execute("UPDATE cases SET dice = ? WHERE id = ?", (dice, case_id))
            return version

    def _dice_with_original(self, original: Version | None, mask: np.ndarray) -> float | None:
        """Dice against the original, kept in memory between saves (it never changes)."""
        if original is None:
            return None
        if self._original_cache is None or self._original_cache[0] != original.sha256:
            self._original_cache = (original.sha256, self._read(original))
        return foreground_dice(self._original_cache[1], mask)

    def _insert(
        self,
        case_id: int,
        kind: str,
        mask: np.ndarray,
        digest: str,
        file: str,
        *,
        annotator: str | None = None,
        model: str | None = None,
        note: str = "",
        restored_from: int | None = None,
    ) -> Version:
        cursor = self._db.execute(
            "INSERT INTO versions (case_id, kind, created, annotator, model, note, sha256, shape,"
            " dtype, file, restored_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                case_id, kind, _now(), annotator, model, note, digest,
                json.dumps(mask.shape), mask.dtype.str, file, restored_from,
            ),
        )
        row = self._db.execute("SELECT * FROM versions WHERE id = ?", (cursor.lastrowid,))
        return version_from_row(row.fetchone())

    def _read(self, version: Version) -> np.ndarray:
        return read_mask(self.mask_path(version), version.sha256, version.shape)

    def _final(self, case_id: int) -> Version | None:
        with self._lock:
            row = self._db.execute(FINAL_SQL, (case_id,)).fetchone()
        return None if row is None else version_from_row(row)

    def _original(self, case_id: int) -> Version | None:
        with self._lock:
            row = self._db.execute(ORIGINAL_SQL, (case_id,)).fetchone()
        return None if row is None else version_from_row(row)

    def _case_where(self, condition: str, value: object) -> Case:
        """The case matching a trusted SQL ``condition`` (lock held by the caller)."""
        row = self._db.execute(f"SELECT * FROM cases WHERE {condition}", (value,)).fetchone()
        if row is None:
            raise AnnotationStoreError(f"The annotation store has no case {value}.")
        return self._case(row)

    def _case(self, row: sqlite3.Row) -> Case:
        case_id = row["id"]
        return case_from_row(row, self._original(case_id), self._final(case_id), self.masks_dir)


def _fit(case: Case, mask: np.ndarray) -> np.ndarray:
    """The mask in stored form, refused unless it lies on the case's voxel grid."""
    stored = as_mask(mask)
    if stored.shape != case.shape:
        raise AnnotationStoreError(
            f"The mask's shape {stored.shape} does not match the scan's {case.shape}; "
            "masks are saved on the scan's own voxel grid."
        )
    return stored


def _same_original(existing: Version, digest: str) -> Version:
    if existing.sha256 != digest:
        raise AnnotationStoreError(
            "This case already has the model's original mask, which is never replaced; "
            "save a new version instead."
        )
    return existing


def _text(value: str, what: str, *, empty: bool = False) -> str:
    text = str(value).strip()
    if not text and not empty:
        raise AnnotationStoreError(f"Enter {what} first.")
    if len(text) > MAX_TEXT:
        raise AnnotationStoreError(f"{what.capitalize()} is longer than {MAX_TEXT} characters.")
    return text


def _source_description(volume: CTVolume) -> str:
    """The kind of source ("DICOM series", "NIfTI file" or "scan") and 8 hex digits of the voxel
    identity to tell cases apart: nothing of the path (often a patient's name) nor of the header."""
    kind = {"DICOM": "DICOM series", "NIfTI": "NIfTI file"}.get(volume.metadata.get("format"), "scan")
    return f"{kind} {volume.identity[:8]}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
