"""``mailgate explain MESSAGE.eml --connector NAME``: the decision trace, nothing stored (R-B6)."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

from tests.integration.serve import ServeProcess


def test_explain_prints_the_trace_and_changes_nothing(tmp_path):
    gw = ServeProcess(tmp_path).write_config()
    gw.start()   # create the database and the directory, then stop
    gw.stop()
    eml = tmp_path / "message.eml"
    eml.write_text("From: carol@customer.test\nTo: support@example.test\n"
                   "Subject: Printer\nMessage-ID: <x1@customer.test>\n\nIt is on fire.\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "explain", str(eml), "--connector",
                          "support", "--config", gw.config], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines[:8]] == [
        "sent-id", "dedup", "auto-generated", "plus-address", "match", "route", "sender-budget",
        "apply"]
    assert "outcome: created -> 1-T (created)" in run.stdout
    with sqlite3.connect(tmp_path / "mailgate.db") as db:
        assert db.execute("SELECT COUNT(*) FROM emails").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM work_items").fetchone()[0] == 0
    unknown = subprocess.run([sys.executable, "-m", "gateway", "explain", str(eml),
                              "--connector", "nope", "--config", gw.config],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "known: support" in unknown.stderr
