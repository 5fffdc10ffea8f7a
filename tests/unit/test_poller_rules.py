"""The poller's pure rules: backoff after failures, and the scope of stored keys."""
from __future__ import annotations

import dataclasses

from gateway.model import Connector
from gateway.polling.poller import MAX_BACKOFF, MIN_BACKOFF, backoff, mailbox_scope
from gateway.protocols.mailbox import Credentials

IMAP = Connector(name="desk", service="other", protocol="imap", primary_address="d@x.test",
                 host="imap.x.test", port=993)
LOGIN = Credentials(username="desk@x.test", password="pw")


def test_r_i4_backoff_doubles_from_the_interval_and_is_capped():
    for failures, low, high in ((1, 48, 60), (2, 96, 120), (3, 192, 240)):
        assert low <= backoff(failures, 60) <= high
    assert MAX_BACKOFF * 0.8 <= backoff(50, 60) <= MAX_BACKOFF
    assert backoff(1, 1) >= MIN_BACKOFF * 0.8          # a 1 s interval still waits


def test_r_i4_keys_are_scoped_to_the_mailbox_not_to_the_connector_name():
    scope = mailbox_scope(IMAP, LOGIN)
    assert scope == mailbox_scope(dataclasses.replace(IMAP, poll_interval=5), LOGIN)
    assert scope == mailbox_scope(IMAP, Credentials(username="DESK@x.test", password="new"))
    for other in (mailbox_scope(dataclasses.replace(IMAP, host="imap.y.test"), LOGIN),
                  mailbox_scope(IMAP, Credentials(username="other@x.test")),
                  mailbox_scope(dataclasses.replace(IMAP, shared_mailbox="team@x.test"),
                                LOGIN),
                  mailbox_scope(dataclasses.replace(IMAP, protocol="pop3"), LOGIN)):
        assert other != scope


def test_r_i4_large_messages_are_fetched_alone_and_order_is_kept():
    from gateway.polling.poller import batches
    keys = [str(n) for n in range(7)]
    assert list(batches(keys, 3, set())) == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert list(batches(keys, 3, {"1", "5"})) == [["0"], ["1"], ["2", "3", "4"], ["5"],
                                                  ["6"]]


async def test_r_i4_a_poll_now_waiting_on_a_stopped_poller_is_answered_at_once(tmp_path):
    """A "poll now" that was waiting when its poller stopped (the connector changed or
    was disabled) is answered with the stopped status, not left to time out."""
    import asyncio

    from gateway.polling.poller import Poller
    from gateway.protocols.mailbox import Mailbox
    from storage.sqlite import SqliteStore

    class Stuck(Mailbox):
        source = "imap"

        async def open(self):
            await asyncio.Event().wait()        # a round that never ends

        async def keys(self, folder):
            return []

        async def fetch(self, folder, keys):
            return []

        async def remove(self, folder, keys):
            pass

        async def close(self):
            pass

    store = SqliteStore(str(tmp_path / "db"))
    await store.open()
    try:
        poller = Poller(store, IMAP, LOGIN, store.journal, mailbox=Stuck(IMAP, LOGIN))
        poller.start()
        waiting = asyncio.ensure_future(poller.poll(timeout=30))
        await asyncio.sleep(0.05)
        await poller.stop()
        status = await asyncio.wait_for(waiting, 1)
        assert status.state == "stopped"
    finally:
        await store.close()
