"""The runner: a batch is one transaction, decided on SQLite's writer thread (runner.py)."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.mail_classes import CLASSIFIER
from gateway.model import Copy
from gateway.pipeline import route as route_module
from gateway.pipeline.context import Verdict
from storage.sqlite.store import run_to_end
from tests.conftest import run_sql
from tests.unit.slow_classifier import SlowClassifier

RAW = (b"From: c@customer.test\r\nTo: support@example.test\r\nSubject: hello\r\n"
       b"Message-ID: <runner@customer.test>\r\n\r\nhello\r\n")


def test_run_to_end_returns_what_a_stage_that_never_suspends_returns():
    async def stage() -> Verdict:
        async def lookup() -> str:      # awaiting a coroutine that returns is no suspension
            return "duplicate"
        return Verdict(await lookup())

    assert run_to_end(stage()) == Verdict("duplicate")


def test_run_to_end_refuses_a_stage_that_suspends():
    finished = []

    async def stage() -> None:
        try:
            await asyncio.sleep(0)
        finally:
            finished.append(True)        # closed, not left pending

    with pytest.raises(RuntimeError, match="suspends"):
        run_to_end(stage())
    assert finished == [True]


async def test_a_stage_that_suspends_ends_its_copy_internal_error(start_gateway, monkeypatch):
    async def waits(self, mail, ctx):
        await asyncio.sleep(0)

    monkeypatch.setattr(route_module.Route, "run", waits)
    gw = await start_gateway()
    [email_id] = await gw.store.journal([Copy(raw=RAW, connector="support", source="lmtp",
                                              message_id="<runner@customer.test>")])
    gw.pipeline.wake()
    await gw.pipeline.drain()
    record = await gw.store.email(email_id)
    assert (record.outcome, record.reason) == ("unprocessed", "internal_error")
    assert "suspends" in record.trace[0]["reason"]


async def test_a_large_copy_is_parsed_up_front_and_decided_in_its_batch(start_gateway):
    gw = await start_gateway()
    big = RAW.replace(b"<runner@", b"<big@") + b"x" * 300_000 + b"\r\n"
    [email_id] = await gw.store.journal([Copy(raw=big, connector="support", source="lmtp")])
    gw.pipeline.wake()
    await gw.pipeline.drain()
    assert (await gw.store.email(email_id)).outcome == "created"


async def test_a12_a_copy_whose_preparation_overruns_is_killed_and_ends_unparseable(
        start_gateway):
    """The worker preparing it is killed at the deadline (a thread could not be stopped);
    the copy ends unprocessed with its bytes kept, and the next copy is prepared by the
    worker that replaced it."""
    gw = await start_gateway()
    gw.pipeline.preparer.deadline = 0.5
    gw.pipeline_settings = dataclasses.replace(
        gw.pipeline_settings, classifier=SlowClassifier(CLASSIFIER.version, CLASSIFIER.rules))
    bomb = RAW.replace(b"<runner@", b"<bomb@") + b"bomb\r\n"
    [email_id] = await gw.store.journal([Copy(raw=bomb, connector="support", source="lmtp")])
    gw.pipeline.wake()
    await gw.pipeline.drain()
    record = await gw.store.email(email_id)
    assert (record.outcome, record.reason) == ("unprocessed", "unparseable")
    assert record.trace[0]["reason"] == "parse_timeout"
    assert await gw.store.raw(email_id) == bomb
    [after] = await gw.store.journal([Copy(raw=RAW, connector="support", source="lmtp")])
    gw.pipeline.wake()
    await gw.pipeline.drain()
    assert (await gw.store.email(after)).outcome == "created"


async def test_a_batch_run_again_copy_by_copy_still_commits_as_one(start_gateway, monkeypatch,
                                                                    tmp_path):
    """A poison copy makes the batch run again with a savepoint per copy. Those savepoints
    nest in one transaction: while the batch runs, another connection sees none of the
    copies' work items; after it, all of them with their outcomes."""
    import sqlite3

    from gateway.pipeline import apply as apply_module
    seen_meanwhile: list[int] = []
    real_run = apply_module.Apply.run

    async def run(self, mail, ctx):
        if "poison" in (mail.message_id or ""):
            raise RuntimeError("a bug that hits one message")
        verdict = await real_run(self, mail, ctx)
        with sqlite3.connect(tmp_path / "mailgate.db", timeout=0.1) as other:
            seen_meanwhile.append(other.execute("SELECT COUNT(*) FROM work_items").fetchone()[0])
        return verdict

    monkeypatch.setattr(apply_module.Apply, "run", run)
    gw = await start_gateway()
    await gw.pipeline.stop()
    raws = [RAW.replace(b"<runner@", b"<r%d@" % n).replace(b"hello\r\n", b"hello %d\r\n" % n)
            for n in range(4)]
    raws.insert(2, RAW.replace(b"<runner@", b"<poison@") + b"poison\r\n")
    ids = await gw.store.journal([Copy(raw=raw, connector="support", source="lmtp")
                                  for raw in raws])
    await gw.pipeline.start()
    await gw.pipeline.drain()

    outcomes = [(await gw.store.email(i)).outcome for i in ids]
    assert outcomes == ["created", "created", "unprocessed", "created", "created"]
    assert seen_meanwhile and set(seen_meanwhile) == {0}       # nothing visible mid-batch
    with sqlite3.connect(tmp_path / "mailgate.db") as other:
        assert other.execute("SELECT COUNT(*) FROM work_items").fetchone()[0] == 4


async def test_r_h4_while_journal_commits_wait_a_batch_is_decided_in_slices(start_gateway,
                                                                            monkeypatch):
    """Every copy is decided once, in order, with the outcome a whole batch would give,
    when each slice ends after one copy (a journal commit always waiting, no time)."""
    gw = await start_gateway()
    await gw.pipeline.stop()
    gw.pipeline.slice = 0.0
    slices: list[int] = []
    real_decide = gw.store.decide

    async def decide(work, **kw):
        async def always_waited_for(txn):
            txn.others_waiting = lambda: True
            taken, verdicts = await work(txn)
            slices.append(taken)
            return taken, verdicts
        return await real_decide(always_waited_for, **kw)

    monkeypatch.setattr(gw.store, "decide", decide)
    raws = [RAW.replace(b"<runner@", b"<s%d@" % n).replace(b"hello\r\n", b"hello %d\r\n" % n)
            for n in range(5)]
    raws.append(raws[1])        # the same bytes again: a duplicate of a copy one slice back
    ids = await gw.store.journal([Copy(raw=raw, connector="support", source="lmtp")
                                  for raw in raws])
    await gw.pipeline.start()
    await gw.pipeline.drain()
    records = [await gw.store.email(i) for i in ids]
    assert [r.outcome for r in records] == ["created"] * 5 + ["duplicate"]
    assert slices == [1] * 6
    assert len({r.targets[0]["ref"] for r in records[:5]}) == 5


async def test_a_copy_committed_after_the_read_ahead_found_nothing_is_decided_next(
        start_gateway):
    """The next batch is read while this one is decided. A copy committed after that read
    found nothing (its wake-up then cleared as the runner went on) is decided by the next
    batch, not left journaled until some later delivery wakes the runner."""
    gw = await start_gateway()
    runner = gw.pipeline
    await runner.stop()
    await gw.store.journal([Copy(raw=RAW, connector="support", source="lmtp")])
    assert [v.outcome for v, _ in await runner.process_batch()] == ["created"]
    assert await runner._ahead == []            # the read-ahead ran, and found nothing
    later = RAW.replace(b"hello\r\n", b"hello again\r\n").replace(b"<runner@", b"<later@")
    [email_id] = await gw.store.journal([Copy(raw=later, connector="support", source="lmtp")])
    assert [v.outcome for v, _ in await runner.process_batch()] == ["created"]
    assert (await gw.store.email(email_id)).state == "done"


async def test_r_u1_a_copy_placed_by_a_person_while_its_batch_was_read_is_not_decided_again(
        start_gateway, tmp_path):
    gw = await start_gateway()
    await gw.pipeline.stop()
    [email_id] = await gw.store.journal([Copy(raw=RAW, connector="support", source="lmtp")])
    runner = gw.pipeline
    real_prepare = runner.preparer.prepare

    async def prepare_then_placed(copies, settings):
        prepared = await real_prepare(copies, settings)
        # what place() leaves meanwhile: decided, on a work item
        await run_sql(tmp_path / "mailgate.db",
                      "UPDATE emails SET state = 'done', outcome = 'appended',"
                      f" trace = '[\"by hand\"]' WHERE id = {email_id}")
        return prepared

    runner.preparer.prepare = prepare_then_placed
    await runner.start()
    await runner.drain()

    record = await gw.store.email(email_id)
    assert (record.outcome, record.trace) == ("appended", ["by hand"])
    assert await gw.workitems.workitems() == []              # the pipeline made nothing


async def test_r_u1_a_copy_waiting_to_be_run_again_cannot_be_placed_by_hand(start_gateway):
    gw = await start_gateway()
    bad = RAW.replace(b"To: support@example.test", b"To: nobody@elsewhere.test")
    [email_id] = await gw.store.journal([Copy(raw=bad, connector="support", source="lmtp")])
    gw.pipeline.wake()
    await gw.pipeline.drain()
    assert (await gw.store.email(email_id)).outcome == "unprocessed"
    await gw.pipeline.stop()
    assert await gw.pipeline.reprocess(email_id)
    with pytest.raises(ValueError, match="not one waiting to be run again"):
        await gw.pipeline.place(email_id, route_id=1)


def test_the_runner_runs_the_stages_the_metrics_and_the_docs_name():
    """A stage's name is one string everywhere (DESIGN): config, trace, metric labels."""
    from gateway.pipeline import STAGE_NAMES
    from gateway.pipeline.runner import STAGES
    assert tuple(stage.name for stage in STAGES) == STAGE_NAMES
