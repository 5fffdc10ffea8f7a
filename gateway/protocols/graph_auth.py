"""Graph sign-in (R-I6): app-only tokens by the client-credentials flow, over msal.

Kept apart from :mod:`gateway.protocols.graph` because it is a different client with
a different job: msal is synchronous, runs on ``requests`` and holds the token cache,
while the mailbox speaks Graph's REST API over aiohttp. Its
``ConfidentialClientApplication`` lives on :class:`GraphTokens`, which the
:class:`~gateway.protocols.graph.GraphMailbox` keeps for the connector's life; msal
hands back the cached token until five minutes before expiry, then fetches a new one
(R-I6 "refreshes tokens before expiry"). The credential is a client secret, a PFX +
password, or a PEM key + thumbprint (R-I6).

R-C4: ``requests`` verifies TLS with the connector's own trust (system store +
``ca_file``), exactly as the Graph calls do; it would otherwise let
``REQUESTS_CA_BUNDLE`` override it, so its environment is ignored.
"""
from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import msal
import requests

from gateway.model import Connector
from gateway.protocols.mailbox import Credentials, MailboxError
from gateway.tls import tls_context

log = logging.getLogger("mailgate.graph")

SCOPE = "https://graph.microsoft.com/.default"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
PFX_SUFFIXES = (".pfx", ".p12")
_PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)
_CERTIFICATE_PEM = re.compile(
    r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


# -- msal over requests, with the connector's TLS trust ------------------------------------

class _ContextAdapter(requests.adapters.HTTPAdapter):
    """Makes ``requests`` verify with an ``ssl.SSLContext`` (R-C4): ``verify=<file>``
    would trust only that file, while a connector's ``ca_file`` is an addition to
    the system store, exactly as for the Graph calls."""

    def __init__(self, context):
        self._context = context
        super().__init__()

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        pool.pop("ca_certs", None)
        pool.pop("ca_cert_dir", None)
        pool["ssl_context"] = self._context
        return host, pool


class _MsalHttp(requests.Session):
    """The ``http_client`` handed to msal: every request bounded by ``timeout``, and
    no trust or proxy settings taken from the environment (notes: ecosystem §6)."""

    def __init__(self, connector: Connector, timeout: float):
        super().__init__()
        self.trust_env = False
        self.verify = connector.tls_verify
        self._timeout = timeout
        self.mount("https://", _ContextAdapter(tls_context(connector)))

    def request(self, method, url, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


class GraphTokens:
    """App-only tokens for one connector (R-I6), from one msal app and its cache.

    msal blocks, so it runs in a thread, one call at a time: concurrent requests that
    all find the cache empty then cause one token request, not four."""

    def __init__(self, connector: Connector, credentials: Credentials, timeout: float):
        self.connector = connector
        self.credentials = credentials
        self.timeout = timeout
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = asyncio.Lock()
        self._current: str | None = None

    async def get(self) -> str:
        async with self._lock:
            self._current = await asyncio.to_thread(self._acquire)
            return self._current

    async def expire(self, rejected: str) -> None:
        """Graph said 401 to ``rejected``: drop it from the cache so the next
        :meth:`get` asks for a new one. ``acquire_token_for_client`` has no
        ``force_refresh``, so the cached access tokens are removed instead. Only
        the first of several requests rejected with the same token does this."""
        async with self._lock:
            if self._app is None or rejected != self._current:
                return
            cache = self._app.token_cache
            for entry in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
                cache.remove_at(entry)
            self._current = None
            log.info("%s: Graph rejected the access token; fetching a new one",
                     self.connector.name)

    def _acquire(self) -> str:
        try:
            if self._app is None:
                self._app = self._build_app()
            result = self._app.acquire_token_for_client(scopes=[SCOPE])
        except (ValueError, OSError, requests.RequestException, msal.exceptions.MsalError) as exc:
            # unreadable key or PFX, wrong PFX password, authority unreachable or untrusted
            raise MailboxError(f"Graph sign-in failed: {exc}") from exc
        if "access_token" not in result:
            # R-C3: the identity platform's own words (AADSTS... included)
            raise MailboxError(f"{result.get('error', 'token error')}: "
                               f"{result.get('error_description', '')}".rstrip(": "))
        return result["access_token"]

    def _build_app(self) -> msal.ConfidentialClientApplication:
        c = self.connector
        host = (c.authority_host or DEFAULT_AUTHORITY_HOST).rstrip("/")
        options = {}
        if host != DEFAULT_AUTHORITY_HOST:
            # A sovereign cloud or a local fake: msal must not validate it against
            # login.microsoftonline.com's instance list (it still reads the
            # authority's openid-configuration).
            options.update(validate_authority=False, instance_discovery=False)
        return msal.ConfidentialClientApplication(
            c.application_id, authority=f"{host}/{c.tenant_id}",
            client_credential=self._credential(),
            http_client=_MsalHttp(c, self.timeout), **options)

    def _credential(self):
        """R-I6: a PFX + password, a PEM key + thumbprint, or a client secret."""
        c, password = self.connector, self.credentials.certificate_password
        if c.certificate_file:
            if c.certificate_file.lower().endswith(PFX_SUFFIXES):
                credential = {"private_key_pfx_path": c.certificate_file}
            else:
                credential = self._pem_credential(Path(c.certificate_file).read_text())
            if password:
                credential["passphrase"] = password
            return credential
        if self.credentials.client_secret:
            return self.credentials.client_secret
        raise MailboxError("Graph connector has neither a client secret nor a certificate_file")

    def _pem_credential(self, pem: str) -> dict:
        key = _PRIVATE_KEY_PEM.search(pem)
        if key is None:
            raise MailboxError(f"{self.connector.certificate_file}: no PEM private key in it")
        credential = {"private_key": key.group(0)}
        thumbprint = re.sub(r"[\s:]", "", self.connector.certificate_thumbprint)
        if thumbprint:
            credential["thumbprint"] = thumbprint
        elif (cert := _CERTIFICATE_PEM.search(pem)) is not None:
            credential["public_certificate"] = cert.group(0)   # msal derives the thumbprint
        else:
            raise MailboxError("a PEM key needs certificate_thumbprint (or its certificate "
                               "in the same file)")
        return credential
