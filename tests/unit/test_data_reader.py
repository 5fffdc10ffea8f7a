"""The DATA reader: only <CRLF>.<CRLF> ends data (R-I3), limits, dot-unstuffing."""
from __future__ import annotations

import asyncio

import pytest

from gateway.protocols.data import DataLimits, count_header_fields, read_data, unstuff

LIMITS = DataLimits(max_size=1_000_000, max_line_length=1000, max_header_count=100)


async def read(payload: bytes, limits: DataLimits = LIMITS, *, chunk: int | None = None,
               reader_limit: int = 65536):
    reader = asyncio.StreamReader(limit=reader_limit)
    pieces = [payload] if chunk is None else [payload[i:i + chunk]
                                              for i in range(0, len(payload), chunk)]

    async def feed():
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)

    feeder = asyncio.create_task(feed())
    result = await asyncio.wait_for(read_data(reader, limits), 5)
    await feeder
    rest = reader._buffer.decode()  # what the next command would read
    return result, rest


async def test_r_i3_plain_message_ends_at_crlf_dot_crlf():
    result, rest = await read(b"Subject: a\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert result.content == b"Subject: a\r\n\r\nbody\r\n"
    assert rest == "QUIT\r\n"


async def test_r_i3_empty_data_is_an_empty_message():
    result, rest = await read(b".\r\nRSET\r\n")
    assert result.content == b""
    assert rest == "RSET\r\n"


@pytest.mark.parametrize("bare", [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\n", b"\r\n.\r"])
async def test_r_i3_a_dot_after_a_bare_line_ending_never_ends_data(bare):
    payload = (b"Subject: one\r\n\r\nfirst" + bare +
               b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<support@example.test>\r\nDATA\r\n"
               b"Subject: smuggled\r\n\r\nsecond\r\n.\r\n")
    result, rest = await read(payload)
    assert result.error is None
    assert b"Subject: smuggled" in result.content
    assert rest == ""


async def test_r_i3_dot_stuffed_lines_are_unstuffed():
    result, _ = await read(b"..leading\r\nmid\r\n..\r\n...\r\n.\r\n")
    assert result.content == b".leading\r\nmid\r\n.\r\n..\r\n"


async def test_r_i3_lines_ending_in_a_dot_are_content():
    result, _ = await read(b"Subject: x\r\n\r\nEnd of sentence.\r\nx.\r\n.\r\n")
    assert result.content == b"Subject: x\r\n\r\nEnd of sentence.\r\nx.\r\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
async def test_r_i3_terminator_split_across_reads_is_found(chunk):
    payload = b"Subject: s\r\n\r\n" + b"line.\r\n" * 20 + b".\r\n"
    result, _ = await read(payload, chunk=chunk)
    assert result.content == payload[:-3]


async def test_r_i3_large_message_beyond_the_reader_buffer_is_read_whole():
    body = b"".join(b"%06d " % i + b"x" * 70 + b"\r\n" for i in range(20000))  # ~1.5 MB
    result, _ = await read(b"Subject: big\r\n\r\n" + body + b".\r\n",
                           DataLimits(10_000_000, 1000, 100), reader_limit=1024)
    assert result.content == b"Subject: big\r\n\r\n" + body


async def test_r_i3_over_size_limit_is_552_after_reading_to_the_end():
    result, rest = await read(b"Subject: s\r\n\r\n" + b"y" * 500 + b"\r\n.\r\nNOOP\r\n",
                              DataLimits(100, 1000, 100))
    assert result.content is None
    assert result.error.startswith("552 5.3.4")
    assert rest == "NOOP\r\n"


async def test_r_i3_line_over_limit_is_a_clear_5xx():
    result, _ = await read(b"Subject: s\r\n\r\n" + b"z" * 1200 + b"\r\n.\r\n", chunk=100)
    assert result.error.startswith("500 5.5.2 Line too long: 1202 octets")


async def test_r_i3_line_of_exactly_the_limit_is_accepted():
    line = b"z" * 998 + b"\r\n"
    result, _ = await read(b"Subject: s\r\n\r\n" + line + b".\r\n")
    assert result.error is None


async def test_r_i3_too_many_header_fields_is_552():
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    result, _ = await read(headers + b"\r\nbody\r\n.\r\n")
    assert result.error.startswith("552 5.3.4 Too many header fields: 150")


def test_r_i3_folded_lines_belong_to_their_header_field():
    head = b"".join(b"X-H%d: v\r\n  folded\r\n" % i for i in range(60)) + b"\r\nbody"
    assert count_header_fields(head) == 60


def test_unstuff_leaves_unstuffed_text_alone():
    assert unstuff(b"a\r\nb\r\n") == b"a\r\nb\r\n"
