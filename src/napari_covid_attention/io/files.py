"""Opening input files safely: regular files only, and clear reasons when one cannot be read.

A named pipe (FIFO) blocks ``open()`` until someone writes to it, so a folder scan that
opened every entry could wait forever; sockets and devices are no scans either. Every
reader therefore opens through :func:`open_regular`, which opens without blocking, checks
with ``fstat`` that the open file is a regular file (no race between a check and the
open) and only then hands out a file object (O_NONBLOCK means nothing for a regular
file, so it reads as usual). Folder scans skip what is
not a regular file silently; an input given directly is refused with one sentence
(:func:`check_input_file`), as is a file or folder the user may not read.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

from napari_covid_attention.io.volume import CTLoadError

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


class NotRegularFile(OSError):
    """The path is a pipe, socket, device or folder; ``kind`` says which ("a socket")."""

    def __init__(self, path: str | os.PathLike, kind: str) -> None:
        super().__init__(f"{os.fspath(path)} is {kind}, not a regular file")
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a non-regular ``st_mode`` is, for a sentence."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def open_regular(
    path: str | os.PathLike, buffering: int = -1, *, capped: bool = False
) -> BinaryIO:
    """Open a regular file for binary reading without ever blocking on a pipe.

    With ``capped``, reads never ask for more than the bytes left in the file (for
    parsers that trust length fields, see :class:`_SizeCapped`).

    Raises:
        NotRegularFile: the path is a pipe, socket, device or folder.
        OSError: it cannot be opened (PermissionError, FileNotFoundError...).
    """
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _BINARY)
    except OSError:
        # Sockets cannot be opened at all (ENXIO): say what they are, not why open failed.
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, kind_of(mode)) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, kind_of(mode))
        # O_NONBLOCK stays set: it changes nothing for regular files (only pipes, sockets
        # and devices honour it, and those are refused above).
        raw = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    raw.name = os.fspath(path)  # as open(path) names it: pydicom re-opens deferred values by it
    if capped:
        return _SizeCapped(raw, os.fstat(fd).st_size)
    if buffering == 0:
        return raw
    return io.BufferedReader(raw, buffering if buffering > 0 else io.DEFAULT_BUFFER_SIZE)


class _SizeCapped(io.BufferedReader):
    """A buffered file whose ``read(n)`` never asks for more bytes than the file has left.

    A damaged length field (a flipped bit makes 0x0000001A into 0xFF00001A) makes
    pydicom call ``read(4278190106)``; Python allocates the whole buffer before reading,
    so the process would need 4 GB for a 2 KB file. (A BufferedReader subclass, so
    pydicom still re-opens deferred values by the file's name.)
    """

    def __init__(self, raw: io.FileIO, size: int) -> None:
        super().__init__(raw)
        self._size = size

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._size - self.tell())
        return super().read(left if n is None or n < 0 or n > left else n)


def reason_unreadable(exc: OSError) -> str:
    """Why a file cannot be read, as the end of "X cannot be read: ..."."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()


def check_input_file(path: Path) -> None:
    """Refuse, with one sentence, an input file that is no regular file or cannot be read."""
    try:
        open_regular(path, buffering=0).close()
    except NotRegularFile as exc:
        if exc.kind == "a folder":
            return
        raise CTLoadError(
            f"{path.name} is {exc.kind}, not a file; open a scan's file or folder instead."
        ) from None
    except OSError as exc:
        raise CTLoadError(f"{path.name} cannot be read: {reason_unreadable(exc)}.") from None


def check_input_folder(path: Path) -> None:
    """Refuse, with one sentence, a folder whose entries cannot be listed."""
    try:
        with os.scandir(path):
            pass
    except OSError as exc:
        name = path.name or str(path)
        raise CTLoadError(f"{name} cannot be read: {reason_unreadable(exc)}.") from None
