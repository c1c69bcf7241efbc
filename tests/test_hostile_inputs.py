"""Hostile inputs to the readers: pipes, devices, tiny files declaring huge volumes,
absurd rescales, masks passed as scans and files that cannot be read (issue 13).

Each must either load or be refused with one sentence that says what is wrong, quickly
and without using much memory; never hang, never another exception.
"""

from __future__ import annotations

import builtins
import gzip
import os
import re
import socket
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hostile_worker import run_worker
from pydicom.uid import RLELossless
from test_dicom import write_series

from napari_covid_attention.io import dicom
from napari_covid_attention.io.load import load_ct
from napari_covid_attention.io.nifti import load_nifti
from napari_covid_attention.io.volume import CTLoadError

GIB = 1 << 30
MAX_AXIS = 2048  # napari_covid_attention.io.limits.MAX_AXIS, checked below
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX named pipes")


def _within(seconds: float, func, *args, unblock: list[Path] = ()):
    """``func(*args)`` in a thread; fails the test (after unblocking FIFO readers) if it hangs."""
    result: dict = {}

    def target():
        try:
            result["value"] = func(*args)
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in unblock:  # a reader blocked in open() returns once a writer opens
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"{func.__name__} hung for more than {seconds} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message.endswith(".") and len(message) < 300, message


# --------------------------------------------------------------- 1. pipes, sockets, devices


@posix_only
def test_fifo_inside_a_dicom_folder_is_skipped_not_waited_on(tmp_path: Path) -> None:
    series = write_series(tmp_path / "scan", n=4)
    (tmp_path / "scan" / "deeper").mkdir()
    fifos = [tmp_path / "scan" / "pipe.dcm", tmp_path / "scan" / "deeper" / "pipe"]
    for fifo in fifos:
        os.mkfifo(fifo)
    volume = _within(10, load_ct, series.folder, unblock=fifos)
    assert volume.shape == (4, 32, 24)
    assert not any("damaged" in w for w in volume.warnings)
    listed = _within(10, dicom.list_series, series.folder, unblock=fifos)
    assert listed[0].n_images == 4
    # A file of the folder: its siblings are scanned too.
    assert _within(10, load_ct, series.files[0], unblock=fifos).shape == (4, 32, 24)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_socket_inside_a_dicom_folder_is_skipped_not_called_damaged(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_series(folder, n=4)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(folder / "x.sock"))
    except OSError:  # path too long for a socket address on this machine
        pytest.skip("cannot create a Unix socket under tmp_path")
    try:
        volume = _within(10, load_ct, folder)
    finally:
        server.close()
    assert volume.shape == (4, 32, 24)
    assert volume.warnings == ()


@posix_only
@pytest.mark.parametrize("name", ["pipe", "pipe.dcm", "pipe.nii.gz", "DICOMDIR"])
def test_fifo_given_directly_is_refused_in_one_sentence(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    for func in (load_ct, dicom.load_dicom, dicom.list_series):
        with pytest.raises(CTLoadError, match="is a named pipe") as error:
            _within(10, func, fifo, unblock=[fifo])
        _one_sentence(str(error.value))
    if name.endswith(".nii.gz"):
        with pytest.raises(CTLoadError, match="is a named pipe"):
            _within(10, load_nifti, fifo, unblock=[fifo])


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("name", ["zero.nii", "zero.dcm"])
def test_device_given_directly_is_refused_in_one_sentence(tmp_path: Path, name: str) -> None:
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    with pytest.raises(CTLoadError, match="is a device, not a file") as error:
        _within(10, load_ct, link)
    _one_sentence(str(error.value))


# ---------------------------------------------------- 6. declared sizes checked before reading


def _nifti_header_bytes(shape, dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_zooms((0.7, 0.7, 1.0)[: len(shape)])
    header.set_qform(np.diag([0.7, 0.7, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\x00" * 4


def _load_in_capped_child(path: Path, mem: int = GIB) -> dict:
    if sys.platform.startswith("win"):
        pytest.skip("the capped child needs RLIMIT_AS and SIGALRM (POSIX)")
    results = run_worker(["--mem", str(mem), "--seconds", "20", str(path)], timeout=60)
    return results[str(path)]


def test_tiny_nii_gz_declaring_a_huge_volume_is_refused_before_reading(tmp_path: Path) -> None:
    """68 bytes of gzip declaring 2000x2000x1000 int16 voxels (8 GB): once 7.9 GB of RAM."""
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header_bytes((2000, 2000, 1000)), mtime=0))
    assert path.stat().st_size < 100
    result = _load_in_capped_child(path)
    assert result["outcome"] == "refused", result
    assert "2000x2000x1000" in result["message"], result
    assert result["seconds"] < 2
    _one_sentence(result["message"])


def test_nii_gz_whose_data_cannot_decompress_to_the_declared_size_is_refused(tmp_path: Path) -> None:
    """Under the size cap, but no deflate stream of 3 KB inflates to 100 MB."""
    path = tmp_path / "small.nii.gz"
    payload = _nifti_header_bytes((512, 512, 200)) + os.urandom(2000)
    path.write_bytes(gzip.compress(payload, mtime=0))
    with pytest.raises(CTLoadError, match=r"declares 512x512x200 voxels") as error:
        load_ct(path)
    assert "damaged" in str(error.value)
    _one_sentence(str(error.value))


def test_uncompressed_nii_shorter_than_declared_is_refused_with_sizes(tmp_path: Path) -> None:
    path = tmp_path / "short.nii"
    path.write_bytes(_nifti_header_bytes((512, 512, 300)) + b"\x00" * 10_000)
    with pytest.raises(CTLoadError, match=r"truncated or damaged: its header declares 512x512x300") as error:
        load_ct(path)
    _one_sentence(str(error.value))


def test_nifti_longer_than_the_axis_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.nii.gz"
    data = np.zeros((8, 8, MAX_AXIS + 1), np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(CTLoadError, match=f"more than {MAX_AXIS} voxels along an axis"):
        load_ct(path)


def test_compressed_dicom_declaring_huge_slices_is_refused_before_decoding(tmp_path: Path) -> None:
    series = write_series(tmp_path, n=3, rows=16, cols=16, syntax=RLELossless)
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.Rows = ds.Columns = 4096  # over the per-axis cap
        ds.save_as(path)
    with pytest.raises(CTLoadError, match=r"4096x4096 pixels") as error:
        load_ct(tmp_path)
    assert "too large" in str(error.value)
    _one_sentence(str(error.value))


def test_series_over_the_voxel_cap_is_refused(tmp_path: Path, monkeypatch) -> None:
    from napari_covid_attention.io import limits

    assert limits.MAX_AXIS == MAX_AXIS
    write_series(tmp_path, n=8)
    monkeypatch.setattr(limits, "MAX_VOXELS", 8 * 32 * 24 - 1)
    with pytest.raises(CTLoadError, match=r"too large.*8 slices of 32x24 pixels"):
        load_ct(tmp_path)
    monkeypatch.setattr(limits, "MAX_VOXELS", 8 * 32 * 24)
    assert load_ct(tmp_path).shape == (8, 32, 24)


# ------------------------------------------------- 12. absurd rescales, masks given as scans


@pytest.mark.parametrize(
    ("slope", "intercept", "phrase"),
    [
        (0.0, -1024.0, "RescaleSlope is 0: the pixel values cannot be converted to HU"),
        (-1.0, -1024.0, "RescaleSlope is -1"),
        (1e10, -1024.0, "RescaleSlope is 1e+10"),
        (1.0, 1e10, "RescaleIntercept is 1e+10"),
    ],
)
def test_absurd_dicom_rescale_is_refused(tmp_path: Path, slope, intercept, phrase) -> None:
    write_series(tmp_path, n=4, slope=slope, intercept=intercept)
    with pytest.raises(CTLoadError, match=re.escape(phrase)) as error:
        load_ct(tmp_path)
    _one_sentence(str(error.value))


def test_one_slice_with_an_absurd_rescale_is_named(tmp_path: Path) -> None:
    write_series(tmp_path, n=4, slope=[1.0, 1.0, 0.0, 1.0])
    with pytest.raises(CTLoadError, match=r"IM0002\.dcm.*RescaleSlope is 0"):
        load_ct(tmp_path)


def test_usual_rescales_still_load(tmp_path: Path) -> None:
    write_series(tmp_path / "a", n=3, slope=0.5, intercept=-8192)
    write_series(tmp_path / "b", n=3, slope=1.0, intercept=0.0)
    assert load_ct(tmp_path / "a").shape == (3, 32, 24)
    assert load_ct(tmp_path / "b").shape == (3, 32, 24)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_nifti_of_8_bit_values_warns_that_it_is_not_hu(tmp_path: Path, dtype) -> None:
    data = np.zeros((16, 16, 8), dtype)
    data[4:12, 4:12] = 1
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    volume = load_ct(path)
    name = np.dtype(dtype).name
    expected = (
        f"this NIfTI stores {name} values: a CT in HU needs signed values from about -1000; "
        "it looks like a mask or a windowed image."
    )
    assert any(expected.lower() in w.lower() for w in volume.warnings), volume.warnings


def test_nifti_of_int16_hu_has_no_dtype_warning(tmp_path: Path) -> None:
    data = np.full((16, 16, 8), -1000, np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    assert load_ct(path).warnings == ()


@pytest.mark.parametrize(("slope", "phrase"), [(-1.0, "scl_slope is -1"), (1e10, "scl_slope is 1e+10")])
def test_nifti_with_an_absurd_scale_factor_is_refused(tmp_path: Path, slope, phrase) -> None:
    img = nib.Nifti1Image(np.full((16, 16, 8), 100, np.int16), np.eye(4))
    img.header.set_slope_inter(slope, 0.0)
    path = tmp_path / "scaled.nii"
    nib.save(img, str(path))
    with pytest.raises(CTLoadError, match=re.escape(phrase)):
        load_ct(path)


# ---------------------------------------------------------------------- permission denied


def _deny(monkeypatch, *paths: Path) -> None:
    """Make opening ``paths`` fail as chmod 000 would for a normal user (root ignores it)."""
    denied = {os.path.realpath(p) for p in paths}
    real_open, real_os_open = builtins.open, os.open

    def check(file) -> None:
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.realpath(file) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(file))

    def fake_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def fake_os_open(file, *args, **kwargs):
        check(file)
        return real_os_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def test_unreadable_dicom_file_says_permission_denied(tmp_path: Path, monkeypatch) -> None:
    series = write_series(tmp_path, n=4)
    _deny(monkeypatch, series.files[1])
    with pytest.raises(CTLoadError, match=r"IM0001\.dcm cannot be read: permission denied\.$"):
        load_ct(series.files[1])
    volume = load_ct(tmp_path)  # the other three load; the skipped one is named
    assert volume.shape == (3, 32, 24)
    assert any("cannot be read: permission denied" in w for w in volume.warnings)
    assert not any("damaged" in w for w in volume.warnings)


def test_folder_of_unreadable_files_says_permission_denied(tmp_path: Path, monkeypatch) -> None:
    series = write_series(tmp_path / "scan", n=3)
    _deny(monkeypatch, *series.files)
    with pytest.raises(CTLoadError, match="cannot be read: permission denied") as error:
        load_ct(series.folder)
    assert "no DICOM images" not in str(error.value) or "3 files" in str(error.value)
    _one_sentence(str(error.value))


def _deny_listing(monkeypatch, *folders: Path) -> None:
    """Make listing ``folders`` fail as for a folder of mode 000."""
    denied = {os.path.realpath(p) for p in folders}
    real_scandir = os.scandir

    def fake_scandir(path="."):
        if os.path.realpath(path) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", fake_scandir)


def test_unlistable_folders_say_permission_denied(tmp_path: Path, monkeypatch) -> None:
    write_series(tmp_path / "scan" / "a", n=4)
    write_series(tmp_path / "scan" / "b", n=2)
    _deny_listing(monkeypatch, tmp_path / "scan" / "b")
    volume = load_ct(tmp_path / "scan")
    assert volume.shape == (4, 32, 24)
    assert "b in scan cannot be read: permission denied; it was skipped." in volume.warnings
    _deny_listing(monkeypatch, tmp_path / "scan")
    with pytest.raises(CTLoadError, match=r"^scan cannot be read: permission denied\.$"):
        load_ct(tmp_path / "scan")


def test_unreadable_nifti_says_permission_denied(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(path))
    _deny(monkeypatch, path)
    with pytest.raises(CTLoadError, match=r"scan\.nii\.gz cannot be read: permission denied\.$"):
        load_ct(path)


def _chmod_000_or_skip(path: Path) -> None:
    path.chmod(0)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return
    path.chmod(0o644)
    pytest.skip("this user (root?) reads files with mode 000 anyway")


@pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX permissions")
def test_chmod_000_files_say_permission_denied(tmp_path: Path) -> None:
    series = write_series(tmp_path / "scan", n=4)
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(nifti))
    _chmod_000_or_skip(series.files[2])
    _chmod_000_or_skip(nifti)
    try:
        with pytest.raises(CTLoadError, match="cannot be read: permission denied"):
            load_ct(series.files[2])
        with pytest.raises(CTLoadError, match="cannot be read: permission denied"):
            load_ct(nifti)
        assert any("permission denied" in w for w in load_ct(series.folder).warnings)
    finally:
        series.files[2].chmod(0o644)
        nifti.chmod(0o644)


def test_nii_gz_under_the_size_cap_is_refused_before_allocating(tmp_path: Path) -> None:
    """2048x2048x100 int16 (800 MB) is within the caps, but 200 compressed bytes cannot hold
    it: refused from the header in a child limited to 512 MB, not after allocating."""
    path = tmp_path / "under-cap.nii.gz"
    path.write_bytes(gzip.compress(_nifti_header_bytes((2048, 2048, 100)) + b"\x00" * 100))
    result = _load_in_capped_child(path, mem=GIB // 2)
    assert result["outcome"] == "refused", result
    assert "declares 2048x2048x100 voxels" in result["message"], result
    assert result["seconds"] < 1
