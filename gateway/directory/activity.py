"""R-C5: the activity history of connectors and routes — who changed what, when, old → new.

A change is recorded by the directory operation that makes it, on the same
transaction, so the history never shows a change that was rolled back nor
misses one that committed. Secrets are never written: a changed password is
recorded as ``["***", "***"]``, which says *that* it changed and nothing else.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from gateway.model import SECRET_FIELDS as LOGIN_SECRETS
from gateway.model import ConnectorEntry, Route
from storage.base import Txn

SECRET_FIELDS = frozenset({"password", *LOGIN_SECRETS})
MASK = "***"
ACTIONS = ("create", "update", "delete", "enable", "disable", "move")


def connector_snapshot(entry: ConnectorEntry) -> dict:
    """The fields of a connector the history compares; :func:`diff` masks the secrets."""
    c = entry.connector
    values = {"name": c.name, "service": c.service, "direction": c.direction,
              "primary_address": c.primary_address, "aliases": list(c.aliases),
              "enabled": c.enabled, "route_on_envelope": c.route_on_envelope,
              "smtp_host": c.smtp_host, "smtp_port": c.smtp_port, "smtp_tls": c.smtp_tls,
              "username": entry.username, "password": entry.password}
    if c.polled:
        values.update(c.poll_settings())
        values.update({name: entry.secret(name) for name in LOGIN_SECRETS})
    return values


def route_snapshot(route: Route, order: int) -> dict:
    """A route's fields under their API names (SPEC §3.6), ``order`` as 1..N (R-R5)."""
    return {"name": route.name, "connector": route.connector,
            "email_address": route.email_address, "folder_path": route.folder_path,
            "rules": dataclasses.asdict(route.rules), "target": dataclasses.asdict(route.target),
            "send_automated_emails": route.send_automated_emails, "ack_cc": route.ack_cc,
            "test_mode": route.test_mode, "enabled": route.enabled, "order": order,
            "fallback": route.fallback}


def _flat(snapshot: dict | None) -> dict[str, Any]:
    """``{"rules": {"important": x}}`` → ``{"rules.important": x}``: one line per field."""
    flat: dict[str, Any] = {}
    for name, value in (snapshot or {}).items():
        if isinstance(value, dict):
            flat.update({f"{name}.{inner}": v for inner, v in value.items()})
        else:
            flat[name] = value
    return flat


def diff(old: dict | None, new: dict | None) -> dict[str, list]:
    """``{field: [old, new]}`` for every field that differs; None stands for "absent".

    ``old`` None is a creation (every field ``[null, value]``), ``new`` None a
    deletion. Secret fields are masked on both sides.
    """
    before, after = _flat(old), _flat(new)
    changes: dict[str, list] = {}
    for name in dict.fromkeys([*before, *after]):
        was, now = before.get(name), after.get(name)
        if was == now:
            continue
        changes[name] = [MASK, MASK] if name in SECRET_FIELDS else [was, now]
    return changes


def action_for(old: dict | None, new: dict | None) -> str:
    """create / delete, enable / disable when ``enabled`` flips, else update."""
    if old is None:
        return "create"
    if new is None:
        return "delete"
    if old.get("enabled") != new.get("enabled"):
        return "enable" if new.get("enabled") else "disable"
    return "update"


async def record(txn: Txn, entity: str, actor: str, old: dict | None, new: dict | None,
                 action: str | None = None) -> None:
    """Write one history line for ``entity`` (``connector:<name>`` / ``route:<id>``) in
    ``txn``, at the transaction's time. An update that changed nothing is not recorded."""
    changes = diff(old, new)
    action = action or action_for(old, new)
    if not changes and action not in ("create", "delete"):
        return
    await txn.add_activity(entity, action, actor, txn.now, changes)
