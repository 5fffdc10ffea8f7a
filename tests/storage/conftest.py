"""The store under test, once per backend.

``store`` is parametrized over ``BACKENDS``: a test written against
``storage.base`` runs on every backend. A backend is one entry in ``BACKENDS``
plus a fixture ``<backend>_url`` giving the URL of an empty database for one
test (a server backend's fixture would start or reuse its server and create a
fresh database). A module that tests one backend only overrides ``backend``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from storage import open_store
from storage.base import Store

BACKENDS = ["sqlite"]


class Commits:
    """The ``on_commit`` observer: one ``(copies, committed)`` per journal commit."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool]] = []

    def __call__(self, copies: int, seconds: float, committed: bool) -> None:
        self.seen.append((copies, committed))

    @property
    def count(self) -> int:
        return len(self.seen)

    @property
    def copies(self) -> int:
        return sum(n for n, ok in self.seen if ok)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def sqlite_url(db_path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture
def store_url(request, backend) -> str:
    """An empty database of ``backend``, for this test."""
    return request.getfixturevalue(f"{backend}_url")


@pytest.fixture
def commits() -> Commits:
    return Commits()


@pytest.fixture
async def open_at():
    """``await open_at(url, **options)``: a store opened now and closed after the test
    (closing twice is harmless), for a test that reopens a database."""
    opened: list[Store] = []

    async def open_(url: str, **options) -> Store:
        store = open_store(url, **options)
        await store.open()
        opened.append(store)
        return store

    yield open_
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(store_url, commits, open_at) -> Store:
    """An opened store on an empty database; its journal commits go to ``commits``."""
    return await open_at(store_url, on_commit=commits)
