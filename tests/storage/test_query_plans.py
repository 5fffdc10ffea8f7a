"""Every query on the decision path is bounded by a key (DESIGN "The store").

A message's cost must not grow with what is stored. So each statement the pipeline
issues while deciding mail is run through SQLite's ``EXPLAIN QUERY PLAN``, and the
test fails on a table scan, or on an index range whose first column is not pinned
to a value (a recipient, a sender, a target, a Message-ID, a ref). The statements
are taken from a real run: a new request, an acknowledgement, a reply by
In-Reply-To, a reply by subject ref, a plus-tagged reply, an auto-reply, a repeat
of the same bytes, a flood of one sender, a reopened item.
"""
from __future__ import annotations

import re
import sqlite3

from gateway.config import BootstrapRoute, LoopsSection, MatchingSection
from tests.e2e.helpers import DEPARTMENTS, WIRE, deliver_raw, mail

ACKING = [BootstrapRoute(connector=c.name, email_address=c.primary_address, fallback=True,
                         send_automated_emails=True) for c in DEPARTMENTS]
# "SEARCH t USING [COVERING ]INDEX i (a=? AND b>?)", "SEARCH t USING INTEGER PRIMARY KEY (rowid=?)"
_SEARCH = re.compile(r"SEARCH (\w+)(?: AS \w+)? USING (?:COVERING )?(?:INDEX \w+|INTEGER PRIMARY "
                     r"KEY|PRIMARY KEY)(?: \((.*)\))?")


def _unbounded(plan: list[str]) -> list[str]:
    """The plan lines that read rows without a key: scans, and ranges not led by ``=``."""
    bad = []
    for line in plan:
        # a subquery's rows are what its own (checked) plan lines yield
        if line.startswith("SCAN") and not line.startswith(("SCAN CONSTANT ROW",
                                                             "SCAN (subquery")):
            bad.append(line)
            continue
        found = _SEARCH.search(line)
        if found is None:
            continue
        first = (found.group(2) or "").split(" AND ")[0]
        if not re.fullmatch(r"[\w.]+(=\?| IN \(\.\.\.\)|=\w+)", first.strip() or "x=?"):
            bad.append(line)
    return bad


def _plan(db: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}")]


async def _record_statements(gw, statements: list[str]) -> None:
    """From now on, every statement the writer runs is appended to ``statements``."""
    async def trace(txn) -> None:
        txn.conn.set_trace_callback(statements.append)
    await gw.store.transaction(trace)


async def test_every_query_deciding_mail_is_bounded_by_a_key(start_gateway, monkeypatch):
    from gateway.pipeline import runner
    monkeypatch.setattr(runner, "PRUNE_EVERY", 1e12)     # upkeep is not deciding mail
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKING,
                             matching=MatchingSection(mode="mixed"),
                             loops=LoopsSection(sender_budget=3, reopen_budget=1))
    statements: list[str] = []
    await _record_statements(gw, statements)

    async def send(message, rcpts=("fr@corp.test",)):
        await deliver_raw(gw, message.as_bytes(policy=WIRE), list(rcpts),
                          sender=message["From"])

    first = mail(subject="Printer on fire", body="It burns.")
    await send(first)
    [copy] = await gw.store.emails_by_message_id(first["Message-ID"])
    ref = copy.targets[0]["ref"]
    await send(mail(subject="Re: Printer on fire", body="Still.", in_reply_to=first["Message-ID"]))
    await gw.transition(ref, "RESOLVED")
    await send(mail(subject=f"[{ref}] thanks", body="Done?"))             # subject ref, reopens
    await send(mail(to=(f"fr+{ref}@corp.test",), subject="tagged", body="Tagged."),
               rcpts=(f"fr+{ref}@corp.test",))
    await send(mail(subject="Out of office", body="Away.",
                    headers={"Auto-Submitted": "auto-replied"}))
    again = mail(subject="Twice", body="Same bytes.")
    await send(again)
    await send(again)                                                      # R-D3 repeat
    for n in range(5):                                                     # R-B3 flood
        await send(mail(sender="loop@robot.test", subject=f"Loop {n}", body=f"Loop {n}."))

    decided = [s for s in statements if s.lstrip().upper().startswith(
        ("SELECT", "UPDATE", "DELETE", "INSERT"))]
    assert len(decided) > 50, decided                   # the run did reach the store
    db = sqlite3.connect(gw.settings.sqlite_path)
    try:
        unbounded = {sql: bad for sql in dict.fromkeys(decided)
                     if (bad := _unbounded(_plan(db, sql)))}
    finally:
        db.close()
    assert unbounded == {}, "\n".join(f"{sql}\n  -> {bad}" for sql, bad in unbounded.items())


def test_the_plan_check_itself_sees_a_scan_and_an_unkeyed_range(tmp_path):
    """The check above would pass on nothing if it could not see these two."""
    db = sqlite3.connect(tmp_path / "p.db")
    db.execute("CREATE TABLE t (a TEXT, b REAL)")
    db.execute("CREATE INDEX t_ab ON t (a, b)")
    db.execute("CREATE INDEX t_b ON t (b)")
    assert _unbounded(_plan(db, "SELECT * FROM t WHERE a LIKE '%x%'"))
    assert _unbounded(_plan(db, "SELECT * FROM t WHERE b > 5"))
    assert not _unbounded(_plan(db, "SELECT * FROM t WHERE a = 'x' AND b > 5"))
    assert not _unbounded(_plan(db, "SELECT * FROM t WHERE rowid = 3"))
