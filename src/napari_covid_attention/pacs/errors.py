"""HTTP and network failures of a PACS call, as one sentence for the user.

Every message names the server by its redacted service root (no credentials, no query)
and says what to do. The original exception is chained for debugging; its text is never
part of the message (a server's error body or a library's message may echo anything).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import requests

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.pacs.auth import CA_BUNDLE_ENV, credentials_hint


class PacsError(UserFacingError):
    """A PACS could not do what was asked; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def pacs_error(exc: BaseException, server: str, action: str, missing: str, auth_source: str, timeout_s: float) -> PacsError:
    """The one-sentence error for ``exc`` raised while doing ``action`` (e.g. "search for
    studies") on ``server``; ``missing`` names what a 404 means is absent."""
    at = f"The PACS at {server}"
    if isinstance(exc, requests.exceptions.SSLError):
        return PacsError(
            f"{at} failed TLS certificate verification; if it uses your institution's own CA, set {CA_BUNDLE_ENV} to that CA's PEM file."
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return PacsError(f"{at} did not answer within {timeout_s:g} s while trying to {action}; try again later or check the server.")
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc).lower()
        why = "connection refused" if "refused" in text else "name not found" if "resolve" in text or "name or service" in text else "no connection"
        return PacsError(f"{at} cannot be reached ({why}); check that the server is running and the URL is right.")
    status = _status_of(exc)
    if status is None:
        retry = _retry_status(exc)
        if retry is not None:
            status = retry
    if status == 401:
        return PacsError(f"{at} refused the credentials (401): {credentials_hint(auth_source)}.", status)
    if status == 403:
        return PacsError(f"{at} does not allow this user to {action} (403); ask its administrator for access.", status)
    if status == 404:
        return PacsError(f"{at} has no {missing} (404).", status)
    if status == 413:
        return PacsError(f"{at} refused the upload as too large (413) while trying to {action}.", status)
    if status in (408, 429, 503, 504):
        return PacsError(f"{at} is busy or unavailable ({status}) while trying to {action}; try again later.", status)
    if status is not None and status >= 500:
        return PacsError(f"{at} failed with a server error ({status}) while trying to {action}; see the server's log.", status)
    if status is not None:
        return PacsError(f"{at} answered with HTTP {status} while trying to {action}.", status)
    if isinstance(exc, requests.exceptions.RequestException):
        return PacsError(f"{at} could not be used to {action} ({type(exc).__name__}).")
    return PacsError(f"{at} sent an answer that could not be understood while trying to {action} ({type(exc).__name__}).")


def _retry_status(exc: BaseException) -> int | None:
    """The HTTP status of the last attempt when the ``retrying`` package gave up."""
    attempt = getattr(exc, "last_attempt", None)
    value = getattr(attempt, "value", None)
    if isinstance(value, requests.Response):
        return value.status_code
    if isinstance(value, tuple) and value and isinstance(value[1], BaseException):  # an exception attempt
        return _status_of(value[1])
    return None


@contextmanager
def translated(server: str, action: str, missing: str, auth_source: str, timeout_s: float) -> Iterator[None]:
    """Run a block of PACS calls; any failure leaves it as a :class:`PacsError`."""
    try:
        yield
    except UserFacingError:
        raise
    except (requests.exceptions.RequestException, ValueError, KeyError, EOFError) as exc:
        raise pacs_error(exc, server, action, missing, auth_source, timeout_s) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("retrying", "pydicom", "urllib3")):
            raise pacs_error(exc, server, action, missing, auth_source, timeout_s) from exc
        raise
