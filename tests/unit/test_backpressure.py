"""Backpressure on the journal (R-I1: a 4xx keeps the mail at the MTA): the gate's own
rules with a fake count and clock, and the poller's path when intake is throttled.

The end-to-end tests over real LMTP, SMTP and Dovecot are in
tests/integration/test_backpressure.py.
"""
from __future__ import annotations

import asyncio
import logging
import time

from gateway.intake import Backpressure, Throttled
from gateway.model import Connector
from gateway.polling.poller import PAUSED_RECHECK, Poller
from gateway.protocols.mailbox import Credentials, Fetched, Mailbox
from storage.base import StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Count:
    """What the store would count: set ``value``; ``fail`` makes it raise."""

    def __init__(self, value: int = 0) -> None:
        self.value, self.calls, self.fail = value, 0, False

    async def __call__(self) -> int:
        self.calls += 1
        if self.fail:
            raise StoreError("database is locked")
        return self.value


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def gate(high: int, count: Count, clock: Clock, changes: list | None = None
               ) -> Backpressure:
    g = Backpressure(count, high, refresh=0.25, clock=clock,
                     on_change=None if changes is None else changes.append)
    await g.start()
    return g


async def test_r_i1_the_gate_closes_at_the_high_water_mark_and_opens_at_the_low_one():
    count, clock, changes = Count(0), Clock(), []
    g = await gate(10, count, clock, changes)
    assert (g.high, g.low) == (10, 8)               # low water: 80% of high
    try:
        for _ in range(9):
            count.value += 1
            g.journaled(1)                          # a burst, counted locally
            assert g.admit()
        count.value += 1
        g.journaled(1)
        assert not g.admit() and g.closed and changes == [True]
        # Below the high mark is not enough (hysteresis): it opens at the low mark.
        count.value = 9
        clock.now += 1
        await g._refresh_quietly()
        assert g.closed
        count.value = 8
        clock.now += 1
        await g._refresh_quietly()
        assert not g.closed and g.admit() and changes == [True, False]
    finally:
        await g.stop()


async def test_r_i1_while_closed_the_gate_counts_by_itself_and_opens_without_traffic():
    count = Count(0)
    g = Backpressure(count, 3, refresh=0.01)        # the real clock
    await g.start()
    try:
        count.value = 3
        g.journaled(3)
        assert g.closed
        count.value = 0                             # the pipeline drained; no MTA asks
        for _ in range(200):
            if not g.closed:
                break
            await asyncio.sleep(0.01)
        assert not g.closed
    finally:
        await g.stop()


async def test_r_i1_a_gateway_started_over_a_full_journal_starts_closed():
    g = await gate(5, Count(7), Clock())
    try:
        assert g.closed and not g.admit()
    finally:
        await g.stop()


async def test_r_i1_an_old_count_is_read_again_rather_than_trusted_to_close_the_gate():
    """After a quiet hour the last count (high) says nothing: the pipeline may have
    decided all of it. A new copy makes the gate count again, not close."""
    count, clock = Count(9), Clock()
    g = await gate(10, count, clock)
    try:
        count.value = 1                             # decided meanwhile, unseen
        clock.now += 3600
        g.journaled(1)
        assert not g.closed
        await settle()                              # the count it asked for
        assert count.calls == 2 and g.backlog == 1 and not g.closed
    finally:
        await g.stop()


async def test_r_i1_the_hot_path_never_waits_and_counts_at_most_every_refresh():
    count, clock = Count(0), Clock()
    g = await gate(100, count, clock)
    try:
        for _ in range(50):
            assert g.admit()
        await settle()
        assert count.calls == 1                     # the start's count is still fresh
        clock.now += 0.3
        for _ in range(50):
            assert g.admit()
        await settle()
        assert count.calls == 2
    finally:
        await g.stop()


async def test_r_i1_high_water_zero_turns_the_gate_off():
    count = Count(10 ** 6)
    g = await gate(0, count, Clock())
    g.journaled(10 ** 6)
    assert g.admit() and await g.admit_fresh() and not g.closed and count.calls == 0


async def test_r_i1_a_failing_count_keeps_the_gate_as_it_is_and_says_so_once(caplog):
    count, clock = Count(0), Clock()
    g = await gate(10, count, clock)
    try:
        count.fail = True
        with caplog.at_level(logging.WARNING, logger="mailgate.intake"):
            for _ in range(3):
                clock.now += 1
                assert await g.admit_fresh()
        assert [r.message for r in caplog.records].count(
            "intake: cannot count the journal backlog: database is locked") == 1
    finally:
        await g.stop()


async def test_r_i1_closing_and_opening_are_logged_once_each_not_per_transaction(caplog):
    count, clock = Count(0), Clock()
    with caplog.at_level(logging.INFO, logger="mailgate.intake"):
        g = await gate(2, count, clock)
        try:
            count.value = 2
            g.journaled(2)
            for _ in range(100):
                assert not g.admit()
                g.refuse()
            count.value = 0
            clock.now += 1
            await g._refresh_quietly()
        finally:
            await g.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "high-water mark is 2" in messages[0] and "451 4.3.2" in messages[0]
    assert "taking mail again" in messages[1] and "100 transaction(s)" in messages[1]


# -- the poller while intake is throttled -------------------------------------------------

IMAP = Connector(name="desk", service="other", protocol="imap", primary_address="d@x.test",
                 host="imap.x.test", port=993, poll_interval=3600, idle=False)
LOGIN = Credentials(username="desk@x.test", password="pw")


class FakeMailbox(Mailbox):
    source = "imap"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messages = {"1:1": b"Subject: one\r\n\r\nHi\r\n", "1:2": b"Subject: two\r\n\r\nHo\r\n"}
        self.opened = 0
        self.removed: list[str] = []

    async def open(self):
        self.opened += 1

    async def keys(self, folder):
        return list(self.messages)

    async def fetch(self, folder, keys):
        return [Fetched(k, self.messages[k]) for k in keys]

    async def remove(self, folder, keys):
        self.removed += keys

    async def close(self):
        pass


async def test_r_i1_a_throttled_poller_opens_no_session_and_a_refused_batch_is_no_failure(
        tmp_path):
    """Paused: no session at all. Refused half-way (the gate shut during the round):
    nothing removed, no ``failing`` state, no ``connector.poll_failed`` event, no
    backoff; the mail is taken once intake admits it again."""
    from gateway.intake import Intake
    from storage.sqlite import SqliteStore

    store = SqliteStore(str(tmp_path / "db"))
    await store.open()
    intake = Intake(store, lambda: None)            # no gate of its own: the test's is below
    paused, refuse = [True], [True]
    observed: list[bool] = []

    async def journal(connector, source, folder, fetched):
        if refuse[0]:
            raise Throttled("over the high-water mark")
        return await intake.accept_polled(connector, source, folder, fetched)

    def soon(status) -> bool:                       # the next look, not the interval
        return status.next_poll_at - time.time() <= PAUSED_RECHECK + 1

    mailbox = FakeMailbox(IMAP, LOGIN)
    poller = Poller(store, IMAP, LOGIN, journal, mailbox=mailbox, paused=lambda: paused[0],
                    observe=lambda status, seconds, ok: observed.append(ok))
    poller.start()
    try:
        status = await poller.poll(timeout=5)
        assert mailbox.opened == 0 and status.rounds == 0 and soon(status)   # no session
        paused[0] = False
        status = await poller.poll(timeout=5)                     # the gate shut mid-round
        assert mailbox.opened == 1 and mailbox.removed == [] and soon(status)
        assert (status.state, status.failures, status.last_error) == ("starting", 0, None)
        assert await store.events(0, 100) == [] and observed == []
        assert await store.backlog() == 0
        refuse[0] = False
        status = await poller.poll(timeout=5)
        assert status.state == "ok" and sorted(mailbox.removed) == ["1:1", "1:2"]
        assert observed == [True] and await store.backlog() == 2
    finally:
        await poller.stop()
        await store.close()


# -- the setting -------------------------------------------------------------------------

def test_r_i1_backlog_high_water_is_on_by_default_zero_turns_it_off_and_typos_are_reported(
        tmp_path):
    import textwrap

    import pytest

    from gateway.config import ConfigError, load

    assert load(None, env={}).storage.backlog_high_water == 20_000
    path = tmp_path / "gateway.toml"
    path.write_text("[storage]\nbacklog_high_water = 0\n")
    assert load(str(path), env={}).storage.backlog_high_water == 0
    assert load(None, env={"MAILGATE_STORAGE_BACKLOG_HIGH_WATER": "500"}
                ).storage.backlog_high_water == 500
    path.write_text(textwrap.dedent("""\
        [storage]
        url = "sqlite:///./mailgate.db"
        backlog_high_water = -1
        [lmtp]
        """))
    with pytest.raises(ConfigError) as info:
        load(str(path), env={})
    assert info.value.problems == [
        f"{path}:3: [storage] backlog_high_water = -1: must be 0 (no limit) or more"]
    path.write_text('[storage]\nbacklog_high_water = "lots"\n')
    with pytest.raises(ConfigError) as info:
        load(str(path), env={})
    assert info.value.problems == [
        f"{path}:2: [storage] backlog_high_water = 'lots' is not valid: write an integer "
        "(default: 20000)"]
