"""Fixtures shared by unit and integration tests: settings, a running gateway, clients."""
from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.config import (BootstrapConnector, DirectorySection, HttpSection, LmtpSection,
                            Settings, SmtpSection, StorageSection)
# the real peers' fixtures, for every module: a throwaway Dovecot, the fake Graph
from tests.dovecot import dovecot  # noqa: F401
from tests.graph_fake import graph_fake  # noqa: F401

ADMIN_TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(tmp_path: Path, *, connectors=None, routes=(), lmtp=None, smtp=None,
                  http=None, **sections) -> Settings:
    """Settings for one test: ports chosen by the OS, a database in ``tmp_path``."""
    if connectors is None:
        connectors = [BootstrapConnector(name="support", primary_address="support@example.test",
                                         aliases=("help@example.test",)),
                      BootstrapConnector(name="sales", primary_address="sales@example.test")]
    return Settings(
        storage=StorageSection(url=f"sqlite:///{tmp_path / 'mailgate.db'}"),
        lmtp=dataclasses.replace(LmtpSection(listen="127.0.0.1:0"), **(lmtp or {})),
        smtp=dataclasses.replace(SmtpSection(listen="127.0.0.1:0"), **(smtp or {})),
        http=dataclasses.replace(HttpSection(listen="127.0.0.1:0", admin_token=ADMIN_TOKEN),
                                 **(http or {})),
        directory=DirectorySection(connectors=tuple(connectors), routes=tuple(routes)),
        source=str(tmp_path / "gateway.toml"),
        **sections)


@pytest.fixture
async def gateway(tmp_path):
    """A gateway with connectors ``support`` (+ alias ``help``) and ``sales``."""
    gw = Gateway(make_settings(tmp_path))
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
async def start_gateway(tmp_path):
    """Factory for a gateway with custom settings; every one started is stopped at teardown."""
    started: list[Gateway] = []

    async def start(**kwargs) -> Gateway:
        gw = Gateway(make_settings(tmp_path, **kwargs))
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


async def run_sql(path, *statements: str) -> list:
    """Run SQL on the gateway's database from another connection, *off the event loop*.

    A blocking sqlite3 call on the loop would freeze the gateway's writer mid-transaction
    while this connection waits for its lock: a deadlock ending in "database is locked".
    Returns the rows of the last statement.
    """
    import asyncio
    import sqlite3

    def run() -> list:
        with sqlite3.connect(path, timeout=30) as db:
            rows: list = []
            for statement in statements:
                rows = db.execute(statement).fetchall()
            return rows

    return await asyncio.to_thread(run)


FAIL_EMAIL_INSERTS = ("CREATE TRIGGER fail BEFORE INSERT ON emails "
                      "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END")


class _Silent(asyncio.Protocol):
    """Keeps every connection open and never writes."""

    def __init__(self, held: list) -> None:
        self.held = held

    def connection_made(self, transport) -> None:
        self.held.append(transport)


@pytest.fixture
async def silent_server():
    """The port of a server that accepts TCP connections and never sends a byte: a
    mailbox client must end in an error within its timeout, never hang (R-I4)."""
    held: list = []
    server = await asyncio.get_running_loop().create_server(
        lambda: _Silent(held), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for transport in held:
        transport.close()
    server.close()
    await server.wait_closed()
