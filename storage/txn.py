"""One write transaction, seen from the domain: what the pipeline and host operations read and change.

Every method runs on the writer connection inside the transaction the writer
opened for the job (``SqliteStore.write``), so a copy processed later in a
batch sees what an earlier copy created, and a batch commits as a whole:
outcome, work-item effects and events in one transaction (DESIGN).

The SQL has two faces. :class:`SyncTxn` calls the sqlite3 connection directly,
on the connection's own thread: the pipeline decides a whole batch there in one
hop (``SqliteStore.write_sync``, :class:`BatchTxn`), because awaiting each
statement cost more than running it (a thread hop and an event-loop wakeup per
statement were most of the create path's CPU). :class:`Txn` is the asyncio face
for host operations and the API: each of its methods is one hop to the same
:class:`SyncTxn` method on that thread.
"""
from __future__ import annotations

import functools
import json
import sqlite3
import time
from typing import Any, Callable, Iterable

import aiosqlite

from gateway.model import Route, RouteRules, RouteTarget, WorkItem

_ITEM_COLUMNS = ("ref, kind, uuid, connector, mode, state, wait_type, new_info, parent,"
                 " split_into, merged_into, converted_to, linked, copied_from, contacts,"
                 " custom_data, send_automated_emails, created_at, updated_at")


_ITEM_MARKS = ", ".join("?" * (_ITEM_COLUMNS.count(",") + 2))


def item_from_row(row: Any) -> WorkItem:
    (ref, kind, uuid, connector, mode, state, wait_type, new_info, parent, split_into,
     merged_into, converted_to, linked, copied_from, contacts, custom_data, automated,
     created_at, updated_at) = row
    return WorkItem(ref=ref, kind=kind, uuid=uuid, connector=connector, mode=mode,
                    state=state, wait_type=wait_type, new_info=bool(new_info), parent=parent,
                    split_into=json.loads(split_into), merged_into=merged_into,
                    converted_to=converted_to, linked=json.loads(linked),
                    copied_from=copied_from, contacts=json.loads(contacts),
                    custom_data=json.loads(custom_data),
                    send_automated_emails=bool(automated), created_at=created_at,
                    updated_at=updated_at)


def route_from_row(row: Any) -> Route:
    (rid, connector, name, address, folder, rules, target, automated, ack_cc, test_mode,
     enabled, order, fallback) = row
    return Route(id=rid, name=name, connector=connector, email_address=address, order=order,
                 folder_path=folder, rules=RouteRules(**json.loads(rules)),
                 target=RouteTarget(**json.loads(target)),
                 send_automated_emails=bool(automated), ack_cc=bool(ack_cc),
                 test_mode=bool(test_mode), enabled=bool(enabled), fallback=bool(fallback))


ROUTE_COLUMNS = ("id, connector, name, email_address, folder_path, rules, target,"
                 " send_automated_emails, ack_cc, test_mode, enabled, ord, fallback")
_INSERT_EVENT = "INSERT INTO events (type, ref, email_id, data, created_at) VALUES (?, ?, ?, ?, ?)"
_INSERT_FINGERPRINT = ("INSERT OR IGNORE INTO fingerprints (target, value, email_id, created_at)"
                       " VALUES (?, ?, ?, ?)")


class SyncTxn:
    """Domain reads and writes on one open write transaction, called on the connection's thread."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.now = time.time()

    def _one(self, sql: str, params: Iterable = ()) -> Any:
        return self.conn.execute(sql, tuple(params)).fetchone()

    def _all(self, sql: str, params: Iterable = ()) -> list:
        return self.conn.execute(sql, tuple(params)).fetchall()

    # -- the journal -----------------------------------------------------------------

    def journaled(self, limit: int) -> list[tuple]:
        """Copies waiting for the pipeline, oldest first, with their raw bytes."""
        return self._all(
            "SELECT e.id, e.connector, e.source, e.mail_from, e.rcpt_to, e.folder_path, m.raw"
            " FROM emails e JOIN messages m ON m.id = e.message"
            " WHERE e.state = 'journaled' ORDER BY e.id LIMIT ?", (limit,))

    def backlog(self) -> int:
        """Copies still waiting for the pipeline."""
        return self._one("SELECT COUNT(*) FROM emails WHERE state = 'journaled'")[0]

    def rejournal_unprocessed(self, email_id: int) -> bool:
        """R-U1: an unprocessed incoming email goes back to the journal; anything else stays."""
        cursor = self.conn.execute(
            "UPDATE emails SET state = 'journaled', sender = NULL"
            " WHERE id = ? AND state = 'done'"
            " AND outcome = 'unprocessed' AND direction = 'incoming'", (email_id,))
        return cursor.rowcount > 0

    def copy_row(self, email_id: int) -> tuple | None:
        return self._one(
            "SELECT e.id, e.connector, e.source, e.mail_from, e.rcpt_to, e.folder_path, m.raw"
            " FROM emails e JOIN messages m ON m.id = e.message WHERE e.id = ?", (email_id,))

    # -- sent mail (R-S1, R-A3, R-M2 rule 1) -------------------------------------------

    def sent_message(self, message_id: str) -> tuple[bool, bool] | None:
        """(found, automated) for an outgoing email with this Message-ID."""
        row = self._one("SELECT automated FROM emails WHERE message_id = ? AND"
                        " direction = 'outgoing' LIMIT 1", (message_id,))
        return (True, bool(row[0])) if row else None

    def placed_on(self, message_id: str, *, incoming_only: bool = False) -> list[str]:
        """Refs of work items an earlier email with this Message-ID was placed on."""
        direction = " AND e.direction = 'incoming'" if incoming_only else ""
        rows = self._all(
            "SELECT DISTINCT ie.ref FROM emails e JOIN item_emails ie ON ie.email_id = e.id"
            f" WHERE e.message_id = ?{direction} ORDER BY ie.at", (message_id,))
        return [r[0] for r in rows]

    # -- dedup (R-D1..R-D4) ----------------------------------------------------------

    def f1_seen(self, connector: str, f1: str, before_id: int,
                since: float = 0.0) -> int | None:
        """An earlier copy on this connector with the same raw bytes (R-D3), within R-D4's window."""
        row = self._one("SELECT id FROM emails WHERE connector = ? AND f1 = ? AND id < ?"
                        " AND state = 'done' AND processed_at >= ? LIMIT 1",
                        (connector, f1, before_id or 1 << 62, since))
        return row[0] if row else None

    def target_received(self, target: str, values: Iterable[str]) -> bool:
        values = list(values)
        marks = ", ".join("?" * len(values))
        row = self._one(f"SELECT 1 FROM fingerprints WHERE target = ? AND value IN ({marks})"
                        " LIMIT 1", (target, *values))
        return row is not None

    def remember(self, target: str, values: Iterable[str], email_id: int) -> None:
        self.conn.executemany(_INSERT_FINGERPRINT,
                              [(target, v, email_id, self.now) for v in values])

    def prune_fingerprints(self, older_than: float) -> int:
        cursor = self.conn.execute("DELETE FROM fingerprints WHERE created_at < ?",
                                   (older_than,))
        return cursor.rowcount

    # -- loop breakers (R-B3) ----------------------------------------------------------

    def sender_intake(self, connector: str, sender: str, since: float, limit: int) -> int:
        """Copies ``sender`` brought ``connector`` since then that count against its
        budget, counted up to ``limit`` (a flood must not make the check dear)."""
        row = self._one("SELECT COUNT(*) FROM (SELECT 1 FROM emails WHERE connector = ?"
                        " AND sender = ? AND processed_at >= ? LIMIT ?)",
                        (connector, sender, since, limit))
        return row[0]

    def reopens(self, ref: str, since: float) -> int:
        """Times mail reopened work item ``ref`` since then."""
        return self._one("SELECT COUNT(*) FROM reopens WHERE ref = ? AND at >= ?",
                         (ref, since))[0]

    def record_reopen(self, ref: str, email_id: int | None) -> None:
        self.conn.execute("INSERT INTO reopens (ref, email_id, at) VALUES (?, ?, ?)",
                          (ref, email_id, self.now))

    def prune_reopens(self, older_than: float) -> int:
        return self.conn.execute("DELETE FROM reopens WHERE at < ?", (older_than,)).rowcount

    # -- work items ------------------------------------------------------------------

    def workitem(self, ref: str) -> WorkItem | None:
        row = self._one(f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE ref = ?", (ref,))
        return item_from_row(row) if row else None

    def workitem_by_uuid(self, uuid: str) -> WorkItem | None:
        row = self._one(f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE uuid = ?",
                        (uuid.lower(),))
        return item_from_row(row) if row else None

    def workitems(self, *, connector: str | None = None, state: str | None = None,
                  mode: str | None = None, limit: int = 1000) -> list[WorkItem]:
        where, params = [], []
        for column, value in (("connector", connector), ("state", state), ("mode", mode)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._all(f"SELECT {_ITEM_COLUMNS} FROM work_items{clause}"
                         " ORDER BY number LIMIT ?", (*params, limit))
        return [item_from_row(r) for r in rows]

    def next_number(self) -> int:
        cursor = self.conn.execute("INSERT INTO ref_numbers (at) VALUES (?)", (self.now,))
        return cursor.lastrowid

    def save_workitem(self, item: WorkItem) -> None:
        item.updated_at = self.now
        if not item.created_at:
            item.created_at = self.now
        self.conn.execute(
            f"INSERT INTO work_items (number, {_ITEM_COLUMNS}) VALUES ({_ITEM_MARKS})"
            " ON CONFLICT(ref) DO UPDATE SET state = excluded.state,"
            " wait_type = excluded.wait_type, new_info = excluded.new_info,"
            " parent = excluded.parent, split_into = excluded.split_into,"
            " merged_into = excluded.merged_into, converted_to = excluded.converted_to,"
            " linked = excluded.linked, copied_from = excluded.copied_from,"
            " contacts = excluded.contacts, custom_data = excluded.custom_data,"
            " send_automated_emails = excluded.send_automated_emails,"
            " mode = excluded.mode, updated_at = excluded.updated_at",
            (item.number, item.ref, item.kind, item.uuid.lower(), item.connector, item.mode,
             item.state, item.wait_type, int(item.new_info), item.parent,
             json.dumps(item.split_into), item.merged_into, item.converted_to,
             json.dumps(item.linked), item.copied_from, json.dumps(item.contacts),
             json.dumps(item.custom_data), int(item.send_automated_emails),
             item.created_at, item.updated_at))

    def attach_email(self, ref: str, email_id: int, action: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO item_emails (ref, email_id, action, at)"
                          " VALUES (?, ?, ?, ?)", (ref, email_id, action, self.now))

    def item_email_ids(self, ref: str) -> list[int]:
        rows = self._all("SELECT email_id FROM item_emails WHERE ref = ? ORDER BY at,"
                         " email_id", (ref,))
        return [r[0] for r in rows]

    def copy_communications(self, from_ref: str, to_ref: str) -> None:
        """R-M5: a new item made from a closed one carries its communications."""
        self.conn.execute(
            "INSERT OR IGNORE INTO item_emails (ref, email_id, action, at)"
            " SELECT ?, email_id, 'copied', ? FROM item_emails WHERE ref = ?",
            (to_ref, self.now, from_ref))

    # -- outgoing mail ---------------------------------------------------------------

    def store_outgoing(self, raw: bytes, *, connector: str, message_id: str,
                       mail_from: str, rcpt_to: list[str], automated: bool) -> int:
        cursor = self.conn.execute(
            "INSERT INTO messages (raw, size, received_at) VALUES (?, ?, ?)",
            (raw, len(raw), self.now))
        cursor = self.conn.execute(
            "INSERT INTO emails (message, connector, source, direction, mail_from, rcpt_to,"
            " message_id, received_at, state, automated, processed_at)"
            " VALUES (?, ?, 'gateway', 'outgoing', ?, ?, ?, ?, 'done', ?, ?)",
            (cursor.lastrowid, connector, mail_from, json.dumps(rcpt_to), message_id,
             self.now, int(automated), self.now))
        email_id = cursor.lastrowid
        self.conn.execute("INSERT INTO outbound_queue (email_id, next_attempt_at, created_at)"
                          " VALUES (?, ?, ?)", (email_id, self.now, self.now))
        return email_id

    def automated_sent_to(self, address: str, *, since: float) -> int:
        """R-B3: automated mails composed for ``address`` since ``since``."""
        row = self._one(
            "SELECT COUNT(*) FROM emails WHERE direction = 'outgoing' AND automated = 1"
            " AND received_at >= ? AND rcpt_to LIKE ? ESCAPE '\\'",
            (since, '%"' + address.replace("\\", "\\\\").replace("%", "\\%")
             .replace("_", "\\_") + '"%'))
        return row[0]

    def set_processes(self, names: Iterable[str]) -> None:
        """R-R8: the host's processes, replacing the previous list."""
        self.conn.execute("DELETE FROM processes")
        self.conn.executemany("INSERT OR IGNORE INTO processes (name, updated_at)"
                              " VALUES (?, ?)", [(n, self.now) for n in names])

    def processes(self) -> set[str]:
        return {r[0] for r in self._all("SELECT name FROM processes")}

    def email_state(self, email_id: int) -> tuple | None:
        """(outcome, direction, trace JSON, state) of one email."""
        return self._one("SELECT outcome, direction, trace, state FROM emails WHERE id = ?",
                         (email_id,))

    def still_journaled(self, email_ids: Iterable[int]) -> set[int]:
        """Which of these copies still wait for the pipeline (a person may have placed
        one, R-U1, since the batch was read)."""
        ids = list(email_ids)
        marks = ", ".join("?" * len(ids))
        return {r[0] for r in self._all(f"SELECT id FROM emails WHERE id IN ({marks})"
                                        " AND state = 'journaled'", ids)} if ids else set()

    def savepoint(self, action: str) -> None:
        """``begin`` / ``rollback`` / ``release`` the per-copy savepoint of the runner.

        The savepoints nest in the job's transaction, which is opened first when
        nothing has been written yet: a SAVEPOINT outside a transaction would start
        one, and its RELEASE would commit that copy's effects on their own, long before
        the batch's outcomes (a crash between them would apply the copy twice)."""
        if action == "begin" and not self.conn.in_transaction:
            self.conn.execute("BEGIN")
        sql = {"begin": "SAVEPOINT copy", "rollback": "ROLLBACK TO copy",
               "release": "RELEASE copy"}[action]
        self.conn.execute(sql)

    # -- events (R-E6, R-X1) ---------------------------------------------------------

    def emit(self, event_type: str, *, ref: str | None = None,
             email_id: int | None = None, **data: Any) -> None:
        self.conn.execute(_INSERT_EVENT, (event_type, ref, email_id, json.dumps(data), self.now))

    # -- directory -------------------------------------------------------------------

    def routes(self, connector: str | None = None) -> list[Route]:
        clause, params = (" WHERE connector = ?", (connector,)) if connector else ("", ())
        rows = self._all(f"SELECT {ROUTE_COLUMNS} FROM routes{clause} ORDER BY connector,"
                         " ord, id", params)
        return [route_from_row(r) for r in rows]

    def save_route(self, route: Route) -> int:
        values = (route.connector, route.name, route.email_address, route.folder_path,
                  json.dumps(_rules_json(route.rules)), json.dumps(_target_json(route.target)),
                  int(route.send_automated_emails), int(route.ack_cc), int(route.test_mode),
                  int(route.enabled), route.order, int(route.fallback))
        if route.id:
            self.conn.execute(
                "UPDATE routes SET connector = ?, name = ?, email_address = ?, folder_path = ?,"
                " rules = ?, target = ?, send_automated_emails = ?, ack_cc = ?, test_mode = ?,"
                " enabled = ?, ord = ?, fallback = ? WHERE id = ?", (*values, route.id))
            return route.id
        cursor = self.conn.execute(
            "INSERT INTO routes (connector, name, email_address, folder_path, rules, target,"
            " send_automated_emails, ack_cc, test_mode, enabled, ord, fallback)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return cursor.lastrowid

    def contacts(self) -> dict[str, str]:
        rows = self._all("SELECT pattern, company FROM contacts")
        return {pattern.lower(): company for pattern, company in rows}

    def save_contact(self, pattern: str, company: str) -> int:
        cursor = self.conn.execute(
            "INSERT INTO contacts (pattern, company) VALUES (?, ?) ON CONFLICT(pattern)"
            " DO UPDATE SET company = excluded.company", (pattern.lower(), company))
        return cursor.lastrowid


class BatchTxn(SyncTxn):
    """The pipeline's transaction. What a batch writes and no statement of it reads back
    (outcomes, events, fingerprints) waits here until :meth:`flush`, one executemany each;
    the batch's own fingerprints and F1s are looked up here meanwhile (R-D2, R-D3 within a
    batch). Rolling back a copy's savepoint drops its events and fingerprints too."""

    def __init__(self, conn: sqlite3.Connection):
        super().__init__(conn)
        self._outcomes: list[tuple] = []
        self._events: list[tuple] = []
        self._fingerprints: dict[tuple[str, str], tuple] = {}   # (target, value) → row
        self._batch_f1: dict[tuple[str, str], int] = {}          # (connector, F1) → email id
        self._batch_senders: dict[tuple[str, str], int] = {}     # (connector, sender) → copies
        self._mark = (0, 0)

    def set_outcome(self, email_id: int, *, outcome: str, reason: str | None,
                    targets: list[dict], trace: list[dict], f1: str | None,
                    connector: str | None = None, sender: str | None = None) -> None:
        """Record the decision; written by :meth:`flush` at the end of the batch.
        ``sender``: the copy counts against that sender's budget (R-B3)."""
        self._outcomes.append((outcome, reason, json.dumps(targets), json.dumps(trace), f1,
                               self.now, sender, email_id))
        if f1 and connector:
            self._batch_f1.setdefault((connector, f1), email_id)
        if sender and connector:
            key = (connector, sender)
            self._batch_senders[key] = self._batch_senders.get(key, 0) + 1

    def sender_intake(self, connector: str, sender: str, since: float, limit: int) -> int:
        in_batch = self._batch_senders.get((connector, sender), 0)
        if in_batch >= limit:
            return in_batch
        return in_batch + super().sender_intake(connector, sender, since, limit - in_batch)

    def f1_seen(self, connector: str, f1: str, before_id: int,
                since: float = 0.0) -> int | None:
        in_batch = self._batch_f1.get((connector, f1))
        if in_batch is not None and in_batch < (before_id or 1 << 62):
            return in_batch
        return super().f1_seen(connector, f1, before_id, since)

    def target_received(self, target: str, values: Iterable[str]) -> bool:
        values = tuple(values)
        if any((target, value) in self._fingerprints for value in values):
            return True
        return super().target_received(target, values)

    def remember(self, target: str, values: Iterable[str], email_id: int) -> None:
        for value in values:   # INSERT OR IGNORE: the first one stays
            self._fingerprints.setdefault((target, value), (target, value, email_id, self.now))

    def emit(self, event_type: str, *, ref: str | None = None,
             email_id: int | None = None, **data: Any) -> None:
        self._events.append((event_type, ref, email_id, json.dumps(data), self.now))

    def savepoint(self, action: str) -> None:
        super().savepoint(action)
        if action == "begin":
            self._mark = (len(self._events), len(self._fingerprints))
        elif action == "rollback":
            events, fingerprints = self._mark
            del self._events[events:]
            for key in list(self._fingerprints)[fingerprints:]:
                del self._fingerprints[key]

    def flush(self) -> None:
        """Write what waited, in the order it came (event ids follow emit order)."""
        if self._outcomes:
            self.conn.executemany(
                "UPDATE emails SET state = 'done', outcome = ?, reason = ?, targets = ?,"
                " trace = ?, f1 = ?, processed_at = ?, sender = COALESCE(?, sender)"
                " WHERE id = ?", self._outcomes)
        if self._events:
            self.conn.executemany(_INSERT_EVENT, self._events)
        if self._fingerprints:
            self.conn.executemany(_INSERT_FINGERPRINT, self._fingerprints.values())
        self._outcomes, self._events, self._fingerprints = [], [], {}
        self._batch_senders, self._batch_f1 = {}, {}


def _hop(method: Callable[..., Any]) -> Callable[..., Any]:
    """The asyncio face of a :class:`SyncTxn` method: one hop to the connection's thread.

    aiosqlite runs any function on its thread with ``_execute``; it is what its own
    ``execute`` and ``commit`` use, and it takes one queue put and one future per call.
    """
    @functools.wraps(method)
    async def on_thread(self: Txn, *args: Any, **kwargs: Any) -> Any:
        return await self.db._execute(method, self.sync, *args, **kwargs)
    return on_thread


class Txn:
    """The same reads and writes for asyncio callers (host operations, the API), on the
    writer's transaction or the reader. ``db`` is the aiosqlite connection, for the SQL
    modules that take one (``directory_sql``)."""

    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self.sync = SyncTxn(db._conn)     # aiosqlite's sqlite3 connection, used on its thread
        self.now = self.sync.now

    journaled = _hop(SyncTxn.journaled)
    backlog = _hop(SyncTxn.backlog)
    rejournal_unprocessed = _hop(SyncTxn.rejournal_unprocessed)
    copy_row = _hop(SyncTxn.copy_row)
    email_state = _hop(SyncTxn.email_state)
    sent_message = _hop(SyncTxn.sent_message)
    placed_on = _hop(SyncTxn.placed_on)
    prune_fingerprints = _hop(SyncTxn.prune_fingerprints)
    workitem = _hop(SyncTxn.workitem)
    workitem_by_uuid = _hop(SyncTxn.workitem_by_uuid)
    workitems = _hop(SyncTxn.workitems)
    next_number = _hop(SyncTxn.next_number)
    save_workitem = _hop(SyncTxn.save_workitem)
    attach_email = _hop(SyncTxn.attach_email)
    item_email_ids = _hop(SyncTxn.item_email_ids)
    copy_communications = _hop(SyncTxn.copy_communications)
    store_outgoing = _hop(SyncTxn.store_outgoing)
    automated_sent_to = _hop(SyncTxn.automated_sent_to)
    set_processes = _hop(SyncTxn.set_processes)
    processes = _hop(SyncTxn.processes)
    emit = _hop(SyncTxn.emit)
    routes = _hop(SyncTxn.routes)
    save_route = _hop(SyncTxn.save_route)
    contacts = _hop(SyncTxn.contacts)
    save_contact = _hop(SyncTxn.save_contact)


def _rules_json(rules: RouteRules) -> dict:
    return {"important": rules.important, "attachment_types": rules.attachment_types,
            "subject_keywords": rules.subject_keywords,
            "sender_companies": rules.sender_companies,
            "sender_list_includes": rules.sender_list_includes,
            "recipient_list_includes": rules.recipient_list_includes}


def _target_json(target: RouteTarget) -> dict:
    return {"kind": target.kind, "process": target.process, "customer": target.customer,
            "contract": target.contract, "service": target.service,
            "ticket_category": target.ticket_category}
