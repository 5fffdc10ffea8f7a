"""R-O4: the outbound queue is delivered through the relay, retried, and never lost."""
from __future__ import annotations

import asyncio
import email
from email import policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from gateway.config import BootstrapRoute, DefaultGatewaySection, OutboundSection
from tests.conftest import free_port
from tests.e2e.helpers import DEPARTMENTS, deliver, mail

# The test relay takes AUTH over plain TCP on loopback on purpose; aiosmtpd warns each time.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

ACKS = [BootstrapRoute(connector="fr", email_address="fr@corp.test", fallback=True,
                       send_automated_emails=True),
        BootstrapRoute(connector="ma", email_address="ma@corp.test", fallback=True,
                       send_automated_emails=True)]


class Sink:
    """An SMTP relay that requires AUTH and records what it accepted (or refuses)."""

    def __init__(self, port: int, *, idle_timeout: float = 300):
        self.port = port
        self.received: list[tuple[str, list[str], bytes]] = []
        self.reply = "250 2.0.0 queued"
        self.sessions = 0                   # EHLOs: one per connection (no STARTTLS here)
        handler = self

        def authenticate(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == b"mailgate" and auth_data.password == b"relay-secret"
            return AuthResult(success=ok)

        self.controller = Controller(handler, hostname="127.0.0.1", port=port,
                                     auth_required=True, auth_require_tls=False,
                                     authenticator=authenticate, timeout=idle_timeout)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):
        if self.reply.startswith("250"):
            self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content))
        return self.reply

    def start(self) -> "Sink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=policy.default)
                for _, _, raw in self.received]


def outbound(port: int, **extra) -> OutboundSection:
    return OutboundSection(enabled=True, retry_initial=0.2, retry_max=0.5,
                           default_gateway=DefaultGatewaySection(
                               host="127.0.0.1", port=port, username="mailgate",
                               password="relay-secret"), **extra)


@pytest.fixture
def sink():
    started = Sink(free_port()).start()
    yield started
    started.stop()


async def test_r_o5_acknowledgement_reaches_the_relay_with_auth(start_gateway, sink):
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=outbound(sink.port))
    original = mail(subject="Printer on fire")
    await deliver(gw, original)
    await gw.delivery.drain()
    [(sender, rcpts, _)] = sink.received
    [ack] = sink.messages()
    item = await gw.workitem("1-T")
    assert (sender, rcpts) == ("fr@corp.test", ["carol@customer.test"])
    assert ack["Subject"] == "[1-T] Printer on fire"
    assert ack["In-Reply-To"] == original["Message-ID"]
    assert ack["Message-ID"].endswith(f".{item.uuid}@mailgate.invalid>")
    assert f"[WI-{item.uuid}]" in ack.get_content()
    events = [e["type"] for e in await gw.store.events(0, 100)]
    assert "outbound.sent" in events


async def test_r_o4_relay_down_is_retried_and_delivered_once_it_is_back(start_gateway):
    port = free_port()
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=outbound(port))
    await deliver(gw, mail(subject="While the relay sleeps"))
    await asyncio.sleep(0.8)                      # a few tries against a closed port
    [queued] = await _queue(gw)
    assert queued[0] == "queued" and queued[1] >= 2 and "Connect" in queued[2]
    sink = Sink(port).start()
    try:
        await gw.delivery.drain(10)
        assert len(sink.received) == 1
    finally:
        sink.stop()
    [done] = await _queue(gw)
    assert done[0] == "sent"


async def test_r_o4_relay_5xx_is_a_permanent_failure_on_the_work_item(start_gateway, sink):
    sink.reply = "550 5.1.1 no such user"
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=outbound(sink.port))
    await deliver(gw, mail(subject="To nobody"))
    await gw.delivery.drain()
    [state] = await _queue(gw)
    assert state[0] == "failed" and "550" in state[2]
    failed = [e for e in await gw.store.events(0, 100) if e["type"] == "outbound.failed"]
    assert [(e["ref"], "550" in e["data"]["error"]) for e in failed] == [("1-T", True)]


async def test_r_o4_connections_to_the_relay_are_reused_and_concurrent(start_gateway, sink):
    """As Postfix's smtp client does: mail for one relay goes over a few open connections
    ([outbound] concurrency), not one connection per mail."""
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS,
                             outbound=outbound(sink.port, concurrency=3))
    await deliver(gw, mail(subject="Printer on fire"))
    await gw.delivery.drain()
    assert sink.sessions == 1                                # the acknowledgement
    await gw.delivery.stop()                                 # let a backlog build up
    for n in range(30):
        await gw.send_email("1-T", to=[f"person{n}@customer.test"], subject=f"Update {n}",
                            body="The technician is on the way.")
    gw.delivery.start()
    await gw.delivery.drain()

    assert len(sink.received) == 31
    assert sorted(r[1][0] for r in sink.received[1:]) == sorted(
        f"person{n}@customer.test" for n in range(30))
    assert sink.sessions == 1 + 3                            # three lanes, each reused


async def test_r_o4_a_mail_that_breaks_the_sender_is_retried_and_the_rest_still_leave(
        start_gateway, sink):
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS,
                             outbound=outbound(sink.port, concurrency=2))
    await deliver(gw, mail(subject="Printer on fire"))
    await gw.delivery.drain()
    await gw.delivery.stop()

    def signer(raw: bytes):
        if b"poison" in raw:
            raise ValueError("cannot sign this one")
        return raw, None
    gw.delivery.signer = signer
    for subject in ("first", "poison", "third", "fourth"):
        await gw.send_email("1-T", to=["carol@customer.test"], subject=subject, body="x")
    gw.delivery.start()
    for _ in range(100):
        if len(sink.received) == 4:
            break
        await asyncio.sleep(0.05)
    subjects = sorted(m["Subject"] for m in sink.messages()[1:])
    assert subjects == ["first", "fourth", "third"]
    states = await _queue(gw)
    assert ("queued", 1) in [(state, attempts) for state, attempts, _ in states]
    assert any("internal error: ValueError: cannot sign this one" in (e or "")
               for _, _, e in states)


async def test_r_o4_a_connection_the_relay_dropped_is_reopened_not_deferred(start_gateway):
    from gateway.protocols.relay import Relay, RelaySessions as _Sessions
    port = free_port()
    relay_server = Sink(port, idle_timeout=0.3).start()
    try:
        sessions = _Sessions(timeout=10)
        relay = Relay("127.0.0.1", port, "none", "mailgate", "relay-secret", "test")
        await sessions.send(relay, None, "fr@corp.test", ["a@customer.test"], b"Subject: 1\r\n\r\nx\r\n")
        await asyncio.sleep(0.8)                             # the relay hangs up meanwhile
        await sessions.send(relay, None, "fr@corp.test", ["b@customer.test"], b"Subject: 2\r\n\r\nx\r\n")
        await sessions.close()
    finally:
        relay_server.stop()
    assert [r[1] for r in relay_server.received] == [["a@customer.test"], ["b@customer.test"]]
    assert relay_server.sessions == 2


async def test_r_o4_a_421_on_a_reused_connection_is_tried_at_once_on_a_new_one():
    from gateway.protocols.relay import Relay, RelaySessions as _Sessions
    port = free_port()
    relay_server = Sink(port).start()
    closing = {"done": False}

    async def handle_MAIL(server, session, envelope, address, options):
        if relay_server.sessions == 1 and relay_server.received and not closing["done"]:
            closing["done"] = True
            return "421 4.3.2 service shutting down"
        envelope.mail_from = address
        return "250 OK"
    relay_server.handle_MAIL = handle_MAIL
    try:
        sessions = _Sessions(timeout=10)
        relay = Relay("127.0.0.1", port, "none", "mailgate", "relay-secret", "test")
        for n in (1, 2):
            await sessions.send(relay, None, "fr@corp.test", [f"p{n}@customer.test"],
                                b"Subject: %d\r\n\r\nx\r\n" % n)
        await sessions.close()
    finally:
        relay_server.stop()
    assert closing["done"] and relay_server.sessions == 2
    assert [r[1] for r in relay_server.received] == [["p1@customer.test"], ["p2@customer.test"]]


async def test_r_o4_recipients_refused_for_now_are_retried_alone_and_for_good_reported(
        start_gateway, sink):
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=outbound(sink.port))
    await deliver(gw, mail(subject="Printer on fire"))
    await gw.delivery.drain()
    tries: dict[str, int] = {}

    async def handle_RCPT(server, session, envelope, address, options):
        tries[address] = tries.get(address, 0) + 1
        if address == "later@customer.test" and tries[address] == 1:
            return "450 4.2.0 greylisted, come back later"
        if address == "gone@customer.test":
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"
    sink.handle_RCPT = handle_RCPT
    await gw.send_email("1-T", to=["carol@customer.test"],
                        cc=["later@customer.test", "gone@customer.test"],
                        subject="Update", body="On the way.")
    await gw.delivery.drain(10)

    assert [r[1] for r in sink.received[1:]] == [["carol@customer.test"],
                                                 ["later@customer.test"]]
    assert tries["gone@customer.test"] == 1                  # never asked again
    events = [(e["type"], e["data"].get("recipients")) for e in await gw.store.events(0, 100)
              if e["type"].startswith("outbound.") and e["data"].get("recipients") !=
              ["carol@customer.test"]]
    assert ("outbound.failed", ["gone@customer.test"]) in events
    assert ("outbound.sent", ["later@customer.test"]) in events


async def test_r_o4_mail_the_relay_took_is_never_sent_again_when_its_record_fails(
        start_gateway, sink, monkeypatch):
    from gateway.outbound.delivery import Delivery
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=outbound(sink.port))
    real_record = Delivery._record
    failures = {"left": 3}

    async def flaky_record(self, mail, state, error, **kw):
        if state == "sent" and failures["left"]:
            failures["left"] -= 1
            raise OSError("disk full")
        return await real_record(self, mail, state, error, **kw)
    monkeypatch.setattr(Delivery, "_record", flaky_record)

    await deliver(gw, mail(subject="Printer on fire"))
    await gw.delivery.drain(15)

    assert len(sink.received) == 1                           # sent once, recorded at last
    [state] = await _queue(gw)
    assert state[0] == "sent" and failures["left"] == 0


async def _queue(gw) -> list[tuple]:
    """(state, attempts, last error) of each outgoing mail, oldest first, as the store's
    outbound queue tells them."""
    sent = {email_id for item in await gw.workitems.workitems()
            for email_id in await gw.workitems.workitem_emails(item.ref)}
    found = [await gw.store.outbound.delivery(email_id) for email_id in sorted(sent)]
    return [(d.state, d.attempts, d.last_error) for d in found if d is not None]


def test_r_o4_kill_9_with_mail_queued_delivers_each_exactly_once_after_restart(tmp_path):
    import os
    import signal
    import smtplib
    import sqlite3
    import time
    from collections import Counter

    from tests.integration.serve import ServeProcess
    from tests.wire import message

    port = free_port()
    gw = ServeProcess(tmp_path).write_config(
        '[[directory.routes]]\nconnector = "support"\nemail_address = "support@example.test"\n'
        'fallback = true\nsend_automated_emails = true\n'
        f'[outbound]\nenabled = true\nretry_initial = 0.2\nretry_max = 0.5\n'
        f'[outbound.default_gateway]\nhost = "127.0.0.1"\nport = {port}\n'
        'username = "mailgate"\npassword = "relay-secret"\n')
    gw.start()
    with smtplib.LMTP("127.0.0.1", gw.lmtp_port) as client:
        for n in range(10):
            client.sendmail(f"customer{n}@customer.test", ["support@example.test"],
                            message(subject=f"Case {n}", body=f"body {n}\r\n",
                                    sender=f"customer{n}@customer.test",
                                    message_id=f"<in-{n}@customer.test>"))

    def queued() -> int:
        with sqlite3.connect(tmp_path / "mailgate.db", timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM outbound_queue WHERE state = 'queued'"
                              " AND attempts >= 1").fetchone()[0]

    deadline = time.monotonic() + 20
    while queued() < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queued() == 10, "ten acknowledgements wait for the relay"
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    sink = Sink(port).start()
    try:
        gw.start()
        deadline = time.monotonic() + 20
        while len(sink.received) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)                     # room for any second copy to show up
    finally:
        sink.stop()
        gw.stop()
    counted = Counter(m["Message-ID"] for m in sink.messages())
    print(f"\nkill -9 outbound: queued 10, delivered {sum(counted.values())}, "
          f"distinct {len(counted)}")
    assert len(counted) == 10 and set(counted.values()) == {1}


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_r_o4_relay_over_starttls_and_implicit_tls_verified_against_a_ca_file(
        start_gateway, tmp_path, mode):
    import ssl

    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_tls)
    ca.cert_pem.write_to_path(str(tmp_path / "relay-ca.pem"))
    port = free_port()
    received = Sink(port)
    # aiosmtpd cannot tell a socket wrapped in TLS from the start (implicit TLS) from a
    # plain one, so it would hide AUTH there unless told TLS is not required for it
    options = ({"tls_context": server_tls, "require_starttls": True} if mode == "starttls"
               else {"ssl_context": server_tls, "auth_require_tls": False})
    received.controller = Controller(
        received, hostname="127.0.0.1", port=port, auth_required=True,
        authenticator=lambda *a: AuthResult(success=a[4].password == b"relay-secret"),
        **options)
    received.start()
    try:
        gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=OutboundSection(
            enabled=True, retry_initial=0.2, default_gateway=DefaultGatewaySection(
                host="127.0.0.1", port=port, tls=mode, ca_file=str(tmp_path / "relay-ca.pem"),
                username="mailgate", password="relay-secret")))
        await deliver(gw, mail(subject=f"Over {mode}"))
        await gw.delivery.drain(15)
    finally:
        received.stop()
    assert [m["Subject"] for m in received.messages()] == [f"[1-T] Over {mode}"]


async def test_r_o1_mail_from_an_outgoing_connector_leaves_through_its_own_server(
        start_gateway, sink):
    own = Sink(free_port()).start()
    try:
        gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS,
                                 outbound=outbound(sink.port))
        await gw.directory_ops.update_connector(
            "fr", {"direction": "both", "smtp_host": "127.0.0.1", "smtp_port": own.port,
                   "smtp_tls": "none", "username": "mailgate", "password": "relay-secret"},
            "test")
        await deliver(gw, mail(to=["fr@corp.test"], subject="For fr"))
        await deliver(gw, mail(to=["ma@corp.test"], subject="For ma"))
        await gw.delivery.drain()
    finally:
        own.stop()
    assert [m["Subject"] for m in own.messages()] == ["[1-T] For fr"]      # fr's own server
    assert [m["Subject"] for m in sink.messages()] == ["[2-T] For ma"]     # default gateway
    sent = [e for e in await gw.store.events(0, 100) if e["type"] == "outbound.sent"]
    assert sorted(e["data"]["relay"] for e in sent) == ["connector fr", "default gateway"]


async def test_r_o2_hide_plus_in_from_sends_a_plain_from_and_a_tagged_reply_to(start_gateway,
                                                                               sink):
    from gateway.config import MatchingSection
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=outbound(sink.port),
                             matching=MatchingSection(mode="plus_only", hide_plus_in_from=True))
    await deliver(gw, mail(subject="Tagged"))
    await gw.delivery.drain()
    [ack] = sink.messages()
    assert ack["From"] == "fr@corp.test" and ack["Reply-To"] == "fr+1-T@corp.test"


async def test_r_o1_without_the_default_gateway_the_unmonitored_address_needs_a_connector(
        tmp_path, sink):
    from gateway.app import Gateway, StartupError
    from tests.conftest import make_settings
    disabled = OutboundSection(enabled=True, unmonitored_address="no-reply@corp.test",
                               default_gateway=DefaultGatewaySection(enabled=False))
    gw = Gateway(make_settings(tmp_path, connectors=DEPARTMENTS, routes=ACKS,
                               outbound=disabled))
    with pytest.raises(StartupError, match="R-O1"):
        await gw.start()
    await gw.stop()


async def test_r_o1_mail_without_a_relay_fails_naming_the_rule(start_gateway, sink):
    from gateway.config import BootstrapConnector
    connectors = [BootstrapConnector(name="fr", primary_address="fr@corp.test",
                                     aliases=("no-reply@corp.test",), direction="both",
                                     smtp_host="127.0.0.1", smtp_port=sink.port,
                                     smtp_tls="none"),
                  BootstrapConnector(name="ma", primary_address="ma@corp.test")]
    gw = await start_gateway(connectors=connectors, routes=ACKS, outbound=OutboundSection(
        enabled=True, unmonitored_address="no-reply@corp.test",
        default_gateway=DefaultGatewaySection(enabled=False)))
    await gw.directory_ops.update_connector(
        "fr", {"username": "mailgate", "password": "relay-secret"}, "test")
    await deliver(gw, mail(to=["fr@corp.test"], subject="Has a relay"))
    await deliver(gw, mail(to=["ma@corp.test"], subject="Has none"))
    await gw.delivery.drain()
    assert [m["Subject"] for m in sink.messages()] == ["[1-T] Has a relay"]
    failed = [e for e in await gw.store.events(0, 100) if e["type"] == "outbound.failed"]
    assert [(e["ref"], e["data"]["error"][:5]) for e in failed] == [("2-T", "R-O1:")]


async def test_r_c4_a_polled_connectors_own_relay_is_verified_against_its_own_ca_file(
        start_gateway, tmp_path, sink):
    """A polled connector's ca_file is trusted for its mailbox AND its smtp_host: the
    default gateway knows nothing of that CA, the connector's relay still verifies."""
    import ssl

    import trustme
    from gateway.model import Connector
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    ca.cert_pem.write_to_path(str(tmp_path / "provider-ca.pem"))
    port = free_port()
    provider = Sink(port)
    provider.controller = Controller(
        provider, hostname="127.0.0.1", port=port, ssl_context=server_tls,
        auth_required=True, auth_require_tls=False,
        authenticator=lambda *a: AuthResult(success=a[4].password == b"box-secret"))
    provider.start()
    try:
        gw = await start_gateway(connectors=[], outbound=outbound(sink.port))
        await gw.add_connector(Connector(
            name="desk", service="other", protocol="imap", direction="both",
            primary_address="desk@corp.test", host="127.0.0.1", port=free_port(),
            poll_interval=3600, smtp_host="127.0.0.1", smtp_port=port, smtp_tls="implicit",
            ca_file=str(tmp_path / "provider-ca.pem")),
            username="desk@corp.test", password="box-secret")
        item = await gw.create_workitem(kind="Ticket", connector="desk")
        await gw.send_email(item.ref, to=["carol@customer.test"], subject="Verified",
                            body="Sent through the provider's own relay.")
        await gw.delivery.drain(15)
    finally:
        provider.stop()
    assert [m["Subject"] for m in provider.messages()] == ["Verified"]
    assert sink.messages() == []
