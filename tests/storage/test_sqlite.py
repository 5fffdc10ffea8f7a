"""What only the SQLite backend has: WAL and its synchronous levels, its numbered
migrations, its one stored ``messages`` row per message, its connection threads
(a transaction function runs whole on one, its awaits never suspend) and the
driver behind ``StoreError``. The Store contract itself is in ``test_contract.py``.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from gateway.model import Copy
from storage.base import StoreError
from storage.sqlite.store import migrations
from tests.conftest import run_sql

FULL, NORMAL = 2, 1


@pytest.fixture
def backend() -> str:
    return "sqlite"


def copy(raw: bytes, connector: str = "support") -> Copy:
    return Copy(raw=raw, connector=connector, source="lmtp")


def raw(n: int) -> bytes:
    return b"Subject: %d\r\n\r\nbody\r\n" % n


async def synchronous(txn) -> int:
    return txn.conn.execute("PRAGMA synchronous").fetchone()[0]


async def test_the_database_is_in_wal_mode(store, db_path):
    await store.journal([copy(raw(1))])
    rows = await run_sql(db_path, "PRAGMA journal_mode")
    assert rows == [("wal",)]


async def test_synchronous_is_full_for_the_journal_and_normal_only_for_redoable_work(store):
    # what the journal commit runs at, seen from inside it by a trigger on emails
    async def watch(txn) -> None:
        txn.conn.execute("CREATE TABLE sync_seen (level INTEGER)")
        txn.conn.execute("CREATE TRIGGER sync_watch AFTER INSERT ON emails BEGIN"
                         " INSERT INTO sync_seen SELECT synchronous FROM pragma_synchronous;"
                         " END")
    await store.transaction(watch)

    async def seen(txn) -> list[int]:
        return [r[0] for r in txn.conn.execute("SELECT level FROM sync_seen")]

    assert await store.transaction(synchronous) == FULL
    assert await store.transaction(synchronous, durable=False) == NORMAL
    assert await store.decide(synchronous) == NORMAL                 # a pipeline batch
    await store.journal([copy(raw(1))])                              # then an acknowledgement
    assert await store.read(seen) == [FULL]
    assert await store.decide(synchronous, durable=True) == FULL     # a person's placing
    assert await store.transaction(synchronous) == FULL


async def test_migrations_are_numbered_and_applied_once(db_path, sqlite_url, open_at):
    numbers = [number for number, _, _ in migrations()]
    assert numbers == list(range(1, len(numbers) + 1))
    assert all(name.startswith(f"{number:04d}_") for number, name, _ in migrations())
    for _ in range(2):      # a second start applies nothing again (CREATE TABLE would fail)
        store = await open_at(sqlite_url)
        await store.close()
    assert await run_sql(db_path, "PRAGMA user_version") == [(numbers[-1],)]


async def test_a_database_at_an_older_version_gets_only_the_newer_migrations(
        db_path, sqlite_url, open_at):
    with sqlite3.connect(db_path) as db:
        for number, _, sql in migrations()[:4]:
            db.executescript(sql)
        db.execute("PRAGMA user_version=4")
        db.execute("INSERT INTO settings (key, value, updated_at) VALUES ('kept', '1', 0)")
    db.close()
    store = await open_at(sqlite_url)
    assert await store.settings() == {"kept": 1}
    await store.transaction(lambda t: t.add_activity("connector:fr", "create", "a", 1.0, {}))
    assert len(await store.read(lambda t: t.activity(entity=None, after=0, limit=5))) == 1
    await store.close()
    assert await run_sql(db_path, "PRAGMA user_version") == [(migrations()[-1][0],)]


async def test_a_failed_journal_commit_stores_nothing_and_the_next_one_works(
        store, db_path, commits):
    await run_sql(db_path, "CREATE TRIGGER fail BEFORE INSERT ON emails"
                           " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(StoreError, match="disk on fire"):
        await store.journal([copy(raw(1)), copy(raw(2))])
    assert commits.seen[-1] == (2, False)
    assert await store.count_emails() == 0
    assert await run_sql(db_path, "SELECT COUNT(*) FROM messages") == [(0,)]
    await run_sql(db_path, "DROP TRIGGER fail")
    [email_id] = await store.journal([copy(raw(3))])
    assert email_id == 1                # the failed batch's ids are simply used again
    assert await store.raw(email_id) == raw(3)
    assert commits.seen[-1] == (1, True)


async def test_copies_of_one_message_share_one_stored_message(store, db_path):
    message = raw(1)
    ids = await store.journal([copy(message, "support"), copy(message, "sales"),
                               copy(raw(2), "support")])
    assert len(set(ids)) == 3
    rows = await run_sql(db_path, "SELECT message FROM emails ORDER BY id")
    assert rows[0] == rows[1] != rows[2]
    assert await run_sql(db_path, "SELECT COUNT(*) FROM messages") == [(2,)]


async def test_transaction_functions_run_off_the_event_loops_thread(store):
    loop_thread = threading.get_ident()

    async def where(txn) -> int:
        return threading.get_ident()

    writer = await store.transaction(where)
    assert writer != loop_thread
    assert await store.decide(where) == writer              # the writer's one thread
    reader = await store.read(where)
    assert reader not in (loop_thread, writer)


async def test_an_await_that_suspends_fails_inside_the_transaction_function(store):
    async def work(txn) -> None:
        await txn.save_settings({"lost": True})
        await asyncio.sleep(0)          # waits for a loop that this thread does not run

    with pytest.raises(RuntimeError, match="suspends"):
        await store.transaction(work)
    assert await store.settings() == {}
    await store.save_settings({"after": True})              # the writer goes on
    assert await store.settings() == {"after": True}


async def test_a_transaction_function_can_catch_the_suspension_and_go_on(store):
    """As the pipeline does: the copy whose stage awaited ends ``internal_error``
    and the batch goes on."""
    async def work(txn) -> str:
        try:
            await asyncio.sleep(0)
        except RuntimeError as exc:
            caught = str(exc)
        await txn.save_settings({"went_on": True})
        return caught

    assert "suspends" in await store.transaction(work)
    assert await store.settings() == {"went_on": True}


async def test_a_transaction_function_that_keeps_suspending_is_stopped(store):
    tries = []

    async def work(txn) -> None:
        while True:
            try:
                await asyncio.sleep(0)
            except RuntimeError:
                tries.append(1)

    with pytest.raises(RuntimeError, match="suspends"):
        await store.transaction(work)
    assert 1 < len(tries) < 10_000
    assert await store.transaction(synchronous) == FULL     # the writer goes on


async def test_driver_errors_come_back_as_store_error(store):
    async def twice(txn) -> None:
        for _ in range(2):
            txn.conn.execute("INSERT INTO contacts (pattern, company) VALUES ('a@x', 'A')")

    with pytest.raises(StoreError, match="UNIQUE") as raised:
        await store.transaction(twice)
    assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
    assert await store.read(lambda t: t.contacts()) == []

    async def broken(txn) -> None:
        txn.conn.execute("SELECT * FROM no_such_table")
    with pytest.raises(StoreError, match="no_such_table"):
        await store.read(broken)
    with pytest.raises(StoreError, match="no_such_table"):
        await store.decide(broken)


async def test_the_reader_cannot_write(store):
    async def query_only(txn) -> int:
        return txn.conn.execute("PRAGMA query_only").fetchone()[0]

    async def write(txn) -> None:
        txn.conn.execute("INSERT INTO settings (key, value, updated_at) VALUES ('k', '1', 0)")

    assert await store.read(query_only) == 1
    assert await store.transaction(query_only) == 0
    with pytest.raises(StoreError, match="readonly"):
        await store.read(write)
    assert await store.settings() == {}


async def test_a_read_does_not_wait_for_the_writer(store):
    started, release = threading.Event(), threading.Event()

    async def long_work(txn) -> None:
        await txn.save_settings({"k": "new"})
        started.set()
        release.wait(10)

    await store.save_settings({"k": "old"})
    writing = asyncio.ensure_future(store.transaction(long_work))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        assert await asyncio.wait_for(store.settings(), 5) == {"k": "old"}   # committed only
        assert not writing.done()
    finally:
        release.set()
        await writing
    assert await store.settings() == {"k": "new"}


async def test_a_waiting_acknowledgement_passes_queued_work(sqlite_url, open_at):
    order: list[str] = []
    store = await open_at(sqlite_url, on_commit=lambda n, s, ok: order.append("journal"))
    started, release = threading.Event(), threading.Event()

    def job(name: str, block: bool = False):
        async def work(txn) -> None:
            order.append(name)
            if block:
                started.set()
                release.wait(10)
        return work

    running = asyncio.ensure_future(store.decide(job("w0", block=True)))
    assert await asyncio.to_thread(started.wait, 10)
    queued = [asyncio.ensure_future(store.decide(job(f"w{n}"))) for n in (1, 2, 3)]
    acked = asyncio.ensure_future(store.journal([copy(raw(1))]))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(running, *queued, acked)
    assert order.index("journal") <= 2, order     # behind at most one queued batch
    assert sorted(order) == ["journal", "w0", "w1", "w2", "w3"]


async def test_r_h4_a_pipeline_batch_knows_when_a_journal_commit_waits_behind_it(store):
    """What lets the runner end a long batch early (DECIDE_SLICE): on the writer's thread,
    in the middle of a batch, others_waiting() turns true once a journal commit is queued,
    and it is false again for the next batch once that commit is done."""
    started, seen = threading.Event(), threading.Event()

    async def batch(txn) -> tuple[bool, bool]:
        before = txn.others_waiting()
        started.set()
        seen.wait(10)
        return before, txn.others_waiting()

    running = asyncio.ensure_future(store.decide(batch))
    assert await asyncio.to_thread(started.wait, 10)
    acked = asyncio.ensure_future(store.journal([copy(raw(1))]))
    await asyncio.sleep(0)
    seen.set()
    assert await running == (False, True)
    await acked

    async def next_batch(txn) -> bool:
        return txn.others_waiting()
    assert await store.decide(next_batch) is False


async def test_the_first_fingerprint_stays_with_its_email(store, db_path):
    await store.transaction(lambda t: t.remember("desk@corp.test", ["F1"], 1))

    async def batch(txn) -> None:
        await txn.remember("desk@corp.test", ["F1", "F2:a"], 2)
        await txn.remember("desk@corp.test", ["F2:a"], 3)
        await txn.flush()
    await store.decide(batch)
    rows = await run_sql(db_path, "SELECT value, email_id FROM fingerprints ORDER BY value")
    assert rows == [("F1", 1), ("F2:a", 2)]


async def test_a_batch_is_one_transaction_of_its_own(store, db_path):
    """Nothing of a batch is visible to another connection before it commits."""
    started, release = threading.Event(), threading.Event()

    async def batch(txn) -> None:
        await txn.emit("workitem.created", ref="1-T")
        await txn.save_settings({"k": 1})
        await txn.flush()
        started.set()
        release.wait(10)

    deciding = asyncio.ensure_future(store.decide(batch))
    try:
        assert await asyncio.to_thread(started.wait, 10)
        assert await run_sql(db_path, "SELECT COUNT(*) FROM events") == [(0,)]
        assert await run_sql(db_path, "SELECT COUNT(*) FROM settings") == [(0,)]
    finally:
        release.set()
        await deciding
    assert await run_sql(db_path, "SELECT COUNT(*) FROM events") == [(1,)]


async def test_commits_leave_checkpoints_to_their_own_connection(store, db_path):
    """The writer's commits never copy the WAL back (a quarter of its time on the realistic
    mix); the checkpointer does, so the WAL starts over instead of growing with every
    commit. 120 commits of 1 MB back to back: without checkpoints the WAL passes 120 MB;
    with them it stays near 16 MB (RESTART_FRAMES) and what is written until the
    writer hears of the last checkpoint (0.1 s apart, later on a busy machine: 42 MB
    was seen with the whole suite running beside it)."""
    async def autocheckpoint(txn) -> int:
        return txn.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]

    assert await store.transaction(autocheckpoint) == 0
    wal = db_path.with_name(db_path.name + "-wal")
    largest = 0
    for n in range(120):         # back to back: a background checkpoint never finds the
        await store.journal([copy(b"Subject: %d\r\n\r\n" % n + b"x" * (1 << 20))])
        largest = max(largest, wal.stat().st_size)     # writer between two commits
    assert largest < 80 << 20


async def test_a_journal_commit_of_many_copies_of_any_size_stores_each_once(store, db_path):
    """A commit's rows go in as statements of many rows (a power of two each, at most
    INSERT_BYTES of messages bound at once, big messages streamed): every copy lands
    once, with its own id, its bytes and its poll key, whatever the mix."""
    sizes = [10, 300_000, 5, 700_000, 2_000_000, 1] + [100] * 70 + [900_000] * 3
    raws = [b"Subject: %d\r\n\r\n" % n + b"x" * size for n, size in enumerate(sizes)]
    ids = await store.journal([
        Copy(raw=r, connector="support", source="imap", folder_path="INBOX",
             poll_key=f"scope:7:{n}") for n, r in enumerate(raws)])
    assert len(set(ids)) == len(raws)
    assert [await store.raw(email_id) for email_id in ids] == raws
    rows = await run_sql(db_path, "SELECT key, email_id FROM polled ORDER BY email_id")
    assert rows == [(f"scope:7:{n}", email_id) for n, email_id in enumerate(ids)]
