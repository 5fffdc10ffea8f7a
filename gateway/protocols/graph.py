"""Microsoft Graph mailboxes (R-I4, R-I5, R-I6): list, fetch and remove over REST.

Two clients talk to Microsoft for one connector:

* msal gets app-only tokens (R-I6): :class:`~gateway.protocols.graph_auth.GraphTokens`,
  kept on the :class:`GraphMailbox` object, which the poller keeps for the
  connector's life, so its token cache lives as long.
* aiohttp sends the Graph calls, one ``ClientSession`` per poll session.

Both verify TLS with the connector's own trust (system store + ``ca_file``, R-C4).

Graph allows four concurrent requests per mailbox and answers 429/503 with a
``Retry-After`` to honour (notes: reliability A17); every request of this object
passes one semaphore and one shared pause, so a throttled mailbox slows down as a
whole instead of hammering on with its other requests.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from urllib.parse import quote, urlsplit

import aiohttp
import yarl

from gateway.model import Connector
from gateway.protocols.graph_auth import GraphTokens
from gateway.protocols.mailbox import (DEFAULT_TIMEOUT, LARGE_MESSAGE, Credentials, Fetched,
                                       Mailbox, MailboxError)
from gateway.tls import tls_context

log = logging.getLogger("mailgate.graph")

MAX_IN_FLIGHT = 4                 # Outlook's concurrency limit per app and mailbox
PAGE_SIZE = 100
THROTTLE_BUDGET = 300.0           # seconds of 429/503 waiting before a request gives up
MAX_THROTTLE_RETRIES = 30         # also bounds a server that keeps saying "Retry-After: 0"
BACKOFF_CAP = 60.0
# Graph's default message order is newest first; the poller wants oldest first.
# PidTagMessageSize (0x0E08) as an extended property: Graph's message resource has no
# size of its own, and the poller fetches large messages alone (LARGE_MESSAGE).
SIZE_PROPERTY = "Integer 0x0E08"
LIST_QUERY = (f"$select=id,internetMessageId,receivedDateTime&$top={PAGE_SIZE}"
              "&$orderby=receivedDateTime"
              "&$expand=singleValueExtendedProperties("
              + quote(f"$filter=id eq '{SIZE_PROPERTY}'", safe="$=") + ")")


# -- the mailbox ----------------------------------------------------------------------------

class GraphMailbox(Mailbox):
    """A mailbox read through Microsoft Graph. Keys are immutable message ids."""
    source = "graph"

    def __init__(self, connector: Connector, credentials: Credentials, *,
                 timeout: float = DEFAULT_TIMEOUT, throttle_budget: float = THROTTLE_BUDGET,
                 max_in_flight: int = MAX_IN_FLIGHT, max_size: int | None = None):
        super().__init__(connector, credentials, timeout=timeout, max_size=max_size)
        self.throttle_budget = throttle_budget
        self.tokens = GraphTokens(connector, credentials, timeout)
        self._gate = asyncio.Semaphore(max_in_flight)
        self._paused_until = 0.0
        self._folder_ids: dict[str, str] = {}
        self._http: aiohttp.ClientSession | None = None
        base = connector.graph_base_url.rstrip("/")
        self._origin = _origin(base)
        user = connector.shared_mailbox or connector.primary_address
        self._user_url = f"{base}/users/{quote(user, safe='@')}"

    # session ---------------------------------------------------------------------------

    async def open(self) -> None:
        # Log in first: a refused sign-in is what R-C3's test must report.
        await self.tokens.get()
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls_context(self.connector)),
            timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            try:
                await http.close()
            except Exception:   # closing must never raise (Mailbox.close)
                log.debug("closing the Graph session failed", exc_info=True)

    # R-I4 operations -------------------------------------------------------------------

    async def keys(self, folder: str) -> list[str]:
        for _ in range(2):
            folder_id = await self._folder_id(folder)
            ids = await self._list_ids(
                f"{self._user_url}/mailFolders/{_q(folder_id)}/messages?{LIST_QUERY}")
            if ids is not None:
                return ids
            # The cached id is stale (folder deleted or recreated): look it up again.
            self._folder_ids.pop(folder, None)
        raise MailboxError(f"Graph folder {folder!r} not found")

    async def fetch(self, folder: str, keys: list[str]) -> list[Fetched]:
        async def one(key: str) -> Fetched | None:
            raw = await self._call("GET", f"{self._user_url}/messages/{_q(key)}/$value",
                                   raw=True, missing_ok=True)
            return None if raw is None else Fetched(key, raw)

        return [f for f in await self._each(keys, one) if f is not None]

    async def remove(self, folder: str, keys: list[str]) -> None:
        target = await self._folder_id(self.connector.move_to) if self.connector.move_to \
            else None

        async def one(key: str) -> None:
            url = f"{self._user_url}/messages/{_q(key)}"
            if target is not None:                  # R-B5: move to the connector's folder
                await self._call("POST", f"{url}/move", body={"destinationId": target},
                                 missing_ok=True)
            elif self.connector.keep_on_server:     # R-B5: mark read, leave it there
                await self._call("PATCH", url, body={"isRead": True}, missing_ok=True)
            else:                                   # R-I4: DELETE = move to Deleted Items
                await self._call("DELETE", url, missing_ok=True)

        await self._each(keys, one)

    async def check_move_to(self) -> None:
        if self.connector.move_to:
            await self._folder_id(self.connector.move_to)

    # R-I5 folders ------------------------------------------------------------------------

    async def _folder_id(self, path: str) -> str:
        """The id of a folder path: ``INBOX``/``Inbox`` is the well-known ``inbox``,
        ``Inbox/Billing`` a child of it, ``Billing`` a top-level folder. Graph has no
        lookup by path, so each segment is one childFolders query; ids are kept."""
        if path in self._folder_ids:
            return self._folder_ids[path]
        segments = [s for s in path.replace("\\", "/").split("/") if s]
        if not segments:
            raise MailboxError(f"empty Graph folder path {path!r}")
        if segments[0].lower() == "inbox":
            folder_id, segments = "inbox", segments[1:]
        else:
            folder_id = "msgfolderroot"
        for name in segments:
            folder_id = await self._child_folder(folder_id, name, path)
        self._folder_ids[path] = folder_id
        return folder_id

    async def _child_folder(self, parent: str, name: str, path: str) -> str:
        literal = name.replace("'", "''")            # OData string literal escaping
        condition = _q(f"displayName eq '{literal}'")
        url = (f"{self._user_url}/mailFolders/{_q(parent)}/childFolders"
               f"?$filter={condition}&$select=id,displayName&$top={PAGE_SIZE}")
        for folder in await self._all_items(url):
            if str(folder.get("displayName", "")).casefold() == name.casefold():
                return folder["id"]
        raise MailboxError(f"Graph folder {path!r} not found (no {name!r} in its parent)")

    # paging ------------------------------------------------------------------------------

    async def _list_ids(self, url: str) -> list[str] | None:
        """Message ids over all pages, oldest first; None when the folder is gone.
        An id repeated on a later page (the list shifted under ``$skip``) counts once."""
        messages = await self._all_items(url, missing_ok=True)
        if messages is None:
            return None
        self.large = {m["id"] for m in messages if _size(m) > LARGE_MESSAGE}
        self.too_large = {m["id"]: _size(m) for m in messages
                          if self.max_size and _size(m) > self.max_size}
        return list(dict.fromkeys(message["id"] for message in messages))

    async def _all_items(self, url: str, *, missing_ok: bool = False) -> list | None:
        """Every page's ``value``, following ``@odata.nextLink`` verbatim (its query
        is Graph's business); None when the first page is a 404 and ``missing_ok``.
        A link to another origin is refused: the bearer token goes only to the
        configured Graph."""
        items: list = []
        body = await self._call("GET", url, missing_ok=missing_ok)
        if body is None:
            return None
        while True:
            items.extend(body.get("value", []))
            url = body.get("@odata.nextLink") or ""
            if not url:
                return items
            if _origin(url) != self._origin:
                raise MailboxError(f"Graph nextLink leaves {self._origin[1]}: {url}")
            body = await self._call("GET", url)

    # requests ----------------------------------------------------------------------------

    async def _each(self, keys: list[str], one) -> list:
        """Run ``one(key)`` for every key at once (the gate keeps it to four on the
        wire); the first failure cancels the rest and is raised as itself."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(key)) for key in keys]
        except BaseExceptionGroup as failed:
            first = failed.exceptions[0]
            raise first from first.__cause__
        return [task.result() for task in tasks]

    async def _call(self, method: str, url: str, *, body: dict | None = None,
                    raw: bool = False, missing_ok: bool = False):
        """One Graph request: 429/503 wait ``Retry-After`` and retry within
        ``throttle_budget``; a 401 gets one new token and one retry (R-I6); 404 is
        None when ``missing_ok``; any other error is Graph's code and message."""
        waited, attempt, renewed = 0.0, 0, False
        while True:
            async with self._gate:
                await self._respect_pause()
                token = await self.tokens.get()
                status, headers, data = await self._send(method, url, token, body)
            if status == 401 and not renewed:
                renewed = True
                await self.tokens.expire(token)
                continue
            if status in (429, 503):
                delay = _retry_after(headers)
                if delay is None:
                    delay = min(BACKOFF_CAP, 2.0 ** attempt)
                attempt += 1
                if waited + delay > self.throttle_budget or attempt > MAX_THROTTLE_RETRIES:
                    raise MailboxError(f"Graph kept throttling after {waited:g} s of waiting: "
                                       f"{_graph_error(status, data)}")
                waited += delay
                log.info("%s: Graph answered %s; waiting %g s", self.connector.name,
                         status, delay)
                self._paused_until = max(self._paused_until, time.monotonic() + delay)
                continue
            if status == 404 and missing_ok:
                return None
            if status >= 400:
                raise MailboxError(_graph_error(status, data))
            if raw:
                return data
            return json.loads(data) if data else {}

    async def _respect_pause(self) -> None:
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    async def _send(self, method: str, url: str, token: str, body: dict | None):
        if self._http is None:
            raise MailboxError("Graph mailbox used outside `async with`")
        headers = {"Authorization": f"Bearer {token}",
                   # Ids that survive moves between folders (notes: ecosystem §2)
                   "Prefer": 'IdType="ImmutableId"'}
        try:
            async with self._http.request(method, yarl.URL(url, encoded=True),
                                          headers=headers, json=body) as response:
                return response.status, response.headers, await response.read()
        except asyncio.TimeoutError as exc:
            raise MailboxError(f"Graph did not answer within {self.timeout:g} s: "
                               f"{method} {_path(url)}") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise MailboxError(f"TLS certificate of {exc.host} not trusted: "
                               f"{exc.certificate_error}") from exc
        except aiohttp.ClientError as exc:
            raise MailboxError(f"Graph request failed: {method} {_path(url)}: {exc}") from exc


# -- helpers --------------------------------------------------------------------------------

def _size(message: dict) -> int:
    """The message's PidTagMessageSize, or 0 when Graph did not send it."""
    for prop in message.get("singleValueExtendedProperties") or ():
        if str(prop.get("id", "")).lower() in ("integer 0xe08", "integer 0x0e08"):
            try:
                return int(prop.get("value", 0))
            except (TypeError, ValueError):
                return 0
    return 0


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _path(url: str) -> str:
    return urlsplit(url).path


def _retry_after(headers) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _graph_error(status: int, data: bytes) -> str:
    """``Graph 403 ErrorAccessDenied: Access is denied...``: Graph's own words (R-C3)."""
    try:
        error = json.loads(data)["error"]
        return f"Graph {status} {error.get('code', '')}: {error.get('message', '')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = data.decode("utf-8", "replace").strip()[:300]
        return f"Graph {status}: {text}" if text else f"Graph {status}"
