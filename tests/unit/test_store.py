"""The journal (DESIGN "journal first"): group commit, all-or-nothing, migrations."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.model import Copy
from storage.sqlite import SqliteStore, StoreError, migrations


@pytest.fixture
async def store(tmp_path):
    commits: list[tuple[int, bool]] = []
    s = SqliteStore(str(tmp_path / "j.db"),
                    on_commit=lambda copies, seconds, ok: commits.append((copies, ok)))
    s.commits = commits
    await s.open()
    yield s
    await s.close()


def copy(raw: bytes, connector: str = "support", **kw) -> Copy:
    return Copy(raw=raw, connector=connector, source="lmtp", **kw)


async def test_r_i7_copy_is_stored_with_raw_bytes_envelope_and_source(store):
    raw = b"Subject: \xff binary\r\n\r\nbody\r\n"
    [email_id] = await store.journal([copy(raw, mail_from="a@x.test", rcpt_to=("s@e.test",),
                                           message_id="<m1@x>")])
    record = await store.email(email_id)
    assert await store.raw(email_id) == raw
    assert (record.connector, record.source, record.mail_from, record.rcpt_to) == (
        "support", "lmtp", "a@x.test", ["s@e.test"])
    assert record.state == "journaled"


async def test_copies_of_one_message_share_one_stored_message(store, tmp_path):
    raw = b"Subject: shared\r\n\r\n"
    ids = await store.journal([copy(raw, "support"), copy(raw, "sales")])
    assert len(set(ids)) == 2
    with sqlite3.connect(tmp_path / "j.db") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1


async def test_group_commit_takes_many_copies_per_commit(store):
    raws = [b"Subject: %d\r\n\r\n" % i for i in range(200)]
    ids = await asyncio.gather(*(store.journal([copy(r)]) for r in raws))
    assert sorted(i for [i] in ids) == list(range(1, 201))
    assert sum(n for n, _ in store.commits) == 200
    assert len(store.commits) < 20, store.commits


async def test_failed_commit_stores_nothing_and_raises(store, tmp_path):
    with sqlite3.connect(tmp_path / "j.db") as db:
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON emails "
                   "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(StoreError, match="disk on fire"):
        await store.journal([copy(b"Subject: lost?\r\n\r\n")])
    assert await store.count_emails() == 0
    assert store.commits[-1] == (1, False)
    with sqlite3.connect(tmp_path / "j.db") as db:
        db.execute("DROP TRIGGER fail")
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    [email_id] = await store.journal([copy(b"Subject: later\r\n\r\n")])
    assert await store.raw(email_id) == b"Subject: later\r\n\r\n"


async def test_journal_is_wal_with_full_sync(store, tmp_path):
    with sqlite3.connect(tmp_path / "j.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    async with store._writer.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2  # FULL


async def test_migrations_are_versioned_and_applied_once(tmp_path):
    path = str(tmp_path / "m.db")
    for _ in range(2):
        s = SqliteStore(path)
        await s.open()
        await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == migrations()[-1][0]


async def test_close_commits_what_is_queued(tmp_path):
    s = SqliteStore(str(tmp_path / "c.db"))
    await s.open()
    pending = [asyncio.ensure_future(s.journal([copy(b"Subject: %d\r\n\r\n" % i)]))
               for i in range(50)]
    await asyncio.sleep(0)
    await s.close()
    assert all(len(p.result()) == 1 for p in pending)
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("SELECT COUNT(*) FROM emails").fetchone()[0] == 50


async def test_journal_after_close_is_refused(tmp_path):
    s = SqliteStore(str(tmp_path / "d.db"))
    await s.open()
    await s.close()
    with pytest.raises(StoreError):
        await s.journal([copy(b"x")])


# -- write_sync: a synchronous job, its commit and the id bookkeeping in one hop --------

async def test_write_sync_runs_on_the_connection_thread_and_commits(store):
    import threading
    loop_thread = threading.get_ident()

    def work(conn: sqlite3.Connection) -> int:
        assert threading.get_ident() != loop_thread       # never blocks the event loop
        conn.execute("INSERT INTO settings (key, value, updated_at) VALUES ('k', '1', 0)")
        return conn.execute("PRAGMA synchronous").fetchone()[0]

    assert await store.write_sync(work, durable=False) == 1   # NORMAL: redoable work
    assert await store.settings() == {"k": 1}                 # committed: the reader sees it
    async with store._writer.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 1
    await store.journal([copy(b"Subject: acked\r\n\r\n")])
    async with store._writer.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2              # FULL again for the journal


async def test_write_sync_failure_rolls_back_and_raises(store):
    def work(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO settings (key, value, updated_at) VALUES ('k', '1', 0)")
        raise LookupError("no such thing")

    with pytest.raises(LookupError):
        await store.write_sync(work)
    assert await store.settings() == {}
    assert await store.write_sync(lambda conn: 42) == 42      # the writer goes on


async def test_write_sync_dry_run_keeps_nothing(store):
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO settings (key, value, updated_at) VALUES ('k', '1', 0)")
        return "seen"

    assert await store.write_sync(work, dry_run=True) == "seen"
    assert await store.settings() == {}


async def test_journal_ids_continue_after_rows_a_write_sync_job_added(store):
    from storage.txn import SyncTxn
    [first] = await store.journal([copy(b"Subject: 1\r\n\r\n")])
    sent = await store.write_sync(lambda conn: SyncTxn(conn).store_outgoing(
        b"Subject: ack\r\n\r\n", connector="support", message_id="<a@x>",
        mail_from="support@e.test", rcpt_to=["c@x.test"], automated=True))
    [after] = await store.journal([copy(b"Subject: 2\r\n\r\n")])
    assert first < sent < after
