"""Process lifecycle: embedded default, SIGTERM drain, kill -9 (SPEC §5.1, R-I1)."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.integration.serve import ServeProcess
from tests.wire import WireClient, message


@pytest.fixture
def serve(tmp_path):
    started: list[ServeProcess] = []

    def make(**kwargs) -> ServeProcess:
        process = ServeProcess(tmp_path, **kwargs)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def test_embedded_default_runs_without_a_config_file(serve, tmp_path):
    gw = serve()
    probe = gw  # the embedded default's ports, moved off 8024/9024 by environment only
    gw.env.update(MAILGATE_LMTP_LISTEN=f"127.0.0.1:{gw.lmtp_port}",
                  MAILGATE_HTTP_LISTEN=f"127.0.0.1:{gw.http_port}")
    gw.start()
    run = subprocess.run(["swaks", "--protocol", "LMTP", "--server",
                          f"127.0.0.1:{probe.lmtp_port}", "--to", "support@example.test",
                          "--from", "carol@customer.test"],
                         capture_output=True, text=True, timeout=30)
    assert re.search(r"<-\s+250 2\.0\.0 <support@example.test> Ok", run.stdout), run.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:   # the pipeline decides in the background
        with sqlite3.connect(tmp_path / "mailgate.db") as db:
            if db.execute("SELECT COUNT(*) FROM emails WHERE state = 'journaled'").fetchone() \
                    == (0,):
                break
        time.sleep(0.05)
    token = tmp_path / "mailgate.admin-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert token.read_text().strip() not in gw.log()  # a secret never reaches the log
    gw.signal(signal.SIGTERM)
    assert gw.wait() == 0
    log = gw.log()
    assert str(tmp_path / "mailgate.db") in log
    assert f"LMTP listening on 127.0.0.1:{probe.lmtp_port}" in log
    assert "swaks --protocol LMTP" in log  # the startup log says how to try it
    with sqlite3.connect(tmp_path / "mailgate.db") as db:
        rows = db.execute("SELECT direction, connector, outcome, automated FROM emails"
                          " ORDER BY id").fetchall()
    # the whole flow: a Ticket from the demo's fallback route, and its acknowledgement queued
    assert rows == [("incoming", "support", "created", 0), ("outgoing", "support", None, 1)]


async def test_sigterm_finishes_data_in_flight_then_says_421_to_idle_sessions(serve):
    gw = serve().write_config().start()
    idle = await WireClient.connect(gw.lmtp_port)
    await idle.command("LHLO idle")
    busy = await WireClient.connect(gw.lmtp_port)
    await busy.command("LHLO busy")
    await busy.command("MAIL FROM:<a@customer.test>")
    await busy.command("RCPT TO:<support@example.test>")
    assert (await busy.command("DATA")).code == 354
    await busy.send(b"Subject: in flight\r\nMessage-ID: <drain@x.test>\r\n\r\nfirst half\r\n")
    gw.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert gw.proc.poll() is None, "must wait for the transaction inside DATA"
    await busy.send(b"second half\r\n.\r\n")
    reply = await busy.reply()
    assert reply.code == 250, reply
    assert (await idle.reply()).text.startswith("421 4.3.2")
    assert await asyncio.to_thread(gw.wait) == 0
    with pytest.raises(OSError):
        await WireClient.connect(gw.lmtp_port)
    with sqlite3.connect(gw.workdir / "mailgate.db") as db:
        assert db.execute("SELECT message_id FROM emails").fetchall() == [("<drain@x.test>",)]


def test_kill_9_loses_no_acknowledged_message_and_stores_none_twice(serve, capsys):
    """Four concurrent senders for a few seconds, then kill -9 mid-load, restart:
    every message that got 250 is in the store exactly once."""
    gw = serve().write_config().start()
    acked: list[str] = []
    attempted = Counter()
    stop = threading.Event()

    def sender(n: int) -> None:
        while not stop.is_set():
            try:
                with smtplib.LMTP("127.0.0.1", gw.lmtp_port) as client:
                    while not stop.is_set():
                        mid = f"<{uuid.uuid4().hex}@crash.test>"
                        attempted[n] += 1
                        raw = message(subject=f"sender {n}", message_id=mid)
                        client.sendmail("load@crash.test", ["support@example.test"], raw)
                        acked.append(mid)
            except (smtplib.SMTPException, OSError):
                time.sleep(0.01)  # the server is gone; try again until told to stop

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(10)
    acked_at_kill = list(acked)
    gw.start()  # same database, same ports
    with sqlite3.connect(gw.workdir / "mailgate.db") as db:
        stored = Counter(mid for (mid,) in db.execute("SELECT message_id FROM emails"))
    missing = [m for m in acked_at_kill if stored[m] != 1]
    with capsys.disabled():  # the counts belong in the CI log
        print(f"\nkill -9 test: attempted {sum(attempted.values())}, acknowledged "
              f"{len(acked_at_kill)}, stored {sum(stored.values())}, "
              f"acknowledged but not stored exactly once: {len(missing)}")
    assert len(acked_at_kill) > 100, "the load did not run"
    assert missing == []
    assert max(stored.values()) == 1
    # and the restarted gateway takes mail again
    with smtplib.LMTP("127.0.0.1", gw.lmtp_port) as client:
        client.sendmail("a@x.test", ["support@example.test"], message(message_id="<after@x>"))


def test_sighup_reloads_the_directory_an_import_changed(serve, tmp_path):
    """`mailgate directory import` beside a running gateway, then SIGHUP (systemctl
    reload): the new connector's address is accepted at RCPT without a restart."""
    gw = serve().write_config().start()
    export = subprocess.run([sys.executable, "-m", "gateway", "directory", "export", "-",
                             "--config", gw.config], capture_output=True, text=True, timeout=60)
    assert export.returncode == 0, export.stderr
    wanted = tmp_path / "directory.toml"
    wanted.write_text(export.stdout + '\n[[connectors]]\nname = "billing"\n'
                      'primary_address = "billing@example.test"\n'
                      '\n[[routes]]\nconnector = "billing"\nname = "billing fallback"\n'
                      'email_address = "billing@example.test"\norder = 1\nfallback = true\n')
    imported = subprocess.run([sys.executable, "-m", "gateway", "directory", "import",
                               str(wanted), "--config", gw.config],
                              capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert "SIGHUP" in imported.stdout

    def rcpt() -> int:
        with smtplib.LMTP("127.0.0.1", gw.lmtp_port) as client:
            client.ehlo("reload")
            client.mail("carol@customer.test")
            return client.rcpt("billing@example.test")[0]

    assert rcpt() == 550                    # the running gateway has not looked yet
    gw.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while rcpt() != 250 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rcpt() == 250
    assert "SIGHUP: directory reloaded" in gw.log()
