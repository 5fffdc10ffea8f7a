"""The pipeline's batch transaction (storage/txn.py): what waits for the end of a batch is
still seen inside it, written in order, and dropped with a copy's savepoint."""
from __future__ import annotations

import sqlite3

import pytest

from storage.sqlite import SqliteStore
from storage.txn import BatchTxn, SyncTxn, Txn

VALUES = ("F1", "F2:a", "F3:b")


@pytest.fixture
async def conn(tmp_path):
    """A migrated database, opened the way the writer's thread sees it."""
    store = SqliteStore(str(tmp_path / "t.db"))
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "t.db") as db:
        yield db


def fingerprints(conn) -> list[tuple]:
    return conn.execute("SELECT target, value, email_id FROM fingerprints"
                        " ORDER BY target, value").fetchall()


def test_r_d2_fingerprints_of_the_batch_are_seen_before_they_are_written(conn):
    txn = BatchTxn(conn)
    assert not txn.target_received("1-T", VALUES)
    txn.remember("1-T", VALUES, 7)
    assert txn.target_received("1-T", ["F2:a"])
    assert not txn.target_received("2-T", VALUES)
    assert fingerprints(conn) == []
    txn.flush()
    assert fingerprints(conn) == [("1-T", v, 7) for v in sorted(VALUES)]
    assert BatchTxn(conn).target_received("1-T", ["F3:b"])


def test_the_first_fingerprint_stays_as_with_insert_or_ignore(conn):
    SyncTxn(conn).remember("desk@x.test", ["F1"], 1)
    txn = BatchTxn(conn)
    txn.remember("desk@x.test", ["F1", "F2:a"], 2)
    txn.remember("desk@x.test", ["F2:a"], 3)
    txn.flush()
    assert fingerprints(conn) == [("desk@x.test", "F1", 1), ("desk@x.test", "F2:a", 2)]


def test_r_e6_events_are_written_at_the_flush_in_emit_order(conn):
    txn = BatchTxn(conn)
    for n, kind in enumerate(("workitem.created", "email.appended", "email.ignored")):
        txn.emit(kind, ref=f"{n}-T", email_id=n, n=n)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    txn.flush()
    rows = conn.execute("SELECT type, ref, email_id, data FROM events ORDER BY id").fetchall()
    assert rows == [("workitem.created", "0-T", 0, '{"n": 0}'),
                    ("email.appended", "1-T", 1, '{"n": 1}'),
                    ("email.ignored", "2-T", 2, '{"n": 2}')]


def test_a_rolled_back_copy_leaves_no_event_and_no_fingerprint(conn):
    txn = BatchTxn(conn)
    txn.emit("workitem.created", ref="1-T")
    txn.remember("1-T", VALUES, 1)
    txn.savepoint("begin")
    txn.emit("workitem.created", ref="2-T")
    txn.remember("2-T", VALUES, 2)
    txn.remember("1-T", ["F4:c"], 2)
    txn.savepoint("rollback")
    txn.savepoint("release")
    assert not txn.target_received("2-T", VALUES)
    assert not txn.target_received("1-T", ["F4:c"])
    txn.flush()
    assert conn.execute("SELECT ref FROM events").fetchall() == [("1-T",)]
    assert {row[0] for row in fingerprints(conn)} == {"1-T"}
    assert len(fingerprints(conn)) == 3


def test_r_d3_an_earlier_copy_of_the_batch_is_found_by_its_f1(conn):
    txn = BatchTxn(conn)
    txn.set_outcome(5, outcome="created", reason=None, targets=[], trace=[], f1="abc",
                    connector="support")
    assert txn.f1_seen("support", "abc", 9) == 5
    assert txn.f1_seen("support", "abc", 3) is None      # not earlier than 3
    assert txn.f1_seen("sales", "abc", 9) is None        # another connector


async def test_txn_is_one_hop_to_the_same_sql_and_writes_at_once(tmp_path):
    store = SqliteStore(str(tmp_path / "h.db"))
    await store.open()
    try:
        async def job(db) -> tuple:
            txn = Txn(db)
            await txn.emit("workitem.created", ref="1-T")      # host operations: not buffered
            await txn.set_processes(["billing"])
            return txn.now == txn.sync.now, await txn.processes()
        assert await store.write(job) == (True, {"billing"})
        assert [e["type"] for e in await store.events()] == ["workitem.created"]
    finally:
        await store.close()
