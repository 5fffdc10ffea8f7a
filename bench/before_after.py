#!/usr/bin/env python3
"""Before and after a change, in the same session, round by round: is the change free?

    git worktree add /tmp/before <commit> && (cd /tmp/before && python3 -m venv .venv \
        && .venv/bin/pip install -e .)
    .venv/bin/python bench/before_after.py --before /tmp/before [--rounds 3] \
        [--bench pipeline|lmtp|create] [--messages 20000]

Each round runs the same bench once from the ``--before`` checkout and once from this
one (the order alternates, so neither side always runs on a warmer machine), each with
its own ``.venv``. ``pipeline`` is bench/pipeline.py (LMTP load, full pipeline behind
the journal, the bare aiosmtpd sink in the same run); ``lmtp`` is the shared LMTP
yardstick through bench/lmtp.sh (smtp-sink, bare aiosmtpd, mailgate); ``create`` is
bench/pipeline_create.py (the create path: every message a new work item). The
result is the paired ratio after / before per round, and its median.

For ``pipeline`` and ``lmtp`` the compared number is mailgate's rate divided by the
bare sink's rate of the same run, which cancels most of the machine's drift between
runs; the raw rates are shown beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_pipeline(checkout: Path, messages: int, work: Path) -> dict:
    out = work / f"pipeline-{checkout.name}-{os.getpid()}.json"
    subprocess.run([str(checkout / ".venv/bin/python"), str(checkout / "bench/pipeline.py"),
                    "--rounds", "1", "--messages", str(messages), "--json", str(out)],
                   check=True, cwd=checkout, env=_env(), stdout=subprocess.DEVNULL)
    [r] = json.loads(out.read_text())["results"]
    bare, mailgate = r["bare"]["msgs_per_s"], r["mailgate"]["processed_msgs_per_s"]
    return {"rate": mailgate, "bare": bare, "ratio": mailgate / bare,
            "cpu": r["mailgate"].get("cpu_ms_per_msg_total")}


def run_lmtp(checkout: Path, messages: int, work: Path) -> dict:
    out = work / f"lmtp-{checkout.name}-{os.getpid()}.json"
    env = _env()
    env["LMTP_BENCH_DIR"] = str(work / f"yardstick-{checkout.name}")
    subprocess.run(["bash", str(checkout / "bench/lmtp.sh"), "--rounds", "1", "--rcpts", "1",
                    "--messages", str(messages), "--json", str(out)],
                   check=True, cwd=checkout, env=env, stdout=subprocess.DEVNULL)
    results = [r for r in json.loads(out.read_text())["results"] if r.get("ok")]
    rate = {r["target"]: r["msgs_per_s"] for r in results}
    cpu = {r["target"]: r.get("server_cpu_ms_per_msg") for r in results}
    return {"rate": rate["mailgate"], "bare": rate["bare"],
            "ratio": rate["mailgate"] / rate["bare"], "cpu": cpu.get("mailgate")}


def run_create(checkout: Path, messages: int, work: Path) -> dict:
    done = subprocess.run([str(checkout / ".venv/bin/python"),
                           str(checkout / "bench/pipeline_create.py"), "--rounds", "1",
                           "--messages", str(messages)],
                          check=True, cwd=checkout, env=_env(), capture_output=True,
                          text=True)
    rates = [float(x.replace(",", "")) for x in
             re.findall(r"([\d,]+(?:\.\d+)?) msgs/s", done.stdout + done.stderr)]
    if not rates:
        raise SystemExit(f"no rate in bench/pipeline_create.py's output:\n{done.stdout}")
    return {"rate": rates[0], "bare": None, "ratio": rates[0], "cpu": None}


BENCHES = {"pipeline": run_pipeline, "lmtp": run_lmtp, "create": run_create}


def _env() -> dict:
    """Each bench script runs its own checkout's code (its .venv, or its own sys.path)."""
    env = dict(os.environ)
    env.setdefault("LMTP_BENCH_YARDSTICK", str(REPO.parent / "shared" / "bench"))
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, type=Path, help="checkout of the old commit")
    ap.add_argument("--after", type=Path, default=REPO, help="checkout of the new one")
    ap.add_argument("--bench", choices=sorted(BENCHES), default="pipeline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    a = ap.parse_args()
    run = BENCHES[a.bench]
    work = Path(tempfile.mkdtemp(prefix="before-after-"))
    rows = []
    for n in range(a.rounds):
        order = [("before", a.before), ("after", a.after)]
        if n % 2:
            order.reverse()
        got = {}
        for side, checkout in order:
            got[side] = run(checkout.resolve(), a.messages, work)
            print(f"round {n + 1} {side}: {got[side]}", file=sys.stderr, flush=True)
        rows.append(got)
    ratios = [r["after"]["ratio"] / r["before"]["ratio"] for r in rows]
    against_bare = a.bench != "create"
    print(f"bench {a.bench}, {a.messages} messages, {a.rounds} paired rounds "
          f"(before: {a.before}, after: {a.after})\n")
    print("| round | before msgs/s | after msgs/s | "
          + ("before mailgate/bare | after mailgate/bare | " if against_bare else "")
          + "after / before |")
    print("|---|---|---|" + ("---|---|" if against_bare else "") + "---|")
    for n, (r, ratio) in enumerate(zip(rows, ratios), start=1):
        both = (f"{r['before']['ratio']:.3f} | {r['after']['ratio']:.3f} | "
                if against_bare else "")
        print(f"| {n} | {r['before']['rate']:,.0f} | {r['after']['rate']:,.0f} | {both}"
              f"{ratio:.3f} |")
    print(f"\nafter / before, paired median: {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
