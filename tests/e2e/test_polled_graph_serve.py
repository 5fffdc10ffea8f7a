"""A real ``mailgate serve`` polls the fake Graph with a certificate from its config file.

The whole path an admin configures: a ``[[directory.connectors]]`` seed with
``service = "o365_graph"``, a PFX ``certificate_file`` and its password in a
``certificate_password_file``; msal signs a client assertion with it, the fake's
token endpoint checks the signature, and the poller drains the mailbox (R-I6).
"""
from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from tests.e2e.helpers import WIRE, mail
from tests.graph_fake import CLIENT_ID, MAILBOX, make_client_certificate
from tests.integration.serve import ServeProcess

pytestmark = pytest.mark.timeout(120)


def outcomes(db) -> list:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute("SELECT source, folder_path, outcome FROM emails"
                            " WHERE direction = 'incoming'").fetchall()


async def test_r_i6_serve_polls_graph_with_a_pfx_certificate_from_its_config(graph_fake,
                                                                            tmp_path):
    certificate = make_client_certificate(tmp_path)
    graph_fake.register_app(CLIENT_ID, certificate=certificate.certificate)
    graph_fake.add_message(mail(to=(MAILBOX,), subject="Via Graph").as_bytes(policy=WIRE))
    password_file = tmp_path / "pfx.password"
    password_file.write_text(certificate.password)
    gateway = ServeProcess(tmp_path).write_config(
        f'[[directory.connectors]]\nname = "o365"\nservice = "o365_graph"\n'
        f'primary_address = "{MAILBOX}"\nshared_mailbox = "{MAILBOX}"\n'
        f'tenant_id = "{graph_fake.tenant}"\napplication_id = "{CLIENT_ID}"\n'
        f'authority_host = "{graph_fake.authority_host}"\n'
        f'graph_base_url = "{graph_fake.graph_base_url}"\nca_file = "{graph_fake.ca_file}"\n'
        f'certificate_file = "{certificate.pfx_file}"\n'
        f'certificate_password_file = "{password_file}"\nfolders = ["Inbox"]\n'
        'poll_interval = 60\n')
    await asyncio.to_thread(gateway.start)
    db = tmp_path / "mailgate.db"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if graph_fake.ids("Inbox") == [] and \
                    [o for *_, o in await asyncio.to_thread(outcomes, db)] == ["created"]:
                break
            await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(gateway.stop)
    assert await asyncio.to_thread(outcomes, db) == [("graph", "Inbox", "created")], \
        gateway.log()[-2000:]
    assert graph_fake.ids("Inbox") == []
    [token] = graph_fake.token_requests
    assert "client_assertion" in token.form and "client_secret" not in token.form
    assert certificate.password not in gateway.log()
