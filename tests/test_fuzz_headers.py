"""Fuzzing the readers' headers (issue 13): mutated NIfTI and DICOM headers (bit flips,
truncations, absurd dims, spacing, rescale, transfer syntax) of tiny seed scans.

Every case must load or be refused with a UserFacingError within 5 s and 1 GB: never
another exception, a hang or a crash. The cases run in one child process
(``hostile_worker.py``) whose address space is capped with RLIMIT_AS, so a case that
would need more memory fails instead of swapping the machine. The seeds are fixed, so a
failing case id (``nifti-<seed>-<case>``) can be replayed. The default run is short;
``-m slow`` runs 500 + 500 cases.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hostile_worker import MAX_MESSAGE, run_worker

pytestmark = pytest.mark.skipif(sys.platform.startswith("win"), reason="needs RLIMIT_AS")

CASE_SECONDS = 5
MEMORY_BYTES = 1 << 30


def _fuzz(kind: str, cases: int, seed: int, work: Path) -> dict[str, dict]:
    args = [
        "--mem", str(MEMORY_BYTES), "--seconds", str(CASE_SECONDS), "--fuzz", kind,
        "--cases", str(cases), "--seed", str(seed), "--work", str(work),
    ]
    return run_worker(args, timeout=60 + cases * 2)


def _check(results: dict[str, dict], cases: int) -> None:
    bad = {case: r for case, r in results.items() if r["outcome"] not in ("loaded", "refused")}
    assert not bad, f"{len(bad)} cases neither loaded nor were refused: {dict(list(bad.items())[:5])}"
    assert len(results) == cases
    for case, result in results.items():
        assert result["seconds"] < CASE_SECONDS, (case, result)
        message = result["message"]
        if result["outcome"] == "refused":
            assert "\n" not in message and len(message) < MAX_MESSAGE, (case, message)
            assert message.endswith("."), (case, message)
        else:
            assert result["finite"], (case, message)


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_mutated_headers_load_or_are_refused(tmp_path: Path, kind: str) -> None:
    results = _fuzz(kind, 60, seed=2, work=tmp_path)
    _check(results, 60)
    outcomes = {r["outcome"] for r in results.values()}
    assert outcomes == {"loaded", "refused"}, outcomes  # the mutations hit both ways


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_500_mutated_headers_load_or_are_refused(tmp_path: Path, kind: str) -> None:
    results = _fuzz(kind, 500, seed=1000, work=tmp_path)
    _check(results, 500)
