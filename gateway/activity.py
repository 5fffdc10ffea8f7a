"""R-C5: the activity history of connectors and routes — who changed what, when, old → new.

A change is recorded by the directory operation that makes it, on the same
write transaction, so the history never shows a change that was rolled back
nor misses one that committed. Secrets are never written: a changed password
is recorded as ``["***", "***"]``, which says *that* it changed and nothing else.
"""
from __future__ import annotations

from typing import Any

import aiosqlite

from storage import directory_sql

SECRET_FIELDS = frozenset({"password", "client_secret", "certificate_password"})
MASK = "***"
ACTIONS = ("create", "update", "delete", "enable", "disable", "move")


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


async def record(db: aiosqlite.Connection, entity: str, actor: str, at: float,
                 old: dict | None, new: dict | None, action: str | None = None) -> None:
    """Write one history line for ``entity`` (``connector:<name>`` / ``route:<id>``).

    An update that changed nothing is not recorded.
    """
    changes = diff(old, new)
    action = action or action_for(old, new)
    if not changes and action not in ("create", "delete"):
        return
    await directory_sql.add_activity(db, entity, action, actor, at, changes)
