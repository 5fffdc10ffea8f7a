"""Persistence: the Store protocol (``base``) and its backends (``sqlite``).

SQL lives here and nowhere else; so does every database driver. The rest of
mailgate speaks to ``storage.base`` only, and :func:`open_store` picks the
backend. It lives here, not in ``base``: the backends depend on the protocol,
so the protocol must not depend on them.
"""
from __future__ import annotations

from typing import Callable

from storage.base import CommitObserver, Store, StoreError
from storage.sqlite import SqliteStore


def sqlite_path(url: str) -> str | None:
    """The database file of a ``sqlite:///path`` url, else None."""
    prefix = "sqlite:///"
    return url[len(prefix):] if url.startswith(prefix) else None


def open_store(url: str, *, batch_max: int = 256, on_commit: CommitObserver | None = None,
               on_write: Callable[[], None] | None = None) -> Store:
    """The store for ``url`` (not yet opened). The one place that picks a backend."""
    path = sqlite_path(url)
    if path is not None:
        return SqliteStore(path, batch_max=batch_max, on_commit=on_commit, on_write=on_write)
    raise StoreError(f"storage url {url!r}: only sqlite:/// is available in this release")
