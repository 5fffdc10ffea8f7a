"""The Store protocol's contract (storage/base.py): what every backend must do.

Written against ``storage.base`` and ``gateway.model`` only — no driver, no SQL —
so it runs unchanged on every backend of ``conftest.BACKENDS``. What only one
backend has (pragmas, its own migrations, its thread) is tested beside it, in
``test_<backend>.py``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import pytest

from gateway.model import (LETTER_KINDS, Connector, ConnectorEntry, Copy, Route, RouteRules,
                           RouteTarget, WorkItem)
from storage.base import (ActivityLine, Contact, ConnectorTest, DeliveryState, EmailState,
                          JournaledCopy, PolledKeys, StoreError)

VALUES = ("F1", "F2:a", "F3:b")


def message(n: int = 1, *, message_id: str | None = None) -> bytes:
    message_id = message_id or f"<m{n}@customer.test>"
    return (f"From: carol@customer.test\r\nTo: support@corp.test\r\nSubject: help {n}\r\n"
            f"Message-ID: {message_id}\r\n\r\nPlease help.\r\n").encode()


def copy(raw: bytes, connector: str = "support", source: str = "lmtp", **kw) -> Copy:
    return Copy(raw=raw, connector=connector, source=source, **kw)


async def journal(store, count: int, connector: str = "support") -> list[int]:
    return await store.journal([copy(message(n), connector) for n in range(count)])


def item(ref: str, connector: str = "support", **kw) -> WorkItem:
    kw.setdefault("uuid", str(uuid.uuid4()))
    return WorkItem(ref=ref, kind=LETTER_KINDS[ref.split("-")[1]], connector=connector, **kw)


def lmtp(name: str, **kw) -> ConnectorEntry:
    return ConnectorEntry(Connector(name=name, service="lmtp",
                                    primary_address=f"{name}@corp.test", **kw))


def route(connector: str, name: str, order: int, **kw) -> Route:
    return Route(id=0, name=name, connector=connector, email_address=f"{connector}@corp.test",
                 order=order, **kw)


async def decided(txn, email_id: int, outcome: str = "created", **kw) -> None:
    fields = {"reason": None, "targets": [], "trace": [], "f1": None, **kw}
    await txn.set_outcome(email_id, outcome=outcome, **fields)


async def send(txn, *, to: list[str], automated: bool = True, message_id: str | None = None,
               connector: str = "support") -> int:
    message_id = message_id or f"<{uuid.uuid4()}@mailgate.invalid>"
    raw = f"From: {connector}@corp.test\r\nMessage-ID: {message_id}\r\n\r\nack\r\n".encode()
    return await txn.store_outgoing(raw, connector=connector, message_id=message_id,
                                    mail_from=f"{connector}@corp.test", rcpt_to=to,
                                    automated=automated)


# -- the journal (DESIGN "journal first", R-I7) -----------------------------------------------

async def test_r_i7_a_copy_keeps_its_raw_bytes_envelope_connector_and_source(store):
    raw = b"Subject: \xff binary\r\nX-Bare: cr\rlf\n\x00\r\n\r\nbody  \r\n"
    before = time.time()
    [email_id] = await store.journal([copy(raw, mail_from="a@x.test",
                                           rcpt_to=("s@corp.test", "t@corp.test"),
                                           message_id="<m1@x.test>", peer="192.0.2.1:25",
                                           helo="mx.x.test")])
    record = await store.email(email_id)
    assert await store.raw(email_id) == raw
    assert (record.connector, record.source, record.direction, record.mail_from,
            record.rcpt_to, record.message_id, record.peer, record.helo, record.size,
            record.state, record.outcome) == (
        "support", "lmtp", "incoming", "a@x.test", ["s@corp.test", "t@corp.test"],
        "<m1@x.test>", "192.0.2.1:25", "mx.x.test", len(raw), "journaled", None)
    assert before <= record.received_at <= time.time()
    assert await store.journaled(10) == [JournaledCopy(
        email_id, "support", "lmtp", "a@x.test", ("s@corp.test", "t@corp.test"), None, raw)]
    assert await store.read(lambda t: t.email_state(email_id)) == EmailState(
        None, "incoming", [], "journaled")
    assert await store.backlog() == 1
    assert await store.email(email_id + 1) is None and await store.raw(email_id + 1) is None


async def test_r_i7_every_copy_of_a_message_gets_its_own_email_id(store):
    raw = message(1)
    ids = await store.journal([copy(raw, "support", message_id="<m1@customer.test>"),
                               copy(raw, "sales", message_id="<m1@customer.test>")])
    assert len(ids) == 2 and ids[0] < ids[1]
    assert [await store.raw(i) for i in ids] == [raw, raw]
    copies = await store.emails_by_message_id("<m1@customer.test>")
    assert [(c.id, c.connector) for c in copies] == [(ids[0], "support"), (ids[1], "sales")]
    assert await store.count_emails() == 2


async def test_r_i7_big_and_small_messages_in_one_commit_keep_their_bytes_exactly(store):
    # Big messages may take another road into the store and out of it (SQLite streams
    # them); the bytes must come back the same either way, beside small ones.
    big = b"Subject: big\r\n\r\n" + bytes(range(256)) * (5 * 4096) + b"\r\n"
    small = message(1)
    ids = await store.journal([copy(big), copy(small), copy(big + b"x", "sales")])
    assert [await store.raw(i) for i in ids] == [big, small, big + b"x"]
    assert [c.raw for c in await store.journaled(10)] == [big, small, big + b"x"]
    assert (await store.read(lambda t: t.copy(ids[2]))).raw == big + b"x"
    assert [(await store.email(i)).size for i in ids] == [len(big), len(small), len(big) + 1]


async def test_journaled_copies_come_oldest_first_up_to_the_limit(store):
    ids = await journal(store, 3)
    ids += await journal(store, 2, "sales")
    assert [c.email_id for c in await store.journaled(4)] == ids[:4]
    assert await store.backlog() == 5


async def test_group_commit_takes_many_copies_per_commit(store, commits):
    ids = await asyncio.gather(*(store.journal([copy(message(n))]) for n in range(200)))
    assert len({i for [i] in ids}) == 200
    assert await store.count_emails() == 200
    assert commits.copies == 200
    assert commits.count < 20, commits.seen


async def test_a_refused_journal_commit_stores_nothing_and_raises_store_error(store, commits):
    good = copy(message(1), "mbox", "imap", folder_path="INBOX", poll_key="S1:7:1")
    refused = Copy(raw=message(2), connector=None, source="lmtp")  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.journal([good, refused])
    assert commits.seen[-1] == (2, False)
    assert await store.count_emails() == 0 and await store.backlog() == 0
    assert await store.polls.known("mbox", "INBOX", "S1:") == PolledKeys()
    [email_id] = await store.journal([good])                    # the next commit works
    assert await store.raw(email_id) == message(1)
    assert commits.seen[-1] == (1, True)


async def test_close_commits_what_is_queued(store_url, open_at):
    store = await open_at(store_url)
    pending = [asyncio.ensure_future(store.journal([copy(message(n))])) for n in range(50)]
    await asyncio.sleep(0)
    await store.close()
    ids = [p.result() for p in pending]
    assert all(len(i) == 1 for i in ids)
    again = await open_at(store_url)
    assert await again.count_emails() == 50
    assert [c.email_id for c in await again.journaled(100)] == sorted(i for [i] in ids)


async def test_a_closed_store_refuses_work(store):
    assert await store.ping()
    await store.close()
    assert not await store.ping()
    with pytest.raises(StoreError):
        await store.journal([copy(b"x")])
    with pytest.raises(StoreError):
        await store.transaction(lambda t: t.save_settings({"k": 1}))
    with pytest.raises(StoreError):
        await store.count_emails()


async def test_what_was_committed_survives_reopening(store_url, open_at):
    store = await open_at(store_url)
    [email_id] = await journal(store, 1)
    await store.save_settings({"matching_mode": "off"})
    await store.close()
    again = await open_at(store_url)
    assert await again.raw(email_id) == message(0)
    assert await again.settings() == {"matching_mode": "off"}
    [later] = await journal(again, 1)
    assert later > email_id


async def test_ids_continue_after_a_transaction_added_outgoing_mail(store):
    [first] = await journal(store, 1)
    sent = await store.transaction(lambda t: send(t, to=["carol@customer.test"]))
    [after] = await store.journal([copy(message(2))])
    assert first < sent < after
    assert (await store.email(sent)).direction == "outgoing"
    assert await store.raw(after) == message(2)


async def test_a_message_id_lookup_answers_oldest_first_up_to_its_limit(store):
    ids = await store.journal([copy(message(n, message_id="<same@x.test>"),
                                    message_id="<same@x.test>") for n in range(5)])
    found = await store.emails_by_message_id("<same@x.test>", limit=3)
    assert [e.id for e in found] == ids[:3]
    assert await store.emails_by_message_id("<other@x.test>") == []


# -- transactions ---------------------------------------------------------------------------

async def test_a_failed_transaction_keeps_nothing_and_the_writer_goes_on(store):
    failure = LookupError("no such thing")

    async def work(txn) -> None:
        await txn.save_settings({"k": 1})
        raise failure

    with pytest.raises(LookupError) as raised:
        await store.transaction(work)
    assert raised.value is failure                  # the caller's own error, unchanged
    assert await store.settings() == {}

    async def answer(txn) -> int:
        return 42
    assert await store.transaction(answer) == 42


async def test_a_driver_error_comes_back_as_store_error_and_keeps_nothing(store):
    await store.transaction(lambda t: t.save_connector(lmtp("fr"), create=True))

    async def twice(txn) -> None:
        await txn.save_contact("*@customer.test", "Customer Ltd")
        await txn.save_connector(lmtp("fr", aliases=("other@corp.test",)), create=True)

    with pytest.raises(StoreError):
        await store.transaction(twice)
    assert await store.read(lambda t: t.contacts()) == []
    [entry] = await store.read(lambda t: t.connector_entries())
    assert entry == lmtp("fr")
    await store.save_settings({"after": True})      # the writer goes on
    assert await store.settings() == {"after": True}


async def test_a_transaction_sees_its_own_writes_and_readers_see_them_once_committed(store):
    async def work(txn) -> dict:
        await txn.save_settings({"hide_plus_in_from": True})
        return await txn.settings()

    assert await store.transaction(work) == {"hide_plus_in_from": True}
    assert await store.settings() == {"hide_plus_in_from": True}


async def test_non_durable_work_is_committed_too(store):
    await store.transaction(lambda t: t.save_settings({"k": "v"}), durable=False)
    assert await store.settings() == {"k": "v"}
    await store.decide(lambda t: t.save_settings({"k": "w"}))
    assert await store.settings() == {"k": "w"}


async def test_a_dry_run_decision_keeps_nothing(store):
    [email_id] = await journal(store, 1)

    async def work(txn) -> str:
        await txn.save_workitem(item("1-T"))
        await txn.emit("workitem.created", ref="1-T", email_id=email_id)
        await txn.remember("1-T", VALUES, email_id)
        await decided(txn, email_id, targets=[{"ref": "1-T", "action": "created"}])
        await txn.flush()
        return "seen"

    assert await store.decide(work, dry_run=True) == "seen"
    assert await store.read(lambda t: t.workitem("1-T")) is None
    assert await store.events() == [] and await store.last_event_id() == 0
    assert not await store.read(lambda t: t.target_received("1-T", VALUES))
    assert (await store.email(email_id)).state == "journaled"
    assert await store.backlog() == 1


async def test_a_failed_decision_keeps_nothing_and_the_writer_goes_on(store):
    [email_id] = await journal(store, 1)

    async def work(txn) -> None:
        await txn.save_workitem(item("1-T"))
        await decided(txn, email_id)
        await txn.emit("workitem.created", ref="1-T")
        await txn.flush()
        raise ValueError("poison")

    with pytest.raises(ValueError, match="poison"):
        await store.decide(work)
    assert await store.read(lambda t: t.workitem("1-T")) is None
    assert await store.events() == []
    assert [c.email_id for c in await store.journaled(10)] == [email_id]
    [again] = await journal(store, 1)
    assert again > email_id


async def test_a_read_cannot_write(store):
    with pytest.raises(StoreError):
        await store.read(lambda t: t.save_settings({"k": 1}))
    assert await store.settings() == {}


# -- work items (R-W1) -----------------------------------------------------------------------

async def test_r_w1_one_number_sequence_for_every_kind(store):
    async def create(txn) -> list[str]:
        refs = []
        for letter in ("T", "C", "A", "T"):
            ref = f"{await txn.next_number()}-{letter}"
            await txn.save_workitem(item(ref))
            refs.append(ref)
        return refs

    assert await store.transaction(create) == ["1-T", "2-C", "3-A", "4-T"]
    assert await store.transaction(create) == ["5-T", "6-C", "7-A", "8-T"]


async def test_r_w1_a_work_item_comes_back_as_saved(store):
    saved = item("7-C", mode="test", state="WAITING", wait_type="more_info", new_info=True,
                 parent="3-C", split_into=["8-A", "9-A"], linked=["1-T"], copied_from="2-C",
                 contacts=["carol@customer.test", "dave@customer.test"],
                 custom_data={"process": "billing", "nested": {"n": [1, 2]}},
                 send_automated_emails=True, uuid="0F0E8C3A-1B2C-4D5E-8F90-A1B2C3D4E5F6")
    before = time.time()
    await store.transaction(lambda t: t.save_workitem(saved))
    got = await store.read(lambda t: t.workitem("7-C"))
    assert before <= got.created_at == got.updated_at <= time.time()
    assert got == dataclasses.replace(saved, uuid=saved.uuid.lower(), created_at=got.created_at,
                                      updated_at=got.updated_at)
    assert got.number == 7
    by_uuid = await store.read(lambda t: t.workitem_by_uuid(saved.uuid))      # any case
    assert by_uuid == got
    assert await store.read(lambda t: t.workitem_by_uuid(saved.uuid.lower())) == got
    assert await store.read(lambda t: t.workitem("7-T")) is None


async def test_r_w1_saving_a_work_item_again_changes_it_and_keeps_when_it_was_created(store):
    first = item("1-T")
    await store.transaction(lambda t: t.save_workitem(first))
    created = (await store.read(lambda t: t.workitem("1-T"))).created_at

    async def resolve(txn) -> None:
        current = await txn.workitem("1-T")
        current.state, current.new_info, current.contacts = "RESOLVED", True, ["x@y.test"]
        await txn.save_workitem(current)

    await store.transaction(resolve)
    got = await store.read(lambda t: t.workitem("1-T"))
    assert (got.state, got.new_info, got.contacts) == ("RESOLVED", True, ["x@y.test"])
    assert got.created_at == created and got.updated_at >= created
    assert len(await store.read(lambda t: t.workitems())) == 1


async def test_r_w1_work_items_are_listed_by_number_and_filtered(store):
    items = [item("3-T", "fr"), item("1-C", "ma", state="RESOLVED"),
             item("2-T", "fr", mode="test"), item("10-A", "fr", state="RESOLVED")]

    async def save(txn) -> None:
        for one in items:
            await txn.save_workitem(one)
    await store.transaction(save)

    async def refs(**kw) -> list[str]:
        return [i.ref for i in await store.read(lambda t: t.workitems(**kw))]

    assert await refs() == ["1-C", "2-T", "3-T", "10-A"]
    assert await refs(connector="fr") == ["2-T", "3-T", "10-A"]
    assert await refs(state="RESOLVED") == ["1-C", "10-A"]
    assert await refs(connector="fr", mode="live") == ["3-T", "10-A"]
    assert await refs(limit=2) == ["1-C", "2-T"]


async def test_r_m5_an_items_emails_come_in_order_and_are_copied_to_a_new_item(store):
    ids = await journal(store, 3)
    await store.transaction(lambda t: t.save_workitem(item("1-T")))
    for email_id, action in ((ids[2], "created"), (ids[0], "appended"), (ids[1], "appended")):
        await store.transaction(lambda t: t.attach_email("1-T", email_id, action))
    await store.transaction(lambda t: t.attach_email("1-T", ids[0], "appended"))  # once only
    assert await store.read(lambda t: t.item_email_ids("1-T")) == [ids[2], ids[0], ids[1]]

    async def copy_to_new(txn) -> None:
        await txn.save_workitem(item("2-T"))
        await txn.copy_communications("1-T", "2-T")
    await store.transaction(copy_to_new)
    assert sorted(await store.read(lambda t: t.item_email_ids("2-T"))) == sorted(ids)
    assert await store.read(lambda t: t.item_email_ids("3-T")) == []


# -- sent mail (R-S1, R-M2) ------------------------------------------------------------------

async def test_r_s1_the_gateways_own_mail_is_known_by_its_message_id(store):
    await store.journal([copy(message(1, message_id="<in@customer.test>"),
                              message_id="<in@customer.test>")])

    async def sent(txn) -> None:
        await send(txn, to=["carol@customer.test"], message_id="<ack@mailgate.invalid>")
        await send(txn, to=["carol@customer.test"], automated=False,
                   message_id="<agent@mailgate.invalid>")
    await store.transaction(sent)

    async def look(txn) -> list:
        return [await txn.sent_message(m) for m in
                ("<ack@mailgate.invalid>", "<agent@mailgate.invalid>", "<in@customer.test>")]
    assert await store.read(look) == [(True, True), (True, False), None]


async def test_placed_on_names_the_items_a_message_id_was_placed_on(store):
    [incoming] = await store.journal([copy(message(1, message_id="<in@customer.test>"),
                                           message_id="<in@customer.test>")])

    async def place(txn) -> None:
        await txn.save_workitem(item("1-T"))
        await txn.save_workitem(item("2-T"))
        await txn.attach_email("1-T", incoming, "created")
        outgoing = await send(txn, to=["carol@customer.test"], message_id="<out@mailgate.invalid>")
        await txn.attach_email("2-T", outgoing, "sent")
    await store.transaction(place)

    async def look(txn) -> list:
        return [await txn.placed_on("<in@customer.test>"),
                await txn.placed_on("<out@mailgate.invalid>"),
                await txn.placed_on("<out@mailgate.invalid>", incoming_only=True),
                await txn.placed_on("<none@x.test>")]
    assert await store.read(look) == [["1-T"], ["2-T"], [], []]


# -- dedup (R-D1..R-D4) and the pipeline's batch ---------------------------------------------

async def test_r_d2_a_remembered_fingerprint_is_received_by_its_target_only(store):
    await store.transaction(lambda t: t.remember("1-T", VALUES, 1))

    async def look(txn) -> list[bool]:
        return [await txn.target_received("1-T", ["F2:a"]),
                await txn.target_received("1-T", ["F2:other", "F3:b"]),
                await txn.target_received("1-T", ["F2:other"]),
                await txn.target_received("2-T", VALUES)]
    assert await store.read(look) == [True, True, False, False]


async def test_r_d2_fingerprints_of_the_batch_are_seen_before_they_are_written(store):
    async def batch(txn) -> list[bool]:
        seen = [await txn.target_received("1-T", VALUES)]
        await txn.remember("1-T", VALUES, 7)
        seen += [await txn.target_received("1-T", ["F2:a"]),
                 await txn.target_received("2-T", VALUES)]
        await txn.flush()
        return seen

    assert await store.decide(batch) == [False, True, False]
    assert await store.read(lambda t: t.target_received("1-T", ["F3:b"]))


async def test_r_d2_remembering_a_fingerprint_again_keeps_one(store):
    await store.transaction(lambda t: t.remember("desk@corp.test", ["F1"], 1))

    async def batch(txn) -> None:
        await txn.remember("desk@corp.test", ["F1", "F2:a"], 2)
        await txn.remember("desk@corp.test", ["F2:a"], 3)
        await txn.flush()

    await store.decide(batch)
    await store.transaction(lambda t: t.remember("desk@corp.test", ["F2:a"], 4))
    pruned = await store.transaction(lambda t: t.prune_fingerprints(time.time() + 60))
    assert pruned == 2


async def test_r_d4_fingerprints_older_than_the_window_are_pruned(store):
    await store.transaction(lambda t: t.remember("1-T", VALUES, 1))
    assert await store.transaction(lambda t: t.prune_fingerprints(time.time() - 60)) == 0
    assert await store.read(lambda t: t.target_received("1-T", ["F1"]))
    assert await store.transaction(lambda t: t.prune_fingerprints(time.time() + 60)) == 3
    assert not await store.read(lambda t: t.target_received("1-T", VALUES))


async def test_r_d3_an_earlier_copy_of_the_batch_is_found_by_its_f1(store):
    first, second, third = await journal(store, 3)

    async def batch(txn) -> list:
        await decided(txn, second, f1="abc", connector="support")
        found = [await txn.f1_seen("support", "abc", third),
                 await txn.f1_seen("support", "abc", first),    # not earlier than ``first``
                 await txn.f1_seen("sales", "abc", third),      # another connector
                 await txn.f1_seen("support", "abd", third)]
        await txn.flush()
        return found

    assert await store.decide(batch) == [second, None, None, None]


async def test_r_d3_r_d4_a_decided_copy_is_found_by_its_f1_within_the_window(store):
    first, second = await journal(store, 2)

    async def decide_first(txn) -> None:
        await decided(txn, first, f1="abc", connector="support")
        await txn.flush()
    await store.decide(decide_first)

    async def look(txn) -> list:
        return [await txn.f1_seen("support", "abc", second),
                await txn.f1_seen("support", "abc", 0),                 # explain: no id yet
                await txn.f1_seen("support", "abc", first),
                await txn.f1_seen("support", "abc", second, since=time.time() + 60)]
    assert await store.decide(look) == [first, first, None, None]


async def test_r_e6_events_of_a_batch_are_written_at_the_flush_in_emit_order(store):
    await store.emit("poller.ok", connector="mbox")
    ids = await journal(store, 3)
    kinds = ("workitem.created", "email.appended", "email.ignored")

    async def batch(txn) -> None:
        for n, kind in enumerate(kinds):
            await txn.emit(kind, ref=f"{n + 1}-T", email_id=ids[n], n=n)
        await txn.flush()

    await store.decide(batch)
    events = await store.events()
    assert [(e["type"], e["ref"], e["email_id"], e["data"]) for e in events] == [
        ("poller.ok", None, None, {"connector": "mbox"}),
        *((kind, f"{n + 1}-T", ids[n], {"n": n}) for n, kind in enumerate(kinds))]
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})


async def test_r_e6_a_rolled_back_copy_leaves_no_change_event_or_fingerprint(store):
    ids = await journal(store, 3)

    async def batch(txn) -> list[bool]:
        await txn.emit("workitem.created", ref="1-T", email_id=ids[0])
        await txn.remember("1-T", VALUES, ids[0])
        await txn.savepoint("begin")                    # the poison copy
        await txn.save_workitem(item("2-T"))
        await txn.emit("workitem.created", ref="2-T", email_id=ids[1])
        await txn.remember("2-T", VALUES, ids[1])
        await txn.remember("1-T", ["F4:c"], ids[1])
        await txn.savepoint("rollback")
        await txn.savepoint("release")
        seen = [await txn.target_received("2-T", VALUES),
                await txn.target_received("1-T", ["F4:c"]),
                await txn.target_received("1-T", ["F1"])]
        await txn.savepoint("begin")                    # the batch goes on
        await txn.save_workitem(item("3-T"))
        await txn.emit("workitem.created", ref="3-T", email_id=ids[2])
        await txn.savepoint("release")
        await txn.flush()
        return seen

    assert await store.decide(batch) == [False, False, True]
    assert [e["ref"] for e in await store.events()] == ["1-T", "3-T"]
    assert [i.ref for i in await store.read(lambda t: t.workitems())] == ["3-T"]

    async def look(txn) -> list[bool]:
        return [await txn.target_received("2-T", VALUES),
                await txn.target_received("1-T", ["F4:c"]),
                await txn.target_received("1-T", VALUES)]
    assert await store.read(look) == [False, False, True]


async def test_a_decided_copy_leaves_the_journal_with_its_outcome(store):
    first, second = await journal(store, 2)
    trace = [{"stage": "match", "verdict": "pass", "reason": "", "matched": [],
              "duration_ms": 0.1}]

    async def batch(txn) -> set[int]:
        waiting = await txn.still_journaled([first, second, second + 1])
        await decided(txn, first, "created", targets=[{"ref": "1-T", "action": "created"}],
                      trace=trace, f1="abc", connector="support")
        await txn.flush()
        return waiting

    assert await store.decide(batch) == {first, second}
    record = await store.email(first)
    assert (record.state, record.outcome, record.reason, record.targets, record.trace) == (
        "done", "created", None, [{"ref": "1-T", "action": "created"}], trace)
    assert await store.read(lambda t: t.email_state(first)) == EmailState(
        "created", "incoming", trace, "done")
    assert [c.email_id for c in await store.journaled(10)] == [second]
    assert await store.decide(lambda t: t.still_journaled([first, second])) == {second}


async def test_r_u1_unprocessed_copies_are_listed_and_can_go_back_to_the_journal(store):
    ids = await journal(store, 4)

    async def batch(txn) -> None:
        for email_id in ids[:3]:
            await decided(txn, email_id, "unprocessed", reason="no_route")
        await decided(txn, ids[3], "created")
        await txn.flush()

    await store.decide(batch)
    assert [e.id for e in await store.unprocessed()] == ids[:3]
    assert [e.id for e in await store.unprocessed(after=ids[0])] == ids[1:3]
    assert [e.id for e in await store.unprocessed(limit=1)] == ids[:1]
    assert (await store.unprocessed())[0].reason == "no_route"

    async def rejournal(txn) -> list[bool]:
        return [await txn.rejournal_unprocessed(ids[0]),
                await txn.rejournal_unprocessed(ids[3]),      # placed: stays
                await txn.rejournal_unprocessed(ids[3] + 1)]  # no such email
    assert await store.transaction(rejournal) == [True, False, False]
    assert [e.id for e in await store.unprocessed()] == ids[1:3]
    assert [c.email_id for c in await store.journaled(10)] == [ids[0]]
    assert (await store.email(ids[3])).outcome == "created"


# -- loop breakers (R-B3) ----------------------------------------------------------------------

async def test_r_b3_a_senders_copies_count_against_its_budget_per_connector(store):
    ids = await journal(store, 4) + await journal(store, 1, "sales")
    carol = "carol@customer.test"

    async def batch(txn) -> int:
        for email_id in ids[:3]:
            await decided(txn, email_id, connector="support", sender=carol)
        await decided(txn, ids[3], "duplicate", connector="support")    # does not count
        await decided(txn, ids[4], connector="sales", sender=carol)
        in_batch = await txn.sender_intake("support", carol, time.time() - 60, 10)
        await txn.flush()
        return in_batch

    assert await store.decide(batch) == 3

    async def look(txn) -> list[int]:
        since = time.time() - 60
        return [await txn.sender_intake("support", carol, since, 10),
                await txn.sender_intake("support", carol, since, 2),
                await txn.sender_intake("sales", carol, since, 10),
                await txn.sender_intake("support", "dave@customer.test", since, 10),
                await txn.sender_intake("support", carol, time.time() + 60, 10)]
    assert await store.decide(look) == [3, 2, 1, 0, 0]


async def test_r_b3_reopens_are_counted_per_item_within_the_window_and_pruned(store):
    async def reopen(txn) -> None:
        await txn.record_reopen("1-T", 1)
        await txn.record_reopen("1-T", None)
        await txn.record_reopen("2-T", 3)
    await store.transaction(reopen)

    async def look(txn) -> list[int]:
        return [await txn.reopens("1-T", time.time() - 60), await txn.reopens("2-T", 0),
                await txn.reopens("3-T", 0), await txn.reopens("1-T", time.time() + 60)]
    assert await store.read(look) == [2, 1, 0, 0]
    assert await store.transaction(lambda t: t.prune_reopens(time.time() - 60)) == 0
    assert await store.transaction(lambda t: t.prune_reopens(time.time() + 60)) == 3
    assert await store.read(lambda t: t.reopens("1-T", 0)) == 0


async def test_r_b3_automated_mail_is_counted_per_recipient(store):
    async def sent(txn) -> None:
        await send(txn, to=["a_b@customer.test"])
        await send(txn, to=["dave@customer.test", "a_b@customer.test"])
        await send(txn, to=["a_b@customer.test"], automated=False)      # an agent's: free
        await send(txn, to=["axb@customer.test"])
    await store.transaction(sent)

    async def look(txn) -> list[int]:
        since = time.time() - 60
        return [await txn.automated_sent_to(a, since=since) for a in
                ("a_b@customer.test", "axb@customer.test", "dave@customer.test",
                 "%@customer.test", "b@customer.test", "a_b@customer")] + [
            await txn.automated_sent_to("a_b@customer.test", since=time.time() + 60)]
    assert await store.read(look) == [2, 1, 1, 0, 0, 0, 0]


async def test_r_b3_the_automated_mail_budget_compares_addresses_case_insensitively(store):
    await store.transaction(lambda t: send(t, to=["Carol@Customer.TEST"]))
    count = await store.read(lambda t: t.automated_sent_to("carol@customer.test", since=0))
    assert count == 1


async def test_r_b3_the_automated_mail_budget_counts_an_internationalised_address(store):
    await store.transaction(lambda t: send(t, to=["jörg@müller.test"]))
    assert await store.read(lambda t: t.automated_sent_to("jörg@müller.test", since=0)) == 1


# -- events (R-X1) ------------------------------------------------------------------------------

async def test_r_x1_events_come_back_in_id_order_after_n(store):
    assert await store.events() == [] and await store.last_event_id() == 0
    before = time.time()
    for n in range(5):
        await store.emit("poller.failed", connector="mbox", n=n)
    events = await store.events()
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)) and len(ids) == 5
    assert [e["data"] for e in events] == [{"connector": "mbox", "n": n} for n in range(5)]
    assert all(before <= e["created_at"] <= time.time() for e in events)
    assert await store.events(after=ids[1], limit=2) == events[2:4]
    assert await store.events(after=ids[-1]) == []
    assert await store.last_event_id() == ids[-1]


async def test_r_e6_an_event_of_a_host_operation_is_written_with_its_change(store):
    async def resolve(txn) -> None:
        await txn.save_workitem(item("1-T", state="RESOLVED"))
        await txn.emit("workitem.state_changed", ref="1-T", email_id=None,
                       old="TO_DO", new="RESOLVED", wait_type=None)
    await store.transaction(resolve)
    [event] = await store.events()
    assert (event["type"], event["ref"], event["email_id"], event["data"]) == (
        "workitem.state_changed", "1-T", None,
        {"old": "TO_DO", "new": "RESOLVED", "wait_type": None})


# -- the outbound queue (R-O4) -------------------------------------------------------------------

async def queue_one(store) -> int:
    async def work(txn) -> int:
        await txn.save_workitem(item("1-T", "fr"))
        email_id = await send(txn, to=["carol@customer.test", "dave@customer.test"],
                              connector="fr", message_id="<ack1@mailgate.invalid>")
        await txn.attach_email("1-T", email_id, "sent")
        return email_id
    return await store.transaction(work)


async def test_r_o4_queued_mail_is_due_with_what_sending_needs(store):
    assert await store.outbound.due(time.time(), 10) == []
    assert await store.outbound.next_due() is None
    before = time.time()
    email_id = await queue_one(store)
    [due] = await store.outbound.due(time.time() + 1, 10)
    assert (due.email_id, due.attempts, due.connector, due.mail_from, due.rcpt_to,
            due.message_id, due.ref) == (
        email_id, 0, "fr", "fr@corp.test", ("carol@customer.test", "dave@customer.test"),
        "<ack1@mailgate.invalid>", "1-T")
    assert due.raw == await store.raw(email_id) and b"<ack1@mailgate.invalid>" in due.raw
    assert before <= due.created_at <= time.time()
    assert await store.outbound.due(before - 3600, 10) == []      # not due before it was queued
    assert await store.outbound.queued() == 1
    assert before <= await store.outbound.next_due() <= time.time()
    delivery = await store.outbound.delivery(email_id)
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("queued", 0, None)
    assert await store.outbound.delivery(email_id + 1) is None
    record = await store.email(email_id)
    assert (record.direction, record.state) == ("outgoing", "done")


async def test_r_o4_due_mail_comes_oldest_first_up_to_the_limit(store):
    async def work(txn) -> list[int]:
        return [await send(txn, to=[f"c{n}@customer.test"]) for n in range(3)]
    ids = await store.transaction(work)
    assert [m.email_id for m in await store.outbound.due(time.time() + 1, 2)] == ids[:2]


async def test_r_o4_a_try_refused_for_some_recipients_retries_only_them_later(store):
    email_id = await queue_one(store)
    [mail] = await store.outbound.due(time.time() + 1, 10)
    later = time.time() + 600
    await store.outbound.finish(mail, state="queued", error="451 4.3.0 try later",
                                next_attempt_at=later, pending=["dave@customer.test"])
    assert await store.outbound.due(time.time() + 1, 10) == []
    assert await store.outbound.next_due() == later
    assert await store.outbound.delivery(email_id) == DeliveryState(
        "queued", 1, "451 4.3.0 try later", later)
    [retry] = await store.outbound.due(later, 10)
    assert (retry.rcpt_to, retry.attempts) == (("dave@customer.test",), 1)
    # a try that fails for every remaining recipient keeps them pending
    await store.outbound.finish(retry, state="queued", error="451 again",
                                next_attempt_at=later + 1)
    [again] = await store.outbound.due(later + 1, 10)
    assert (again.rcpt_to, again.attempts) == (("dave@customer.test",), 2)


async def test_r_o4_a_sent_mail_leaves_the_queue_with_its_event(store):
    email_id = await queue_one(store)
    [mail] = await store.outbound.due(time.time() + 1, 10)
    await store.outbound.finish(mail, state="sent", error=None, next_attempt_at=time.time(),
                                event=("outbound.sent", {"attempts": 1}))
    assert await store.outbound.due(time.time() + 3600, 10) == []
    assert await store.outbound.queued() == 0 and await store.outbound.next_due() is None
    assert (await store.outbound.delivery(email_id)).state == "sent"
    [event] = await store.events()
    assert (event["type"], event["ref"], event["email_id"], event["data"]) == (
        "outbound.sent", "1-T", email_id, {"attempts": 1})


async def test_r_o4_a_failed_mail_is_never_tried_again(store):
    email_id = await queue_one(store)
    [mail] = await store.outbound.due(time.time() + 1, 10)
    await store.outbound.finish(mail, state="failed", error="550 5.1.1 no such user",
                                next_attempt_at=time.time())
    assert await store.outbound.due(time.time() + 3600, 10) == []
    delivery = await store.outbound.delivery(email_id)
    assert (delivery.state, delivery.attempts, delivery.last_error) == (
        "failed", 1, "550 5.1.1 no such user")
    assert await store.events() == []


async def test_queue_depths_count_the_journal_and_the_outbound_queue(store):
    assert await store.queue_depths() == {"journal": (0, None), "outbound": (0, None)}
    first, second = await journal(store, 2)
    email_id = await queue_one(store)
    depths = await store.queue_depths()
    assert depths["journal"] == (2, (await store.email(first)).received_at)
    assert depths["outbound"] == (1, (await store.email(email_id)).received_at)

    async def batch(txn) -> None:
        await decided(txn, first)
        await txn.flush()
    await store.decide(batch)
    assert (await store.queue_depths())["journal"] == (1, (await store.email(second)).received_at)


# -- the poll ledger (R-I4, R-B5) ----------------------------------------------------------------

def polled(n: int, key: str, folder: str = "INBOX", connector: str = "mbox") -> Copy:
    return copy(message(n), connector, "imap", folder_path=folder, poll_key=key)


async def test_r_i4_a_polled_copy_is_known_by_its_key_from_its_journal_commit(store):
    first, second = await store.journal([polled(1, "S1:7:1"), polled(2, "S1:7:2")])
    await store.journal([polled(3, "S1:7:3", folder="Archive"),
                         polled(4, "S1:7:4", connector="box2")])
    assert await store.polls.known("mbox", "INBOX", "S1:") == PolledKeys(
        {"7:1": first, "7:2": second}, False, ())


async def test_r_i4_keys_of_another_mailbox_are_foreign(store):
    [email_id] = await store.journal([polled(1, "S1:7:1")])
    assert await store.polls.known("mbox", "INBOX", "S2:") == PolledKeys({}, False, ("S1:7:1",))
    assert (await store.polls.known("mbox", "INBOX", "S1:")).known == {"7:1": email_id}


async def test_r_b5_a_watermark_marks_keys_and_the_folder_as_polled(store):
    [email_id] = await store.journal([polled(1, "S1:7:1")])
    await store.polls.mark("mbox", "INBOX", "S1:", ["7:1", "7:2", "7:3"])
    assert await store.polls.known("mbox", "INBOX", "S1:") == PolledKeys(
        {"7:1": email_id, "7:2": None, "7:3": None}, True, ())   # a watermark hides no copy
    assert not (await store.polls.known("mbox", "Archive", "S1:")).polled_before
    assert not (await store.polls.known("mbox", "INBOX", "S2:")).polled_before
    await store.polls.mark("mbox", "Archive", "S1:", [])
    assert await store.polls.known("mbox", "Archive", "S1:") == PolledKeys({}, True, ())


async def test_r_i4_forgotten_keys_are_gone_and_the_rest_stays(store):
    [email_id] = await store.journal([polled(1, "S1:7:1")])
    await store.polls.mark("mbox", "INBOX", "S1:", ["7:2"])
    await store.polls.forget("mbox", "INBOX", ["S1:7:1", "S1:7:9"])
    assert await store.polls.known("mbox", "INBOX", "S1:") == PolledKeys({"7:2": None}, True, ())
    assert await store.raw(email_id) == message(1)                # the copy stays


# -- the directory (R-C*, R-R*) ----------------------------------------------------------------

POLLED = Connector(name="mbox", service="imap", protocol="imap", primary_address="mbox@corp.test",
                   aliases=("inbox@corp.test", "in@corp.test"), enabled=False,
                   route_on_envelope=True, smtp_host="smtp.corp.test", smtp_port=465,
                   smtp_tls="implicit", host="imap.corp.test", port=993, tls="starttls",
                   folders=("INBOX", "Support"), poll_interval=30, keep_on_server=True,
                   start_from="now", idle=False, move_to="Done", tls_verify=False)


async def test_r_c1_a_connector_comes_back_with_its_credentials_and_settings(store):
    entry = ConnectorEntry(POLLED, username="mbox", password="s3cret",
                           secrets={"client_secret": "cs", "certificate_password": "",
                                    "unknown": "x"})
    await store.transaction(lambda t: t.save_connector(entry, create=True))
    await store.transaction(lambda t: t.save_connector(lmtp("fr"), create=True))
    expected = ConnectorEntry(POLLED, "mbox", "s3cret", {"client_secret": "cs"})
    assert await store.read(lambda t: t.connector_entry("mbox")) == expected
    assert await store.read(lambda t: t.connector_entries()) == [lmtp("fr"), expected]
    assert await store.read(lambda t: t.connector_entry("nope")) is None

    changed = ConnectorEntry(dataclasses.replace(POLLED, enabled=True, folders=("INBOX",)),
                             username="mbox2", password=None, secrets={})
    await store.transaction(lambda t: t.save_connector(changed, create=False))
    assert await store.read(lambda t: t.connector_entry("mbox")) == changed


async def test_r_c1_connector_names_are_unique(store):
    await store.transaction(lambda t: t.save_connector(lmtp("fr"), create=True))
    with pytest.raises(StoreError):
        await store.transaction(lambda t: t.save_connector(lmtp("fr", enabled=False),
                                                           create=True))
    assert await store.read(lambda t: t.connector_entries()) == [lmtp("fr")]


async def test_deleting_a_connector_takes_its_routes_and_keeps_its_mail(store):
    [email_id] = await journal(store, 1, "fr")

    async def setup(txn) -> None:
        for name in ("fr", "ma"):
            await txn.save_connector(lmtp(name), create=True)
            await txn.save_route(route(name, f"{name} fallback", 1, fallback=True))
        await txn.save_route(route("fr", "billing", 1))
        await txn.save_workitem(item("1-T", "fr"))
        await txn.attach_email("1-T", email_id, "created")
    await store.transaction(setup)
    await store.transaction(lambda t: t.delete_connector("fr"))
    assert await store.read(lambda t: t.connector_entry("fr")) is None
    assert [r.connector for r in await store.read(lambda t: t.routes())] == ["ma"]
    assert (await store.read(lambda t: t.workitem("1-T"))).connector == "fr"
    assert await store.read(lambda t: t.item_email_ids("1-T")) == [email_id]
    assert await store.raw(email_id) == message(0)


async def test_a_route_comes_back_as_saved_and_changes_in_place(store):
    saved = route("fr", "billing", 1, folder_path="INBOX/Billing",
                  rules=RouteRules(important=True, attachment_types=".pdf",
                                   subject_keywords="invoice; bill",
                                   sender_companies="Customer Ltd",
                                   sender_list_includes="*@customer.test",
                                   recipient_list_includes="fr@corp.test"),
                  target=RouteTarget(kind="Case", process="billing", customer="C1",
                                     contract="K1", service="S1", ticket_category="cat"),
                  send_automated_emails=True, ack_cc=True, test_mode=True, enabled=False)
    unimportant = route("fr", "quiet", 2, rules=RouteRules(important=False))

    async def create(txn) -> list[int]:
        await txn.save_connector(lmtp("fr"), create=True)
        return [await txn.save_route(saved), await txn.save_route(unimportant)]
    rid, other = await store.transaction(create)
    assert rid != other
    assert await store.read(lambda t: t.route(rid)) == dataclasses.replace(saved, id=rid)
    assert (await store.read(lambda t: t.route(other))).rules.important is False

    renamed = dataclasses.replace(saved, id=rid, name="invoices", rules=RouteRules())
    assert await store.transaction(lambda t: t.save_route(renamed)) == rid
    assert await store.read(lambda t: t.route(rid)) == renamed
    await store.transaction(lambda t: t.delete_route(rid))
    assert await store.read(lambda t: t.route(rid)) is None
    assert [r.id for r in await store.read(lambda t: t.routes())] == [other]


async def test_r_r5_routes_are_listed_by_connector_then_order_and_reordered(store):
    async def create(txn) -> list[int]:
        for name in ("ma", "fr"):
            await txn.save_connector(lmtp(name), create=True)
        return [await txn.save_route(route("ma", "x", 1)),
                await txn.save_route(route("fr", "f", 3, fallback=True)),
                await txn.save_route(route("fr", "a", 1)),
                await txn.save_route(route("fr", "b", 2))]
    x, f, a, b = await store.transaction(create)
    assert [r.id for r in await store.read(lambda t: t.routes())] == [a, b, f, x]
    assert [r.id for r in await store.read(lambda t: t.routes("fr"))] == [a, b, f]
    await store.transaction(lambda t: t.set_route_orders([(2, a), (1, b)]))
    assert [(r.id, r.order) for r in await store.read(lambda t: t.routes("fr"))] == [
        (b, 1), (a, 2), (f, 3)]


async def test_r_r2_contacts_are_saved_repointed_and_deleted(store):
    first = await store.transaction(lambda t: t.save_contact("*@customer.test", "Customer Ltd"))
    second = await store.transaction(lambda t: t.save_contact("carol@customer.test", "Carol"))
    assert first[1] and second[1] and first[0] != second[0]
    again = await store.transaction(lambda t: t.save_contact("*@customer.test", "Customer Group"))
    assert again == (first[0], False)
    assert await store.read(lambda t: t.contacts()) == [
        Contact(first[0], "*@customer.test", "Customer Group"),
        Contact(second[0], "carol@customer.test", "Carol")]
    assert await store.transaction(lambda t: t.delete_contact(second[0]))
    assert not await store.transaction(lambda t: t.delete_contact(second[0]))
    assert [c.pattern for c in await store.read(lambda t: t.contacts())] == ["*@customer.test"]


async def test_r_c5_activity_is_read_in_order_by_entity_after_an_id(store):
    lines = [("connector:fr", "create", "alice", 100.0, {"name": [None, "fr"]}),
             ("route:1", "update", "bob", 101.0, {"rules.subject_keywords": ["", "x"]}),
             ("connector:fr", "disable", "alice", 102.0, {"enabled": [True, False]})]

    async def add(txn) -> None:
        for line in lines:
            await txn.add_activity(*line)
    await store.transaction(add)

    async def read(entity=None, after=0, limit=10) -> list[ActivityLine]:
        return await store.read(lambda t: t.activity(entity=entity, after=after, limit=limit))

    everything = await read()
    assert [(a.entity, a.action, a.actor, a.at, a.changes) for a in everything] == lines
    ids = [a.id for a in everything]
    assert ids == sorted(set(ids))
    assert [a.action for a in await read("connector:fr")] == ["create", "disable"]
    assert [a.id for a in await read(after=ids[0])] == ids[1:]
    assert [a.id for a in await read("connector:fr", after=ids[0])] == ids[2:]
    assert [a.id for a in await read(limit=1)] == ids[:1]
    assert await read("route:2") == []


async def test_r_c3_the_last_test_of_a_connector_is_kept(store):
    async def create(txn) -> float:
        await txn.save_connector(lmtp("fr"), create=True)
        await txn.save_test("fr", False, "LOGIN failed", txn.now)
        return txn.now
    at = await store.transaction(create)
    assert await store.read(lambda t: t.last_test("fr")) == ConnectorTest(False, "LOGIN failed", at)
    later = at + 5
    await store.transaction(lambda t: t.save_test("fr", True, "ok", later))
    assert await store.read(lambda t: t.last_test("fr")) == ConnectorTest(True, "ok", later)
    assert await store.read(lambda t: t.last_test("ma")) is None


async def test_r_c3_a_test_older_than_a_recreated_namesake_does_not_count(store):
    async def create(txn) -> None:
        await txn.save_connector(lmtp("fr"), create=True)
        await txn.save_test("fr", True, "ok", txn.now)
    await store.transaction(create)
    await store.transaction(lambda t: t.delete_connector("fr"))
    assert await store.read(lambda t: t.last_test("fr")) is None
    await store.transaction(lambda t: t.save_connector(lmtp("fr"), create=True))
    assert await store.read(lambda t: t.last_test("fr")) is None
    await store.transaction(lambda t: t.save_test("fr", False, "refused", t.now))
    assert (await store.read(lambda t: t.last_test("fr"))).detail == "refused"


async def test_r_c3_no_test_is_kept_for_a_connector_that_does_not_exist(store):
    await store.transaction(lambda t: t.save_test("ghost", True, "ok", time.time() + 3600))
    await store.transaction(lambda t: t.save_connector(lmtp("ghost"), create=True))
    assert await store.read(lambda t: t.last_test("ghost")) is None


async def test_r_r8_the_hosts_processes_are_replaced_as_a_whole(store):
    assert await store.read(lambda t: t.processes()) == set()
    await store.transaction(lambda t: t.set_processes(["billing", "it", "billing"]))
    assert await store.read(lambda t: t.processes()) == {"billing", "it"}
    await store.transaction(lambda t: t.set_processes(["it"]))
    assert await store.read(lambda t: t.processes()) == {"it"}
    await store.transaction(lambda t: t.set_processes([]))
    assert await store.read(lambda t: t.processes()) == set()


# -- run-time settings (SPEC §5.3) ----------------------------------------------------------------

async def test_runtime_settings_keep_their_json_types_and_change_by_key(store):
    assert await store.settings() == {}
    await store.save_settings({"matching_mode": "mixed", "hide_plus_in_from": True,
                               "sign_tokens_since": 1.5, "list": [1, {"a": None}]})
    await store.save_settings({"matching_mode": "off"})
    assert await store.settings() == {"matching_mode": "off", "hide_plus_in_from": True,
                                      "sign_tokens_since": 1.5, "list": [1, {"a": None}]}
