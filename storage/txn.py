"""One write transaction, seen from the domain: what the pipeline and host operations read and change.

Every method runs on the writer connection inside the transaction the writer
opened for the job (``SqliteStore.write``), so a copy processed later in a
batch sees what an earlier copy created, and a batch commits as a whole:
outcome, work-item effects and events in one transaction (DESIGN).
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterable

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


class Txn:
    """Domain reads and writes on one open write transaction."""

    def __init__(self, db: aiosqlite.Connection):
        self.db = db
        self.now = time.time()
        # Outcomes are written once per batch (one statement, not one per copy); until
        # then this batch's own copies are looked up here (R-D3 within a batch).
        self._outcomes: list[tuple] = []
        self._batch_f1: dict[tuple[str, str], int] = {}

    async def _one(self, sql: str, params: Iterable = ()) -> Any:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return await cursor.fetchone()

    async def _all(self, sql: str, params: Iterable = ()) -> list:
        async with self.db.execute(sql, tuple(params)) as cursor:
            return list(await cursor.fetchall())

    # -- the journal -----------------------------------------------------------------

    async def journaled(self, limit: int) -> list[tuple]:
        """Copies waiting for the pipeline, oldest first, with their raw bytes."""
        return await self._all(
            "SELECT e.id, e.connector, e.source, e.mail_from, e.rcpt_to, e.folder_path, m.raw"
            " FROM emails e JOIN messages m ON m.id = e.message"
            " WHERE e.state = 'journaled' ORDER BY e.id LIMIT ?", (limit,))

    async def backlog(self) -> int:
        """Copies still waiting for the pipeline."""
        return (await self._one("SELECT COUNT(*) FROM emails WHERE state = 'journaled'"))[0]

    async def rejournal_unprocessed(self, email_id: int) -> bool:
        """R-U1: an unprocessed incoming email goes back to the journal; anything else stays."""
        cursor = await self.db.execute(
            "UPDATE emails SET state = 'journaled' WHERE id = ? AND state = 'done'"
            " AND outcome = 'unprocessed' AND direction = 'incoming'", (email_id,))
        return cursor.rowcount > 0

    async def copy_row(self, email_id: int) -> tuple | None:
        return await self._one(
            "SELECT e.id, e.connector, e.source, e.mail_from, e.rcpt_to, e.folder_path, m.raw"
            " FROM emails e JOIN messages m ON m.id = e.message WHERE e.id = ?", (email_id,))

    async def set_outcome(self, email_id: int, *, outcome: str, reason: str | None,
                          targets: list[dict], trace: list[dict], f1: str | None,
                          connector: str | None = None) -> None:
        """Record the decision; written by :meth:`flush_outcomes` at the end of the batch."""
        self._outcomes.append((outcome, reason, json.dumps(targets), json.dumps(trace), f1,
                               self.now, email_id))
        if f1 and connector:
            self._batch_f1.setdefault((connector, f1), email_id)

    async def flush_outcomes(self) -> None:
        if self._outcomes:
            await self.db.executemany(
                "UPDATE emails SET state = 'done', outcome = ?, reason = ?, targets = ?,"
                " trace = ?, f1 = ?, processed_at = ? WHERE id = ?", self._outcomes)
            self._outcomes = []

    # -- sent mail (R-S1, R-A3, R-M2 rule 1) -------------------------------------------

    async def sent_message(self, message_id: str) -> tuple[bool, bool] | None:
        """(found, automated) for an outgoing email with this Message-ID."""
        row = await self._one("SELECT automated FROM emails WHERE message_id = ? AND"
                              " direction = 'outgoing' LIMIT 1", (message_id,))
        return (True, bool(row[0])) if row else None

    async def placed_on(self, message_id: str, *, incoming_only: bool = False) -> list[str]:
        """Refs of work items an earlier email with this Message-ID was placed on."""
        direction = " AND e.direction = 'incoming'" if incoming_only else ""
        rows = await self._all(
            "SELECT DISTINCT ie.ref FROM emails e JOIN item_emails ie ON ie.email_id = e.id"
            f" WHERE e.message_id = ?{direction} ORDER BY ie.at", (message_id,))
        return [r[0] for r in rows]

    # -- dedup (R-D1..R-D4) ----------------------------------------------------------

    async def f1_seen(self, connector: str, f1: str, before_id: int,
                      since: float = 0.0) -> int | None:
        """An earlier copy on this connector with the same raw bytes (R-D3), within R-D4's window."""
        in_batch = self._batch_f1.get((connector, f1))
        if in_batch is not None and in_batch < (before_id or 1 << 62):
            return in_batch
        row = await self._one("SELECT id FROM emails WHERE connector = ? AND f1 = ? AND id < ?"
                              " AND state = 'done' AND processed_at >= ? LIMIT 1",
                              (connector, f1, before_id or 1 << 62, since))
        return row[0] if row else None

    async def target_received(self, target: str, values: Iterable[str]) -> bool:
        values = list(values)
        marks = ", ".join("?" * len(values))
        row = await self._one(f"SELECT 1 FROM fingerprints WHERE target = ? AND value IN ({marks})"
                              " LIMIT 1", (target, *values))
        return row is not None

    async def remember(self, target: str, values: Iterable[str], email_id: int) -> None:
        await self.db.executemany(
            "INSERT OR IGNORE INTO fingerprints (target, value, email_id, created_at)"
            " VALUES (?, ?, ?, ?)", [(target, v, email_id, self.now) for v in values])

    async def prune_fingerprints(self, older_than: float) -> int:
        cursor = await self.db.execute("DELETE FROM fingerprints WHERE created_at < ?",
                                       (older_than,))
        return cursor.rowcount

    # -- work items ------------------------------------------------------------------

    async def workitem(self, ref: str) -> WorkItem | None:
        row = await self._one(f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE ref = ?", (ref,))
        return item_from_row(row) if row else None

    async def workitem_by_uuid(self, uuid: str) -> WorkItem | None:
        row = await self._one(f"SELECT {_ITEM_COLUMNS} FROM work_items WHERE uuid = ?",
                              (uuid.lower(),))
        return item_from_row(row) if row else None

    async def workitems(self, *, connector: str | None = None, state: str | None = None,
                        mode: str | None = None, limit: int = 1000) -> list[WorkItem]:
        where, params = [], []
        for column, value in (("connector", connector), ("state", state), ("mode", mode)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._all(f"SELECT {_ITEM_COLUMNS} FROM work_items{clause}"
                               " ORDER BY number LIMIT ?", (*params, limit))
        return [item_from_row(r) for r in rows]

    async def next_number(self) -> int:
        cursor = await self.db.execute("INSERT INTO ref_numbers (at) VALUES (?)", (self.now,))
        return cursor.lastrowid

    async def save_workitem(self, item: WorkItem) -> None:
        item.updated_at = self.now
        if not item.created_at:
            item.created_at = self.now
        await self.db.execute(
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
        await self.db.execute("INSERT OR IGNORE INTO item_emails (ref, email_id, action, at)"
                              " VALUES (?, ?, ?, ?)", (ref, email_id, action, self.now))

    async def item_email_ids(self, ref: str) -> list[int]:
        rows = await self._all("SELECT email_id FROM item_emails WHERE ref = ? ORDER BY at,"
                               " email_id", (ref,))
        return [r[0] for r in rows]

    async def copy_communications(self, from_ref: str, to_ref: str) -> None:
        """R-M5: a new item made from a closed one carries its communications."""
        await self.db.execute(
            "INSERT OR IGNORE INTO item_emails (ref, email_id, action, at)"
            " SELECT ?, email_id, 'copied', ? FROM item_emails WHERE ref = ?",
            (to_ref, self.now, from_ref))

    # -- outgoing mail ---------------------------------------------------------------

    async def store_outgoing(self, raw: bytes, *, connector: str, message_id: str,
                             mail_from: str, rcpt_to: list[str], automated: bool) -> int:
        cursor = await self.db.execute(
            "INSERT INTO messages (raw, size, received_at) VALUES (?, ?, ?)",
            (raw, len(raw), self.now))
        cursor = await self.db.execute(
            "INSERT INTO emails (message, connector, source, direction, mail_from, rcpt_to,"
            " message_id, received_at, state, automated, processed_at)"
            " VALUES (?, ?, 'gateway', 'outgoing', ?, ?, ?, ?, 'done', ?, ?)",
            (cursor.lastrowid, connector, mail_from, json.dumps(rcpt_to), message_id,
             self.now, int(automated), self.now))
        email_id = cursor.lastrowid
        await self.db.execute("INSERT INTO outbound_queue (email_id, next_attempt_at, created_at)"
                              " VALUES (?, ?, ?)", (email_id, self.now, self.now))
        return email_id

    async def automated_sent_to(self, address: str, *, since: float) -> int:
        """R-B3: automated mails composed for ``address`` since ``since``."""
        row = await self._one(
            "SELECT COUNT(*) FROM emails WHERE direction = 'outgoing' AND automated = 1"
            " AND received_at >= ? AND rcpt_to LIKE ? ESCAPE '\\'",
            (since, '%"' + address.replace("\\", "\\\\").replace("%", "\\%")
             .replace("_", "\\_") + '"%'))
        return row[0]

    async def set_processes(self, names: Iterable[str]) -> None:
        """R-R8: the host's processes, replacing the previous list."""
        await self.db.execute("DELETE FROM processes")
        await self.db.executemany("INSERT OR IGNORE INTO processes (name, updated_at)"
                                  " VALUES (?, ?)", [(n, self.now) for n in names])

    async def processes(self) -> set[str]:
        return {r[0] for r in await self._all("SELECT name FROM processes")}

    async def email_state(self, email_id: int) -> tuple | None:
        """(outcome, direction, trace JSON) of one email."""
        return await self._one("SELECT outcome, direction, trace FROM emails WHERE id = ?",
                               (email_id,))

    async def savepoint(self, action: str) -> None:
        """``begin`` / ``rollback`` / ``release`` the per-copy savepoint of the runner."""
        sql = {"begin": "SAVEPOINT copy", "rollback": "ROLLBACK TO copy",
               "release": "RELEASE copy"}[action]
        await self.db.execute(sql)

    # -- events (R-E6, R-X1) ---------------------------------------------------------

    async def emit(self, event_type: str, *, ref: str | None = None,
                   email_id: int | None = None, **data: Any) -> None:
        await self.db.execute("INSERT INTO events (type, ref, email_id, data, created_at)"
                              " VALUES (?, ?, ?, ?, ?)",
                              (event_type, ref, email_id, json.dumps(data), self.now))

    # -- directory -------------------------------------------------------------------

    async def routes(self, connector: str | None = None) -> list[Route]:
        clause, params = (" WHERE connector = ?", (connector,)) if connector else ("", ())
        rows = await self._all(f"SELECT {ROUTE_COLUMNS} FROM routes{clause} ORDER BY connector,"
                               " ord, id", params)
        return [route_from_row(r) for r in rows]

    async def save_route(self, route: Route) -> int:
        values = (route.connector, route.name, route.email_address, route.folder_path,
                  json.dumps(_rules_json(route.rules)), json.dumps(_target_json(route.target)),
                  int(route.send_automated_emails), int(route.ack_cc), int(route.test_mode),
                  int(route.enabled), route.order, int(route.fallback))
        if route.id:
            await self.db.execute(
                "UPDATE routes SET connector = ?, name = ?, email_address = ?, folder_path = ?,"
                " rules = ?, target = ?, send_automated_emails = ?, ack_cc = ?, test_mode = ?,"
                " enabled = ?, ord = ?, fallback = ? WHERE id = ?", (*values, route.id))
            return route.id
        cursor = await self.db.execute(
            "INSERT INTO routes (connector, name, email_address, folder_path, rules, target,"
            " send_automated_emails, ack_cc, test_mode, enabled, ord, fallback)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        return cursor.lastrowid

    async def contacts(self) -> dict[str, str]:
        rows = await self._all("SELECT pattern, company FROM contacts")
        return {pattern.lower(): company for pattern, company in rows}

    async def save_contact(self, pattern: str, company: str) -> int:
        cursor = await self.db.execute(
            "INSERT INTO contacts (pattern, company) VALUES (?, ?) ON CONFLICT(pattern)"
            " DO UPDATE SET company = excluded.company", (pattern.lower(), company))
        return cursor.lastrowid


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
