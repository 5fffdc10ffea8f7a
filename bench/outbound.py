#!/usr/bin/env python3
"""Outbound throughput with and without DKIM: queued agent mail delivered to a local
aiosmtpd sink (issues 5 and 18).

Usage: .venv/bin/python bench/outbound.py [--messages 500] [--rounds 3] [--signatures 2000]

Each round queues N agent mails on one work item (before the clock starts),
then times how long the delivery worker takes to send them all to a bare
aiosmtpd SMTP sink on 127.0.0.1: without DKIM, signing with a 2048-bit RSA key,
with an Ed25519 key, and with both (dual signing), in turns, so every ratio
compares numbers of the same round. Then, apart from delivery, the CPU one
signature costs (``time.process_time`` over ``--signatures`` signatures of a
queued mail, on one thread): the whole signing step, and OpenSSL's part of it;
and RSA signatures per second on one thread and on two.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiosmtpd.controller import Controller  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from gateway.app import Gateway  # noqa: E402
from gateway.config import (BootstrapConnector, DefaultGatewaySection, DirectorySection,  # noqa: E402
                            DkimKey, HttpSection, LmtpSection, OutboundSection, Settings,
                            StorageSection)
from gateway.outbound.dkim import DkimSigner  # noqa: E402

RUNS = ("none", "rsa", "ed25519", "dual")
LABELS = {"none": "without DKIM", "rsa": "RSA-2048", "ed25519": "Ed25519",
          "dual": "RSA + Ed25519"}


class Sink:
    def __init__(self):
        self.count = 0
        self.last = b""

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        self.last = envelope.original_content
        return "250 2.0.0 ok"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_keys(directory: Path) -> dict[str, tuple[DkimKey, ...]]:
    """The ``[[outbound.dkim]]`` tables of each run, keys written to ``directory``."""
    pem = serialization.Encoding.PEM
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "rsa.pem").write_bytes(rsa_key.private_bytes(
        pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (directory / "ed.pem").write_bytes(ed_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    rsa_table = DkimKey("corp.test", "rsa1", str(directory / "rsa.pem"))
    ed_table = DkimKey("corp.test", "ed1", str(directory / "ed.pem"),
                       algorithm="ed25519-sha256")
    return {"none": (), "rsa": (rsa_table,), "ed25519": (ed_table,),
            "dual": (rsa_table, ed_table)}


async def run(messages: int, keys: tuple[DkimKey, ...], port: int, sink: Sink) -> float:
    with tempfile.TemporaryDirectory() as tmp:
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
        signatures = sink.last.count(b"DKIM-Signature:")
        assert signatures == len(keys), (signatures, keys)
        return messages / elapsed


def cpu_per_signature(tables: dict[str, tuple[DkimKey, ...]], mail: bytes,
                      count: int) -> dict[str, tuple[float, float]]:
    """``run → (ms of CPU for DkimSigner.sign of one mail, ms of it in key.sign)``."""
    out = {}
    for name in RUNS[1:]:
        signer = DkimSigner(tables[name])
        signer.sign(mail)
        started = time.process_time()
        for _ in range(count):
            signer.sign(mail)
        whole = (time.process_time() - started) / count * 1000
        data = mail[:600]
        started = time.process_time()
        for _ in range(count):
            for key in signer.keys:
                key.sign(data)
        openssl = (time.process_time() - started) / count * 1000
        out[name] = (whole, openssl)
    return out


def signatures_per_second(table: tuple[DkimKey, ...], mail: bytes, count: int,
                          threads: int) -> float:
    """Mails signed per second of wall time on ``threads`` threads: more than one
    thread helps only because OpenSSL releases the GIL while it signs."""
    signer = DkimSigner(table)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(signer.sign, [mail] * threads))
        started = time.perf_counter()
        list(pool.map(signer.sign, [mail] * count))
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--signatures", type=int, default=2000)
    args = parser.parse_args()
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    rows = []
    with tempfile.TemporaryDirectory() as keydir:
        tables = make_keys(Path(keydir))
        try:
            for _ in range(args.rounds):
                rows.append({name: asyncio.run(run(args.messages, tables[name], port, sink))
                             for name in RUNS})
        finally:
            controller.stop()
        unsigned = _unsigned(sink.last)
        cpu = cpu_per_signature(tables, unsigned, args.signatures)
        parallel = [signatures_per_second(tables["rsa"], unsigned, args.signatures, threads)
                    for threads in (1, 2)]
    print(f"outbound to an aiosmtpd sink, {args.messages} messages of "
          f"~{len(unsigned) // 100 / 10:.1f} KB per run, {args.rounds} rounds")
    print("| round | " + " | ".join(f"{LABELS[n]} msgs/s" for n in RUNS) + " | "
          + " | ".join(f"{LABELS[n]} / without" for n in RUNS[1:]) + " |")
    print("|---" * (len(RUNS) * 2) + "|")
    for n, row in enumerate(rows, 1):
        print(f"| {n} | " + " | ".join(f"{row[r]:,.0f}" for r in RUNS) + " | "
              + " | ".join(f"{row[r] / row['none']:.2f}" for r in RUNS[1:]) + " |")
    print("| median | " + " | ".join(f"{statistics.median(r[n] for r in rows):,.0f}"
                                     for n in RUNS) + " | "
          + " | ".join(f"{statistics.median(r[n] / r['none'] for r in rows):.2f}"
                       for n in RUNS[1:]) + " |")
    print()
    print(f"CPU per signed mail, one thread, {args.signatures} mails "
          "(time.process_time):")
    print("| signing | whole step ms | of it OpenSSL ms |")
    print("|---|---|---|")
    for name in RUNS[1:]:
        whole, openssl = cpu[name]
        print(f"| {LABELS[name]} | {whole:.3f} | {openssl:.3f} |")
    print()
    print(f"RSA-2048 mails signed per second: {parallel[0]:,.0f} on one thread, "
          f"{parallel[1]:,.0f} on two ({parallel[1] / parallel[0]:.2f}x)")
    return 0


def _unsigned(raw: bytes) -> bytes:
    """The last mail the sink took, without the DKIM-Signature fields put on it."""
    from gateway.outbound.dkim_canon import split_message
    fields, body = split_message(raw)
    kept = [(n, v) for n, v in fields if n.lower() != b"dkim-signature"]
    return b"".join(n + b":" + v + b"\r\n" for n, v in kept) + b"\r\n" + body


if __name__ == "__main__":
    sys.exit(main())
