"""``PacsClient``: search, retrieve and store over DICOMweb (QIDO-RS, WADO-RS, STOW-RS).

The transport is ``dicomweb_client.DICOMwebClient`` over one ``requests.Session`` carrying
the environment's credentials and TLS settings (:mod:`.auth`). Callers never see raw
DICOM JSON: searches return :class:`StudyMatch` / :class:`SeriesMatch`. A retrieved series
is written to the cache (:mod:`.cache`) as ordinary DICOM files and then opened with
:func:`napari_covid_attention.io.load.load_ct`, the same reader as for files, so every
reader guarantee (geometry from positions, one-sentence refusals, size limits) holds for
PACS input too. Every failure is a one-sentence :class:`~.errors.PacsError`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.volume import CTVolume
from napari_covid_attention.jobs import Job, Progress
from napari_covid_attention.pacs.auth import make_session
from napari_covid_attention.pacs.cache import SERIES_DIR, SeriesCache, cache_key
from napari_covid_attention.pacs.errors import PacsError, translated
from napari_covid_attention.pacs.urls import service_root, split_credentials

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_LIMIT = 200
RETRIEVE_PHASE = "retrieve"
# Request every instance in the transfer syntax it was stored in: no transcoding on the
# server, and compressed series stay compressed on the wire (the reader decodes them).
AS_STORED = (("application/dicom", "*"),)
_DATE_RANGE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")

STUDY_FIELDS = (
    "StudyInstanceUID", "StudyDate", "PatientID", "AccessionNumber", "StudyDescription",
    "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
)
SERIES_FIELDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)


@dataclass(frozen=True)
class StudyMatch:
    """A study found by :meth:`PacsClient.search_studies`."""

    study_uid: str
    patient_id: str
    study_date: str  # YYYYMMDD as the PACS has it, "" when absent
    accession_number: str
    description: str
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None


@dataclass(frozen=True)
class SeriesMatch:
    """A series found by :meth:`PacsClient.search_series`; ``url`` is what ``diagnose`` takes."""

    base_url: str
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    n_instances: int | None

    @property
    def url(self) -> str:
        return f"{self.base_url}/studies/{self.study_uid}/series/{self.series_uid}"


@dataclass(frozen=True)
class StoreResult:
    """What a STOW-RS request stored: SOP Instance UIDs stored, and failed with their reason."""

    stored: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...] = ()


def date_range(text: str | None) -> str | None:
    """A QIDO date or range (``20200101``, ``20200101-20201231``, ``20200101-``, ``-20201231``)."""
    if not text:
        return None
    text = text.strip().replace("/", "").replace(".", "")
    match = _DATE_RANGE.match(text)
    if not match or not (match[1] or match[3]) or (match[1] and match[3] and not match[2]):
        raise UserFacingError(f"{text!r} is not a date or date range: use YYYYMMDD or YYYYMMDD-YYYYMMDD.")
    if match[1] and match[3] and match[1] > match[3]:
        raise UserFacingError(f"The date range {text} ends before it starts.")
    return text


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    return f"{tag_for_keyword(keyword):08X}"


def _values(item: dict, keyword: str) -> list:
    element = item.get(_tag(keyword)) if isinstance(item, dict) else None
    values = element.get("Value", []) if isinstance(element, dict) else []
    return values if isinstance(values, list) else []


def _text(item: dict, keyword: str) -> str:
    values = _values(item, keyword)
    return str(values[0]).strip() if values else ""


def _int(item: dict, keyword: str) -> int | None:
    try:
        return int(_values(item, keyword)[0])
    except (IndexError, TypeError, ValueError):
        return None


class PacsClient:
    """One DICOMweb server (its service root, e.g. ``http://host:8042/dicom-web``).

    Credentials come from ``credentials`` (user, password), ``user:password@`` in ``url``
    or the environment (see :mod:`.auth`); they never appear in a message, log or ``repr``.
    """

    def __init__(
        self,
        url: str,
        *,
        credentials: tuple[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        cache: SeriesCache | None = None,
    ) -> None:
        from dicomweb_client import DICOMwebClient

        url_credentials = credentials or split_credentials(url)[1]
        self.base_url = service_root(url)
        self.timeout_s = float(timeout_s)
        self.cache = cache if cache is not None else SeriesCache()
        self.session, self.auth_source = make_session(url_credentials)
        with self._calls("connect", "DICOMweb service at this URL"):
            self._web = DICOMwebClient(self.base_url, session=self.session, timeout=self.timeout_s)
        self._web.set_http_retry_params(retry=False)  # a refused call fails now, in one sentence

    def __repr__(self) -> str:
        return f"PacsClient({self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _calls(self, action: str, missing: str):
        return translated(self.base_url, action, missing, self.auth_source, self.timeout_s)

    # ------------------------------------------------------------------ QIDO-RS

    def search_studies(
        self,
        *,
        patient_id: str | None = None,
        date: str | None = None,
        modality: str | None = None,
        accession_number: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[StudyMatch]:
        """Studies matching every filter given, newest first (at most ``limit``)."""
        filters = {
            "PatientID": patient_id,
            "StudyDate": date_range(date),
            "ModalitiesInStudy": modality.upper() if modality else None,
            "AccessionNumber": accession_number,
        }
        with self._calls("search for studies", "DICOMweb service at this URL (check the path, e.g. /dicom-web)"):
            found = self._web.search_for_studies(
                fields=STUDY_FIELDS, limit=limit, search_filters={k: v for k, v in filters.items() if v}
            )
        studies = [
            StudyMatch(
                study_uid=_text(item, "StudyInstanceUID"),
                patient_id=_text(item, "PatientID"),
                study_date=_text(item, "StudyDate"),
                accession_number=_text(item, "AccessionNumber"),
                description=_text(item, "StudyDescription"),
                modalities=tuple(str(v) for v in _values(item, "ModalitiesInStudy")),
                n_series=_int(item, "NumberOfStudyRelatedSeries"),
                n_instances=_int(item, "NumberOfStudyRelatedInstances"),
            )
            for item in found
        ]
        # a server that ignores ModalitiesInStudy must not list MR-only studies as CT
        if modality:
            studies = [s for s in studies if not s.modalities or modality.upper() in s.modalities]
        return sorted((s for s in studies if s.study_uid), key=lambda s: s.study_date, reverse=True)

    def search_series(
        self,
        study_uid: str | None = None,
        *,
        modality: str | None = None,
        patient_id: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[SeriesMatch]:
        """Series of one study (or of all studies), by series number."""
        filters = {"Modality": modality.upper() if modality else None, "PatientID": patient_id}
        missing = f"study {study_uid}" if study_uid else "DICOMweb service at this URL (check the path, e.g. /dicom-web)"
        with self._calls("search for series", missing):
            found = self._web.search_for_series(
                study_instance_uid=study_uid, fields=SERIES_FIELDS, limit=limit,
                search_filters={k: v for k, v in filters.items() if v},
            )
        series = [
            SeriesMatch(
                base_url=self.base_url,
                study_uid=_text(item, "StudyInstanceUID") or (study_uid or ""),
                series_uid=_text(item, "SeriesInstanceUID"),
                modality=_text(item, "Modality"),
                series_number=_int(item, "SeriesNumber"),
                description=_text(item, "SeriesDescription"),
                n_instances=_int(item, "NumberOfSeriesRelatedInstances"),
            )
            for item in found
        ]
        if modality:
            series = [s for s in series if s.modality.upper() == modality.upper()]
        return sorted((s for s in series if s.series_uid), key=lambda s: (s.series_number is None, s.series_number or 0))

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        """The SOP Instance UIDs of a series (QIDO-RS); refused when the series has none."""
        missing = f"series {series_uid} in study {study_uid}"
        with self._calls("list the series' instances", missing):
            found = self._web.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid, fields=("SOPInstanceUID",),
                get_remaining=True,
            )
        uids = [uid for uid in (_text(item, "SOPInstanceUID") for item in found) if uid]
        if not uids:
            raise PacsError(f"The PACS at {self.base_url} has no {missing}.", 404)
        return uids

    # ------------------------------------------------------------------ WADO-RS

    def cached_folder(self, study_uid: str, series_uid: str) -> Path | None:
        """The cached copy of a series (a folder of DICOM files), or None."""
        return self.cache.series_folder(cache_key(self.base_url, study_uid, series_uid))

    def retrieve_folder(self, study_uid: str, series_uid: str, *, refresh: bool = False) -> Job[Path]:
        """Job: the series as a folder of DICOM files in the cache, downloading it if needed.

        Yields ``Progress("retrieve", done, total)`` after each instance; closing the job
        (a Cancel) between instances removes what was downloaded and caches nothing. A
        cached series costs no request at all; ``refresh`` downloads it again.
        """
        key = cache_key(self.base_url, study_uid, series_uid)
        if refresh:
            self.cache.remove(key)
        folder = self.cache.series_folder(key)
        if folder is not None:
            count = len(os.listdir(folder))
            yield Progress(RETRIEVE_PHASE, count, count)
            return folder
        expected = self.instance_uids(study_uid, series_uid)
        total = len(expected)
        yield Progress(RETRIEVE_PHASE, 0, total)
        info = {"server": self.base_url, "study_uid": study_uid, "series_uid": series_uid, "instances": total}
        missing = f"series {series_uid} in study {study_uid}"
        with self.cache.writing(key, info) as temp:
            received: set[str] = set()
            with self._calls("retrieve the series", missing):
                stream = self._web.iter_series(study_uid, series_uid, media_types=AS_STORED)
            try:
                while True:
                    with self._calls("retrieve the series", missing):
                        dataset = next(stream, None)
                    if dataset is None:
                        break
                    self._check_instance(dataset, study_uid, series_uid)
                    _write_instance(temp / f"{len(received):05d}.dcm", dataset)
                    received.add(str(dataset.SOPInstanceUID))
                    yield Progress(RETRIEVE_PHASE, len(received), total)
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # a cancel drops the HTTP stream instead of reading it to the end
            lacking = set(expected) - received
            if lacking:
                raise PacsError(
                    f"The PACS at {self.base_url} sent {total - len(lacking)} of the {total} instances of series "
                    f"{series_uid}; nothing was kept, try again."
                )
        return self.cache.root / key / SERIES_DIR

    def retrieve(self, study_uid: str, series_uid: str, *, refresh: bool = False) -> Job[CTVolume]:
        """Job: :meth:`retrieve_folder`, then the CT volume read from it by ``load_ct``."""
        from napari_covid_attention.io.load import load_ct

        folder = yield from self.retrieve_folder(study_uid, series_uid, refresh=refresh)
        volume = load_ct(folder)
        volume.source_path = f"{self.base_url}/studies/{study_uid}/series/{series_uid}"
        return volume

    def _check_instance(self, dataset, study_uid: str, series_uid: str) -> None:
        """An instance of another series (a misbehaving server or proxy) is refused."""
        got_series = str(getattr(dataset, "SeriesInstanceUID", ""))
        got_study = str(getattr(dataset, "StudyInstanceUID", ""))
        if got_series != series_uid or got_study != study_uid or "SOPInstanceUID" not in dataset:
            raise PacsError(f"The PACS at {self.base_url} sent an instance that is not part of series {series_uid}; nothing was kept.")

    # ------------------------------------------------------------------ STOW-RS

    def store(self, datasets: Sequence, *, study_uid: str | None = None) -> StoreResult:
        """Store pydicom datasets (STOW-RS); refused in one sentence if any was not stored.

        The error says which instances the server did store, so a partial store is never
        silent; storing the same SOP Instance UIDs again is how to complete it.
        """
        datasets = list(datasets)
        with self._calls("store instances", "STOW-RS service at this URL"):
            answer = self._web.store_instances(datasets, study_instance_uid=study_uid)
        result = _store_result(answer, datasets)
        if result.failed:
            stored = f"; {len(result.stored)} of {len(datasets)} were stored" if result.stored else "; none was stored"
            codes = ", ".join(sorted({reason for _, reason in result.failed}))
            raise PacsError(
                f"The PACS at {self.base_url} refused {len(result.failed)} of {len(datasets)} instances (failure {codes}){stored}."
            )
        for warning in result.warnings:
            log.warning("PACS store warning: %s", warning)
        return result


def _write_instance(path: Path, dataset) -> None:
    """One retrieved instance as a DICOM file, flushed to disk (the cache entry's rename
    must never publish files that a crash could still leave empty)."""
    import pydicom

    with open(path, "wb") as handle:
        pydicom.dcmwrite(handle, dataset, enforce_file_format=False)
        handle.flush()
        os.fsync(handle.fileno())


def _reason(code) -> str:
    """A STOW failure reason as DICOM writes it (hex, e.g. A700 out of resources)."""
    try:
        return f"{int(code):04X}"
    except (TypeError, ValueError):
        return "unknown"


def _store_result(answer, datasets: Iterable) -> StoreResult:
    """The STOW-RS response dataset read into a :class:`StoreResult`.

    A server that answers without a body (allowed for 200) stored everything."""
    sent = [str(ds.SOPInstanceUID) for ds in datasets]
    failed = tuple(
        (str(getattr(item, "ReferencedSOPInstanceUID", "?")), _reason(getattr(item, "FailureReason", None)))
        for item in getattr(answer, "FailedSOPSequence", None) or []
    )
    referenced = getattr(answer, "ReferencedSOPSequence", None)
    failed_uids = {uid for uid, _ in failed}
    if referenced is None:
        stored = tuple(uid for uid in sent if uid not in failed_uids)
    else:
        stored = tuple(str(getattr(item, "ReferencedSOPInstanceUID", "")) for item in referenced)
    warnings = tuple(
        f"{getattr(item, 'ReferencedSOPInstanceUID', '?')}: warning {getattr(item, 'WarningReason', '')}"
        for item in referenced or []
        if "WarningReason" in item
    )
    return StoreResult(stored=stored, failed=failed, warnings=warnings)
