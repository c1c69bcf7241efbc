"""The local copy of retrieved series, so that opening one again costs no network.

Layout: ``<data_home>/pacs-cache/<key>/series/*.dcm`` plus ``<key>/entry.json`` (server,
UIDs, size), where ``key`` is a hash of (server, study UID, series UID), so folder names
carry no identifiers. An entry is complete or absent: a retrieval writes into a
``.tmp-*`` folder and renames it to ``<key>`` only after the last instance is on disk, so
an interrupted or cancelled download never looks like a cached series. The cache is
capped in size (2 GiB by default, ``COVID_ATTENTION_PACS_CACHE_GB`` to change it); the
least recently used entries are removed first.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from napari_covid_attention.atomic import fsync_dir
from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.paths import data_home

CACHE_DIRNAME = "pacs-cache"
MAX_GB_ENV = "COVID_ATTENTION_PACS_CACHE_GB"
DEFAULT_MAX_BYTES = 2 * 1024**3
ENTRY_FILE = "entry.json"
SERIES_DIR = "series"
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
STALE_TEMP_S = 24 * 3600  # a temporary folder this old is left from a crash


def default_cache_root() -> Path:
    return data_home() / CACHE_DIRNAME


def default_max_bytes() -> int:
    """The size cap: ``COVID_ATTENTION_PACS_CACHE_GB`` (GiB, may be fractional) or 2 GiB."""
    text = os.environ.get(MAX_GB_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserFacingError(f"{MAX_GB_ENV} must be a size in GiB such as 2 or 0.5, not {text!r}.")
    return int(value * 1024**3)


def cache_key(server: str, study_uid: str, series_uid: str) -> str:
    """A folder name for one series of one server that says nothing about the patient."""
    return hashlib.sha256(f"{server.rstrip('/')}\n{study_uid}\n{series_uid}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CacheEntry:
    key: str
    folder: Path
    size_bytes: int
    last_used: float  # seconds since the epoch


class SeriesCache:
    """A folder of complete retrieved series, capped at ``max_bytes``."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)

    def series_folder(self, key: str) -> Path | None:
        """The cached series' folder of DICOM files, or None; a hit counts as a use."""
        entry = self.root / key
        marker = entry / ENTRY_FILE
        if not marker.is_file() or not (entry / SERIES_DIR).is_dir():
            return None
        try:
            os.utime(marker)  # least recently *used* goes first
        except OSError:
            pass
        return entry / SERIES_DIR

    def info(self, key: str) -> dict:
        """What ``entry.json`` says about a cached series (empty when unreadable)."""
        try:
            return json.loads((self.root / key / ENTRY_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @contextmanager
    def writing(self, key: str, info: dict) -> Iterator[Path]:
        """A temporary folder to write one series' files into; on leaving the block without
        an exception it becomes the entry ``key`` (with ``info`` in its entry.json) in one
        rename, then older entries are evicted to keep the cap. On an exception, including
        a generator's close (a cancel), the temporary folder is removed and nothing is cached.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserFacingError(f"Cannot create the PACS cache folder {self.root} ({exc.strerror or exc}).") from exc
        self._remove_stale()
        temp = self.root / f"{TEMP_PREFIX}{key}-{secrets.token_hex(4)}"
        series = temp / SERIES_DIR
        series.mkdir(parents=True)
        try:
            yield series
            fsync_dir(series)
            size = _folder_bytes(series)
            marker = temp / ENTRY_FILE
            marker.write_text(json.dumps({**info, "size_bytes": size, "stored": time.time()}, indent=2) + "\n")
            with open(marker, "rb") as handle:
                os.fsync(handle.fileno())
            self._commit(temp, self.root / key)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        self.evict(keep=key)

    def _commit(self, temp: Path, final: Path) -> None:
        try:
            os.rename(temp, final)
        except OSError:
            if not (final / ENTRY_FILE).is_file():  # not another process's complete copy
                raise
            shutil.rmtree(temp, ignore_errors=True)  # another process cached it first: keep theirs
        fsync_dir(self.root)

    def entries(self) -> list[CacheEntry]:
        """Complete entries, least recently used first."""
        found = []
        if not self.root.is_dir():
            return found
        for folder in self.root.iterdir():
            marker = folder / ENTRY_FILE
            if folder.name.startswith(".") or not marker.is_file():
                continue
            try:
                last_used = marker.stat().st_mtime
            except OSError:
                continue
            found.append(CacheEntry(folder.name, folder, _folder_bytes(folder), last_used))
        return sorted(found, key=lambda e: e.last_used)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits its cap; never ``keep``."""
        entries = self.entries()
        total = sum(e.size_bytes for e in entries)
        removed = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.key == keep:
                continue
            self.remove(entry.key)
            total -= entry.size_bytes
            removed.append(entry.key)
        return removed

    def remove(self, key: str) -> None:
        """Take an entry out of the cache: renamed away first, so it stops being complete at once."""
        entry = self.root / key
        trash = self.root / f"{TRASH_PREFIX}{key}-{secrets.token_hex(4)}"
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def clear(self) -> None:
        for entry in self.entries():
            self.remove(entry.key)

    def _remove_stale(self) -> None:
        """Temporary and trash folders left by a crash (old enough not to be in use)."""
        now = time.time()
        try:
            children = list(self.root.iterdir())
        except OSError:
            return
        for folder in children:
            if not folder.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                continue
            try:
                stale = folder.name.startswith(TRASH_PREFIX) or now - folder.stat().st_mtime > STALE_TEMP_S
            except OSError:
                continue
            if stale:
                shutil.rmtree(folder, ignore_errors=True)


def _folder_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
