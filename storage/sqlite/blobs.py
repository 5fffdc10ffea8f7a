"""A big message's bytes go into and out of SQLite in pieces.

Binding a value copies it (the driver hands it over as SQLITE_TRANSIENT) and
building the row copies it again, so inserting a 33 MB message as a parameter
costs ~65 MB on top of the message; selecting it costs SQLite's own buffer
beside the bytes object. A message over ``STREAM_AT`` is instead inserted as a
``zeroblob`` of its size and written through SQLite's incremental blob I/O
(``Connection.blobopen``), and read back through it: the only copy in memory is
the bytes object itself. Smaller messages keep the plain statements, which are
cheaper per row.

Reading a big message's size: ``messages.raw`` comes before ``size`` in the row, and
SQLite reaches a column after an overflowing value by walking its overflow pages
(~6 ms for 33 MB). ``length(raw)`` is read from the row's header instead (~10 µs), so
queries that want the size of what may be a big message ask for that (:data:`SIZE`).
"""
from __future__ import annotations

import sqlite3

STREAM_AT = 1 << 20            # bytes; a message over this streams
_PIECE = 1 << 20
SIZE = "length(m.raw)"          # a message's size, in a query that joins messages as m


def insert_message(conn: sqlite3.Connection, message_id: int, raw: bytes,
                   received_at: float) -> None:
    """Insert one row of ``messages``, streaming ``raw`` when it is big."""
    if len(raw) <= STREAM_AT:
        conn.execute("INSERT INTO messages (id, raw, size, received_at) VALUES (?, ?, ?, ?)",
                     (message_id, raw, len(raw), received_at))
        return
    conn.execute("INSERT INTO messages (id, raw, size, received_at)"
                 " VALUES (?, zeroblob(?), ?, ?)",
                 (message_id, len(raw), len(raw), received_at))
    view = memoryview(raw)
    with conn.blobopen("messages", "raw", message_id) as blob:
        for start in range(0, len(raw), _PIECE):
            blob.write(view[start:start + _PIECE])


def inline_raw(alias: str = "m") -> str:
    """The select-list item for a message's bytes: NULL when they must be streamed."""
    return f"CASE WHEN length({alias}.raw) <= {STREAM_AT} THEN {alias}.raw END"


def message_raw(conn: sqlite3.Connection, message_id: int, inline: bytes | None) -> bytes:
    """A message's bytes: ``inline`` as selected by :func:`inline_raw`, or read whole
    through the blob handle (one copy, straight into the bytes object)."""
    if inline is not None:
        return bytes(inline)
    with conn.blobopen("messages", "raw", message_id, readonly=True) as blob:
        return blob.read()
