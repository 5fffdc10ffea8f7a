"""A local fake of Microsoft Graph mail and the identity platform's token endpoint (R-I6).

Why a fake: there is no offline Graph, and the poller must be tested against what
Graph really does (the shapes of the Graph v1.0 reference): ``@odata.nextLink`` paging
with an absolute URL the client must follow verbatim, newest-first order unless
``$orderby`` says otherwise, 429/503 with ``Retry-After``, 401 for an expired or
revoked token, ``DELETE`` moving a message to Deleted Items, errors shaped
``{"error": {"code", "message", "innerError"}}``. The token endpoint checks a
client secret or verifies a certificate's signed client assertion (``x5t`` or
``x5t#S256``), so msal's three credential kinds are exercised for real.

Everything is served over HTTPS by one aiohttp server on 127.0.0.1 with a
``trustme`` CA, whose PEM is :attr:`GraphFake.ca_file` (R-C4: connectors trust it
through ``ca_file``); :attr:`GraphFake.stranger_ca_file` is a CA that signed nothing.

Every request is recorded (:class:`Recorded`: time, Graph requests in flight,
status) so tests can assert waits and concurrency rather than trust the client.
"""
from __future__ import annotations

import asyncio
import base64
import contextvars
import datetime as dt
import email
import hmac
import itertools
import re
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import jwt
import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from gateway.model import Connector
from gateway.protocols.mailbox import Credentials

TENANT = "7f3c2a10-5d4e-4b8a-9c1f-0a2b3c4d5e6f"
CLIENT_ID = "0e1d2c3b-4a59-4687-a7b6-c5d4e3f2a1b0"
SECRET = "fake~client~secret"
MAILBOX = "support@contoso.test"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_PATH = "/v1.0"
WELL_KNOWN = {"msgfolderroot": "Top of Information Store", "inbox": "Inbox",
              "deleteditems": "Deleted Items", "sentitems": "Sent Items", "drafts": "Drafts",
              "junkemail": "Junk Email", "archive": "Archive"}
_FILTER = re.compile(r"^\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*$")


# -- client certificates (R-I6 certificate credentials) ------------------------------------

@dataclass(frozen=True)
class ClientCertificate:
    """A self-signed app certificate as an admin would upload it to Entra ID."""
    certificate: x509.Certificate
    key_file: Path           # PEM private key only (use with ``thumbprint``)
    combined_file: Path      # PEM private key followed by the certificate
    pfx_file: Path           # PKCS#12 with key and certificate, encrypted by ``password``
    password: str
    thumbprint: str          # SHA-1 hex, upper case, as the Azure portal shows it


def make_client_certificate(directory: Path, *, password: str = "pfx-password",
                            name: str = "mailgate-graph") -> ClientCertificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    directory.mkdir(parents=True, exist_ok=True)
    key_file, combined, pfx = (directory / f"{name}.key.pem", directory / f"{name}.pem",
                               directory / f"{name}.pfx")
    key_file.write_bytes(key_pem)
    combined.write_bytes(key_pem + cert_pem)
    pfx.write_bytes(pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, None,
        serialization.BestAvailableEncryption(password.encode())))
    return ClientCertificate(cert, key_file, combined, pfx, password,
                             cert.fingerprint(hashes.SHA1()).hex().upper())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# -- the fake's state -----------------------------------------------------------------------

@dataclass
class Recorded:
    """One request as the fake saw it. ``kind``: graph, token or discovery;
    ``in_flight`` counts Graph requests being served when this one arrived,
    itself included; ``time`` is ``time.monotonic()`` at arrival."""
    kind: str
    method: str
    path: str
    query: str
    time: float
    in_flight: int
    headers: dict
    status: int | None = None
    answered: float | None = None   # ``time.monotonic()`` when the answer was ready
    form: dict | None = None        # token requests: the form msal posted


_current: contextvars.ContextVar[Recorded] = contextvars.ContextVar("graph_fake_request")


@dataclass
class FakeFolder:
    id: str
    display_name: str
    parent_id: str | None
    well_known: str | None = None

    def json(self, mailbox: "FakeMailbox") -> dict:
        inside = [m for m in mailbox.messages.values() if m.folder_id == self.id]
        return {"id": self.id, "displayName": self.display_name,
                "parentFolderId": self.parent_id or "",
                "childFolderCount": sum(f.parent_id == self.id
                                        for f in mailbox.folders.values()),
                "unreadItemCount": sum(not m.is_read for m in inside),
                "totalItemCount": len(inside), "isHidden": False}


@dataclass
class FakeMessage:
    id: str
    folder_id: str
    raw: bytes
    received: dt.datetime
    internet_message_id: str
    subject: str
    is_read: bool = False
    change_key: int = 1

    def json(self, select: set[str] | None = None, expand: str = "") -> dict:
        full = {"@odata.etag": f'W/"CQAAABYAAAB{self.change_key:04d}"', "id": self.id,
                "receivedDateTime": self.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "internetMessageId": self.internet_message_id, "subject": self.subject,
                "parentFolderId": self.folder_id, "isRead": self.is_read}
        if select:
            full = {k: v for k, v in full.items() if k in select or k in ("@odata.etag", "id")}
        # $expand=singleValueExtendedProperties($filter=id eq 'Integer 0x0E08'): Graph
        # answers the MAPI message size as a string, its id normalised to "Integer 0xe08".
        if "singlevalueextendedproperties" in expand.lower() and "0x0e08" in expand.lower():
            full["singleValueExtendedProperties"] = [{"id": "Integer 0xe08",
                                                      "value": str(len(self.raw))}]
        return full


@dataclass
class FakeMailbox:
    upn: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    folders: dict[str, FakeFolder] = field(default_factory=dict)
    messages: dict[str, FakeMessage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        root = FakeFolder(_graph_id("fold"), WELL_KNOWN["msgfolderroot"], None, "msgfolderroot")
        self.folders[root.id] = root
        for name, display in WELL_KNOWN.items():
            if name != "msgfolderroot":
                folder = FakeFolder(_graph_id("fold"), display, root.id, name)
                self.folders[folder.id] = folder

    def folder(self, ref: str) -> FakeFolder | None:
        """By id or well-known name (case-insensitive, as Graph accepts them)."""
        if ref in self.folders:
            return self.folders[ref]
        return next((f for f in self.folders.values()
                     if f.well_known and f.well_known == ref.lower()), None)

    def children(self, folder_id: str) -> list[FakeFolder]:
        return [f for f in self.folders.values() if f.parent_id == folder_id]


@dataclass
class Fault:
    status: int
    retry_after: str | None
    remaining: int
    path_contains: str | None
    code: str
    message: str


FAULT_TEXTS = {429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
               503: ("ServiceUnavailable", "Service Unavailable, please retry later."),
               504: ("GatewayTimeout", "The server did not respond in time.")}


_ids = itertools.count(1)


def _graph_id(kind: str) -> str:
    """Looks like Graph's ids: long, URL-safe base64 with ``-``, ``_`` and ``=``."""
    body = base64.urlsafe_b64encode(f"{kind}-{next(_ids):06d}-".encode() + uuid.uuid4().bytes)
    return "AAMkAD" + body.decode()


# -- the server -----------------------------------------------------------------------------

class GraphFake:
    """Token endpoint + Graph mail over HTTPS. Start with :meth:`start` (or use the
    ``graph_fake`` fixture). Knobs a test may set at any time:

    * ``expires_in``: lifetime of new tokens (seconds); expired ones get 401.
    * ``latency``: seconds each Graph request takes (lets concurrency build up).
    * ``max_page_size``: the server's page cap (Graph: 1000), to force paging.
    """

    def __init__(self, workdir: Path, *, tenant: str = TENANT, expires_in: int = 3599):
        self.workdir = workdir
        self.tenant = tenant
        self.expires_in = expires_in
        self.latency = 0.0
        self.max_page_size = 1000
        self.requests: list[Recorded] = []
        self.mailboxes: dict[str, FakeMailbox] = {}
        self.apps: dict[str, dict] = {}
        self.tokens: dict[str, tuple[str, float]] = {}     # token -> (client_id, expires)
        self.faults: list[Fault] = []
        self.port = 0
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self.ca = trustme.CA()
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file = str(workdir / "graph-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.stranger_ca_file = str(workdir / "stranger-ca.pem")
        trustme.CA().cert_pem.write_to_path(self.stranger_ca_file)

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> "GraphFake":
        app = web.Application(middlewares=[self._middleware])
        app.add_routes([
            web.get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery),
            web.post("/{tenant}/oauth2/v2.0/token", self._token),
            web.get(GRAPH_PATH + "/users/{user}/mailFolders/{folder}", self._get_folder),
            web.get(GRAPH_PATH + "/users/{user}/mailFolders/{folder}/childFolders",
                    self._child_folders),
            web.get(GRAPH_PATH + "/users/{user}/mailFolders/{folder}/messages",
                    self._list_messages),
            web.get(GRAPH_PATH + "/users/{user}/messages/{id}", self._get_message),
            web.get(GRAPH_PATH + "/users/{user}/messages/{id}/$value", self._get_value),
            web.delete(GRAPH_PATH + "/users/{user}/messages/{id}", self._delete_message),
            web.patch(GRAPH_PATH + "/users/{user}/messages/{id}", self._patch_message),
            web.post(GRAPH_PATH + "/users/{user}/messages/{id}/move", self._move_message),
        ])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def authority_host(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def graph_base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}{GRAPH_PATH}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority_host}/{self.tenant}/oauth2/v2.0/token"

    # setup helpers ---------------------------------------------------------------------

    def register_app(self, client_id: str = CLIENT_ID, *, secret: str | None = None,
                     certificate: x509.Certificate | None = None) -> None:
        """An app registration with a client secret and/or an uploaded certificate."""
        app = self.apps.setdefault(client_id, {"secrets": set(), "certificates": []})
        if secret:
            app["secrets"].add(secret)
        if certificate is not None:
            app["certificates"].append(certificate)

    def add_mailbox(self, upn: str = MAILBOX) -> FakeMailbox:
        return self.mailboxes.setdefault(upn.lower(), FakeMailbox(upn))

    def mailbox(self, upn: str = MAILBOX) -> FakeMailbox:
        return self.mailboxes[upn.lower()]

    def add_folder(self, path: str, upn: str = MAILBOX) -> str:
        """Create ``path`` ("Inbox/Billing", "Projects/2024") and any missing parent;
        a first segment naming a well-known folder's display name is that folder."""
        return self._walk(path, self.add_mailbox(upn), create=True)

    def folder_id(self, path: str, upn: str = MAILBOX) -> str:
        """The id of an existing folder path (KeyError if there is none)."""
        return self._walk(path, self.mailbox(upn), create=False)

    def _walk(self, path: str, mailbox: FakeMailbox, *, create: bool) -> str:
        parent = mailbox.folder("msgfolderroot")
        for name in [s for s in path.split("/") if s]:
            found = next((f for f in mailbox.children(parent.id)
                          if f.display_name.lower() == name.lower()), None)
            if found is None and not create:
                raise KeyError(path)
            if found is None:
                found = FakeFolder(_graph_id("fold"), name, parent.id)
                mailbox.folders[found.id] = found
            parent = found
        return parent.id

    def add_message(self, raw: bytes | None = None, *, folder: str = "Inbox",
                    upn: str = MAILBOX, subject: str = "Hello",
                    received: dt.datetime | None = None) -> str:
        """Store a message; ``received`` defaults to one second after the newest."""
        mailbox = self.add_mailbox(upn)
        folder_id = self.add_folder(folder, upn)
        if received is None:
            newest = max((m.received for m in mailbox.messages.values()),
                         default=dt.datetime(2024, 1, 1, 9, 0, tzinfo=dt.timezone.utc))
            received = newest + dt.timedelta(seconds=1)
        message_id = f"<{uuid.uuid4().hex}@customer.test>"
        if raw is None:
            raw = (f"From: Alice <alice@customer.test>\r\nTo: {upn}\r\n"
                   f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n"
                   f"Date: {email.utils.format_datetime(received)}\r\n\r\n"
                   f"Body of {subject}\r\n").encode()
        parsed = email.message_from_bytes(raw)
        message = FakeMessage(_graph_id("msg"), folder_id, raw, received,
                              parsed.get("Message-ID", message_id),
                              parsed.get("Subject", subject))
        mailbox.messages[message.id] = message
        return message.id

    def ids(self, folder: str = "Inbox", upn: str = MAILBOX) -> list[str]:
        """The ids in ``folder``, oldest first (what a poller should have listed)."""
        mailbox = self.mailbox(upn)
        folder_id = self.folder_id(folder, upn)
        return [m.id for m in sorted(mailbox.messages.values(), key=lambda m: m.received)
                if m.folder_id == folder_id]

    def message(self, message_id: str, upn: str = MAILBOX) -> FakeMessage | None:
        return self.mailbox(upn).messages.get(message_id)

    def fail_next(self, count: int = 1, status: int = 429, *, retry_after: str | None = "1",
                  path_contains: str | None = None, code: str = "",
                  message: str = "") -> None:
        """The next ``count`` Graph requests (whose path contains ``path_contains``)
        are answered ``status`` with ``Retry-After`` (None: header absent) and
        Graph's error ``code``/``message`` (defaults per status, e.g. 429
        ApplicationThrottled)."""
        default = FAULT_TEXTS.get(status, ("ErrorAccessDenied",
                                           "Access is denied. Check credentials and try again."))
        self.faults.append(Fault(status, retry_after, count, path_contains,
                                 code or default[0], message or default[1]))

    def revoke_tokens(self) -> None:
        """Every token issued so far is now rejected with 401 (as after a key roll)."""
        self.tokens.clear()

    def connector(self, upn: str = MAILBOX, **overrides) -> Connector:
        """A Graph connector pointed at this fake (secret credentials by default)."""
        fields = dict(name="o365", service="o365_graph", primary_address=upn,
                      protocol="graph", shared_mailbox=upn, tenant_id=self.tenant,
                      application_id=CLIENT_ID, authority_host=self.authority_host,
                      graph_base_url=self.graph_base_url, ca_file=self.ca_file)
        fields.update(overrides)
        return Connector(**fields)

    @staticmethod
    def credentials(secret: str | None = SECRET, **others) -> Credentials:
        return Credentials(client_secret=secret, **others)

    # what happened -----------------------------------------------------------------------

    @property
    def graph_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind == "graph"]

    @property
    def token_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind == "token"]

    @property
    def max_in_flight(self) -> int:
        return max((r.in_flight for r in self.graph_requests), default=0)

    # plumbing ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        path = request.path
        kind = ("graph" if path.startswith(GRAPH_PATH + "/") else
                "token" if path.endswith("/token") else "discovery")
        if kind == "graph":
            self._in_flight += 1
        record = Recorded(kind, request.method, path, request.query_string,
                          time.monotonic(), self._in_flight, dict(request.headers))
        self.requests.append(record)
        _current.set(record)
        try:
            if kind == "graph":
                response = await self._graph(request, handler)
            else:
                response = await handler(request)
        except Refused as refused:
            response = refused.response
        except web.HTTPException as exc:      # aiohttp's own 404/405 for unknown routes
            record.status, record.answered = exc.status, time.monotonic()
            raise
        finally:
            if kind == "graph":
                self._in_flight -= 1
        record.status, record.answered = response.status, time.monotonic()
        return response

    async def _graph(self, request: web.Request, handler) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = next((f for f in self.faults if f.remaining > 0 and
                      (f.path_contains is None or f.path_contains in request.path)), None)
        if fault is not None:
            fault.remaining -= 1
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return graph_error(fault.status, fault.code, fault.message, headers)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        issued = self.tokens.get(token)
        if not token:
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
        if issued is None or issued[1] <= time.monotonic():
            return graph_error(401, "InvalidAuthenticationToken",
                               "Access token has expired or is not yet valid.",
                               {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'})
        return await handler(request)

    def _user(self, request: web.Request) -> FakeMailbox:
        ref = request.match_info["user"].lower()
        found = self.mailboxes.get(ref) or next(
            (m for m in self.mailboxes.values() if m.id == ref), None)
        if found is None:
            raise Refused(404, "ErrorInvalidUser",
                              f"The requested user '{request.match_info['user']}' is invalid.")
        return found

    def _folder(self, request: web.Request, mailbox: FakeMailbox) -> FakeFolder:
        folder = mailbox.folder(request.match_info["folder"])
        if folder is None:
            raise Refused(404, "ErrorItemNotFound",
                              "The specified object was not found in the store.")
        return folder

    def _message(self, request: web.Request) -> tuple[FakeMailbox, FakeMessage]:
        mailbox = self._user(request)
        message = mailbox.messages.get(request.match_info["id"])
        if message is None:
            raise Refused(404, "ErrorItemNotFound",
                              "The specified object was not found in the store.")
        return mailbox, message

    def _page(self, request: web.Request, items: list, render, next_path: str) -> web.Response:
        """One page of ``items`` under ``$top``/``$skip``; the nextLink is absolute and
        names the user by id (as Graph does), so only a verbatim follower gets it right."""
        query = request.query
        try:
            top = min(int(query.get("$top", "10")), self.max_page_size)
            skip = int(query.get("$skip", "0"))
        except ValueError:
            raise Refused(400, "BadRequest", "Invalid $top or $skip value.")
        body = {"@odata.context": f"{self.graph_base_url}/$metadata#{next_path}",
                "value": [render(item) for item in items[skip:skip + top]]}
        if skip + top < len(items):
            params = {k: v for k, v in query.items() if k != "$skip"}
            params["$skip"] = str(skip + top)
            body["@odata.nextLink"] = (f"{self.graph_base_url}/{next_path}?"
                                       + urlencode(params, quote_via=quote, safe=""))
        return web.json_response(body)

    # identity platform -------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        base = f"{self.authority_host}/{tenant}"
        return web.json_response({
            "issuer": f"{base}/v2.0", "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "jwks_uri": f"{self.authority_host}/{tenant}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                      "private_key_jwt",
                                                      "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU"})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        _current.get().form = dict(form)
        client_id = form.get("client_id", "")
        if request.match_info["tenant"] != self.tenant:
            return token_error(400, "invalid_request", 90002,
                               f"Tenant '{request.match_info['tenant']}' not found.")
        if form.get("grant_type") != "client_credentials":
            return token_error(400, "unsupported_grant_type", 70003,
                               "The app requested an unsupported grant type.")
        app = self.apps.get(client_id)
        if app is None:
            return token_error(400, "unauthorized_client", 700016,
                               f"Application with identifier '{client_id}' was not found "
                               f"in the directory '{self.tenant}'.")
        if GRAPH_SCOPE not in form.get("scope", "").split():
            return token_error(400, "invalid_scope", 1002012,
                               f"The provided value for scope {form.get('scope')} is not "
                               "valid. Client credential flows must have a scope value "
                               "with /.default suffixed to the resource identifier.")
        if "client_secret" in form:
            if not any(hmac.compare_digest(form["client_secret"], s) for s in app["secrets"]):
                return token_error(401, "invalid_client", 7000215,
                                   "Invalid client secret provided. Ensure the secret being "
                                   "sent in the request is the client secret value, not the "
                                   f"client secret ID, for a secret added to app '{client_id}'.")
        elif "client_assertion" in form:
            problem = self._check_assertion(form["client_assertion"], client_id, app)
            if problem:
                return token_error(401, "invalid_client", problem[0], problem[1])
        else:
            return token_error(401, "invalid_client", 7000218,
                               "The request body must contain the following parameter: "
                               "'client_assertion' or 'client_secret'.")
        token = _b64url(uuid.uuid4().bytes + uuid.uuid4().bytes)
        self.tokens[token] = (client_id, time.monotonic() + self.expires_in)
        return web.json_response({"token_type": "Bearer", "expires_in": self.expires_in,
                                  "ext_expires_in": self.expires_in, "access_token": token})

    def _check_assertion(self, assertion: str, client_id: str,
                         app: dict) -> tuple[int, str] | None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError as exc:
            return 50027, f"JWT token is invalid or malformed: {exc}"
        for cert in app["certificates"]:
            der = cert.public_bytes(serialization.Encoding.DER)
            thumbprints = {"x5t": _b64url(_digest(der, hashes.SHA1())),
                           "x5t#S256": _b64url(_digest(der, hashes.SHA256()))}
            if not any(header.get(k, "").rstrip("=") == v for k, v in thumbprints.items()):
                continue
            try:
                claims = jwt.decode(assertion, cert.public_key(),
                                    algorithms=["RS256", "PS256"],
                                    audience=self.token_endpoint, issuer=client_id,
                                    options={"require": ["exp", "aud", "iss", "sub"]})
            except jwt.InvalidTokenError as exc:
                return 700027, f"Client assertion failed signature validation: {exc}"
            if claims["sub"] != client_id:
                return 700023, "Client assertion subject does not match the client id."
            return None
        return 700027, ("The certificate with identifier used to sign the client assertion "
                        f"is not registered on application. [Reason - The key was not found., "
                        f"Thumbprint of key used by client: '{header.get('x5t', '')}']")

    # Graph mail --------------------------------------------------------------------------

    async def _get_folder(self, request: web.Request) -> web.Response:
        mailbox = self._user(request)
        return web.json_response(self._folder(request, mailbox).json(mailbox))

    async def _child_folders(self, request: web.Request) -> web.Response:
        mailbox = self._user(request)
        parent = self._folder(request, mailbox)
        children = mailbox.children(parent.id)
        if "$filter" in request.query:
            match = _FILTER.match(request.query["$filter"])
            if match is None:
                raise Refused(400, "ErrorInvalidUrlQueryFilter",
                                  "The query filter contains one or more invalid nodes.")
            wanted = match.group(1).replace("''", "'").lower()
            children = [f for f in children if f.display_name.lower() == wanted]
        return self._page(request, children, lambda f: f.json(mailbox),
                          f"users/{mailbox.id}/mailFolders/{parent.id}/childFolders")

    async def _list_messages(self, request: web.Request) -> web.Response:
        mailbox = self._user(request)
        folder = self._folder(request, mailbox)
        # Graph lists newest first unless told; "$orderby=receivedDateTime" is ascending.
        order = request.query.get("$orderby", "receivedDateTime desc").split()
        if order[0] != "receivedDateTime" or len(order) > 2:
            raise Refused(400, "BadRequest", f"Could not find a property named "
                                             f"'{order[0]}' on type 'microsoft.graph.message'.")
        newest_first = len(order) == 2 and order[1].lower() == "desc"
        inside = sorted((m for m in mailbox.messages.values() if m.folder_id == folder.id),
                        key=lambda m: m.received, reverse=newest_first)
        select = set(filter(None, request.query.get("$select", "").split(","))) or None
        expand = request.query.get("$expand", "")
        return self._page(request, inside, lambda m: m.json(select, expand),
                          f"users/{mailbox.id}/mailFolders/{folder.id}/messages")

    async def _get_message(self, request: web.Request) -> web.Response:
        return web.json_response(self._message(request)[1].json())

    async def _get_value(self, request: web.Request) -> web.Response:
        message = self._message(request)[1]
        return web.Response(body=message.raw, content_type="text/plain")

    async def _delete_message(self, request: web.Request) -> web.Response:
        """Graph's DELETE moves to Deleted Items; from there it deletes for good."""
        mailbox, message = self._message(request)
        trash = mailbox.folder("deleteditems")
        if message.folder_id == trash.id:
            del mailbox.messages[message.id]
        else:
            message.folder_id = trash.id     # an immutable id survives the move
        return web.Response(status=204)

    async def _move_message(self, request: web.Request) -> web.Response:
        """message-move.md: 201 and the message, now in ``destinationId`` (a folder id or
        a well-known name); with immutable ids the id stays the same."""
        mailbox, message = self._message(request)
        try:
            destination = (await request.json())["destinationId"]
        except (ValueError, KeyError, TypeError):
            raise Refused(400, "ErrorInvalidRequest", "destinationId is required.")
        folder = mailbox.folder(str(destination))
        if folder is None:
            raise Refused(404, "ErrorItemNotFound",
                          "The specified object was not found in the store.")
        message.folder_id = folder.id
        message.change_key += 1
        return web.json_response(message.json(), status=201)

    async def _patch_message(self, request: web.Request) -> web.Response:
        message = self._message(request)[1]
        try:
            changes = await request.json()
        except ValueError:
            raise Refused(400, "RequestBodyRead", "Invalid JSON in the request body.")
        if "isRead" in changes:
            message.is_read = bool(changes["isRead"])
            message.change_key += 1
        return web.json_response(message.json())


def _digest(data: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def graph_error(status: int, code: str, message: str,
                headers: dict | None = None) -> web.Response:
    """Graph's error shape (concepts/errors.md)."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    body = {"error": {"code": code, "message": message,
                      "innerError": {"request-id": str(uuid.uuid4()), "date": now,
                                     "client-request-id": str(uuid.uuid4())}}}
    return web.json_response(body, status=status, headers=headers)


class Refused(Exception):
    """Raised by a handler to answer with Graph's error shape."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.response = graph_error(status, code, message, headers)


def token_error(status: int, error: str, code: int, description: str) -> web.Response:
    """The identity platform's error shape: AADSTS code, trace and correlation ids."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    trace, correlation = uuid.uuid4(), uuid.uuid4()
    return web.json_response(status=status, data={
        "error": error,
        "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
                             f"Correlation ID: {correlation} Timestamp: {now}",
        "error_codes": [code], "timestamp": now, "trace_id": str(trace),
        "correlation_id": str(correlation),
        "error_uri": f"https://login.microsoftonline.com/error?code={code}"})


@pytest.fixture
async def graph_fake(tmp_path):
    """A started fake with app ``CLIENT_ID`` (secret ``SECRET``) and mailbox ``MAILBOX``."""
    fake = GraphFake(tmp_path / "graph")
    fake.register_app(CLIENT_ID, secret=SECRET)
    fake.add_mailbox(MAILBOX)
    await fake.start()
    yield fake
    await fake.stop()
