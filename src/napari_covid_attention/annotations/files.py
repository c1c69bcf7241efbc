"""Mask files of the annotation store: content-addressed, written atomically, verified on read.

A mask file is ``<sha256>.npz`` (one uint8 array named ``mask``, zip-deflated) where the
sha256 is :func:`mask_digest` of the array, not of the file bytes. Identical masks therefore
share one file, and a file is never modified in place: it appears complete under its final
name (temporary file, fsync, rename, directory fsync) or not at all.
"""

from __future__ import annotations

import errno
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from napari_covid_attention.atomic import TEMP_PREFIX, atomic_path
from napari_covid_attention.errors import UserFacingError

MASK_DTYPE = np.dtype(np.uint8)
MASK_SUFFIX = ".npz"
# A temporary file this old cannot belong to a save still in progress in another process.
STALE_TEMP_SECONDS = 3600.0


class AnnotationStoreError(UserFacingError):
    """An annotation request that cannot be done; the message is one sentence for the user."""


class DamagedMaskError(AnnotationStoreError):
    """A stored mask file is missing or no longer holds the mask its hash names."""


class StoreBusyError(AnnotationStoreError):
    """Another program held the store's write lock for longer than the busy timeout."""


class StoreReadOnlyError(AnnotationStoreError):
    """The store's folder, index or masks cannot be written by this user."""


class StoreDiskFullError(AnnotationStoreError):
    """The disk (or quota) holding the store has no room left."""


class DamagedIndexError(AnnotationStoreError):
    """The index is missing, empty or not an index while mask files exist: never replaced."""


_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def busy(root: Path) -> StoreBusyError:
    return StoreBusyError(f"The annotation store at {root} is busy: another program is writing to it; try again.")


def read_only(root: Path) -> StoreReadOnlyError:
    return StoreReadOnlyError(
        f"The annotation store at {root} is read-only: choose a folder you can write to "
        "(or ask for write access to this one)."
    )


def disk_full(root: Path) -> StoreDiskFullError:
    return StoreDiskFullError(
        f"The disk holding the annotation store at {root} is full: free some space, then save again "
        "(nothing was saved, and everything saved before is intact)."
    )


def os_error(exc: OSError, root: Path) -> AnnotationStoreError:
    """The one-sentence store error for an OS error while writing under ``root``."""
    if exc.errno in _FULL_ERRNOS:
        return disk_full(root)
    if exc.errno in _READ_ONLY_ERRNOS or isinstance(exc, PermissionError):
        return read_only(root)
    reason = exc.strerror or exc.__class__.__name__
    return AnnotationStoreError(f"The annotation store at {root} could not be written ({reason}).")


@contextmanager
def store_writes(root: Path) -> Iterator[None]:
    """OS errors of the writes inside become one-sentence store errors."""
    try:
        yield
    except AnnotationStoreError:
        raise
    except OSError as exc:
        raise os_error(exc, root) from exc


def mask_files(folder: Path) -> list[Path]:
    """The complete mask files in ``folder`` (temporary files of saves in progress left out)."""
    try:
        return [p for p in folder.iterdir() if p.suffix == MASK_SUFFIX and not p.name.startswith(TEMP_PREFIX)]
    except OSError:
        return []


def as_mask(mask: np.ndarray) -> np.ndarray:
    """The (z, y, x) uint8 form every mask is stored and hashed in.

    Label values are kept as given (napari label layers often hold int32/int64 data), so
    the same labels in any integer dtype get the same hash; values outside 0-255 or
    fractional values are refused rather than silently wrapped or rounded.
    """
    array = np.asarray(mask)
    if array.ndim != 3:
        raise AnnotationStoreError(
            f"A mask must be a 3D (z, y, x) array, this one has {array.ndim} dimensions."
        )
    if array.dtype == MASK_DTYPE:
        return np.ascontiguousarray(array)
    if array.dtype == bool:
        return array.astype(MASK_DTYPE)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise AnnotationStoreError(f"A mask must hold integer labels, not {array.dtype} values.")
    fractional = np.issubdtype(array.dtype, np.floating) and np.any(array != np.round(array))
    if array.size and (fractional or array.min() < 0 or array.max() > 255):
        raise AnnotationStoreError("A mask must hold whole-number labels from 0 to 255.")
    return array.astype(MASK_DTYPE)


def mask_digest(mask: np.ndarray) -> str:
    """sha256 of a stored-form mask's dtype, shape and voxels (the same array -> the same key)."""
    digest = hashlib.sha256()
    digest.update(f"{mask.dtype.str}{tuple(mask.shape)}".encode())
    digest.update(np.ascontiguousarray(mask).tobytes())
    return digest.hexdigest()


def write_mask(folder: Path, mask: np.ndarray, digest: str) -> str:
    """Make ``folder/<digest>.npz`` hold ``mask`` durably; returns the file name.

    An intact file of the same content is reused; a damaged one is replaced by a good copy.
    """
    name = digest + MASK_SUFFIX
    target = folder / name
    if target.exists():
        try:
            read_mask(target, digest, mask.shape)
            return name
        except DamagedMaskError:
            pass  # rewritten below, atomically, with the same content
    write_npz_atomic(target, mask=mask)
    return name


def write_npz_atomic(target: Path, **arrays: np.ndarray) -> None:
    """Write a zip-deflated ``.npz`` so that ``target`` is complete or absent, never partial."""
    with atomic_path(target, suffix=MASK_SUFFIX) as temp:
        np.savez_compressed(temp, **arrays)


def read_mask(path: Path, digest: str, shape: tuple[int, ...]) -> np.ndarray:
    """Load a mask file and prove it is the mask it was saved as (dtype, shape, sha256)."""
    if not path.is_file():
        raise DamagedMaskError(f"The mask file {path.name} is missing from the annotation store.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            mask = archive["mask"]
    except Exception as exc:  # a damaged zip raises many types (BadZipFile, zlib.error, ...)
        raise _damaged(path) from exc
    if mask.dtype != MASK_DTYPE or tuple(mask.shape) != tuple(shape) or mask_digest(mask) != digest:
        raise _damaged(path)
    return mask


def remove_stale_temp_files(folder: Path) -> None:
    """Delete temporary files left by saves that crashed mid-write (never a complete mask)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for path in folder.glob(TEMP_PREFIX + "*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass  # another process removed it first, or a read-only folder: harmless leftovers


def _damaged(path: Path) -> DamagedMaskError:
    return DamagedMaskError(
        f"The mask file {path.name} was changed or damaged outside the annotation store; "
        "restore an earlier version of this case."
    )
