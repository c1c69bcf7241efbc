"""Crash-test writer for the annotation store (run by tests/test_annotation_store.py).

``python store_writer.py ROOT Z Y X`` reads "go <seed>" lines on stdin. For each, it forks a
writer process that opens the store at ROOT and saves (z, y, x) masks in a loop until it is
killed, writing "saved <version_id> <sha256>" to stdout only after the save returned. This
process reports "pid <pid>" after the fork and "exit <pid> <exit code>" once the writer died
(the test kills it with SIGKILL at a random moment, so the code should be -9).

Forking from one process that imported numpy and the store once makes each of the many
short-lived writers cost milliseconds instead of a fresh interpreter. Every line is one
``os.write`` of a few bytes, so a killed writer never leaves half a line.
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

from napari_covid_attention.annotations import AnnotationStore
from napari_covid_attention.io.volume import CTVolume


def crash_scan(shape: tuple[int, int, int]) -> CTVolume:
    """The same small scan in every writer, so they all find one case."""
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[:, shape[1] // 4 : -shape[1] // 4, shape[2] // 4 : -shape[2] // 4] = 40
    affine = np.array(
        [[0.0, 0.0, 0.8, -25.0], [0.0, 0.8, 0.0, -25.0], [2.5, 0.0, 0.0, -20.0], [0, 0, 0, 1]]
    )
    return CTVolume(hu=hu, affine=affine)


def random_mask(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A few boxes of labels 1-2 plus sparse speckle, so every mask differs."""
    mask = (rng.random(shape) < 0.01).astype(np.uint8)
    for _ in range(rng.integers(1, 4)):
        start = [int(rng.integers(0, s - 2)) for s in shape]
        stop = [int(rng.integers(a + 1, s)) for a, s in zip(start, shape, strict=True)]
        mask[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = rng.integers(1, 3)
    return mask


def write_until_killed(root: str, shape: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    store = AnnotationStore(root)
    case = store.open_case(crash_scan(shape), source_name="crash-scan")
    store.set_original(case.id, random_mask(np.random.default_rng(0), shape), model="crash-test")
    while True:
        history = store.history(case.id)
        if len(history) > 2 and rng.random() < 0.2:
            earlier = history[int(rng.integers(0, len(history) - 1))]
            version = store.restore(case.id, earlier.id, annotator=f"writer-{seed}")
        else:
            mask = random_mask(rng, shape)
            version = store.save_version(case.id, mask, annotator=f"writer-{seed}")
        os.write(1, f"saved {version.id} {version.sha256}\n".encode())


def main(root: str, shape: tuple[int, int, int]) -> None:
    while line := sys.stdin.readline():
        seed = int(line.split()[1])
        pid = os.fork()
        if pid == 0:
            try:
                write_until_killed(root, shape, seed)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        os.write(1, f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    main(sys.argv[1], tuple(int(v) for v in sys.argv[2:5]))  # type: ignore[arg-type]
