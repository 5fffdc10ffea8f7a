#!/usr/bin/env python3
"""Drain a real Dovecot mailbox through the whole gateway, beside stdlib imaplib's fetch-all.

    .venv/bin/python bench/pollers.py [--messages 5000] [--rounds 3] [--protocols imap,pop3]
                                      [--tls none|implicit] [--size 2000] [--journal-only]
                                      [--idle on|off]

Goal (issue "Done when"): draining a mailbox of 5,000 messages over IMAP and over
POP3 through the full pipeline runs at >= 50% of the rate of a plain stdlib
``imaplib`` fetch-all of the same mailbox, measured in the same run.

One throwaway Dovecot (tests/dovecot.py: Maildir, passwd-file users, a test CA)
serves every round. Each round, on fresh mailboxes seeded with the same N
distinct messages (every one its own Message-ID, so each makes a work item):

  1. ceiling: stdlib imaplib logs in, SELECTs INBOX and runs one
     ``UID FETCH 1:* (BODY.PEEK[])``; the time from connect to the last byte.
     It stores nothing and deletes nothing: the protocol's ceiling.
  2. mailgate over IMAP, then over POP3: a gateway (in this process, on uvloop
     when installed, as ``mailgate serve`` runs) on a fresh SQLite database gets
     one polled connector for the mailbox. The clock starts when the connector is
     added (its poller starts at once) and stops when every message is journaled,
     removed from the mailbox AND processed by the pipeline (work item created).
     "drained" is when the poller's round ended (all journaled and removed). The
     preparing workers are started before the clock, as a running gateway has them
     (step 5 does the same); a fresh gateway starts them with its first copy.
  3. with --journal-only, the same with the pipeline paused: the poller's own rate
     (fetch, fsynced journal commit, remove), which bounds the first from above.
  4. two stdlib floors, no mailgate code at all, which show what the target asks
     of any poller that deletes only after a durable commit:
     - "remove only": imaplib ``UID STORE +FLAGS.SILENT (\Deleted)`` + ``UID EXPUNGE``
       of every message, REMOVE_BATCH at a time (the server's cost of removal);
     - "durable drain": imaplib ``UID FETCH`` in batches of 100, each batch's raw
       bytes and keys inserted into SQLite (WAL, synchronous=FULL) in one commit,
       removal as above after the commits: fetch, journal, delete, nothing else.
  5. the pipeline alone on the same N messages, already journaled (the round of
     bench/pipeline_create.py): the rate the full-pipeline drains are bounded by.

Issue 14 asks two things of these, both paired within each round: a journal-only
drain of at least 0.80x the durable-drain floor, and a full-pipeline drain that runs
at the pipeline's own create rate (step 5), not slower because of the poller.

``--idle off`` drains with the connector's IDLE watcher off (it is on by default).

Checks every round: the mailbox is empty, N emails are stored, N work items made.
"""
from __future__ import annotations

import argparse
import asyncio
import imaplib
import logging
import re
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.app import Gateway  # noqa: E402
from gateway.config import (DirectorySection, HttpSection, LmtpSection, Settings,  # noqa: E402
                            SmtpSection, StorageSection)
from gateway.polling.poller import BATCH, REMOVE_BATCH  # noqa: E402
from storage.base import JournaledCopy  # noqa: E402
from tests.dovecot import DovecotInstance  # noqa: E402

GOAL = 0.50            # issue 6: a full-pipeline drain against imaplib's fetch-all
FLOOR_GOAL = 0.80      # issue 14: a journal-only drain against the durable-drain floor


def log(*a) -> None:
    print("pollers.py:", *a, file=sys.stderr, flush=True)


def messages(count: int, size: int, to: str) -> list[bytes]:
    """``count`` distinct plain-text messages of about ``size`` bytes, CRLF."""
    filler = ("The printer on the third floor prints every page twice. " * 64)
    body = (filler * (size // len(filler) + 1))[:max(0, size - 400)]
    lines = [body[i:i + 76] for i in range(0, len(body), 76)]
    out = []
    for n in range(count):
        head = (f"From: Customer {n} <customer{n}@example.org>\r\n"
                f"To: {to}\r\n"
                f"Subject: Question number {n}\r\n"
                f"Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n"
                f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\n"
                f"MIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\n\r\n")
        out.append((head + "\r\n".join(lines) + "\r\n").encode())
    return out


def imaplib_client(dovecot: DovecotInstance, user: str, tls: str) -> imaplib.IMAP4:
    if tls == "implicit":
        context = ssl.create_default_context(cafile=dovecot.ca_file)
        client = imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, ssl_context=context)
    else:
        client = imaplib.IMAP4(dovecot.host, dovecot.imap_port)
    client.login(user, dovecot.password(user))
    typ, data = client.select("INBOX")
    assert typ == "OK", data
    return client


def imaplib_remove(client: imaplib.IMAP4, uids: list[bytes]) -> None:
    for start in range(0, len(uids), REMOVE_BATCH):
        uidset = b",".join(uids[start:start + REMOVE_BATCH]).decode()
        typ, data = client.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted)")
        assert typ == "OK", data
        typ, data = client.uid("EXPUNGE", uidset)
        assert typ == "OK", data


def imaplib_remove_all(dovecot: DovecotInstance, user: str, tls: str) -> float:
    """Seconds for stdlib imaplib to remove every message of INBOX (floor 1)."""
    started = time.perf_counter()
    client = imaplib_client(dovecot, user, tls)
    uids = client.uid("SEARCH", "ALL")[1][0].split()
    imaplib_remove(client, uids)
    elapsed = time.perf_counter() - started
    client.logout()
    if int(dovecot.count(user)):
        raise SystemExit("imaplib left messages behind")
    return elapsed


def imaplib_durable_drain(dovecot: DovecotInstance, user: str, tls: str, work: Path) -> float:
    """Seconds for stdlib imaplib + sqlite3 to fetch, durably journal and remove every
    message of INBOX, with no pipeline (floor 2)."""
    db = sqlite3.connect(work / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE journal (id INTEGER PRIMARY KEY, key TEXT UNIQUE, raw BLOB)")
    started = time.perf_counter()
    client = imaplib_client(dovecot, user, tls)
    uids = client.uid("SEARCH", "ALL")[1][0].split()
    committed: list[bytes] = []
    for start in range(0, len(uids), BATCH):
        chunk = uids[start:start + BATCH]
        typ, data = client.uid("FETCH", b",".join(chunk).decode(), "(BODY.PEEK[])")
        assert typ == "OK", data
        rows = [(re.search(rb"UID (\d+)", item[0]).group(1).decode(), item[1])
                for item in data if isinstance(item, tuple)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO journal (key, raw) VALUES (?, ?)", rows)
        db.execute("COMMIT")
        committed.extend(chunk)
        if len(committed) >= REMOVE_BATCH:
            imaplib_remove(client, committed)
            committed = []
    imaplib_remove(client, committed)
    elapsed = time.perf_counter() - started
    client.logout()
    (journaled,) = db.execute("SELECT COUNT(*) FROM journal").fetchone()
    db.close()
    if journaled != len(uids) or int(dovecot.count(user)):
        raise SystemExit(f"floor drain journaled {journaled} of {len(uids)}")
    return elapsed


def imaplib_fetch_all(dovecot: DovecotInstance, user: str, tls: str) -> float:
    """Seconds for a plain stdlib fetch-all of INBOX (the ceiling)."""
    started = time.perf_counter()
    client = imaplib_client(dovecot, user, tls)
    typ, data = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK", data
    elapsed = time.perf_counter() - started
    fetched = sum(1 for item in data if isinstance(item, tuple))
    client.logout()
    if fetched != int(dovecot.count(user)):
        raise SystemExit(f"imaplib fetched {fetched} messages, mailbox has more")
    return elapsed


async def mailgate_drain(dovecot: DovecotInstance, user: str, protocol: str, tls: str,
                         count: int, work: Path, pipeline: bool = True,
                         idle: bool = True) -> dict:
    settings = Settings(
        storage=StorageSection(url=f"sqlite:///{work / 'mailgate.db'}"),
        lmtp=LmtpSection(listen="127.0.0.1:0", enabled=False),
        smtp=SmtpSection(listen="127.0.0.1:0", enabled=False),
        http=HttpSection(listen="127.0.0.1:0", enabled=False),
        directory=DirectorySection(connectors=()), source=str(work / "gateway.toml"))
    gw = Gateway(settings)
    await gw.start()
    if not pipeline:
        await gw.pipeline.stop()        # the poller's own rate: fetch, journal, remove
    else:
        # A running gateway's preparing workers are up (they start with its first copy
        # and stay): they start before the clock, as in bench/pipeline_create.py, so
        # both measure the pipeline at work rather than two interpreters starting.
        warm = JournaledCopy(email_id=0, connector="bench", source=protocol, mail_from=None,
                             rcpt_to=(), folder_path="INBOX",
                             raw=b"Subject: warm-up\r\n\r\nworkers\r\n")
        await gw.pipeline.preparer.prepare([warm] * max(1, gw.pipeline.preparer.processes),
                                           gw.pipeline.prepare_settings())
    try:
        connector = dovecot.connector(user, protocol=protocol, tls=tls, name="bench",
                                      poll_interval=3600, idle=idle)
        started = time.perf_counter()
        await gw.add_connector(connector, username=user, password=dovecot.password(user))
        poller = gw.pollers.get("bench")
        while poller.status.rounds == 0 or poller.status.state == "starting":
            await asyncio.sleep(0.005)
        if poller.status.state != "ok":
            raise SystemExit(f"{protocol} round failed: {poller.status.last_error}")
        drained = time.perf_counter() - started
        if pipeline:
            await gw.pipeline.drain(600)
        processed = time.perf_counter() - started
        emails = await gw.store.count_emails()          # all incoming: no acks in this run
        items = len(await gw.workitems.workitems(limit=1 << 30))
    finally:
        await gw.stop()
    left = await asyncio.to_thread(dovecot.count, user)
    if not pipeline:
        items = count                   # nothing processed on purpose
    if (emails, items, left) != (count, count, 0):
        raise SystemExit(f"{protocol}: {emails} emails, {items} work items, {left} left "
                         f"in the mailbox (wanted {count}, {count}, 0)")
    return {"drained": drained, "processed": processed}


def pipeline_alone(count: int, size: int, work: Path) -> float:
    """Seconds the pipeline alone takes to create N work items (bench/pipeline_create.py)."""
    sys.path.insert(0, str(REPO / "bench"))
    import pipeline_create
    seconds = run_loop(pipeline_create.one_round(count, size, work))
    pipeline_create.check(work / "mailgate.db", count)
    return seconds


FLOORS = {
    "stdlib floor: remove only (imaplib STORE + EXPUNGE)":
        lambda dovecot, user, tls, work: imaplib_remove_all(dovecot, user, tls),
    "stdlib floor: durable drain (imaplib fetch, sqlite3 fsynced commit, remove)":
        imaplib_durable_drain,
}


def label(protocol: str, pipeline: bool) -> str:
    return f"{protocol} poll + " + ("full pipeline" if pipeline else
                                    "journal only (pipeline paused)")


def run_loop(coroutine):
    try:
        import uvloop
        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--protocols", default="imap,pop3")
    ap.add_argument("--tls", choices=("none", "implicit"), default="none")
    ap.add_argument("--size", type=int, default=2000, help="bytes per message (about)")
    ap.add_argument("--journal-only", action="store_true",
                    help="also drain each protocol with the pipeline paused (the poller's "
                         "own rate: fetch, journal, remove)")
    ap.add_argument("--idle", choices=("on", "off"), default="on",
                    help="the IMAP connector's IDLE watcher (on, as by default)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    protocols = [p for p in a.protocols.split(",") if p]
    paths = [(p, True) for p in protocols] + ([(p, False) for p in protocols]
                                              if a.journal_only else [])
    results: dict[str, list[dict]] = {label(*path): [] for path in paths}
    ceilings: list[float] = []
    floors: dict[str, list[float]] = {name: [] for name in FLOORS}
    durable = list(FLOORS)[1]
    alone: list[float] = []         # the pipeline's own create rate, msgs/s
    with DovecotInstance() as dovecot:
        for round_no in range(1, a.rounds + 1):
            user = dovecot.new_user("ceiling")
            dovecot.seed(user, messages(a.messages, a.size, user))
            ceiling = a.messages / imaplib_fetch_all(dovecot, user, a.tls)
            ceilings.append(ceiling)
            line = [f"round {round_no}: imaplib fetch-all {ceiling:,.0f} msgs/s"]
            for name, floor in FLOORS.items():
                user = dovecot.new_user("floor")
                dovecot.seed(user, messages(a.messages, a.size, user))
                with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as work:
                    rate = a.messages / floor(dovecot, user, a.tls, Path(work))
                floors[name].append(rate / ceiling)
                line.append(f"{name} {rate:,.0f} msgs/s ({rate / ceiling:.2f}x)")
            for protocol, pipeline in paths:
                user = dovecot.new_user(protocol)
                dovecot.seed(user, messages(a.messages, a.size, user))
                with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as work:
                    r = run_loop(mailgate_drain(dovecot, user, protocol, a.tls, a.messages,
                                                Path(work), pipeline, a.idle == "on"))
                r["rate"] = a.messages / r["processed"]
                r["drain_rate"] = a.messages / r["drained"]
                r["ratio"] = r["rate"] / ceiling
                r["floor"] = r["rate"] / (floors[durable][-1] * ceiling)
                results[label(protocol, pipeline)].append(r)
                line.append(f"{label(protocol, pipeline)} {r['rate']:,.0f} msgs/s "
                            f"({r['ratio']:.2f}x), drained at {r['drain_rate']:,.0f}")
            if any(pipeline for _, pipeline in paths):
                with tempfile.TemporaryDirectory(prefix="mailgate-bench-") as work:
                    alone.append(a.messages / pipeline_alone(a.messages, a.size, Path(work)))
                for protocol, pipeline in paths:
                    if pipeline:
                        r = results[label(protocol, pipeline)][-1]
                        r["alone"] = r["rate"] / alone[-1]
                line.append(f"pipeline alone (create path) {alone[-1]:,.0f} msgs/s")
            log("; ".join(line))
    command = "bench/pollers.py " + " ".join(sys.argv[1:])
    print(f"\n`.venv/bin/python {command.strip()}` — {a.messages} messages of ~{a.size} B, "
          f"TLS {a.tls}, IDLE {a.idle}, {a.rounds} rounds (median; min..max)\n")

    def spread(values: list[float], fmt: str = ",.0f") -> str:
        return (f"{statistics.median(values):{fmt}} "
                f"({min(values):{fmt}}..{max(values):{fmt}})")

    print("| path | msgs/s (processed, or journaled) | x imaplib fetch-all |"
          " x durable-drain floor | x pipeline alone | mailbox drained msgs/s |")
    print("|---|---|---|---|---|---|")
    print(f"| stdlib imaplib fetch-all (ceiling) | {spread(ceilings)} | 1.00 | - | - | - |")
    for name, ratios in floors.items():
        rates = [r * c for r, c in zip(ratios, ceilings)]
        print(f"| {name} | {spread(rates)} | {spread(ratios, '.2f')} | "
              f"{'1.00' if name == durable else '-'} | - | - |")
    if alone:
        print(f"| pipeline alone, create path (bench/pipeline_create.py) | {spread(alone)} "
              f"| - | - | 1.00 | - |")
    verdict = True
    for name, rows in results.items():
        full = name.endswith("full pipeline")
        if full:
            verdict &= statistics.median(r["ratio"] for r in rows) >= GOAL
        print(f"| mailgate {name} | {spread([r['rate'] for r in rows])} "
              f"| {spread([r['ratio'] for r in rows], '.2f')} "
              f"| {spread([r['floor'] for r in rows], '.2f')} "
              f"| {spread([r['alone'] for r in rows], '.2f') if full else '-'} "
              f"| {statistics.median(r['drain_rate'] for r in rows):,.0f} |")
    print()
    for name, rows in results.items():
        if name.endswith("full pipeline"):
            print(f"{name}: {statistics.median(r['alone'] for r in rows):.2f}x the pipeline "
                  f"alone (paired per round; 1.00 = bounded by the pipeline)")
        else:           # the floor is IMAP's: the goal is IMAP's
            ratio = statistics.median(r["floor"] for r in rows)
            goal = (f"; goal >= {FLOOR_GOAL:.2f}x: {'met' if ratio >= FLOOR_GOAL else 'NOT met'}"
                    if name.startswith("imap") else "")
            print(f"{name}: {ratio:.2f}x the durable-drain floor (paired per round){goal}")
    print(f"\nissue 6, full pipeline >= {GOAL:.2f}x imaplib fetch-all: "
          f"{'met' if verdict else 'NOT met'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
