"""The embedded default backend: SQLite in WAL mode, one writer with group commit.

``store`` runs the connections; ``txn`` is the transaction the domain sees, with the
directory's SQL in ``directory`` and outgoing mail's in ``outbound``; ``polls`` is the
pollers' ledger; ``migrations/`` holds the numbered schema files, applied at start.
"""
from storage.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
