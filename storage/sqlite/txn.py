"""One SQLite transaction, seen from the domain: the :class:`storage.base.Txn` protocol.

Every method is a coroutine that never suspends: it runs its SQL on the
sqlite3 connection directly. The store runs a whole transaction function on
the connection's own thread (``storage.sqlite.store``), so a pipeline batch
of a dozen statements per copy is one thread hop, not one per statement, and
a copy processed later in a batch sees what an earlier copy created.

The directory's SQL is in ``storage.sqlite.directory``, outgoing mail's in
``storage.sqlite.outbound`` and the poll ledger's in ``storage.sqlite.polls``; all
are mixed in here.
"""
from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Callable, Iterable

from gateway.model import EmailRecord, WorkItem
from storage.base import EmailState, JournaledCopy
from storage.sqlite.blobs import SIZE, inline_raw, message_raw
from storage.sqlite.directory import DirectorySql
from storage.sqlite.outbound import OutgoingSql
from storage.sqlite.polls import PollSql

_ITEM_COLUMNS = ("ref, kind, uuid, connector, mode, state, wait_type, new_info, parent,"
                 " split_into, merged_into, converted_to, linked, copied_from, contacts,"
                 " custom_data, send_automated_emails, created_at, updated_at")
_ITEM_MARKS = ", ".join("?" * (_ITEM_COLUMNS.count(",") + 2))
_COPY = ("SELECT e.id, e.connector, e.source, e.mail_from, e.rcpt_to, e.folder_path, m.id,"
         f" {inline_raw()} FROM emails e JOIN messages m ON m.id = e.message")
_EMAIL_COLUMNS = ("e.id, e.connector, e.source, e.direction, e.mail_from, e.rcpt_to,"
                  f" e.message_id, e.received_at, {SIZE}, e.state, e.outcome, e.reason,"
                  " e.targets, e.trace, e.peer, e.helo, e.folder_path, e.summary")
_EMAILS = f"SELECT {_EMAIL_COLUMNS} FROM emails e JOIN messages m ON m.id = e.message"
INSERT_EVENT = ("INSERT INTO events (type, ref, email_id, data, created_at)"
                " VALUES (?, ?, ?, ?, ?)")
_INSERT_FINGERPRINT = ("INSERT OR IGNORE INTO fingerprints (target, value, email_id, created_at)"
                       " VALUES (?, ?, ?, ?)")


def _item(row: Any) -> WorkItem:
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




def _email(row: Any) -> EmailRecord:
    (email_id, connector, source, direction, mail_from, rcpt_to, message_id, received_at,
     size, state, outcome, reason, targets, trace, peer, helo, folder_path, summary) = row
    return EmailRecord(id=email_id, connector=connector, source=source, direction=direction,
                       mail_from=mail_from, rcpt_to=json.loads(rcpt_to),
                       message_id=message_id, received_at=received_at, size=size,
                       state=state, outcome=outcome, reason=reason,
                       targets=json.loads(targets), trace=json.loads(trace), peer=peer,
                       helo=helo, folder_path=folder_path,
                       summary=json.loads(summary) if summary else None)


class SqliteTxn(DirectorySql, OutgoingSql, PollSql):
    """Domain reads and writes on one open transaction, run on the connection's thread."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.now = time.time()

    def _one(self, sql: str, params: Iterable = ()) -> Any:
        return self.conn.execute(sql, tuple(params)).fetchone()

    def _all(self, sql: str, params: Iterable = ()) -> list:
        return self.conn.execute(sql, tuple(params)).fetchall()

    # -- the journal -----------------------------------------------------------------

    async def journaled(self, limit: int, after: int = 0) -> list[JournaledCopy]:
        """Copies waiting for the pipeline after email ``after``, oldest first, with their
        raw bytes (a range over the journal's own partial index: only waiting copies)."""
        rows = self._all(f"{_COPY} WHERE e.state = 'journaled' AND e.id > ? ORDER BY e.id"
                         " LIMIT ?", (after, limit))
        return [self._copy(r) for r in rows]

    async def backlog(self) -> int:
        return self._one("SELECT COUNT(*) FROM emails WHERE state = 'journaled'")[0]

    async def copy(self, email_id: int) -> JournaledCopy | None:
        row = self._one(f"{_COPY} WHERE e.id = ?", (email_id,))
        return self._copy(row) if row else None

    def _copy(self, row: Any) -> JournaledCopy:
        email_id, connector, source, mail_from, rcpt_to, folder_path, message, raw = row
        return JournaledCopy(email_id, connector, source, mail_from,
                             tuple(json.loads(rcpt_to)), folder_path,
                             message_raw(self.conn, message, raw))

    async def email_state(self, email_id: int) -> EmailState | None:
        row = self._one("SELECT outcome, direction, trace, state FROM emails WHERE id = ?",
                        (email_id,))
        return EmailState(row[0], row[1], json.loads(row[2]), row[3]) if row else None

    async def rejournal_unprocessed(self, email_id: int) -> bool:
        """R-U1: an unprocessed incoming email goes back to the journal; anything else stays."""
        cursor = self.conn.execute(
            "UPDATE emails SET state = 'journaled', sender = NULL"
            " WHERE id = ? AND state = 'done'"
            " AND outcome = 'unprocessed' AND direction = 'incoming'", (email_id,))
        return cursor.rowcount > 0

    # -- reading emails (the API) ----------------------------------------------------

    async def email_record(self, email_id: int) -> EmailRecord | None:
        row = self._one(f"{_EMAILS} WHERE e.id = ?", (email_id,))
        return _email(row) if row else None

    async def emails_by_message_id(self, message_id: str, limit: int) -> list[EmailRecord]:
        rows = self._all(f"{_EMAILS} WHERE e.message_id = ? ORDER BY e.id LIMIT ?",
                         (message_id, limit))
        return [_email(r) for r in rows]

    async def unprocessed(self, limit: int, after: int) -> list[EmailRecord]:
        rows = self._all(f"{_EMAILS} WHERE e.outcome = 'unprocessed' AND e.state = 'done'"
                         " AND e.id > ? ORDER BY e.id LIMIT ?", (after, limit))
        return [_email(r) for r in rows]

    async def raw(self, email_id: int) -> bytes | None:
        row = self._one(f"SELECT m.id, {inline_raw()} FROM emails e"
                        " JOIN messages m ON m.id = e.message WHERE e.id = ?", (email_id,))
        return message_raw(self.conn, *row) if row else None

    async def count_emails(self) -> int:
        return self._one("SELECT COUNT(*) FROM emails")[0]

    async def queue_depths(self) -> dict[str, tuple[int, float | None]]:
        journal = self._one(      # both on the partial index of the journal
            "SELECT COUNT(*), (SELECT received_at FROM emails WHERE state = 'journaled'"
            " ORDER BY id LIMIT 1) FROM emails WHERE state = 'journaled'")
        outbound = self._one("SELECT COUNT(*), MIN(created_at) FROM outbound_queue"
                             " WHERE state = 'queued'")
        return {"journal": tuple(journal), "outbound": tuple(outbound)}

    # -- sent mail (R-S1, R-A3, R-M2 rule 1) -------------------------------------------

    async def sent_message(self, message_id: str) -> tuple[bool, bool] | None:
        """(found, automated) for an outgoing email with this Message-ID."""
        row = self._one("SELECT automated FROM emails WHERE message_id = ? AND"
                        " direction = 'outgoing' LIMIT 1", (message_id,))
        return (True, bool(row[0])) if row else None

    async def placed_on(self, message_id: str, *, incoming_only: bool = False) -> list[str]:
        """Refs of work items an earlier email with this Message-ID was placed on."""
        direction = " AND e.direction = 'incoming'" if incoming_only else ""
        rows = self._all(
            "SELECT DISTINCT ie.ref FROM emails e JOIN item_emails ie ON ie.email_id = e.id"
            f" WHERE e.message_id = ?{direction} ORDER BY ie.at", (message_id,))
        return [r[0] for r in rows]

    # -- dedup (R-D1..R-D4) ----------------------------------------------------------

    async def f1_seen(self, connector: str, f1: str, before_id: int,
                      since: float = 0.0) -> int | None:
        """An earlier copy on this connector with the same raw bytes (R-D3), within R-D4's window."""
        row = self._one("SELECT id FROM emails WHERE connector = ? AND f1 = ? AND id < ?"
                        " AND state = 'done' AND processed_at >= ? LIMIT 1",
                        (connector, f1, before_id or 1 << 62, since))
        return row[0] if row else None

    async def target_received(self, target: str, values: Iterable[str]) -> bool:
        values = list(values)
        marks = ", ".join("?" * len(values))
        row = self._one(f"SELECT 1 FROM fingerprints WHERE target = ? AND value IN ({marks})"
                        " LIMIT 1", (target, *values))
        return row is not None

    async def remember(self, target: str, values: Iterable[str], email_id: int) -> None:
        self.conn.executemany(_INSERT_FINGERPRINT,
                              [(target, v, email_id, self.now) for v in values])

    async def prune_fingerprints(self, older_than: float) -> int:
        return self.conn.execute("DELETE FROM fingerprints WHERE created_at < ?",
                                 (older_than,)).rowcount

    # -- loop breakers (R-B3) ----------------------------------------------------------

    async def sender_intake(self, connector: str, sender: str, since: float,
                            limit: int) -> int:
        """Copies ``sender`` brought ``connector`` since then that count against its
        budget, counted up to ``limit`` (a flood must not make the check dear)."""
        return self._one("SELECT COUNT(*) FROM (SELECT 1 FROM emails WHERE connector = ?"
                         " AND sender = ? AND processed_at >= ? LIMIT ?)",
                         (connector, sender, since, limit))[0]

    async def reopens(self, ref: str, since: float) -> int:
        """Times mail reopened work item ``ref`` since then."""
        return self._one("SELECT COUNT(*) FROM reopens WHERE ref = ? AND at >= ?",
                         (ref, since))[0]

    async def record_reopen(self, ref: str, email_id: int | None) -> None:
        self.conn.execute("INSERT INTO reopens (ref, email_id, at) VALUES (?, ?, ?)",
                          (ref, email_id, self.now))

    async def prune_reopens(self, older_than: float) -> int:
        return self.conn.execute("DELETE FROM reopens WHERE at < ?", (older_than,)).rowcount

    # -- work items ------------------------------------------------------------------

    async def workitem(self, ref: str) -> WorkItem | None:
        row = self._one(f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE ref = ?", (ref,))
        return _item(row) if row else None

    async def workitem_by_uuid(self, uuid: str) -> WorkItem | None:
        row = self._one(f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE uuid = ?",
                        (uuid.lower(),))
        return _item(row) if row else None

    async def workitems(self, *, connector: str | None = None, state: str | None = None,
                        mode: str | None = None, limit: int = 1000) -> list[WorkItem]:
        where, params = [], []
        for column, value in (("connector", connector), ("state", state), ("mode", mode)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._all(f"SELECT {_ITEM_COLUMNS} FROM work_items{clause}"
                         " ORDER BY number LIMIT ?", (*params, limit))
        return [_item(r) for r in rows]

    async def next_number(self) -> int:
        return self.conn.execute("INSERT INTO ref_numbers (at) VALUES (?)",
                                 (self.now,)).lastrowid

    async def save_workitem(self, item: WorkItem) -> None:
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

    async def attach_email(self, ref: str, email_id: int, action: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO item_emails (ref, email_id, action, at)"
                          " VALUES (?, ?, ?, ?)", (ref, email_id, action, self.now))

    async def item_email_ids(self, ref: str) -> list[int]:
        rows = self._all("SELECT email_id FROM item_emails WHERE ref = ? ORDER BY at,"
                         " email_id", (ref,))
        return [r[0] for r in rows]

    async def copy_communications(self, from_ref: str, to_ref: str) -> None:
        """R-M5: a new item made from a closed one carries its communications."""
        self.conn.execute(
            "INSERT OR IGNORE INTO item_emails (ref, email_id, action, at)"
            " SELECT ?, email_id, 'copied', ? FROM item_emails WHERE ref = ?",
            (to_ref, self.now, from_ref))

    # -- events (R-E6, R-X1) ---------------------------------------------------------

    async def emit(self, event_type: str, *, ref: str | None = None,
                   email_id: int | None = None, **data: Any) -> None:
        self.conn.execute(INSERT_EVENT, (event_type, ref, email_id, json.dumps(data), self.now))

    async def events(self, after: int, limit: int) -> list[dict]:
        """R-X1: the ordered events feed, oldest first, ids strictly increasing."""
        rows = self._all("SELECT id, type, ref, email_id, data, created_at FROM events"
                         " WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        return [{"id": r[0], "type": r[1], "ref": r[2], "email_id": r[3],
                 "data": json.loads(r[4]), "created_at": r[5]} for r in rows]

    async def last_event_id(self) -> int:
        return self._one("SELECT COALESCE(MAX(id), 0) FROM events")[0]

    # -- run-time settings -----------------------------------------------------------

    async def settings(self) -> dict:
        return {key: json.loads(value)
                for key, value in self._all("SELECT key, value FROM settings")}

    async def save_settings(self, values: dict) -> None:
        self.conn.executemany(
            "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at",
            [(k, json.dumps(v), self.now) for k, v in values.items()])


class BatchTxn(SqliteTxn):
    """The pipeline's transaction (:class:`storage.base.PipelineTxn`). What a batch writes
    and no statement of it reads back (outcomes, events, fingerprints) waits here until
    :meth:`flush`, one executemany each; the batch's own fingerprints and F1s are looked
    up here meanwhile (R-D2, R-D3 within a batch). Rolling back a copy's savepoint drops
    its events and fingerprints too."""

    def __init__(self, conn: sqlite3.Connection,
                 others_waiting: Callable[[], bool] | None = None):
        super().__init__(conn)
        self.others_waiting = others_waiting or (lambda: False)
        self._outcomes: list[tuple] = []
        self._events: list[tuple] = []
        self._fingerprints: dict[tuple[str, str], tuple] = {}   # (target, value) → row
        self._batch_f1: dict[tuple[str, str], int] = {}          # (connector, F1) → email id
        self._batch_senders: dict[tuple[str, str], int] = {}     # (connector, sender) → copies
        self._mark = (0, 0)

    async def still_journaled(self, email_ids: Iterable[int]) -> set[int]:
        """Which of these copies still wait for the pipeline (a person may have placed
        one, R-U1, since the batch was read)."""
        ids = list(email_ids)
        if not ids:
            return set()
        marks = ", ".join("?" * len(ids))
        return {r[0] for r in self._all(f"SELECT id FROM emails WHERE id IN ({marks})"
                                        " AND state = 'journaled'", ids)}

    async def set_outcome(self, email_id: int, *, outcome: str, reason: str | None,
                          targets: list[dict], trace: list[dict], f1: str | None,
                          connector: str | None = None, sender: str | None = None,
                          summary: dict | None = None) -> None:
        """Record the decision; written by :meth:`flush` at the end of the batch.
        ``sender``: the copy counts against that sender's budget (R-B3); ``summary``:
        the headers the API shows."""
        self._outcomes.append((outcome, reason, json.dumps(targets), json.dumps(trace), f1,
                               self.now, sender, json.dumps(summary) if summary else None,
                               email_id))
        if f1 and connector:
            self._batch_f1.setdefault((connector, f1), email_id)
        if sender and connector:
            key = (connector, sender)
            self._batch_senders[key] = self._batch_senders.get(key, 0) + 1

    async def sender_intake(self, connector: str, sender: str, since: float,
                            limit: int) -> int:
        in_batch = self._batch_senders.get((connector, sender), 0)
        if in_batch >= limit:
            return in_batch
        return in_batch + await super().sender_intake(connector, sender, since,
                                                      limit - in_batch)

    async def f1_seen(self, connector: str, f1: str, before_id: int,
                      since: float = 0.0) -> int | None:
        in_batch = self._batch_f1.get((connector, f1))
        if in_batch is not None and in_batch < (before_id or 1 << 62):
            return in_batch
        return await super().f1_seen(connector, f1, before_id, since)

    async def target_received(self, target: str, values: Iterable[str]) -> bool:
        values = tuple(values)
        if any((target, value) in self._fingerprints for value in values):
            return True
        return await super().target_received(target, values)

    async def remember(self, target: str, values: Iterable[str], email_id: int) -> None:
        for value in values:   # INSERT OR IGNORE: the first one stays
            self._fingerprints.setdefault((target, value), (target, value, email_id, self.now))

    async def emit(self, event_type: str, *, ref: str | None = None,
                   email_id: int | None = None, **data: Any) -> None:
        self._events.append((event_type, ref, email_id, json.dumps(data), self.now))

    async def savepoint(self, action: str) -> None:
        """``begin`` / ``rollback`` / ``release`` the per-copy savepoint of the runner,
        nested in the batch's transaction (the store opened it before the batch ran)."""
        sql = {"begin": "SAVEPOINT copy", "rollback": "ROLLBACK TO copy",
               "release": "RELEASE copy"}[action]
        self.conn.execute(sql)
        if action == "begin":
            self._mark = (len(self._events), len(self._fingerprints))
        elif action == "rollback":
            events, fingerprints = self._mark
            del self._events[events:]
            for key in list(self._fingerprints)[fingerprints:]:
                del self._fingerprints[key]

    async def flush(self) -> None:
        """Write what waited, in the order it came (event ids follow emit order)."""
        if self._outcomes:
            self.conn.executemany(
                "UPDATE emails SET state = 'done', outcome = ?, reason = ?, targets = ?,"
                " trace = ?, f1 = ?, processed_at = ?, sender = COALESCE(?, sender),"
                " summary = COALESCE(?, summary) WHERE id = ?", self._outcomes)
        if self._events:
            self.conn.executemany(INSERT_EVENT, self._events)
        if self._fingerprints:
            self.conn.executemany(_INSERT_FINGERPRINT, self._fingerprints.values())
        self._outcomes, self._events, self._fingerprints = [], [], {}
        self._batch_senders, self._batch_f1 = {}, {}
