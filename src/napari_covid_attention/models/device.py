"""Where models run: CUDA when present (mixed precision), Apple MPS, or the CPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from napari_covid_attention.errors import UserFacingError


def available_devices() -> list[tuple[str, str]]:
    """(device name, human description) pairs for pickers: auto, each CUDA GPU, MPS, CPU."""
    devices = [("auto", f"auto ({describe(resolve_device('auto'))})")]
    for index in range(torch.cuda.device_count()):
        devices.append((f"cuda:{index}", describe(torch.device("cuda", index))))
    if _mps_available():
        devices.append(("mps", describe(torch.device("mps"))))
    devices.append(("cpu", describe(torch.device("cpu"))))
    return devices


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU, then MPS, then the CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserFacingError(f"{name!r} is not a device name (use auto, cpu, cuda:N or mps).") from exc
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserFacingError(f"{name} is not available on this machine; use auto or cpu.")
    if device.type == "mps" and not _mps_available():
        raise UserFacingError("Apple MPS is not available on this machine; use auto or cpu.")
    return device


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device}: {props.name} ({props.total_memory / 2**30:.0f} GB)"
    if device.type == "mps":
        return "mps: Apple GPU"
    return f"cpu ({torch.get_num_threads()} threads)"


# ``precision`` of training runs: "auto" is mixed precision on CUDA and full precision
# elsewhere (diagnosis always uses "auto"); "fp32" is full precision everywhere; "bf16" is
# bf16 autocast on any device. On CPUs with AMX/AVX512-BF16 it trained the segmenter 4.3x
# faster than fp32 (docs/benchmarks.md); on CPUs without it, it is slower. Opt-in on the
# CPU, so that a run's numbers do not depend on which CPU it landed on.
PRECISIONS = ("auto", "fp32", "bf16")


def mixed_precision_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 (or fp16 on older GPUs) on CUDA with "auto", bf16 anywhere
    with "bf16", None (full precision) otherwise."""
    if precision not in PRECISIONS:
        raise UserFacingError(f"{precision!r} is not a precision (use {', '.join(PRECISIONS)}).")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """Mixed precision as :func:`mixed_precision_dtype` says; full precision otherwise."""
    dtype = mixed_precision_dtype(device, precision)
    if dtype is not None:
        with torch.autocast(device.type, dtype=dtype):
            yield
    else:
        yield


def grad_scaler(device: torch.device, precision: str = "auto") -> torch.amp.GradScaler | None:
    """A loss scaler where :func:`autocast` runs fp16: small fp16 gradients underflow to zero
    without one. bf16 has fp32's range and full precision needs none (None)."""
    if mixed_precision_dtype(device, precision) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory errors (the cue to fall back to the CPU)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def one_core_for_the_gui() -> Iterator[int]:
    """Run torch on all cores but one while a GUI shares the process, then restore.

    With every core busy in torch's pool, napari's main thread waits for a time slice:
    benchmarks/bench_ui.py measured a worst main-thread stall of 142 ms with 2 threads
    on a 2-core CPU and 47 ms with 1 (docs/benchmarks.md). Yields the thread count used.
    """
    before = torch.get_num_threads()
    threads = max(1, min(before, usable_cores() - 1))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
