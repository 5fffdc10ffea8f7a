#!/usr/bin/env python3
"""The LMTP front door with the full pipeline behind the journal, against the bare sink.

    .venv/bin/python bench/pipeline.py [--rounds 3] [--messages 20000] [--rcpts 1[,5]]
    .venv/bin/python bench/pipeline.py profile [--seconds 8] [--rcpts 1]

Goal (issue "Done when"): the journal backlog drains within 5 s after the load ends,
and the processed rate is at least 0.40x the bare aiosmtpd sink's rate.

Every round, for every recipient count:
  1. bare: the yardstick's `lmtp_models.py --model bare` (aiosmtpd LMTP, discards),
     driven by smtp-source; msgs/s and CPU.
  2. mailgate: `mailgate serve` on a fresh database (config from bench/lmtp.toml.in),
     driven the same way; T_load is smtp-source's run time. Then the database is
     polled read-only every --poll-ms for `state = 'journaled'` rows until none is
     left; T_drain is the time from the end of the load to that moment.
     processed msgs/s = messages / (T_load + T_drain). mailgate is then stopped with
     SIGTERM and must exit 0.
The `bench` connector gets its fallback route at bootstrap, so every message runs
through every stage (sent-id, dedup, auto-generated, plus-address, match, route,
apply). `profile` samples mailgate with py-spy during the load and during the drain.

The yardstick (../shared/bench beside this checkout, or LMTP_BENCH_YARDSTICK) is copied
into the work dir (LMTP_BENCH_DIR, or a fresh temp dir), as bench/lmtp.sh does; its
run.py supplies the target handling and the bounded smtp-source driver.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from procfs import tail  # noqa: E402
MAILGATE = REPO / ".venv" / "bin" / "mailgate"
DRAIN_GOAL_S = 5.0
RATIO_GOAL = 0.40


def log(*a) -> None:
    print("pipeline.py:", *a, file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(msg)
    sys.exit(2)


# -- work dir and yardstick -----------------------------------------------------------------

def prepare(work: Path) -> Path:
    """Copy the read-only yardstick into work/yardstick (keeping a prepared .venv)."""
    src = Path(os.environ.get("LMTP_BENCH_YARDSTICK") or REPO.parent / "shared" / "bench")
    if not (src / "run.py").is_file():
        die(f"no yardstick at {src} (set LMTP_BENCH_YARDSTICK)")
    y = work / "yardstick"
    y.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d not in (".venv", ".work")]
        for name in files:
            f = Path(root) / name
            dst = y / f.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            shutil.copy(f, dst)
            dst.chmod(dst.stat().st_mode | 0o200)
    ok = (y / ".venv/bin/python").exists() and (y / ".venv/bin/py-spy").exists() and \
        subprocess.run([y / ".venv/bin/python", "-c", "import aiosmtpd"],
                       capture_output=True).returncode == 0 and \
        (shutil.which("smtp-source") or os.access("/usr/sbin/smtp-source", os.X_OK))
    if not ok:
        log(f"preparing the yardstick in {y} (setup.sh)")
        subprocess.run([y / "setup.sh"], check=True, stdout=sys.stderr)
    return y


def load_yardstick(y: Path):
    spec = importlib.util.spec_from_file_location("yardstick_run", y / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
    return mod


def write_config(work: Path, port: int, db: Path, max_rcpts: int) -> Path:
    # smtp-source -r N sends Nrcpt@ .. 2rcpt@, rcpt@; cover 0..max (at least 5), like lmtp.sh
    aliases = ", ".join(f'"{n}rcpt@bench.invalid"' for n in range(max(max_rcpts, 5) + 1))
    text = (HERE / "lmtp.toml.in").read_text()
    text = text.replace("@PORT@", str(port)).replace("@DB@", str(db)).replace("@ALIASES@",
                                                                              aliases)
    cfg = work / "pipeline.toml"
    cfg.write_text(text)
    p = subprocess.run([MAILGATE, "check", "--config", cfg], capture_output=True, text=True)
    if p.returncode != 0:
        die(f"generated config {cfg} is not valid:\n{p.stdout}{p.stderr}")
    return cfg


def fresh_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


# -- the database, read-only ----------------------------------------------------------------

class Journal:
    """A read-only view of mailgate's database: backlog and outcome counts."""

    def __init__(self, db: Path):
        self.con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None,
                                   timeout=5)

    def backlog(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM emails WHERE state = 'journaled'"
                                ).fetchone()[0]

    def counts(self) -> dict:
        total = self.con.execute("SELECT COUNT(*) FROM emails").fetchone()[0]
        outcomes = dict(self.con.execute(
            "SELECT COALESCE(outcome, '(none)'), COUNT(*) FROM emails GROUP BY outcome"
            " ORDER BY COUNT(*) DESC").fetchall())
        lo, hi = self.con.execute("SELECT MIN(json_array_length(rcpt_to)),"
                                  " MAX(json_array_length(rcpt_to)) FROM emails").fetchone()
        items = self.con.execute("SELECT COUNT(*) FROM work_items").fetchone()[0]
        return {"emails": total, "outcomes": outcomes, "rcpts_lo": lo, "rcpts_hi": hi,
                "work_items": items}

    def close(self) -> None:
        self.con.close()


def wait_drained(journal: Journal, load_end: float, poll: float, cap: float,
                 on_poll=None) -> tuple[float | None, int]:
    """Poll until no row is journaled; (seconds after load_end, or None at the cap; last)."""
    while True:
        left = journal.backlog()
        now = time.perf_counter()
        if on_poll:
            on_poll(left)
        if left == 0:
            return now - load_end, 0
        if now - load_end >= cap:
            return None, left
        time.sleep(poll)


# -- one run of each server -----------------------------------------------------------------

def stop_target(t) -> int | None:
    """Stop a yardstick Target with SIGTERM (SIGKILL after its timeout); its exit code."""
    proc = t.proc
    t.stop(t.stop_timeout)
    return proc.returncode if proc is not None else None


def run_bare(ys, a, rcpts: int, cmd: str, port: int) -> dict:
    t = ys.Target("bare", cmd, port, a.messages, True)
    t.stop_timeout = 10
    rec = {"target": "bare", "rcpts": rcpts, "ok": False}
    try:
        t.start(a.ywork, 20)
        c0 = t.cpu_ticks()
        d = ys.drive_smtp_source(port, a.sessions, a.messages, a.size, rcpts, a.time_cap,
                                 a.ywork)
        rec.update(d)
        rec["cpu_ms_per_msg"] = ((t.cpu_ticks() - c0) / ys.CLK_TCK * 1000 / d["messages"]
                                 if d["messages"] else None)
        rec["ok"] = (d["rc"] == 0 or d["capped"]) and d["messages"] > 0
    except Exception as exc:
        rec["error"] = repr(exc)
    finally:
        if t.proc is not None:
            stop_target(t)
    return rec


def run_mailgate(ys, a, rcpts: int, cmd: str, db: Path) -> dict:
    fresh_db(db)
    t = ys.Target("mailgate", cmd, a.port, a.messages, False)
    t.stop_timeout = a.stop_timeout
    rec = {"target": "mailgate", "rcpts": rcpts, "ok": False, "problems": []}
    journal = None
    try:
        t.start(a.ywork, 30)
        journal = Journal(db)
        c0 = t.cpu_ticks()
        started = time.perf_counter()
        d = ys.drive_smtp_source(a.port, a.sessions, a.messages, a.size, rcpts, a.time_cap,
                                 a.ywork)
        load_end = started + d["elapsed_s"]
        c1 = t.cpu_ticks()
        rec.update(d)
        rec["backlog_at_load_end"] = journal.backlog()
        drain, left = wait_drained(journal, load_end, a.poll_ms / 1000, a.drain_cap)
        c2 = t.cpu_ticks()
        rec["drain_s"] = drain
        rec["left_at_cap"] = left
        n = d["messages"]
        if drain is not None and n:
            rec["processed_msgs_per_s"] = n / (d["elapsed_s"] + drain)
        elif n:  # not drained within the cap: what was processed by then
            rec["processed_msgs_per_s"] = (n - left) / (d["elapsed_s"] + a.drain_cap)
        rec["cpu_ms_per_msg_load"] = (c1 - c0) / ys.CLK_TCK * 1000 / n if n else None
        rec["cpu_ms_per_msg_total"] = (c2 - c0) / ys.CLK_TCK * 1000 / n if n else None
        rec["cpu_s_drain"] = (c2 - c1) / ys.CLK_TCK
        rec["db"] = journal.counts()
        ok_run = (d["rc"] == 0 or d["capped"]) and n > 0
        if not ok_run:
            rec["problems"].append(f"smtp-source rc={d['rc']} {d['errors'][:1]}")
        rows = rec["db"]["emails"]
        if (abs(rows - n) > a.sessions) if d["capped"] else rows != n:
            rec["problems"].append(f"{rows} emails rows for {n} messages")
        if rows and not rec["db"]["rcpts_lo"] == rec["db"]["rcpts_hi"] == rcpts:
            rec["problems"].append("rows without every recipient")
        if drain is None:
            rec["problems"].append(f"not drained after {a.drain_cap:.0f} s ({left} left)")
        elif drain > DRAIN_GOAL_S:
            rec["problems"].append(f"drain {drain:.2f} s > {DRAIN_GOAL_S:.0f} s")
        rec["ok"] = ok_run
    except Exception as exc:
        rec["error"] = repr(exc)
        rec["problems"].append(f"run failed: {exc!r}"[:120])
    finally:
        if journal is not None:
            journal.close()
        if t.proc is not None:
            rec["exit_code"] = stop_target(t)
            if rec["exit_code"] != 0:
                rec["problems"].append(f"mailgate exit code {rec['exit_code']} after SIGTERM")
        rec["log_tail"] = tail(Path(a.ywork) / "mailgate.log", 5)
    fresh_db(db)
    return rec


# -- the table ---------------------------------------------------------------------------------

def fmt(v, nd=0, suffix="") -> str:
    if v is None:
        return "-"
    return f"{v:,.{nd}f}{suffix}"


def table(results: list[dict], rcpt_list: list[int], command: str, smtp_source: str,
          bare_cmd: str, mailgate_cmd: str) -> tuple[str, bool]:
    out = []
    goal_met = True
    for rc in rcpt_list:
        rows = [(r["round"], r["bare"], r["mailgate"]) for r in results if r["rcpts"] == rc]
        out.append(f"\n### {rc} recipient{'s' if rc > 1 else ''} per message\n")
        out.append("| round | bare msgs/s | mailgate intake msgs/s | intake/bare | backlog at "
                   "load end | drain s | processed msgs/s | processed/bare | bare CPU ms/msg | "
                   "mailgate CPU ms/msg (load / incl. drain) | exit | checks |")
        out.append("|" + "---|" * 12)
        meds = collections.defaultdict(list)
        for rnd, b, m in rows:
            bare = b.get("msgs_per_s") if b.get("ok") else None
            intake = m.get("msgs_per_s") if m.get("ok") else None
            proc = m.get("processed_msgs_per_s") if m.get("ok") else None
            vals = {"bare": bare, "intake": intake, "ib": intake / bare if bare and intake else None,
                    "backlog": m.get("backlog_at_load_end"), "drain": m.get("drain_s"),
                    "proc": proc, "pb": proc / bare if bare and proc else None,
                    "bcpu": b.get("cpu_ms_per_msg"), "mcpu": m.get("cpu_ms_per_msg_load"),
                    "mcpu2": m.get("cpu_ms_per_msg_total")}
            for k, v in vals.items():
                if v is not None:
                    meds[k].append(v)
            cap = " (capped)" if m.get("capped") else ""
            bcap = " (capped)" if b.get("capped") else ""
            probs = list(m.get("problems", []))
            if not b.get("ok"):
                probs.append(f"bare failed: {b.get('error') or b.get('errors')}"[:100])
            drain = "not drained" if m.get("ok") and m.get("drain_s") is None else \
                fmt(vals["drain"], 2)
            out.append(
                f"| {rnd} | {fmt(bare)}{bcap} | {fmt(intake)}{cap} | {fmt(vals['ib'], 3)} | "
                f"{fmt(vals['backlog'])} | {drain} | {fmt(proc)} | {fmt(vals['pb'], 3)} | "
                f"{fmt(vals['bcpu'], 3)} | {fmt(vals['mcpu'], 3)} / {fmt(vals['mcpu2'], 3)} | "
                f"{m.get('exit_code', '-')} | {'; '.join(probs) or 'ok'} |")
            if probs or vals["pb"] is None or vals["pb"] < RATIO_GOAL:
                goal_met = False
        med = {k: statistics.median(v) if v else None for k, v in meds.items()}
        out.append(
            f"| **median** | {fmt(med.get('bare'))} | {fmt(med.get('intake'))} | "
            f"{fmt(med.get('ib'), 3)} | {fmt(med.get('backlog'))} | {fmt(med.get('drain'), 2)} | "
            f"{fmt(med.get('proc'))} | **{fmt(med.get('pb'), 3)}** | {fmt(med.get('bcpu'), 3)} | "
            f"{fmt(med.get('mcpu'), 3)} / {fmt(med.get('mcpu2'), 3)} | | |")
        worst = max(meds["drain"]) if meds["drain"] else None
        out.append(f"\ngoal ({rc} rcpt): drain ≤ {DRAIN_GOAL_S:.0f} s in every round "
                   f"(worst {fmt(worst, 2)} s) and processed/bare ≥ {RATIO_GOAL:.2f} in every "
                   f"round (median {fmt(med.get('pb'), 3)}, min "
                   f"{fmt(min(meds['pb']) if meds['pb'] else None, 3)})")
        out.append("\noutcomes (`SELECT outcome, COUNT(*) FROM emails GROUP BY outcome`), "
                   "and work items created:\n")
        out.append("| round | emails | outcomes | work_items |")
        out.append("|---|---|---|---|")
        for rnd, _, m in rows:
            db = m.get("db") or {}
            oc = ", ".join(f"{k} {v:,}" for k, v in (db.get("outcomes") or {}).items())
            out.append(f"| {rnd} | {fmt(db.get('emails'))} | {oc or '-'} | "
                       f"{fmt(db.get('work_items'))} |")
    out.append("\ncommands:\n")
    out.append(f"- this table: `{command}`")
    out.append(f"- load (both servers): `{smtp_source}`")
    out.append(f"- bare: `{bare_cmd}` (in the yardstick copy)")
    out.append(f"- mailgate: `{mailgate_cmd}`")
    return "\n".join(out), goal_met


# -- profile mode ------------------------------------------------------------------------------

WAIT_LEAF = ("epoll_wait", "epoll_pwait", "EpollSelector.select")
WAIT_ANY = ("_queue_SimpleQueue_get", "SimpleQueue.get", "pthread_cond_timedwait",
            "pthread_cond_wait", "PyThread_acquire_lock_timed", "Condition.wait", "Event.wait",
            "Queue.get")
STAGE_FUNCS = [("SentIdCheck.run", "stage sent-id"), ("Dedup.run", "stage dedup"),
               ("AutoGenerated.run", "stage auto-generated"),
               ("PlusAddress.run", "stage plus-address"), ("Match.run", "stage match"),
               ("Route.run", "stage route"), ("Apply.run", "stage apply")]
CATS = [
    ("store threads (sqlite3: SQL, commits, the decided batches)", ("Thread._bootstrap",)),
    ("pipeline: parse (Mail, email package)", ("Runner._parse", "Mail.parse")),
    *[(f"pipeline: {label}", (func,)) for func, label in STAGE_FUNCS],
    ("pipeline: runner (fetch batch, savepoints, set_outcome, trace, events)",
     ("Runner.", "gateway/pipeline/")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("intake: LMTP sessions, DATA, journal (gateway/protocols, intake, store writer)",
     ("gateway/protocols", "Intake.", "SqliteStore", "aiosmtpd/")),
    ("event loop, socket I/O, callbacks", ("",)),
]
# (all of these, none of these) in a sample's stack
CROSS = [
    ("pipeline, all of it (Runner.process_batch)", (("Runner.process_batch",), ())),
    ("pipeline: email package parsing (any stage)", (("Runner.process_batch", "(email/"), ())),
    ("pipeline: store calls from the loop (submit, future, wake-up)",
     (("Runner.process_batch", "storage/"), ("Thread._bootstrap",))),
    ("pipeline: json", (("Runner.process_batch", "(json/"), ())),
    ("intake: replies (push -> transport write)", (("push (",), ("Runner.",))),
]


def summarize_profile(raw: Path) -> str:
    def short(frame: str) -> str:
        m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
        if not m:
            return frame
        path = m.group(2).split("site-packages/")[-1].split("python3.11/")[-1]
        path = path.split(str(REPO) + "/")[-1]
        return f"{m.group(1)} ({path}:{m.group(3)})"

    def func(frame: str) -> str:
        return re.sub(r":\d+\)$", ")", short(frame))

    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            stacks.append((stack.split(";"), int(n)))
    total_all = sum(n for _, n in stacks) or 1
    busy, waits, fsync = [], 0, 0
    for fr, n in stacks:
        text = ";".join(fr)
        if fr[-1].startswith(WAIT_LEAF) or any(w in text for w in WAIT_ANY):
            waits += n
        elif "fdatasync" in text or "fsync" in fr[-1]:
            fsync += n
        else:
            busy.append((fr, n))
    total = sum(n for _, n in busy) or 1
    lines = [f"samples {total_all}: waits {100 * waits / total_all:.1f}%, blocked in fsync "
             f"{100 * fsync / total_all:.1f}%, on-CPU {100 * total / total_all:.1f}% ({total});"
             " shares below are of on-CPU samples", "", "by category (first match wins):"]
    cat = collections.Counter()
    for fr, n in busy:
        text = ";".join(short(f) for f in fr)
        for label, needles in CATS:
            if any(x in text for x in needles):
                cat[label] += n
                break
    lines += [f"  {100 * n / total:5.1f}%  {label}" for label, n in cat.most_common()]
    cross = collections.Counter()
    for fr, n in busy:
        text = ";".join(short(f) for f in fr)
        for label, needles in CROSS:
            if all(x in text for x in needles[0]) and not any(x in text for x in needles[1]):
                cross[label] += n
    lines += ["", "across categories (inclusive, overlapping):"]
    lines += [f"  {100 * cross[label] / total:5.1f}%  {label}" for label, _ in CROSS]
    leaf = collections.Counter()
    incl = collections.Counter()
    for fr, n in busy:
        leaf[short(fr[-1])] += n
        for x in {func(f) for f in fr}:
            incl[x] += n
    lines += ["", "top 15 leaf frames (self):"]
    lines += [f"  {100 * n / total:5.1f}%  {x}" for x, n in leaf.most_common(15)]
    lines += ["", "top 30 Python functions (inclusive):"]
    shown = 0
    for x, n in incl.most_common():
        if ".py)" not in x or x.startswith(("Thread.", "main ", "cmd_serve", "<module>",
                                             "Runner.run", "BaseEventLoop.", "Handle._run",
                                             "_serve ", "run (", "Context.run")):
            continue
        lines.append(f"  {100 * n / total:5.1f}%  {x}")
        shown += 1
        if shown == 30:
            break
    return "\n".join(lines)


def profile(ys, a, y: Path, cmd: str, db: Path, rcpts: int) -> int:
    """py-spy --native on mailgate: `seconds` of the load (after 1 s), then the drain."""
    pyspy = y / ".venv" / "bin" / "py-spy"
    fresh_db(db)
    t = ys.Target("mailgate", cmd, a.port, a.messages, False)
    t.stop_timeout = a.stop_timeout
    t.start(a.ywork, 30)
    pid = t.proc.pid
    work = Path(a.ywork)
    load_raw, drain_raw = work / f"prof-load-r{rcpts}.txt", work / f"prof-drain-r{rcpts}.txt"
    argv = ["smtp-source", "-c", "-L", "-d", "-s", str(a.sessions), "-m", str(a.messages),
            "-l", str(a.size), "-r", str(rcpts), "-f", "sender@bench.invalid",
            "-t", "rcpt@bench.invalid", "-S", "bench", "-M", "bench.invalid",
            f"127.0.0.1:{a.port}"]
    journal = Journal(db)
    rc = 0
    try:
        with open(work / "smtp-source.out", "wb") as out:
            src = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        started = time.perf_counter()
        time.sleep(1)
        spy = ["timeout", str(int(max(a.seconds, a.drain_cap) + 30)), str(pyspy), "record",
               "--native",
               "-r", "250", "-f", "raw", "-p", str(pid)]
        p = subprocess.run(spy + ["-d", str(max(1, round(a.seconds))), "-o", str(load_raw)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            log(f"py-spy failed (needs root or ptrace rights): {p.stderr.strip()[-300:]}")
            rc = 1
        backlog_after = journal.backlog()
        try:
            src.wait(timeout=max(1.0, a.time_cap - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            src.kill()
            src.wait()
        load_end = time.perf_counter()
        left = journal.backlog()
        log(f"load: {time.perf_counter() - started:.1f} s; backlog {backlog_after} after "
            f"the load sample, {left} at load end")
        # the drain: sample until the backlog is empty (or the cap), then SIGINT py-spy
        spy_d = subprocess.Popen(spy + ["-d", str(int(a.drain_cap)), "-o", str(drain_raw)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        drain, left = wait_drained(journal, load_end, a.poll_ms / 1000, a.drain_cap)
        spy_d.send_signal(signal.SIGINT)
        try:
            spy_d.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy_d.kill()
            spy_d.wait()
        log(f"drain: {fmt(drain, 2)} s after the load ended ({left} left)")
    finally:
        journal.close()
        code = stop_target(t)
        fresh_db(db)
    print(f"# mailgate under load + pipeline: py-spy --native @ 250 Hz, rcpt {rcpts}, "
          f"smtp-source -s {a.sessions} -l {a.size}; mailgate exit {code}")
    for label, raw in (("load (intake + pipeline side by side)", load_raw),
                       ("drain (pipeline alone, after the load)", drain_raw)):
        print(f"\n## {label}: {raw}\n")
        if raw.exists() and raw.stat().st_size:
            print(summarize_profile(raw))
        else:
            print("(no samples: the drain may have been too short to sample)")
    return rc or (code != 0)


# -- main ----------------------------------------------------------------------------------------

def main() -> int:
    argv = sys.argv[1:]
    mode = "run"
    if argv[:1] == ["profile"]:
        mode, argv = "profile", argv[1:]
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--rcpts", default="1", help="comma list, e.g. 1,5")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--time-cap", type=float, default=55.0,
                    help="seconds per load run; smtp-source is killed after it")
    ap.add_argument("--drain-cap", type=float, default=60.0,
                    help="seconds to wait for the backlog after the load (recorded anyway)")
    ap.add_argument("--poll-ms", type=float, default=50.0)
    ap.add_argument("--port", type=int, default=int(os.environ.get("LMTP_BENCH_PORT", 18126)),
                    help="mailgate's LMTP port")
    ap.add_argument("--bare-port", type=int, default=18127)
    ap.add_argument("--bare-loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="the bare sink's loop (the yardstick's 'bare' is asyncio)")
    ap.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                    help="mailgate's loop (auto: uvloop when installed, as in production)")
    ap.add_argument("--stop-timeout", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=8.0, help="profile: load sample length")
    ap.add_argument("--json", help="raw results (default <work>/pipeline-results.json)")
    a = ap.parse_args(argv)
    rcpt_list = [int(x) for x in a.rcpts.split(",")]
    if not MAILGATE.exists():
        die(f"no {MAILGATE}: create the repo's venv and pip install -e . first")

    if os.environ.get("LMTP_BENCH_DIR"):
        work = Path(os.environ["LMTP_BENCH_DIR"]).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="mailgate-pipeline."))
    y = prepare(work)
    ys = load_yardstick(y)
    a.ywork = str(work / "runs")
    os.makedirs(a.ywork, exist_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True,
                        text=True).stdout.strip()
    if fs == "tmpfs":
        log(f"warning: {work} is on tmpfs: fsync is free there, the figures mean little")
    for port in (a.port, a.bare_port):
        if not ys.port_free(port):
            die(f"port {port} is busy on 127.0.0.1 (--port / --bare-port)")
    (work / "db").mkdir(exist_ok=True)
    db = work / "db" / "mailgate.db"
    cfg = write_config(work, a.port, db, max(rcpt_list))
    env = "" if a.loop == "auto" else f"MAILGATE_GATEWAY_EVENT_LOOP={a.loop} "
    mailgate_cmd = f"{env}exec {shlex.quote(str(MAILGATE))} serve --config {shlex.quote(str(cfg))}"
    bare_cmd = (f"exec {shlex.quote(str(y / '.venv/bin/python'))} lmtp_models.py --model bare "
                f"--loop {a.bare_loop} --port {a.bare_port}")

    if mode == "profile":
        log(f"work dir {work}; profiling mailgate on 127.0.0.1:{a.port}")
        return profile(ys, a, y, mailgate_cmd, db, rcpt_list[0])

    log(f"work dir {work}; mailgate on 127.0.0.1:{a.port}, bare on {a.bare_port}; "
        f"load {os.getloadavg()}")
    results = []
    for rnd in range(1, a.rounds + 1):
        for rc in rcpt_list:
            b = run_bare(ys, a, rc, bare_cmd, a.bare_port)
            log(f"[round {rnd}/{a.rounds}] rcpt={rc} bare     {fmt(b.get('msgs_per_s'))} msgs/s"
                f" {b.get('messages')} msgs in {fmt(b.get('elapsed_s'), 2)} s"
                + ("" if b["ok"] else f" FAILED {b.get('error') or b.get('errors')}"))
            m = run_mailgate(ys, a, rc, mailgate_cmd, db)
            log(f"[round {rnd}/{a.rounds}] rcpt={rc} mailgate intake "
                f"{fmt(m.get('msgs_per_s'))} msgs/s in {fmt(m.get('elapsed_s'), 2)} s, backlog "
                f"{m.get('backlog_at_load_end')}, drain {fmt(m.get('drain_s'), 2)} s, processed "
                f"{fmt(m.get('processed_msgs_per_s'))} msgs/s, exit {m.get('exit_code')}; "
                f"{(m.get('db') or {}).get('outcomes')} {'; '.join(m['problems'])}")
            results.append({"round": rnd, "rcpts": rc, "bare": b, "mailgate": m})

    smtp_source = (results[0]["mailgate"].get("argv") or results[0]["bare"].get("argv")
                   or "smtp-source ...").replace(f":{a.port}", ":PORT")
    command = "bench/pipeline.py " + " ".join(shlex.quote(x) for x in argv)
    text, goal_met = table(results, rcpt_list, command, smtp_source,
                           bare_cmd.replace(str(y) + "/", ""),
                           mailgate_cmd.replace(str(REPO) + "/", "").replace(str(work) + "/",
                                                                                "<work>/"))
    print(f"smtp-source -L -d -s {a.sessions} -l {a.size} -m {a.messages}; rounds={a.rounds}; "
          f"nproc={os.cpu_count()}; mailgate loop={a.loop}, bare loop={a.bare_loop}; "
          f"backlog polled every {a.poll_ms:.0f} ms")
    print(text)
    path = Path(a.json) if a.json else work / "pipeline-results.json"
    path.write_text(json.dumps({"args": vars(a), "results": results}, indent=1, default=str))
    (work / "pipeline-table.md").write_text(text + "\n")
    print(f"\ngoal {'met' if goal_met else 'NOT met'}; raw results: {path}; work dir: {work}")
    bad = any(not r["bare"].get("ok") or not r["mailgate"].get("ok")
              or r["mailgate"].get("exit_code") != 0 for r in results)
    return 1 if bad or not goal_met else 0


if __name__ == "__main__":
    sys.exit(main())
