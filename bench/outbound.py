#!/usr/bin/env python3
"""Outbound throughput: queued agent mail delivered to a local aiosmtpd sink (issue 5).

Usage: .venv/bin/python bench/outbound.py [--messages 1000]

Queues N agent mails on one work item (before the clock starts), then times
how long the delivery worker takes to send them all to a bare aiosmtpd SMTP
sink on 127.0.0.1, once without DKIM and once signing every mail with a
2048-bit key. Prints messages/s for both and their ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiosmtpd.controller import Controller  # noqa: E402

from gateway.app import Gateway  # noqa: E402
from gateway.config import (BootstrapConnector, DefaultGatewaySection, DirectorySection,  # noqa: E402
                            DkimKey, HttpSection, LmtpSection, OutboundSection, Settings,
                            StorageSection)


class Sink:
    def __init__(self):
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 2.0.0 ok"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_key(directory: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    return path


async def run(messages: int, dkim: bool, port: int, sink: Sink) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        keys = (DkimKey(domain="corp.test", selector="mg1", key_file=str(make_key(Path(tmp)))),) \
            if dkim else ()
        settings = Settings(
            storage=StorageSection(url=f"sqlite:///{tmp}/bench.db"),
            lmtp=LmtpSection(enabled=False), http=HttpSection(enabled=False),
            outbound=OutboundSection(enabled=True, dkim=keys, default_gateway=DefaultGatewaySection(
                host="127.0.0.1", port=port)),
            directory=DirectorySection(connectors=(
                BootstrapConnector(name="support", primary_address="support@corp.test"),)),
            source=f"{tmp}/bench.toml")
        gw = Gateway(settings)
        await gw.start()
        await gw.delivery.stop()               # queue everything first, then time the sending
        item = await gw.create_workitem(kind="Ticket", connector="support")
        for n in range(messages):
            await gw.send_email(item.ref, to=[f"customer{n}@customer.test"],
                                subject=f"Update {n}", body="Your printer is fixed.\n" * 40)
        before = sink.count
        started = time.perf_counter()
        gw.delivery.start()
        await gw.delivery.drain(600)
        elapsed = time.perf_counter() - started
        await gw.stop()
        assert sink.count - before == messages, (sink.count - before, messages)
        return messages / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        rows = []
        for _ in range(args.rounds):
            plain = asyncio.run(run(args.messages, False, port, sink))
            signed = asyncio.run(run(args.messages, True, port, sink))
            rows.append((plain, signed))
    finally:
        controller.stop()
    print(f"outbound to an aiosmtpd sink, {args.messages} messages of ~1 KB per run")
    print("| round | without DKIM msgs/s | with DKIM msgs/s | with / without |")
    print("|---|---|---|---|")
    for n, (plain, signed) in enumerate(rows, 1):
        print(f"| {n} | {plain:,.0f} | {signed:,.0f} | {signed / plain:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
