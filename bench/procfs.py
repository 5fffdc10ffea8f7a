"""What the benches read of a running gateway: its process tree from /proc, its log's tail."""
from __future__ import annotations

import os
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (its preparing workers), from
    ``/proc/PID/task/TID/children``; a process gone meanwhile is skipped."""
    out, stack = [pid], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out += kids
            stack += kids
    return out


def tail(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a log, or none if it cannot be read."""
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []
