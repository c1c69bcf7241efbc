"""Pixel values of a stacked series: read or decode every frame, then rescale to HU.

The output array is allocated once and every frame goes straight into its row of it:
uncompressed data is read with ``readinto`` from the pixel data's file offset (found
when the header was read, so no file is parsed twice), compressed transfer syntaxes are
decoded by pydicom's decoders from the same offset, and deflated files, whose offsets
refer to the inflated stream, are read whole by pydicom. Files are handled in parallel
by a thread pool.

The HU rescale is done in place with integer arithmetic whenever the slopes and
intercepts are whole numbers whose results fit int16, so no float copy of the volume is
made; PixelPaddingValue voxels become air.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from napari_covid_attention.io.dicom.headers import encapsulated
from napari_covid_attention.io.dicom.messages import short_message
from napari_covid_attention.io.dicom.slices import FileHeader, Slice
from napari_covid_attention.io.dicom.stack import Stack
from napari_covid_attention.io.files import (
    NotRegularFile,
    open_regular,
    reason_unreadable,
)
from napari_covid_attention.io.volume import AIR_HU, CTLoadError

_WORKERS = max(2, min(8, os.cpu_count() or 2))

# ------------------------------------------------------------------ reading frames


def _raw_dtype(header: FileHeader) -> np.dtype:
    return np.dtype(f"{'i' if header.signed else 'u'}{header.bits_allocated // 8}")


def read_pixels(
    stack: Stack, caught: list[warnings.WarningMessage]
) -> tuple[np.ndarray, list[str]]:
    """Stored values of every slice, decoded in parallel straight into one array."""
    first = stack.slices[0].file
    raw = np.empty((len(stack.slices), first.rows, first.columns), dtype=_raw_dtype(first))
    by_file: dict[FileHeader, list[tuple[int, int]]] = defaultdict(list)  # by identity
    for index, piece in enumerate(stack.slices):
        by_file[piece.file].append((piece.frame, index))
    before = len(caught)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        try:
            for _ in pool.map(lambda job: _decode_file(job[0], job[1], raw), by_file.items()):
                pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return raw, _decoder_notes(caught[before:])


def _decode_file(header: FileHeader, frames: list[tuple[int, int]], raw: np.ndarray) -> None:
    """Decode the wanted frames of one file into their rows of ``raw``."""
    syntax = header.transfer_syntax
    try:
        if syntax == DeflatedExplicitVRLittleEndian or header.pixel_offset is None:
            _decode_with_dataset(header, frames, raw)
        elif encapsulated(syntax):
            _decode_encapsulated(header, frames, raw)
        else:
            _read_native(header, frames, raw)
    except NotRegularFile as exc:  # replaced by a pipe or device since its header was read
        raise CTLoadError(f"{header.path.name} is {exc.kind}, not a file.") from None
    except OSError as exc:  # e.g. its permissions changed since its header was read
        raise CTLoadError(
            f"{header.path.name} cannot be read: {reason_unreadable(exc)}."
        ) from None


def _read_native(header: FileHeader, frames: list[tuple[int, int]], raw: np.ndarray) -> None:
    """Uncompressed data: read the bytes at the pixel data offset into the output rows."""
    size = header.frame_bytes
    with open_regular(header.path, buffering=0) as handle:
        for frame, index in frames:
            handle.seek(header.pixel_offset + frame * size)
            target = raw[index]
            if handle.readinto(memoryview(target).cast("B")) != size:
                raise CTLoadError(f"{header.path.name} is truncated: its pixel data ends early.")
            if not header.transfer_syntax.is_little_endian and header.bits_allocated > 8:
                target.byteswap(inplace=True)
            _mask_unused_bits(target, header)


def _mask_unused_bits(target: np.ndarray, header: FileHeader) -> None:
    """Ignore bits above BitsStored (PS3.5 8.1.1), sign-extending signed values."""
    unused = header.bits_allocated - header.bits_stored
    if unused <= 0:
        return
    if header.signed:
        np.left_shift(target, unused, out=target)
        np.right_shift(target, unused, out=target)
    else:
        np.bitwise_and(target, (1 << header.bits_stored) - 1, out=target)


def _decode_options(header: FileHeader) -> dict:
    return {
        "rows": header.rows,
        "columns": header.columns,
        "samples_per_pixel": header.samples,
        "photometric_interpretation": header.photometric,
        "bits_allocated": header.bits_allocated,
        "bits_stored": header.bits_stored,
        "pixel_representation": int(header.signed),
        "number_of_frames": header.n_frames,
        "pixel_keyword": "PixelData",
    }


def _decode_encapsulated(
    header: FileHeader, frames: list[tuple[int, int]], raw: np.ndarray
) -> None:
    """Compressed data: pydicom's decoders read the frames from the file offset."""
    from pydicom.pixels import get_decoder

    name = header.transfer_syntax.name
    try:
        decoder = get_decoder(header.transfer_syntax)
    except NotImplementedError:
        raise CTLoadError(
            f"{header.path.name} uses a compressed encoding ({name}) that this reader cannot decode."
        ) from None
    options = _decode_options(header)
    with open_regular(header.path) as handle:
        for frame, index in frames:
            handle.seek(header.pixel_offset)
            try:
                array, _ = decoder.as_array(handle, index=frame, **options)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # plugins raise many types; Rust ones (RLE) panic
                raise CTLoadError(
                    f"{header.path.name} uses a compressed encoding ({name}) that could not "
                    f"be decoded: {short_message(exc)}."
                ) from None
            _store(array, index, raw, header)


def _decode_with_dataset(
    header: FileHeader, frames: list[tuple[int, int]], raw: np.ndarray
) -> None:
    """Deflated files (offsets refer to the inflated stream): decode via a full read."""
    with open_regular(header.path, capped=True) as handle:
        try:
            ds = pydicom.dcmread(handle, force=True)
            array = ds.pixel_array
        except Exception as exc:
            raise CTLoadError(
                f"{header.path.name} is broken: its pixel data cannot be read "
                f"({short_message(exc)})."
            ) from None
    array = array.reshape((-1, header.rows, header.columns))
    for frame, index in frames:
        _store(array[frame], index, raw, header)


def _store(array: np.ndarray, index: int, raw: np.ndarray, header: FileHeader) -> None:
    if array.shape[-2:] != raw.shape[1:] or array.size != raw[index].size:
        raise CTLoadError(
            f"{header.path.name} is broken: it decodes to {array.shape} pixels instead of "
            f"{raw.shape[1:]}."
        )
    raw[index] = array.reshape(raw.shape[1:])


def _decoder_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Decoder warnings worth a user's attention, summarised in one sentence."""
    if not caught:
        return []
    first = short_message(caught[0].message)
    return [f"The pixel decoder reported {len(caught)} warning(s), e.g.: {first}."]


# ----------------------------------------------------------------- rescale to HU


def to_hu(raw: np.ndarray, slices: list[Slice]) -> np.ndarray:
    """HU = stored * slope + intercept per slice; padding values become air.

    Whole-number slopes and intercepts whose results fit int16 are applied in place with
    wrap-around integer arithmetic (exact, since the true results fit), so no float copy
    of the volume is made; anything else goes through float32.
    """
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    padding = _padding_mask(raw, slices)
    integral = np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))
    if integral and raw.dtype.itemsize <= 2 and _fits_int16(raw, slopes, intercepts, slices):
        hu = _rescale_int16(raw, slopes, intercepts)
    else:
        hu = raw.astype(np.float32)
        if np.any(slopes != 1):
            hu *= slopes.astype(np.float32)[:, None, None]
        hu += intercepts.astype(np.float32)[:, None, None]
    if padding is not None:
        hu[padding] = AIR_HU
    return hu


def _fits_int16(
    raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, slices: list[Slice]
) -> bool:
    """Whether every HU value fits int16: from BitsStored, else from the actual values."""
    info = np.iinfo(np.int16)
    header = slices[0].file
    bits = header.bits_stored
    low, high = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if header.signed else (0, (1 << bits) - 1)
    )

    def within(lo: float, hi: float) -> bool:
        ends = np.stack([slopes * lo + intercepts, slopes * hi + intercepts])
        return bool(ends.min() >= info.min and ends.max() <= info.max)

    if within(low, high):
        return True
    return raw.size > 0 and within(float(raw.min()), float(raw.max()))


def _rescale_int16(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """In-place integer rescale; arithmetic modulo 2**16 is exact when results fit int16."""
    if raw.dtype.itemsize == 1:
        hu = raw.astype(np.int16)
    else:
        hu = raw.view(np.int16)
    if np.any(slopes != 1):
        factors = slopes.astype(np.int64).astype(np.int16)[:, None, None]
        _parallel_slices(lambda i: np.multiply(hu[i], factors[i], out=hu[i]), len(hu))
    offsets = intercepts.astype(np.int64).astype(np.int16)
    if np.all(offsets == offsets[0]):
        if offsets[0]:
            _parallel_chunks(lambda part: np.add(part, offsets[0], out=part), hu)
    else:
        _parallel_slices(lambda i: np.add(hu[i], offsets[i], out=hu[i]), len(hu))
    return hu


def _parallel_chunks(func, array: np.ndarray) -> None:
    """Apply an in-place ufunc to slabs of ``array`` on the worker threads."""
    bounds = np.linspace(0, len(array), _WORKERS + 1).astype(int)
    slabs = [array[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(func, slabs))


def _parallel_slices(func, n: int) -> None:
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        list(pool.map(func, range(n)))


def _padding_mask(raw: np.ndarray, slices: list[Slice]) -> np.ndarray | None:
    """Voxels holding the PixelPaddingValue where it would not already map below air."""
    header = slices[0].file
    if header.padding is None:
        return None
    low, high = header.padding
    slopes = np.array([s.slope for s in slices])
    intercepts = np.array([s.intercept for s in slices])
    padded_hu = np.maximum(slopes * low, slopes * high) + intercepts
    if np.all(padded_hu < AIR_HU):
        return None  # hu_array turns it into air anyway; spare a pass over the volume
    if low == high:
        return raw == low
    return (raw >= low) & (raw <= high)
