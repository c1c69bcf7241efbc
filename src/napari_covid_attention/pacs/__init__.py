"""PACS access over DICOMweb: find studies and series, retrieve a series into a local cache
and open it with the file reader, store results back (SEG, SR). Core code: no napari, no Qt.

* :class:`PacsClient` (:mod:`.client`): QIDO-RS searches, WADO-RS retrieval as a job,
  STOW-RS storage; failures are one-sentence :class:`PacsError` s.
* :mod:`.auth`: credentials from the environment or ``~/.netrc``; TLS verified.
* :mod:`.cache`: complete-or-absent, size-capped copies of retrieved series.
* :mod:`.urls`: series URLs (``.../studies/<UID>/series/<UID>``) and redaction.
"""

from napari_covid_attention.pacs.cache import SeriesCache
from napari_covid_attention.pacs.client import PacsClient, SeriesMatch, StoreResult, StudyMatch
from napari_covid_attention.pacs.errors import PacsError
from napari_covid_attention.pacs.urls import (
    SeriesRef,
    is_url,
    parse_series_url,
    parse_study_url,
    redact,
    series_ref,
)

__all__ = [
    "PacsClient",
    "PacsError",
    "SeriesCache",
    "SeriesMatch",
    "SeriesRef",
    "StoreResult",
    "StudyMatch",
    "is_url",
    "parse_series_url",
    "parse_study_url",
    "redact",
    "series_ref",
]
