"""DICOMweb URLs: telling them from file paths, splitting a series URL, keeping credentials out.

A series is named the way a PACS viewer's address bar or the DICOMweb standard names it,
``http(s)://HOST[:PORT]/PREFIX/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>``,
where ``PREFIX`` is the service root (Orthanc: ``/dicom-web``; dcm4chee:
``/dcm4chee-arc/aets/DCM4CHEE/rs``). Credentials written into a URL (``user:pass@host``)
are taken out of it before it is shown or logged anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from napari_covid_attention.errors import UserFacingError

_UID = r"[0-9]+(?:\.[0-9]+)*"
_SERIES_PATH = re.compile(rf"^(?P<root>.*?)/studies/(?P<study>{_UID})/series/(?P<series>{_UID})/?$")
_STUDY_PATH = re.compile(rf"^(?P<root>.*?)/studies/(?P<study>{_UID})/?$")


def is_url(text: object) -> bool:
    """Whether ``text`` is an http(s) URL rather than a file path."""
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without any ``user:password@`` part, and those credentials (or None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, (unquote(parts.username or ""), unquote(parts.password or ""))


def redact(url: str) -> str:
    """The URL as it may be shown: no credentials, no query string (tokens travel there too)."""
    clean, _ = split_credentials(url)
    parts = urlsplit(clean)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def service_root(url: str) -> str:
    """A DICOMweb service root without credentials, query or trailing slash; refused in one
    sentence when it is not an http(s) URL with a host."""
    clean = redact(url)
    parts = urlsplit(clean)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UserFacingError(f"{clean} is not a DICOMweb address: it must start with http:// or https:// and name a host.")
    return clean.rstrip("/")


@dataclass(frozen=True)
class SeriesRef:
    """One series on a DICOMweb server: service root (no credentials) and the two UIDs."""

    base_url: str
    study_uid: str
    series_uid: str
    # user:password written in the URL, if any: used to connect, never shown or compared
    credentials: tuple[str, str] | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"{self.base_url}/studies/{self.study_uid}/series/{self.series_uid}"

    def __str__(self) -> str:
        return self.url


def parse_series_url(url: str) -> tuple[str, str, str]:
    """``(base_url, study_uid, series_uid)`` of ``http(s)://HOST/.../studies/<UID>/series/<UID>``.

    ``base_url`` is the DICOMweb service root, without credentials or query string.

    Raises:
        UserFacingError: the URL does not name a series that way.
    """
    root = service_root(url)
    parts = urlsplit(root)
    match = _SERIES_PATH.match(parts.path)
    if not match:
        raise UserFacingError(
            f"{root} does not name a DICOMweb series: expected .../studies/<StudyInstanceUID>/series/<SeriesInstanceUID>."
        )
    base = urlunsplit((parts.scheme, parts.netloc, match["root"], "", "")).rstrip("/")
    return base, match["study"], match["series"]


def parse_study_url(url: str) -> tuple[str, str | None]:
    """``(base_url, study_uid or None)``: a service root, optionally ending in ``/studies/<UID>``."""
    root = service_root(url)
    parts = urlsplit(root)
    match = _STUDY_PATH.match(parts.path)
    if not match:
        if "/series/" in parts.path:
            base, study, _ = parse_series_url(url)
            return base, study
        return root, None
    return urlunsplit((parts.scheme, parts.netloc, match["root"], "", "")).rstrip("/"), match["study"]


def series_ref(url: str) -> SeriesRef:
    """:func:`parse_series_url` as a :class:`SeriesRef` (keeping any credentials of the URL)."""
    return SeriesRef(*parse_series_url(url), credentials=split_credentials(url)[1])
