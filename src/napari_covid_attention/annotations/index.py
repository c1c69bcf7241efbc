"""The annotation store's SQLite index: schema, connection settings and row types.

Tables: ``cases`` (one per scan: identity hash, display name, geometry, review state,
Dice(original, final)), ``versions`` (every stored mask; append-only) and ``reviews`` (every
review decision; append-only). Triggers refuse UPDATE and DELETE on the append-only tables,
so "nothing is ever lost" holds even against a bug elsewhere in the plugin.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_covid_attention.annotations.files import (
    AnnotationStoreError,
    DamagedIndexError,
    busy,
    disk_full,
    mask_files,
    read_only,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY,
    identity TEXT NOT NULL UNIQUE,
    source_name TEXT,
    shape TEXT NOT NULL,
    affine TEXT NOT NULL,
    source_ornt TEXT,
    created TEXT NOT NULL,
    reviewed INTEGER NOT NULL DEFAULT 0,
    label TEXT,
    reviewed_by TEXT,
    reviewed_at TEXT,
    dice REAL
);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    kind TEXT NOT NULL CHECK (kind IN ('original', 'edit', 'restore')),
    created TEXT NOT NULL,
    annotator TEXT,
    model TEXT,
    note TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    shape TEXT NOT NULL,
    dtype TEXT NOT NULL,
    file TEXT NOT NULL,
    restored_from INTEGER REFERENCES versions(id)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_original_per_case ON versions(case_id)
    WHERE kind = 'original';
CREATE INDEX IF NOT EXISTS versions_by_case ON versions(case_id, id);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    created TEXT NOT NULL,
    annotator TEXT NOT NULL,
    reviewed INTEGER NOT NULL,
    label TEXT,
    version_id INTEGER REFERENCES versions(id)
);
CREATE TRIGGER IF NOT EXISTS versions_never_change BEFORE UPDATE ON versions
    BEGIN SELECT RAISE(ABORT, 'mask versions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS versions_never_deleted BEFORE DELETE ON versions
    BEGIN SELECT RAISE(ABORT, 'mask versions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS reviews_never_change BEFORE UPDATE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
CREATE TRIGGER IF NOT EXISTS reviews_never_deleted BEFORE DELETE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
"""

# The case's final mask: its latest non-original version, else the original.
FINAL_SQL = (
    "SELECT * FROM versions WHERE case_id = ? ORDER BY kind = 'original', id DESC LIMIT 1"
)
ORIGINAL_SQL = "SELECT * FROM versions WHERE case_id = ? AND kind = 'original'"


@dataclass(frozen=True)
class Version:
    """One stored mask of a case. Rows are append-only, so a Version never goes stale.

    ``kind`` is "original" (the model's prediction; ``model`` says which), "edit" (an
    annotator's save) or "restore" (an earlier version saved again; ``restored_from``).
    ``created`` is UTC ISO 8601; ``sha256`` hashes the mask's dtype, shape and voxels;
    ``file`` is the mask's file name under ``<root>/masks``.
    """

    id: int
    case_id: int
    kind: str
    created: str
    annotator: str | None
    model: str | None
    note: str
    sha256: str
    shape: tuple[int, int, int]
    dtype: str
    file: str
    restored_from: int | None


@dataclass(frozen=True, eq=False)
class Case:
    """A scan's annotation state, with the geometry to export its masks without the scan.

    ``affine`` maps voxel (z, y, x) to LPS mm and ``source_ornt`` is the source file's voxel
    orientation (see :mod:`napari_covid_attention.io.geometry`). ``label`` is the confirmed
    diagnosis class given at review; ``dice`` is Dice(original, final) on the foreground
    (label > 0), None until both exist. ``final_path`` is the final mask's file.
    """

    id: int
    identity: str
    source_name: str | None
    shape: tuple[int, int, int]
    affine: np.ndarray
    source_ornt: np.ndarray | None
    created: str
    reviewed: bool
    label: str | None
    reviewed_by: str | None
    reviewed_at: str | None
    dice: float | None
    original_id: int | None
    final: Version | None
    final_path: Path | None


SQLITE_HEADER = b"SQLite format 3\x00"
# Primary SQLite result codes (the low byte of extended codes).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


class _IndexConnection(sqlite3.Connection):
    """A connection whose SQLite errors about the store itself (busy, read-only, full,
    damaged) become one-sentence store errors; others (a bug's SQL) stay as they are."""

    index_path: Path

    def execute(self, *args):  # type: ignore[override]
        try:
            return super().execute(*args)
        except sqlite3.Error as exc:
            error = store_error(exc, self.index_path)
            if error is None:
                raise
            raise error from exc

    def executescript(self, script):  # type: ignore[override]
        try:
            return super().executescript(script)
        except sqlite3.Error as exc:
            error = store_error(exc, self.index_path)
            if error is None:
                raise
            raise error from exc


def store_error(exc: sqlite3.Error, path: Path) -> AnnotationStoreError | None:
    """The one-sentence store error for an SQLite error on the index at ``path`` (or None)."""
    root = path.parent
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    if code is None:  # Python < 3.11: only the message tells
        for words, guess in (
            ("locked", _BUSY), ("readonly", _READONLY), ("is full", _FULL), ("unable to open", _CANTOPEN),
            ("not a database", _NOTADB), ("malformed", _CORRUPT), ("disk i/o", _IOERR),
        ):
            if words in text:
                code = guess
                break
        else:
            return None
    code &= 0xFF
    if code in (_BUSY, _LOCKED):
        return busy(root)
    if code == _READONLY:
        return read_only(root)
    if code == _FULL:
        return disk_full(root)
    if code == _CANTOPEN:
        writable = os.access(root, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
        if not writable:
            return read_only(root)
        return AnnotationStoreError(f"The annotation index {path} cannot be opened ({exc}); check that its folder exists and is on a working disk.")
    if code == _IOERR:
        return AnnotationStoreError(f"The annotation store at {root} could not be read or written ({exc}); check the disk, then try again.")
    if code in (_CORRUPT, _NOTADB):
        return DamagedIndexError(f"The annotation index {path} is damaged ({exc}); restore it from a backup.")
    return None


def connect(path: Path, masks_dir: Path | None = None) -> sqlite3.Connection:
    """Open (creating if needed) and check the index; AnnotationStoreError if it is damaged.

    An index that is missing, empty (0 bytes) or not SQLite while ``masks_dir`` holds mask
    files is refused and left as it is: opening it would show an empty store and orphan
    every mask. Autocommit mode: writers issue BEGIN IMMEDIATE themselves. The connection
    may be used from any thread, one at a time (the store holds a lock around it).
    """
    _check_index_file(path, masks_dir)
    try:
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, factory=_IndexConnection
        )
    except sqlite3.Error as exc:
        error = store_error(exc, path)
        if error is None:
            raise
        raise error from exc
    db.index_path = path
    db.row_factory = sqlite3.Row
    try:
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")  # a committed save survives power loss too
        db.execute("PRAGMA foreign_keys = ON")
        _create_schema(db)
    except AnnotationStoreError:
        db.close()
        raise
    except sqlite3.DatabaseError as exc:
        db.close()
        raise DamagedIndexError(
            f"The annotation index {path} is damaged ({exc}); restore it from a backup."
        ) from exc
    except BaseException:
        db.close()
        raise
    return db


def _check_index_file(path: Path, masks_dir: Path | None) -> None:
    """Refuse an index that would open as an empty store beside stored masks, or a foreign file."""
    try:
        size = path.stat().st_size
        header = b""
        if size:
            with open(path, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        size, header = None, b""
    except OSError:
        return  # unreadable: SQLite's own error says why
    if size:
        if header != SQLITE_HEADER:
            kept = f" (the masks in {masks_dir} are kept)" if masks_dir is not None else ""
            raise DamagedIndexError(
                f"The annotation index {path} is damaged: it is not an annotation index (not an SQLite "
                f"database); restore it from a backup{kept}."
            )
        return
    masks = mask_files(masks_dir) if masks_dir is not None else []
    if masks:
        state = "missing" if size is None else "empty (0 bytes)"
        raise DamagedIndexError(
            f"The annotation index {path} is {state} but {masks_dir} holds {len(masks)} mask files: "
            "restore index.sqlite from a backup, or move the whole store folder aside to start an "
            "empty store (it was not replaced by an empty one)."
        )


def version_from_row(row: sqlite3.Row) -> Version:
    return Version(
        id=row["id"],
        case_id=row["case_id"],
        kind=row["kind"],
        created=row["created"],
        annotator=row["annotator"],
        model=row["model"],
        note=row["note"],
        sha256=row["sha256"],
        shape=tuple(json.loads(row["shape"])),
        dtype=row["dtype"],
        file=row["file"],
        restored_from=row["restored_from"],
    )


def case_from_row(
    row: sqlite3.Row, original: Version | None, final: Version | None, masks_dir: Path
) -> Case:
    ornt = row["source_ornt"]
    return Case(
        id=row["id"],
        identity=row["identity"],
        source_name=row["source_name"],
        shape=tuple(json.loads(row["shape"])),
        affine=np.asarray(json.loads(row["affine"]), dtype=float),
        source_ornt=None if ornt is None else np.asarray(json.loads(ornt), dtype=float),
        created=row["created"],
        reviewed=bool(row["reviewed"]),
        label=row["label"],
        reviewed_by=row["reviewed_by"],
        reviewed_at=row["reviewed_at"],
        dice=row["dice"],
        original_id=None if original is None else original.id,
        final=final,
        final_path=None if final is None else masks_dir / final.file,
    )


def _create_schema(db: sqlite3.Connection) -> None:
    """Create the tables once; refuse an index written by a newer version of the plugin."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise AnnotationStoreError(
            "The annotation store was written by a newer version of napari-covid-attention; "
            "update the plugin to open it."
        )
    if found < SCHEMA_VERSION:
        db.executescript(
            f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
        )
