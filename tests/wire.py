"""A deliberately dumb LMTP/SMTP client for tests that need exact bytes on the wire.

Real clients (smtplib, swaks, Postfix) are used wherever they can express the
case; this one exists for what they refuse to send: pipelined batches, bare
LFs, smuggling payloads, and reading every reply line after DATA.
"""
from __future__ import annotations

import asyncio


class Reply(list):
    """The lines of one (possibly multi-line) reply."""

    @property
    def code(self) -> int:
        return int(self[-1][:3])

    @property
    def text(self) -> str:
        return "\n".join(self)


class WireClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.transcript: list[str] = []

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> "WireClient":
        reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        client.greeting = await client.reply()
        return client

    async def reply(self, timeout: float = 10) -> Reply:
        lines = Reply()
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError(f"connection closed; so far {lines}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.transcript.append(line)
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    async def replies(self, count: int) -> list[Reply]:
        return [await self.reply() for _ in range(count)]

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def command(self, line: str) -> Reply:
        await self.send(line + "\r\n")
        return await self.reply()

    async def transaction(self, sender: str, rcpts: list[str], data: bytes, *,
                          smtp: bool = False) -> tuple[list[Reply], list[Reply]]:
        """MAIL, RCPTs, DATA, content; returns (RCPT replies, the replies after the data:
        one per accepted RCPT for LMTP, one for ``smtp``)."""
        assert (await self.command(f"MAIL FROM:<{sender}>")).code == 250
        rcpt_replies = [await self.command(f"RCPT TO:<{r}>") for r in rcpts]
        accepted = sum(1 for r in rcpt_replies if r.code == 250)
        data_reply = await self.command("DATA")
        if data_reply.code != 354:
            return rcpt_replies, [data_reply]
        await self.send(data + b".\r\n")
        return rcpt_replies, await self.replies(1 if smtp else accepted)

    async def close(self) -> None:
        try:
            await self.command("QUIT")
        except (ConnectionError, asyncio.TimeoutError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def message(subject: str = "Hello", body: str = "Body line.\r\n", message_id: str | None = None,
            to: str = "support@example.test", sender: str = "alice@customer.test") -> bytes:
    """A small CRLF message as raw bytes (raw on purpose: these tests are about bytes)."""
    headers = [f"From: {sender}", f"To: {to}", f"Subject: {subject}"]
    if message_id:
        headers.append(f"Message-ID: {message_id}")
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()
