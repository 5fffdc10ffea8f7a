#!/usr/bin/env python3
"""The pipeline alone, on journaled mail that creates a work item per message.

    .venv/bin/python bench/pipeline_create.py [--messages 5000] [--size 2000] [--rounds 3]

Why: bench/pollers.py drains a real mailbox through the whole gateway, and on its
create-heavy load the pipeline, not the mailbox, sets the pace. This isolates that
part, without Dovecot or a front door.

Every round, on a fresh SQLite database (WAL, production settings) and in this process
(on uvloop when installed, as ``mailgate serve`` runs):

  1. a gateway starts with no listener; its pipeline is stopped at once;
  2. one connector (``desk@example.test``, with its fallback route) is added, and N
     distinct messages (bench/pollers.py's: each its own Message-ID and sender) are
     journaled in commits of 100, as a poller journals them;
  3. the clock starts when the pipeline starts and stops when the journal is empty
     and the pipeline idle (``Runner.drain``): msgs/s = N / that time.

Each round checks that every message ended ``created`` with its own work item.
"""
from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from gateway.app import Gateway  # noqa: E402
from gateway.config import (DirectorySection, HttpSection, LmtpSection, Settings,  # noqa: E402
                            SmtpSection, StorageSection)
from gateway.intake import scan_message_id  # noqa: E402
from gateway.model import Connector, Copy  # noqa: E402
from pollers import messages  # noqa: E402  (the same mail the pollers bench drains)

ADDRESS = "desk@example.test"
JOURNAL_COMMIT = 100


async def one_round(count: int, size: int, work: Path) -> float:
    """Seconds the pipeline took to decide ``count`` journaled copies."""
    settings = Settings(storage=StorageSection(url=f"sqlite:///{work / 'mailgate.db'}"),
                        lmtp=LmtpSection(enabled=False), smtp=SmtpSection(enabled=False),
                        http=HttpSection(enabled=False),
                        directory=DirectorySection(connectors=()), source=str(work))
    gw = Gateway(settings)
    await gw.start()
    try:
        await gw.pipeline.stop()
        await gw.add_connector(Connector(name="bench", service="lmtp", primary_address=ADDRESS))
        raws = messages(count, size, ADDRESS)
        for start in range(0, count, JOURNAL_COMMIT):
            await gw.store.journal([
                Copy(raw=raw, connector="bench", source="imap", folder_path="INBOX",
                     message_id=scan_message_id(raw))
                for raw in raws[start:start + JOURNAL_COMMIT]])
        # the worker processes start with their first copy: before the clock
        await gw.pipeline.preparer.start()
        await gw.pipeline.preparer.prepare(await gw.store.journaled(1),
                                           gw.pipeline.prepare_settings())
        started = time.perf_counter()
        await gw.pipeline.start()
        await gw.pipeline.drain(600)
        return time.perf_counter() - started
    finally:
        await gw.stop()


def check(db: Path, count: int) -> None:
    with sqlite3.connect(db) as conn:
        outcomes = dict(conn.execute("SELECT outcome, COUNT(*) FROM emails GROUP BY outcome"))
        (items,) = conn.execute("SELECT COUNT(*) FROM work_items").fetchone()
    if outcomes != {"created": count} or items != count:
        raise SystemExit(f"wanted {count} created emails and work items, got {outcomes}, "
                         f"{items} work items")


def run_loop(coroutine):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--size", type=int, default=2000, help="bytes per message (about)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rates = []
    for round_no in range(1, a.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as work:
            seconds = run_loop(one_round(a.messages, a.size, Path(work)))
            check(Path(work) / "mailgate.db", a.messages)
        rates.append(a.messages / seconds)
        print(f"round {round_no}: {a.messages} messages in {seconds:.2f} s, "
              f"{rates[-1]:,.0f} msgs/s", file=sys.stderr, flush=True)
    print(f"pipeline, create path: {statistics.median(rates):,.0f} msgs/s "
          f"(median of {a.rounds}; {min(rates):,.0f}..{max(rates):,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
