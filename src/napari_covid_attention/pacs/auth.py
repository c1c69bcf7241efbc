"""Credentials and TLS settings for a PACS, from the environment; never shown anywhere.

In order of precedence:

* ``user:password@`` written in the URL (taken out of it before it is shown or logged);
* ``COVID_ATTENTION_PACS_TOKEN``: an OAuth/bearer token sent as ``Authorization: Bearer``;
* ``COVID_ATTENTION_PACS_USER`` and ``COVID_ATTENTION_PACS_PASSWORD``: HTTP basic auth;
* none of these: requests reads ``~/.netrc`` (or ``$NETRC``) for the server's host.

TLS certificates are always verified: against ``COVID_ATTENTION_PACS_CA_BUNDLE`` (a PEM
file or folder, e.g. the hospital's own CA) when set, else the system's/certifi's CAs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from napari_covid_attention.errors import UserFacingError

USER_ENV = "COVID_ATTENTION_PACS_USER"
PASSWORD_ENV = "COVID_ATTENTION_PACS_PASSWORD"
TOKEN_ENV = "COVID_ATTENTION_PACS_TOKEN"
CA_BUNDLE_ENV = "COVID_ATTENTION_PACS_CA_BUNDLE"


class BearerAuth(AuthBase):
    """``Authorization: Bearer <token>`` on every request; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<hidden>)"


class BasicAuth(HTTPBasicAuth):
    """HTTP basic auth whose repr never shows the password."""

    def __repr__(self) -> str:
        return f"BasicAuth({self.username!r}, <hidden>)"


def auth_from_env(
    url_credentials: tuple[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> tuple[AuthBase | None, str]:
    """The auth to send and where it came from (``url``, ``token``, ``basic``, ``netrc``).

    ``None`` means no explicit auth, so that requests falls back to ``~/.netrc``.
    """
    env = os.environ if environ is None else environ
    if url_credentials is not None:
        return BasicAuth(*url_credentials), "url"
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return BearerAuth(token), "token"
    user = env.get(USER_ENV, "")
    if user:
        if PASSWORD_ENV not in env:
            raise UserFacingError(f"{USER_ENV} is set but {PASSWORD_ENV} is not: set both for the PACS's basic authentication.")
        return BasicAuth(user, env[PASSWORD_ENV]), "basic"
    return None, "netrc"


def verify_from_env(environ: Mapping[str, str] | None = None) -> bool | str:
    """``requests``' ``verify``: the CA bundle of ``COVID_ATTENTION_PACS_CA_BUNDLE``, else True."""
    env = os.environ if environ is None else environ
    bundle = env.get(CA_BUNDLE_ENV, "").strip()
    if not bundle:
        return True
    if not os.path.exists(bundle):
        raise UserFacingError(f"{CA_BUNDLE_ENV} names {bundle}, which does not exist: point it at your CA certificate file (PEM).")
    return bundle


def credentials_hint(source: str) -> str:
    """What to fix when the server refused the credentials (end of a sentence)."""
    return {
        "url": "correct the user and password written in the URL",
        "token": f"set {TOKEN_ENV} to a valid token",
        "basic": f"check {USER_ENV} and {PASSWORD_ENV}",
    }.get(source, f"set {USER_ENV} and {PASSWORD_ENV} (or {TOKEN_ENV}, or an entry in ~/.netrc)")


class PacsSession(requests.Session):
    """A requests session whose own ``verify`` always applies.

    Plain requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override a session's
    ``verify``; here the session's setting (the PACS CA bundle, or True) wins unless a
    call passes its own. ``trust_env`` stays on, so ``~/.netrc`` and proxy settings apply.
    """

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify
        return super().request(method, url, *args, **kwargs)


def make_session(url_credentials: tuple[str, str] | None = None) -> tuple[PacsSession, str]:
    """A session with the auth and TLS settings of the environment, and the auth's source."""
    session = PacsSession()
    session.auth, source = auth_from_env(url_credentials)
    session.verify = verify_from_env()
    return session, source
