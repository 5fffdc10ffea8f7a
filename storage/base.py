"""The Store protocol: what the rest of mailgate asks of a database, and nothing about how.

DESIGN "The store". Every backend implements these protocols; nothing outside
``storage/`` imports a database driver or writes SQL. Rows cross this line as
dataclasses (``gateway.model`` for the domain, the ones below for the store's
own records), never as tuples.

Work that reads and changes several things at once is a *transaction*: an
``async`` function of a :class:`Txn` handed to :meth:`Store.transaction` (host
operations: the API, embedding, the config bootstrap, ``directory import``) or
:meth:`Store.decide` (the pipeline's batches). It commits as a whole or not at
all. Its awaits on the transaction are the backend's business: on SQLite they
never suspend (the function runs, whole, on the writer's own thread), on a
server database they are real round trips. A transaction function must therefore
await nothing but its transaction.

``storage.open_store(url)`` is the one place that picks a backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol, TypeVar

from gateway.model import ConnectorEntry, Copy, EmailRecord, Route, WorkItem

T = TypeVar("T")

# Copies one Message-ID lookup answers at most (GET /api/v1/emails?message_id=).
MESSAGE_ID_COPIES = 100


class StoreError(Exception):
    """The store could not do what was asked; callers answer 4xx, never 5xx."""


# -- the store's own records ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JournaledCopy:
    """A copy as the journal holds it, waiting for (or re-read by) the pipeline."""
    email_id: int
    connector: str
    source: str
    mail_from: str | None
    rcpt_to: tuple[str, ...]
    folder_path: str | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class EmailState:
    """Where one email stands: its decision so far and whether it waits in the journal."""
    outcome: str | None
    direction: str
    trace: list
    state: str                      # journaled | done


@dataclass(frozen=True, slots=True)
class Contact:
    """R-R2: an address or ``*@domain`` pattern and the company it belongs to."""
    id: int
    pattern: str
    company: str


@dataclass(frozen=True, slots=True)
class ActivityLine:
    """R-C5: one line of a connector's or route's history."""
    id: int
    entity: str                     # connector:<name> | route:<id>
    action: str
    actor: str
    at: float
    changes: dict


@dataclass(frozen=True, slots=True)
class ConnectorTest:
    """R-C3: the last test of a connector."""
    ok: bool
    detail: str
    tested_at: float


@dataclass(frozen=True, slots=True)
class OutboundMail:
    """A queued outgoing mail that is due, with what sending it needs (R-O4)."""
    email_id: int
    attempts: int
    created_at: float
    connector: str
    mail_from: str | None
    rcpt_to: tuple[str, ...]        # the recipients this try is for
    message_id: str | None
    raw: bytes
    ref: str | None                 # the work item it belongs to


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """What happened to one outgoing mail so far."""
    state: str                      # queued | sent | failed
    attempts: int
    last_error: str | None
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class PolledKeys:
    """What the store knows of one mailbox folder (R-I4, R-B5)."""
    known: dict[str, int | None] = field(default_factory=dict)  # key → email id (None: watermark)
    polled_before: bool = False
    foreign: tuple[str, ...] = ()   # stored keys of a mailbox the connector pointed at before


# -- transactions ---------------------------------------------------------------------------

class Txn(Protocol):
    """One transaction, seen from the domain: what stages and host operations read and change."""
    now: float

    # the journal
    async def copy(self, email_id: int) -> JournaledCopy | None: ...
    async def email_state(self, email_id: int) -> EmailState | None: ...
    async def rejournal_unprocessed(self, email_id: int) -> bool: ...
    # sent mail (R-S1, R-A3, R-M2 rule 1)
    async def sent_message(self, message_id: str) -> tuple[bool, bool] | None: ...
    async def placed_on(self, message_id: str, *, incoming_only: bool = False) -> list[str]: ...
    # dedup (R-D1..R-D4)
    async def f1_seen(self, connector: str, f1: str, before_id: int,
                      since: float = 0.0) -> int | None: ...
    async def target_received(self, target: str, values: Iterable[str]) -> bool: ...
    async def remember(self, target: str, values: Iterable[str], email_id: int) -> None: ...
    async def prune_fingerprints(self, older_than: float) -> int: ...
    # loop breakers (R-B3)
    async def sender_intake(self, connector: str, sender: str, since: float,
                            limit: int) -> int: ...
    async def reopens(self, ref: str, since: float) -> int: ...
    async def record_reopen(self, ref: str, email_id: int | None) -> None: ...
    async def prune_reopens(self, older_than: float) -> int: ...
    async def automated_sent_to(self, address: str, *, since: float) -> int: ...
    async def prune_automated_sent(self, older_than: float) -> int: ...
    # work items (R-W*)
    async def workitem(self, ref: str) -> WorkItem | None: ...
    async def workitem_by_uuid(self, uuid: str) -> WorkItem | None: ...
    async def workitems(self, *, connector: str | None = None, state: str | None = None,
                        mode: str | None = None, limit: int = 1000) -> list[WorkItem]: ...
    async def next_number(self) -> int: ...
    async def save_workitem(self, item: WorkItem) -> None: ...
    async def attach_email(self, ref: str, email_id: int, action: str) -> None: ...
    async def item_email_ids(self, ref: str) -> list[int]: ...
    async def copy_communications(self, from_ref: str, to_ref: str) -> None: ...
    # outgoing mail (R-O*)
    async def store_outgoing(self, raw: bytes, *, connector: str, message_id: str,
                             mail_from: str, rcpt_to: list[str], automated: bool,
                             summary: dict | None = None) -> int: ...
    # events (R-E6, R-X1)
    async def emit(self, event_type: str, *, ref: str | None = None,
                   email_id: int | None = None, **data: Any) -> None: ...
    # the directory (R-C*, R-R*)
    async def connector_entry(self, name: str) -> ConnectorEntry | None: ...
    async def connector_entries(self) -> list[ConnectorEntry]: ...
    async def save_connector(self, entry: ConnectorEntry, *, create: bool) -> None: ...
    async def delete_connector(self, name: str) -> None: ...
    async def route(self, route_id: int) -> Route | None: ...
    async def routes(self, connector: str | None = None) -> list[Route]: ...
    async def save_route(self, route: Route) -> int: ...
    async def delete_route(self, route_id: int) -> None: ...
    async def set_route_orders(self, orders: list[tuple[int, int]]) -> None: ...
    async def contacts(self) -> list[Contact]: ...
    async def save_contact(self, pattern: str, company: str) -> tuple[int, bool]: ...
    async def delete_contact(self, contact_id: int) -> bool: ...
    async def add_activity(self, entity: str, action: str, actor: str, at: float,
                           changes: dict) -> None: ...
    async def activity(self, *, entity: str | None, after: int,
                       limit: int) -> list[ActivityLine]: ...
    async def save_test(self, name: str, ok: bool, detail: str, at: float) -> None: ...
    async def last_test(self, name: str) -> ConnectorTest | None: ...
    async def set_processes(self, names: Iterable[str]) -> None: ...
    async def processes(self) -> set[str]: ...


class PipelineTxn(Txn, Protocol):
    """The pipeline's batch transaction: decisions, events and fingerprints wait here and
    are written together (:meth:`flush`), at the latest when the transaction function
    returns (:meth:`Store.decide` flushes then)."""

    async def still_journaled(self, email_ids: Iterable[int]) -> set[int]: ...
    async def set_outcome(self, email_id: int, *, outcome: str, reason: str | None,
                          targets: list[dict], trace: list[dict], f1: str | None,
                          connector: str | None = None, sender: str | None = None,
                          summary: dict | None = None) -> None: ...
    async def savepoint(self, action: str) -> None: ...   # begin | rollback | release
    async def flush(self) -> None: ...

    def others_waiting(self) -> bool:
        """True while a journal commit waits for this transaction to end (a store with
        one writer). A long batch then commits what it has decided and goes on in a new
        transaction: a ``250`` waits for at most a slice of a batch, not all of it."""
        ...


# -- small ports ----------------------------------------------------------------------------

class PollLedger(Protocol):
    """R-I4: which messages of a mailbox folder are journaled (keys are written by the
    journal commit itself, ``Copy.poll_key``); what the pollers read and tidy."""

    async def known(self, connector: str, folder: str, scope: str) -> PolledKeys: ...
    async def mark(self, connector: str, folder: str, scope: str, keys: list[str]) -> None: ...
    async def forget(self, connector: str, folder: str, stored_keys: list[str]) -> None: ...


class OutboundQueue(Protocol):
    """R-O4: the queue the delivery worker drains."""

    async def due(self, now: float, limit: int) -> list[OutboundMail]: ...
    async def next_due(self) -> float | None: ...
    async def queued(self) -> int: ...
    async def delivery(self, email_id: int) -> DeliveryState | None: ...
    async def finish(self, mail: OutboundMail, *, state: str, error: str | None,
                     next_attempt_at: float, pending: list[str] | None = None,
                     event: tuple[str, dict] | None = None) -> None: ...


class Store(Protocol):
    """The journal, transactions, and the reads the API and the workers need."""
    polls: PollLedger
    outbound: OutboundQueue

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> bool: ...

    async def journal(self, copies: list[Copy]) -> list[int]: ...
    async def journaled(self, limit: int, after: int = 0) -> list[JournaledCopy]: ...
    async def backlog(self) -> int: ...

    async def transaction(self, work: Callable[[Txn], Awaitable[T]], *,
                          durable: bool = True) -> T: ...
    async def read(self, work: Callable[[Txn], Awaitable[T]]) -> T: ...
    async def decide(self, work: Callable[[PipelineTxn], Awaitable[T]], *,
                     dry_run: bool = False, durable: bool = False) -> T: ...

    async def emit(self, event_type: str, **data: Any) -> None: ...
    async def events(self, after: int = 0, limit: int = 100) -> list[dict]: ...
    async def last_event_id(self) -> int: ...

    async def email(self, email_id: int) -> EmailRecord | None: ...
    async def emails_by_message_id(self, message_id: str,
                                   limit: int = MESSAGE_ID_COPIES) -> list[EmailRecord]: ...
    async def unprocessed(self, limit: int = 100, after: int = 0) -> list[EmailRecord]: ...
    async def raw(self, email_id: int) -> bytes | None: ...
    async def count_emails(self) -> int: ...
    async def queue_depths(self) -> dict[str, tuple[int, float | None]]: ...
    async def settings(self) -> dict: ...
    async def save_settings(self, values: dict) -> None: ...


CommitObserver = Callable[[int, float, bool], None]    # copies, seconds, committed
