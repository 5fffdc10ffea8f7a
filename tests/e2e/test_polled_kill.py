"""kill -9 of a real ``mailgate serve`` while it drains an IMAP mailbox (R-I4).

The poller journals a batch (fsynced, with each message's key), then flags and
expunges it on the server. This test kills the process right after a commit
becomes visible, until one kill lands between a commit and its delete (mail
stored AND still on the server: before the \\Deleted flag, or flagged but not
yet expunged), then restarts the gateway and lets it finish:
every message must end up stored once and make exactly one work item.
"""
from __future__ import annotations

import sqlite3
import time
import uuid

import pytest

from tests.dovecot import DovecotInstance
from tests.integration.serve import ServeProcess

pytestmark = pytest.mark.timeout(240)

COUNT = 2000


def messages(to: str) -> list[bytes]:
    return [(f"From: Customer {n} <c{n}@example.org>\r\nTo: {to}\r\n"
             f"Subject: Kill test {n}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>\r\n"
             f"\r\nPlease help with case {n}.\r\n").encode() for n in range(COUNT)]


def stored(db) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT COUNT(*) FROM emails WHERE direction = 'incoming'"
                            ).fetchone()[0]


def query(db, sql: str) -> list:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql).fetchall()


def mailbox_ids(dovecot: DovecotInstance, user: str) -> set[str]:
    """Message-IDs still in the mailbox, including any flagged \\Deleted but not yet
    expunged (a kill between the two steps of an IMAP removal)."""
    found = set()
    for message in dovecot.messages(user):
        head = message.raw.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                found.add(line.split(b":", 1)[1].strip().decode())
    return found


def test_r_i4_kill_9_between_commit_and_delete_stores_once_and_makes_one_item_each(
        dovecot, tmp_path):
    user = dovecot.new_user("kill")
    dovecot.seed(user, messages(user))
    secret = tmp_path / "imap.secret"
    secret.write_text(dovecot.password(user))
    gateway = ServeProcess(tmp_path).write_config(
        f'[[directory.connectors]]\nname = "mbox"\nservice = "other"\nprotocol = "imap"\n'
        f'primary_address = "{user}"\nhost = "127.0.0.1"\nport = {dovecot.imaps_port}\n'
        f'tls = "implicit"\nca_file = "{dovecot.ca_file}"\nusername = "{user}"\n'
        f'password_file = "{secret}"\npoll_interval = 60\n')
    db = tmp_path / "mailgate.db"
    hits = kills = 0
    while hits == 0 and kills < 16:
        gateway.start()
        before = stored(db) if db.exists() else 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and stored(db) == before:
            time.sleep(0.001)
        gateway.proc.kill()                         # SIGKILL: no drain, no cleanup
        gateway.proc.wait()
        kills += 1
        journaled = {row[0] for row in query(db, "SELECT message_id FROM emails")}
        on_server = mailbox_ids(dovecot, user)
        hits = len(journaled & on_server)
        print(f"kill {kills}: {len(journaled)} stored, {len(on_server)} on the server, "
              f"{hits} both")
        if not on_server:
            break
    assert hits, f"no kill out of {kills} landed between a commit and its delete"

    gateway.start()                                 # finish the job
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        left = query(db, "SELECT COUNT(*) FROM emails WHERE state = 'journaled'")[0][0]
        if stored(db) >= COUNT and left == 0 and dovecot.count(user) == 0:
            break
        time.sleep(0.2)
    gateway.stop()

    assert dovecot.count(user) == 0, f"the mailbox was not drained:\n{gateway.log()[-3000:]}"
    per_message = query(db, "SELECT message_id, COUNT(*) FROM emails"
                            " WHERE direction = 'incoming' GROUP BY message_id")
    assert len(per_message) == COUNT
    assert {n for _, n in per_message} == {1}, "a message was journaled twice"
    assert query(db, "SELECT COUNT(*) FROM work_items")[0][0] == COUNT
    print(f"\nkill -9 x{kills}: {hits} message(s) were committed but still on the server "
          f"at the kill; after the restart {COUNT} stored once each, {COUNT} work items")
