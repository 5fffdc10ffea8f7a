"""The throwaway Dovecot of tests/dovecot.py does what the poller tests rely on.

Checked with stdlib clients only (imaplib, poplib, ssl), so a bug in our own
IMAP/POP3 code cannot hide a bug in the fixture.
"""
from __future__ import annotations

import imaplib
import poplib
import socket
import ssl
from pathlib import Path

import pytest

import tests.dovecot as helper
from tests.dovecot import DovecotError, DovecotInstance

pytestmark = pytest.mark.timeout(30)


def test_fixture_ports_accept_and_users_log_in_over_every_listener(dovecot):
    user = dovecot.new_user()
    trusted = ssl.create_default_context(cafile=dovecot.ca_file)
    for port in dovecot.ports():
        socket.create_connection((dovecot.host, port), timeout=5).close()

    for client in (imaplib.IMAP4(dovecot.host, dovecot.imap_port),
                   imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=trusted)):
        assert client.login(user, dovecot.password(user))[0] == "OK"
        client.logout()
    starttls = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    starttls.starttls(trusted)
    assert starttls.login(user, dovecot.password(user))[0] == "OK"
    starttls.logout()

    for client in (poplib.POP3(dovecot.host, dovecot.pop3_port),
                   poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=trusted)):
        client.user(user)
        assert client.pass_(dovecot.password(user)).startswith(b"+OK")
        client.quit()


def test_fixture_server_cert_is_signed_by_ca_file_only(dovecot):
    stranger = ssl.create_default_context(cafile=dovecot.stranger_ca_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=stranger)
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=stranger)


def test_fixture_append_creates_folders_and_keeps_bytes(dovecot):
    user = dovecot.new_user()
    raw = b"Subject: one\r\n\r\nfirst\r\n"
    uid = dovecot.append(user, "Support/Billing", raw)
    dovecot.append(user, "Support/Billing", b"Subject: two\r\n\r\nsecond\r\n", r"(\Seen)")
    stored = dovecot.messages(user, "Support/Billing")
    assert [s.uid for s in stored][0] == uid
    assert stored[0].raw == raw and "\\Seen" not in stored[0].flags
    assert "\\Seen" in stored[1].flags
    assert dovecot.count(user, "Support/Billing") == 2 and dovecot.count(user) == 0


def test_fixture_bulk_seed_is_fast_and_counted(dovecot):
    user = dovecot.new_user()
    raws = [b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(2000)]
    assert dovecot.seed(user, raws) == 2000
    dovecot.append(user, "INBOX", b"Subject: appended\r\n\r\nx\r\n")
    dovecot.seed(user, raws[:3], folder="Archive/2024")
    assert dovecot.count(user) == 2001
    assert sorted(dovecot.raw_messages(user)[:-1]) == sorted(raws)
    assert dovecot.raw_messages(user, "Archive/2024") == raws[:3]
    with pytest.raises(DovecotError):
        dovecot.seed(user, raws[:1], folder="Entrées")


def test_fixture_master_user_logs_in_as_another_user(dovecot):
    owner = dovecot.new_user("owner")
    dovecot.append(owner, "INBOX", b"Subject: private\r\n\r\nx\r\n")
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(f"{owner}*{dovecot.master_user}", dovecot.master_password)
    assert client.select("INBOX", readonly=True) == ("OK", [b"1"])
    client.logout()
    refused = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    with pytest.raises(imaplib.IMAP4.error):
        refused.login(f"{owner}*{dovecot.master_user}", "wrong")
    refused.shutdown()


def test_fixture_new_users_work_immediately_and_are_isolated(dovecot):
    users = [dovecot.new_user("iso") for _ in range(3)]
    assert len(set(users)) == 3
    dovecot.append(users[0], "INBOX", b"Subject: a\r\n\r\nx\r\n")
    assert [dovecot.count(u) for u in users] == [1, 0, 0]
    assert dovecot.credentials(users[1]).password == dovecot.password(users[1])


def test_fixture_connector_points_at_the_right_listener(dovecot):
    assert dovecot.connector("a@x.test").port == dovecot.imaps_port
    assert dovecot.connector(tls="starttls").port == dovecot.imap_port
    assert dovecot.connector(protocol="pop3").port == dovecot.pop3s_port
    c = dovecot.connector(protocol="pop3", tls="none", keep_on_server=True)
    assert (c.port, c.keep_on_server, c.ca_file) == (dovecot.pop3_port, True, dovecot.ca_file)


def test_fixture_stop_leaves_no_dovecot_process_and_no_files():
    instance = DovecotInstance().start()
    user = instance.new_user()
    instance.append(user, "INBOX", b"Subject: x\r\n\r\ny\r\n")
    idle = imaplib.IMAP4(instance.host, instance.imap_port)    # a session left open
    idle.login(user, instance.password(user))
    pids = instance.pids()
    assert len(pids) > 2 and instance.running
    root = instance.root

    instance.stop()

    assert not instance.running
    assert instance.leftover_pids() == set()
    assert all(not Path(f"/proc/{pid}").exists() or helper._alive(pid) is False for pid in pids)
    assert not root.exists()
    for port in instance.ports():
        with pytest.raises(OSError):
            socket.create_connection((instance.host, port), timeout=1).close()
    instance.stop()                                     # twice is harmless
    idle.shutdown()


def test_fixture_fails_clearly_without_dovecot(monkeypatch):
    monkeypatch.setattr(helper, "dovecot_binary", lambda: None)
    with pytest.raises(DovecotError, match="scripts/test"):
        DovecotInstance()
