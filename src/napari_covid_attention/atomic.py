"""Files that are complete or absent, never half written: the one way the plugin writes.

A temporary file in the target's folder is written, flushed to disk, renamed over the
target, and the folder itself is synced, so a crash at any moment leaves either the old
file or the new one. The rename replaces a symbolic link at the target itself: a link is
never followed to overwrite a file elsewhere. The file gets the mode a plain ``open()``
would give it (0666 less the umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path to write; on leaving the block it replaces ``target`` durably.

    ``suffix`` defaults to the target's own (writers such as nibabel choose the format,
    e.g. gzip, from it). On an exception the temporary file is removed and ``target`` is
    untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _create_temp(target.parent, suffix if suffix is not None else "".join(target.suffixes))
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def _create_temp(folder: Path, suffix: str) -> Path:
    """A new empty file in ``folder``, created exclusively (never through an existing link)
    with mode 0666 so that the umask decides, as for any file the user's tools write."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temp = folder / f"{TEMP_PREFIX}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(temp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return temp
    raise FileExistsError(f"no free temporary file name in {folder}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[dict], fieldnames: list[str], **options) -> None:
    """A CSV with a header; ``options`` go to ``csv.DictWriter`` (e.g. ``extrasaction``)."""
    with atomic_path(path) as temp, open(temp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, **options)
        writer.writeheader()
        writer.writerows(rows)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or new entry in ``folder`` durable (POSIX; Windows has no directory fsync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
