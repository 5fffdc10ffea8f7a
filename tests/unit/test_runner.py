"""The runner steps each stage's coroutine to its end on the writer's thread (runner.py)."""
from __future__ import annotations

import asyncio

import pytest

from gateway.model import Copy
from gateway.pipeline import route as route_module
from gateway.pipeline.context import Verdict
from gateway.pipeline.context import complete

RAW = (b"From: c@customer.test\r\nTo: support@example.test\r\nSubject: hello\r\n"
       b"Message-ID: <runner@customer.test>\r\n\r\nhello\r\n")


def test_complete_returns_what_a_stage_that_never_suspends_returns():
    async def stage() -> Verdict:
        async def lookup() -> str:      # awaiting a coroutine that returns is no suspension
            return "duplicate"
        return Verdict(await lookup())

    assert complete(stage()) == Verdict("duplicate")


def test_complete_refuses_a_stage_that_suspends():
    finished = []

    async def stage() -> None:
        try:
            await asyncio.sleep(0)
        finally:
            finished.append(True)        # closed, not left pending

    with pytest.raises(RuntimeError, match="suspends"):
        complete(stage())
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


async def test_a12_a_large_copy_whose_parse_overruns_ends_unparseable(start_gateway,
                                                                       monkeypatch):
    import threading

    from gateway.mail import Mail
    from gateway.pipeline import runner
    release = threading.Event()
    monkeypatch.setattr(runner, "PARSE_TIMEOUT", 0.05)
    monkeypatch.setattr(Mail, "parse_all", lambda mail: release.wait(5))   # a parse bomb
    gw = await start_gateway()
    big = RAW.replace(b"<runner@", b"<slow@") + b"x" * 300_000 + b"\r\n"
    [email_id] = await gw.store.journal([Copy(raw=big, connector="support", source="lmtp")])
    gw.pipeline.wake()
    try:
        await gw.pipeline.drain()
    finally:
        release.set()
    record = await gw.store.email(email_id)
    assert (record.outcome, record.reason) == ("unprocessed", "unparseable")
    assert record.trace[0]["reason"] == "parse_timeout"
