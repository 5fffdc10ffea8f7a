#!/usr/bin/env python3
"""R-H4 under hostile mail: does one message hold up the others?

    .venv/bin/python bench/hostile.py [--json out.json]          # the crafted Cc burst
    .venv/bin/python bench/hostile.py --big [--json out.json]    # one 33 MB text/plain
    .venv/bin/python bench/hostile.py --both [--json out.json]

Both modes start `mailgate serve` on a fresh database in a work dir (a new temp dir, or
--work), with one LMTP connector (its fallback route is made at bootstrap, so every copy
runs every stage) and HTTP on for /healthz; outbound delivery stays off (the default).

Throughout a run, an ordinary message (~1 KB, a new sender each time) is due every
--every-ms (100) on a small pool of other LMTP sessions (open loop: a late send is
counted as lag); its end-of-data latency is from writing the final "." to the 250. A
thread polls GET /healthz every 20 ms on a new connection: the longest answer and the
longest gap between answers are the event loop's longest stall as a client sees it. A
thread sums VmRSS over the gateway's process tree (it and its preparing workers) every
20 ms.

crafted (the issue's case): after a few seconds of ordinary mail, 32 messages whose `Cc:`
is `a@b@c@d,` x 26,666 folded to 78-character lines (~241 KB; each distinct: its first
item, sender, Subject and Message-ID) are delivered at once on 32 sessions of their own.
Ordinary mail goes on until every crafted copy is decided, and 2 s more. Then the database
is read (read-only): every crafted copy must be decided (state 'done', an outcome) with its
raw bytes stored exactly as sent (sha256).

big: one 33 MB text/plain message (~5.5 M words, CRLF lines of <= 78 characters) is
delivered on its own session while ordinary mail goes on; the peak of the process tree's
RSS over the baseline (taken once startup and a warm-up are done and the CPU is quiet) is
what it cost in memory; the run ends 2 s after its copy is decided.

Both modes end by reading the copies back through the API, as a client would: each by
id, by Message-ID, its work item's emails, and the unprocessed list, three times over;
every answer must be a 200 and the slowest is reported (the issue's bar: < 10 ms).

The table goes to stdout; raw figures with --json FILE.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import os
import random
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from procfs import process_tree  # noqa: E402
from tests.headers import folded  # noqa: E402
MAILGATE = REPO / ".venv" / "bin" / "mailgate"
ADDRESS = "rcpt@bench.invalid"
ADMIN_TOKEN = "bench-hostile-not-a-secret"
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
# written by bench/hostile.py
[lmtp]
listen = "127.0.0.1:@LMTP@"

[storage]
url = "sqlite:///@DB@"

[http]
listen = "127.0.0.1:@HTTP@"
admin_token = "@TOKEN@"

[[directory.connectors]]
name = "bench"
service = "lmtp"
primary_address = "@ADDRESS@"
"""


def log(*a) -> None:
    print("hostile.py:", *a, file=sys.stderr, flush=True)


# -- the mail -----------------------------------------------------------------------------

def head(sender: str, subject: str, message_id: str, extra: bytes = b"") -> bytes:
    return (f"From: {sender}\r\nTo: Support <{ADDRESS}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n"
            "MIME-Version: 1.0\r\n").encode() + extra


WORDS = ["the", "printer", "on", "floor", "three", "is", "broken", "again", "and", "nobody",
         "knows", "why", "please", "send", "help", "soon", "Drucker", "kaputt"]


def text(rng: random.Random, size: int) -> bytes:
    lines, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(11)).encode() + b"\r\n"
        lines.append(line)
        n += len(line)
    return b"".join(lines)


def ordinary(i: int, tag: str) -> tuple[str, bytes]:
    mid = f"ordinary-{i}-{tag}@bench.test"
    body = text(random.Random(i), 900)
    return mid, (head(f"Customer {i} <customer{i}@c{i % 97}.example>",
                      f"Printer on floor {i} broken", mid,
                      b"Content-Type: text/plain; charset=utf-8\r\n")
                 + b"\r\n" + body)


def crafted(i: int, tag: str) -> tuple[str, bytes]:
    mid = f"crafted-{i}-{tag}@bench.test"
    items = ["a@b@c@d"] * 26_666
    items[0] = f"a{i}@b@c@d"
    return mid, (head(f"attacker{i}@evil.example", f"crafted {i}", mid,
                      folded("Cc", items) + b"\r\nContent-Type: text/plain\r\n")
                 + b"\r\nhello\r\n")


def big(tag: str, size: int) -> tuple[str, bytes]:
    mid = f"big-{tag}@bench.test"
    return mid, (head("Big Sender <big@customer.example>", "one large text", mid,
                      b"Content-Type: text/plain; charset=utf-8\r\n"
                      b"Content-Transfer-Encoding: 8bit\r\n")
                 + b"\r\n" + text(random.Random(33), size))


def stuffed(raw: bytes) -> bytes:
    """DATA's transparency (RFC 5321 4.5.2), and the final line end."""
    data = raw.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data if data.endswith(b"\r\n") else data + b"\r\n"


# -- an LMTP client -------------------------------------------------------------------------

class Session:
    def __init__(self, port: int):
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                                 limit=1 << 20)
        await self.reply()
        self.writer.write(b"LHLO bench.test\r\n")
        code, _ = await self.reply()
        assert code == 250, code

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("the server closed the session")
            lines.append(line.decode(errors="replace").rstrip())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def send(self, sender: str, raw: bytes) -> dict:
        """One transaction; the end-of-data latency and the reply."""
        self.writer.write(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{ADDRESS}>\r\nDATA\r\n".encode())
        for expected in (250, 250, 354):
            code, text_ = await self.reply()
            if code != expected:
                await self.rset()
                return {"ok": False, "reply": text_, "eod_s": None}
        self.writer.write(stuffed(raw))
        await self.writer.drain()
        started = time.perf_counter()
        self.writer.write(b".\r\n")
        code, text_ = await self.reply()
        return {"ok": code == 250, "reply": text_, "eod_s": time.perf_counter() - started,
                "at": started}

    async def rset(self) -> None:
        self.writer.write(b"RSET\r\n")
        await self.reply()

    async def close(self) -> None:
        try:
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.reply(), 5)
            self.writer.close()
        except (OSError, TimeoutError):
            pass


# -- the server and what watches it -------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mailgate serve`` in its own process group."""

    def __init__(self, work: Path):
        self.work = work
        self.db = work / "mailgate.db"
        self.lmtp, self.http = free_port(), free_port()
        cfg = work / "hostile.toml"
        cfg.write_text(CONFIG.replace("@LMTP@", str(self.lmtp)).replace("@HTTP@", str(self.http))
                       .replace("@DB@", str(self.db)).replace("@ADDRESS@", ADDRESS)
                       .replace("@TOKEN@", ADMIN_TOKEN))
        check = subprocess.run([MAILGATE, "check", "--config", cfg], capture_output=True,
                               text=True, check=False)
        if check.returncode != 0:
            raise SystemExit(f"config {cfg} is not valid:\n{check.stdout}{check.stderr}")
        self.command = f"{MAILGATE} serve --config {cfg}"
        self.logpath = work / "mailgate.log"
        self.logf = open(self.logpath, "w")
        self.proc = subprocess.Popen([str(MAILGATE), "serve", "--config", str(cfg)],
                                     stdout=self.logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"mailgate exited with {self.proc.returncode}: "
                                 f"{self.logpath.read_text()[-2000:]}")
            if healthz(self.http, 1.0) is not None:
                try:
                    with socket.create_connection(("127.0.0.1", self.lmtp), 2) as s:
                        if s.recv(512).startswith(b"220"):
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise SystemExit(f"mailgate not ready after {timeout:.0f} s")

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def rss_kb(self, pids: list[int], each: dict[int, int] | None = None) -> int:
        """The sum of VmRSS over ``pids``; the largest seen of each goes to ``each``."""
        total = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    kb = int(f.read().split()[1]) * PAGE_KB
            except (OSError, ValueError, IndexError):
                continue
            total += kb
            if each is not None:
                each[pid] = max(each.get(pid, 0), kb)
        return total

    def cpu_ticks(self) -> int:
        total = 0
        for pid in self.tree():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    rest = f.read().rpartition(")")[2].split()
                total += int(rest[11]) + int(rest[12])
            except (OSError, ValueError, IndexError):
                pass
        return total

    def settle(self, cap: float = 30.0) -> None:
        """Until the tree's CPU stays under 5% for a second."""
        end = time.monotonic() + cap
        prev = self.cpu_ticks()
        while time.monotonic() < end:
            time.sleep(1.0)
            now = self.cpu_ticks()
            if now - prev <= 0.05 * CLK_TCK:
                return
            prev = now

    def stop(self) -> int | None:
        try:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            code = self.proc.wait(10)
        self.logf.close()
        return code


def healthz(port: int, timeout: float) -> float | None:
    """Seconds for GET /healthz on a new connection, or None."""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    return time.perf_counter() - started if data.startswith(b"HTTP/1.1 200") else None


class Watch(threading.Thread):
    """/healthz every ``period`` s and the tree's RSS, until stopped."""

    def __init__(self, server: Server, period: float = 0.02):
        super().__init__(daemon=True)
        self.server, self.period = server, period
        self.stop_event = threading.Event()
        self.latencies: list[float] = []
        self.failures = 0
        self.max_gap = 0.0
        self.peak_rss_kb = 0
        self.peak_each_kb: dict[int, int] = {}
        self.max_procs = 1
        self.rss_thread = threading.Thread(target=self._rss, daemon=True)

    def run(self) -> None:
        self.rss_thread.start()
        last = time.perf_counter()
        while not self.stop_event.is_set():
            took = healthz(self.server.http, 30.0)
            now = time.perf_counter()
            if took is None:
                self.failures += 1
            else:
                self.latencies.append(took)
                self.max_gap = max(self.max_gap, now - last)
                last = now
            self.stop_event.wait(self.period)

    def _rss(self) -> None:
        pids, pids_at = self.server.tree(), time.monotonic()
        while not self.stop_event.is_set():
            if time.monotonic() - pids_at > 0.25:
                pids, pids_at = self.server.tree(), time.monotonic()
                self.max_procs = max(self.max_procs, len(pids))
            self.peak_rss_kb = max(self.peak_rss_kb,
                                   self.server.rss_kb(pids, self.peak_each_kb))
            self.stop_event.wait(0.02)

    def finish(self) -> None:
        self.stop_event.set()
        self.join()
        self.rss_thread.join()


def api_get(port: int, path: str, timeout: float = 30.0) -> tuple[float, int]:
    """Seconds for one authorised GET of the API on a new connection, and its status."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.settimeout(timeout)
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                   f"Authorization: Bearer {ADMIN_TOKEN}\r\n\r\n").encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return time.perf_counter() - started, int(data[9:12] or 0)


def api_reads(port: int, copies: dict[str, dict], rounds: int = 3) -> dict:
    """Every way the API reads a copy back (by id, by Message-ID, the unprocessed list,
    its work item's emails), ``rounds`` times each: the slowest answer is what counts."""
    paths = ["/api/v1/unprocessed?limit=100"]
    for mid, c in copies.items():
        if not c.get("found"):
            continue
        paths += [f"/api/v1/emails/{c['id']}", f"/api/v1/emails?message_id={mid}"]
        paths += [f"/api/v1/workitems/{t['ref'] if isinstance(t, dict) else t}/emails"
                  for t in c.get("targets", [])[:1]]
    took, bad = [], 0
    for _ in range(rounds):
        for path in paths:
            seconds, status = api_get(port, path)
            took.append(seconds)
            bad += status != 200
    return {"requests": len(took), "not_200": bad, "p50_ms": ms(pct(took, 50)),
            "max_ms": ms(max(took, default=None))}


class Store:
    """The gateway's database, read-only."""

    def __init__(self, db: Path):
        self.con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None,
                                   timeout=10, check_same_thread=False)

    def states(self, mids: list[str]) -> dict[str, str]:
        rows = self.con.execute("SELECT message_id, state FROM emails").fetchall()
        wanted = {f"<{m}>": m for m in mids}
        return {wanted[r[0]]: r[1] for r in rows if r[0] in wanted}

    def copies(self, mids: list[str]) -> dict[str, dict]:
        out = {}
        for mid in mids:
            row = self.con.execute(
                "SELECT e.id, e.state, e.outcome, e.reason, e.trace, length(m.raw), m.raw,"
                " e.processed_at - e.received_at, e.targets"
                " FROM emails e JOIN messages m ON m.id = e.message WHERE e.message_id = ?",
                (f"<{mid}>",)).fetchone()
            if row is None:
                out[mid] = {"found": False}
                continue
            out[mid] = {"found": True, "id": row[0], "state": row[1], "outcome": row[2],
                        "reason": row[3], "trace": json.loads(row[4] or "[]"),
                        "size": row[5], "sha256": hashlib.sha256(row[6]).hexdigest(),
                        "decided_after_s": row[7], "targets": json.loads(row[8] or "[]")}
        return out

    def close(self) -> None:
        self.con.close()


# -- a run ------------------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)                      # nearest rank
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class Ordinary:
    """Ordinary mail due every ``every`` s on a pool of sessions (open loop)."""

    def __init__(self, port: int, every: float, tag: str, pool: int = 4):
        self.port, self.every, self.tag, self.pool = port, every, tag, pool
        self.results: list[dict] = []
        self.mids: list[str] = []
        self.stopping = False

    async def run(self) -> None:
        sessions = [Session(self.port) for _ in range(self.pool)]
        await asyncio.gather(*(s.open() for s in sessions))
        free: asyncio.Queue[Session] = asyncio.Queue()
        for s in sessions:
            free.put_nowait(s)
        start, i, tasks = time.perf_counter(), 0, []
        while not self.stopping:
            due = start + i * self.every
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            session = await free.get()
            lag = time.perf_counter() - due
            mid, raw = ordinary(i, self.tag)
            self.mids.append(mid)
            tasks.append(asyncio.create_task(self._one(session, free, raw, lag, i, mid)))
            i += 1
        await asyncio.gather(*tasks)
        await asyncio.gather(*(s.close() for s in sessions))

    async def _one(self, session: Session, free: asyncio.Queue, raw: bytes, lag: float,
                   i: int, mid: str) -> None:
        try:
            result = await session.send(f"customer{i}@c{i % 97}.example", raw)
        finally:
            free.put_nowait(session)
        result["lag_s"], result["mid"] = lag, mid
        self.results.append(result)

    def summary(self, since: float | None = None, until: float | None = None,
                copies: dict | None = None) -> dict:
        """End-of-data latency of the ordinary mail sent in [since, until]; with ``copies``
        (the store's view), also how long after intake each was decided."""
        picked = [r for r in self.results if r.get("eod_s") is not None
                  and (since is None or r["at"] >= since) and (until is None or r["at"] <= until)]
        eod = [r["eod_s"] for r in picked]
        decided = [c["decided_after_s"] for r in picked if copies
                   and (c := copies.get(r["mid"], {})).get("decided_after_s") is not None]
        return {"n": len(picked), "failed": sum(not r["ok"] for r in self.results),
                "decided_p50_ms": ms(pct(decided, 50)),
                "decided_max_ms": ms(max(decided, default=None)),
                "p50_ms": ms(pct(eod, 50)), "p99_ms": ms(pct(eod, 99)),
                "max_ms": ms(max(eod, default=None)),
                "max_lag_ms": ms(max((r["lag_s"] for r in picked), default=None))}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def wait_decided(store: Store, mids: list[str], cap: float) -> float | None:
    """Seconds until every copy of ``mids`` is 'done', or None at the cap."""
    started = time.perf_counter()
    while time.perf_counter() - started < cap:
        states = await asyncio.to_thread(store.states, mids)
        if len(states) == len(mids) and all(s == "done" for s in states.values()):
            return time.perf_counter() - started
        await asyncio.sleep(0.1)
    return None


async def warm_up(server: Server, store: Store, tag: str) -> None:
    """A few ordinary copies through the whole pipeline: workers started, caches warm."""
    session = Session(server.lmtp)
    await session.open()
    mids = []
    for i in range(3):
        mid, raw = ordinary(10_000_000 + i, tag)
        mids.append(mid)
        await session.send(f"warm{i}@bench.test", raw)
    await session.close()
    await wait_decided(store, mids, 60)


async def crafted_run(server: Server, a) -> dict:
    tag = f"{os.getpid()}-{int(time.time())}"
    messages = [crafted(i, tag) for i in range(a.crafted)]
    store = Store(server.db)
    await warm_up(server, store, tag)
    await asyncio.to_thread(server.settle)
    watch = Watch(server)
    base_rss = server.rss_kb(server.tree())
    watch.start()
    normal = Ordinary(server.lmtp, a.every_ms / 1000, tag)
    normal_task = asyncio.create_task(normal.run())
    await asyncio.sleep(a.lead)
    sessions = [Session(server.lmtp) for _ in messages]
    await asyncio.gather(*(s.open() for s in sessions))
    burst_at = time.perf_counter()
    sent = await asyncio.gather(*(s.send(f"attacker{i}@evil.example", raw)
                                  for i, (s, (_, raw)) in enumerate(zip(sessions, messages))))
    accepted_in = time.perf_counter() - burst_at
    mids = [mid for mid, _ in messages]
    decided_in = await wait_decided(store, mids, a.cap)
    done_at = time.perf_counter()
    await asyncio.sleep(2.0)
    normal.stopping = True
    await normal_task
    await asyncio.gather(*(s.close() for s in sessions))
    await wait_decided(store, normal.mids, 60)
    watch.finish()
    copies = store.copies(mids)
    raws = {mid: hashlib.sha256(raw).hexdigest() for mid, raw in messages}
    outcomes = collections.Counter(f"{c.get('outcome')}/{c.get('reason') or '-'}"
                                   for c in copies.values())
    kept = sum(c.get("sha256") == raws[mid] for mid, c in copies.items())
    decided = sum(c.get("state") == "done" and c.get("outcome") is not None
                  for c in copies.values())
    ordinary_copies = store.copies(normal.mids)
    store.close()
    api = await asyncio.to_thread(api_reads, server.http, copies)
    sample = next(iter(copies.values()))
    return {
        "mode": "crafted", "crafted": len(messages), "crafted_size": len(messages[0][1]),
        "crafted_accepted": sum(r["ok"] for r in sent),
        "crafted_eod_max_ms": ms(max((r["eod_s"] for r in sent if r["eod_s"]), default=None)),
        "burst_accepted_in_s": round(accepted_in, 3),
        "crafted_decided_in_s": None if decided_in is None else round(decided_in, 3),
        "crafted_decided": decided, "crafted_raw_kept": kept, "crafted_outcomes": dict(outcomes),
        "crafted_trace_sample": sample.get("trace"),
        "ordinary_all": normal.summary(copies=ordinary_copies),
        "ordinary_during_burst": normal.summary(burst_at, done_at, ordinary_copies),
        "ordinary_decided": sum(c.get("state") == "done" for c in ordinary_copies.values()),
        "healthz": watch_summary(watch),
        "api_reads": api,
        "rss_base_mb": round(base_rss / 1024, 1),
        "rss_peak_increase_mb": round((watch.peak_rss_kb - base_rss) / 1024, 1),
        "processes_max": watch.max_procs,
    }


async def big_run(server: Server, a) -> dict:
    tag = f"{os.getpid()}-{int(time.time())}"
    mid, raw = big(tag, a.big_mb * 1_000_000)
    store = Store(server.db)
    await warm_up(server, store, tag)
    await asyncio.to_thread(server.settle)
    base_rss = statistics.median(server.rss_kb(server.tree()) for _ in range(5))
    each: dict[int, int] = {}
    server.rss_kb(server.tree(), each)
    base_each = {("gateway" if pid == server.pid else f"pid {pid}"): round(kb / 1024, 1)
                 for pid, kb in each.items()}
    watch = Watch(server)
    watch.start()
    normal = Ordinary(server.lmtp, a.every_ms / 1000, tag)
    normal_task = asyncio.create_task(normal.run())
    await asyncio.sleep(a.lead)
    session = Session(server.lmtp)
    await session.open()
    sent_at = time.perf_counter()
    result = await session.send("big@customer.example", raw)
    decided_in = await wait_decided(store, [mid], a.cap)
    done_at = time.perf_counter()
    await asyncio.sleep(2.0)
    normal.stopping = True
    await normal_task
    await session.close()
    await wait_decided(store, normal.mids, 60)
    watch.finish()
    copy = store.copies([mid])[mid]
    ordinary_copies = store.copies(normal.mids)
    store.close()
    api = await asyncio.to_thread(api_reads, server.http, {mid: copy})
    return {
        "mode": "big", "size_mb": round(len(raw) / 1e6, 1), "accepted": result["ok"],
        "reply": result["reply"], "eod_ms": ms(result["eod_s"]),
        "decided_in_s": None if decided_in is None else round(decided_in, 3),
        "outcome": f"{copy.get('outcome')}/{copy.get('reason') or '-'}",
        "raw_kept": copy.get("sha256") == hashlib.sha256(raw).hexdigest(),
        "trace": copy.get("trace"),
        "ordinary_all": normal.summary(copies=ordinary_copies),
        "ordinary_during_big": normal.summary(sent_at, done_at, ordinary_copies),
        "healthz": watch_summary(watch),
        "api_reads": api,
        "rss_base_mb": round(base_rss / 1024, 1),
        "rss_base_each_mb": base_each,
        "rss_peak_each_mb": {("gateway" if pid == server.pid else f"pid {pid}"):
                             round(kb / 1024, 1) for pid, kb in watch.peak_each_kb.items()},
        "rss_peak_mb": round(watch.peak_rss_kb / 1024, 1),
        "rss_peak_increase_mb": round((watch.peak_rss_kb - base_rss) / 1024, 1),
        "processes_max": watch.max_procs,
    }


def watch_summary(watch: Watch) -> dict:
    return {"probes": len(watch.latencies), "failures": watch.failures,
            "p50_ms": ms(pct(watch.latencies, 50)), "p99_ms": ms(pct(watch.latencies, 99)),
            "max_ms": ms(max(watch.latencies, default=None)),
            "max_gap_ms": ms(watch.max_gap)}


def one(mode: str, a, work: Path) -> dict:
    run_dir = work / mode
    run_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run_dir / 'mailgate.db'}{suffix}").unlink(missing_ok=True)
    server = Server(run_dir)
    log(f"{mode}: mailgate pid {server.pid}, LMTP {server.lmtp}, HTTP {server.http}, "
        f"work {run_dir}")
    try:
        server.wait_ready()
        runner = crafted_run if mode == "crafted" else big_run
        result = asyncio.run(runner(server, a))
    finally:
        code = server.stop()
    result["exit_code"] = code
    result["command"] = server.command.replace(str(REPO) + "/", "")
    return result


def table(results: list[dict], commit: str) -> str:
    out = [(f"mailgate at `{commit}`; nproc={os.cpu_count()}; load before: "
            f"{os.getloadavg()[0]:.2f}; ordinary mail every {ARGS.every_ms:.0f} ms")]
    for r in results:
        h = r["healthz"]
        probes = (f"/healthz every 20 ms (n={h['probes']}): p50 / p99 / **max**, max gap",
                  f"{h['p50_ms']} / {h['p99_ms']} / **{h['max_ms']}** ms, {h['max_gap_ms']} ms")
        a = r["api_reads"]
        reads = ("reading the copies back through the API (by id, by Message-ID, unprocessed, "
                 "work item): requests; p50 / **max**",
                 f"{a['requests']} ({a['not_200']} not 200); {a['p50_ms']} / **{a['max_ms']}** ms")
        if r["mode"] == "crafted":
            o, b = r["ordinary_all"], r["ordinary_during_burst"]
            outcomes = ", ".join(f"{k} {v}" for k, v in r["crafted_outcomes"].items())
            title = (f"{r['crafted']} crafted `Cc:` messages ({r['crafted_size']:,} B each) "
                     "at once")
            rows = [
                (f"ordinary end-of-data, whole run (n={o['n']}): p50 / p99 / max",
                 f"{o['p50_ms']} / {o['p99_ms']} / {o['max_ms']} ms"),
                ((f"ordinary end-of-data, from the burst until decided (n={b['n']}): "
                  "p50 / p99 / **max**"), f"{b['p50_ms']} / {b['p99_ms']} / **{b['max_ms']}** ms"),
                ("ordinary: longest send lag; failed replies",
                 f"{o['max_lag_ms']} ms; {o['failed']}"),
                ("ordinary sent in that time: decided after intake, p50 / max",
                 f"{b['decided_p50_ms']} / {b['decided_max_ms']} ms"),
                ("crafted accepted (250); longest end-of-data",
                 f"{r['crafted_accepted']}/{r['crafted']}; {r['crafted_eod_max_ms']} ms"),
                ("all crafted copies decided, after the burst", f"{r['crafted_decided_in_s']} s"),
                ("crafted decided / raw bytes kept (sha256)",
                 f"{r['crafted_decided']} / {r['crafted_raw_kept']} of {r['crafted']}"),
                ("crafted outcomes", outcomes),
                probes,
                reads,
                ("process tree RSS: base; peak increase",
                 (f"{r['rss_base_mb']} MB; +{r['rss_peak_increase_mb']} MB "
                  f"({r['processes_max']} processes)")),
                ("mailgate exit code after SIGTERM", str(r["exit_code"])),
            ]
        else:
            b = r["ordinary_during_big"]
            title = f"one {r['size_mb']} MB text/plain message"
            rows = [
                ("accepted; end-of-data", f"{r['accepted']}; {r['eod_ms']} ms"),
                ("decided after delivery; outcome; raw bytes kept",
                 f"{r['decided_in_s']} s; {r['outcome']}; {r['raw_kept']}"),
                ("process tree RSS: base; peak; **increase**",
                 (f"{r['rss_base_mb']} MB; {r['rss_peak_mb']} MB; "
                  f"**+{r['rss_peak_increase_mb']} MB** ({r['processes_max']} processes)")),
                ("peak RSS by process (base)", ", ".join(
                    f"{k} {v} MB ({r['rss_base_each_mb'].get(k, '-')})"
                    for k, v in r["rss_peak_each_mb"].items())),
                probes,
                reads,
                ((f"ordinary end-of-data while it was delivered and decided (n={b['n']}): "
                  "p50 / p99 / max"), f"{b['p50_ms']} / {b['p99_ms']} / {b['max_ms']} ms"),
                ("ordinary sent in that time: decided after intake, p50 / max",
                 f"{b['decided_p50_ms']} / {b['decided_max_ms']} ms"),
                ("mailgate exit code after SIGTERM", str(r["exit_code"])),
            ]
        out += ["", f"### {title}", "", "| measure | value |", "|---|---|"]
        out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out) + "\n"


ARGS: argparse.Namespace


def main() -> int:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--big", action="store_true", help="one 33 MB text/plain message")
    mode.add_argument("--both", action="store_true", help="the crafted burst, then --big")
    ap.add_argument("--crafted", type=int, default=32, help="crafted messages at once")
    ap.add_argument("--big-mb", type=int, default=33)
    ap.add_argument("--every-ms", type=float, default=100.0, help="ordinary mail period")
    ap.add_argument("--lead", type=float, default=3.0,
                    help="seconds of ordinary mail before the hostile delivery")
    ap.add_argument("--cap", type=float, default=180.0,
                    help="seconds to wait for the hostile copies to be decided")
    ap.add_argument("--work", help="work dir (default: a new temp dir)")
    ap.add_argument("--json", help="write the raw results here")
    ARGS = a = ap.parse_args()
    if not MAILGATE.exists():
        raise SystemExit(f"no {MAILGATE}: create the repo's venv and pip install -e . first")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="mailgate-hostile."))
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--oneline"],
                            capture_output=True, text=True, check=False).stdout.strip()[:72]
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True,
                           check=False).stdout.split()
    if dirty:
        commit += " + uncommitted changes"
    modes = ["crafted", "big"] if a.both else ["big"] if a.big else ["crafted"]
    results = [one(m, a, work) for m in modes]
    print(table(results, commit), end="")
    print("command: bench/hostile.py " + " ".join(shlex.quote(x) for x in sys.argv[1:]))
    if a.json:
        Path(a.json).write_text(json.dumps({"commit": commit, "args": vars(a),
                                            "results": results}, indent=1))
        print(f"raw results: {a.json}")
    ok = all(r["exit_code"] == 0 for r in results) and all(
        r["crafted_decided"] == r["crafted_raw_kept"] == r["crafted"] for r in results
        if r["mode"] == "crafted") and all(r["raw_kept"] for r in results if r["mode"] == "big")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
