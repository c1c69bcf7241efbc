"""Shared fixtures: real data from ../shared/data (skipped when absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVID_ATTENTION_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
CHEST_SERIES = SHARED_DATA / "chest-ct-dicom-lung-pet-ct-dx"
ODD_CORPUS = SHARED_DATA / "dicom-odd-corpus"


@pytest.fixture(scope="session")
def chest_series_dir() -> Path:
    """The real 30-slice chest CT DICOM series; skips the test when the data is absent."""
    if not CHEST_SERIES.is_dir():
        pytest.skip(f"real chest CT series not found at {CHEST_SERIES}")
    return CHEST_SERIES


@pytest.fixture(scope="session")
def odd_corpus_dir() -> Path:
    """pydicom's corpus of odd DICOM files; skips the test when the data is absent."""
    if not ODD_CORPUS.is_dir():
        pytest.skip(f"DICOM odd corpus not found at {ODD_CORPUS}")
    return ODD_CORPUS
