"""Header fields built for tests and benches of hostile mail."""
from __future__ import annotations


def folded(name: str, items: list[str], width: int = 78) -> bytes:
    """``name: a, b, …`` folded before an item so that no line is longer than ``width``."""
    lines, line = [], f"{name}:"
    for i, item in enumerate(items):
        piece = " " + item + ("," if i < len(items) - 1 else "")
        if len(line) + len(piece) > width and line != f"{name}:":
            lines.append(line)
            line = piece
        else:
            line += piece
    return "\r\n".join(lines + [line]).encode()
