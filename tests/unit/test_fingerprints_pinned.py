"""R-D1, R-D2: stored fingerprints must not change.

F2 and F3 are kept with every work item's mail (R-D4's window). If their computation
changed, a re-delivery of mail received before the change would look new to dedup (R-D2)
and land twice. The values below were computed with the code of commit b7bf780 (before F2
became a streaming pass over the body), for messages that cover what the normalisation
touches: folding, tabs, CRLF, Unicode whitespace (NBSP, EM SPACE, IDEOGRAPHIC SPACE, LINE
SEPARATOR, the \\x1c-\\x1f separators, NEL), characters outside the BMP, MIME parts, HTML
only, no Message-ID, an unparseable copy, and a body larger than the streaming chunk.
"""
from __future__ import annotations

import random

import pytest

from gateway.mail import Mail
from gateway.pipeline import fingerprints
from gateway.pipeline.fingerprints import _digest, f1, f2, f3

HEAD = (b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <Joerg.Mueller@Example.org>\r\n"
        b"To: Support <support@example.test>, \"Smith, J\" <j@example.org>,\r\n"
        b" =?iso-8859-1?Q?Fran=E7ois?= <f@example.fr>\r\n"
        b"Cc: team: a@example.org, b@example.org;, c@example.org (Carol)\r\n"
        b"Subject: =?utf-8?b?UmU6ICBEcnVja2VyICBrYXB1dHQ=?=\r\n\tim 3. Stock\r\n")


def _words(seed: int, count: int) -> str:
    """Deterministic text: words, every kind of whitespace, a few characters past the BMP."""
    rng = random.Random(seed)
    spaces = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\n\n", " \u00a0", "\u2003", "\u3000",
              "\u2028", "\x1c", "\x1f", "\x85", "\x0b\x0c", " \n \t "]
    words = ["printer", "Drucker", "kaputt", "floor", "3", "ÄÖÜ", "naïve", "日本語", "🙂",
             "a", "I", "x" * 40, "–", "end."]
    return "".join(rng.choice(words) + rng.choice(spaces) for _ in range(count))


def plain(body: str, *, message_id: bool = True, charset: str = "utf-8") -> bytes:
    mid = b"Message-ID: <pinned-1@example.org>\r\n" if message_id else b""
    return (HEAD + mid + f"Content-Type: text/plain; charset={charset}\r\n".encode()
            + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body.encode(charset))


def multipart() -> bytes:
    return (HEAD + b"Message-ID: <pinned-2@example.org>\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            b"--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n"
            b"--b2\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            b"Gr=FC=DFe,\r\n\r\n  der Drucker=20\r\nim 3. Stock=\r\n ist kaputt.\r\n"
            b"--b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b"<p>Gr\xc3\xbc\xc3\x9fe</p>\r\n--b2--\r\n"
            b"--b1\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"a.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCg==\r\n"
            b"--b1\r\nContent-Type: image/png\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''%C3%BC.png\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b1--\r\n")


def html_only() -> bytes:
    return (HEAD + b"Message-ID: <pinned-3@example.org>\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n"
            b"<html><style>p {}</style><script>x()</script><p>Hello&nbsp;&amp;"
            b"\r\n  world</p><br>line&#8195;two<div>\xe2\x80\x83three</div></html>\r\n")


def bomb() -> bytes:
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                    for i in range(60))
    return b"From: a@example.org\r\nSubject: s\r\nMessage-ID: <x@y>\r\n" + head + b"one"


MESSAGES = {
    "plain": lambda: plain("The printer  on floor 3\r\n\r\nis\tbroken. \r\n-- \r\nJörg\r\n"),
    "unicode-whitespace": lambda: plain(_words(1, 400)),
    "latin-1": lambda: plain("Grüße\u00a0aus  Köln\r\n", charset="iso-8859-1"),
    "no-message-id": lambda: plain("no id here\n", message_id=False),
    "empty-body": lambda: plain(""),
    "whitespace-body": lambda: plain(" \r\n\t\u3000\r\n"),
    "multipart": multipart,
    "html-only": html_only,
    "unparseable": bomb,
    "large": lambda: plain(_words(2, 200_000)),     # 1.5 MB: many chunks, over _HOLD
}

PINNED = {   # name: (f2, f3), computed with the code of commit b7bf780
    "empty-body": ("8bca001f58bcf64c15a703d59f2593d7c29eda3b6a9f4c9fe32fa0683c5a89cd",
                  "8e5320a98acc6278714cf125d1f152c71aa5246d8d87e97accb775c6bb609a72"),
    "html-only": ("bfe3d79ae03c586713567515313ee26db2c200c0c4d4e16e1a7f795486e52a98",
                 "d49e4998e09146b5912861ee9dcbfac8d869fe2580bc42663b620f4ee411e755"),
    "large": ("914efc856e3efe458a50f6aea282045fd7cae7f43f0a77650307f763a35d6d42",
             "8e5320a98acc6278714cf125d1f152c71aa5246d8d87e97accb775c6bb609a72"),
    "latin-1": ("3046552e252c02fa884c161de7072ab8cc09d7e13b9fa13dde99fb2fbc781612",
               "8e5320a98acc6278714cf125d1f152c71aa5246d8d87e97accb775c6bb609a72"),
    "multipart": ("a0614b6d5e1062b8f883a84ea6ab11ed7222f5cba5fd6f9554a31396b0061814",
                 "05f3f20752976a05b7dd1ac4748d2949afa0167251af8b265c690e6079a66d39"),
    "no-message-id": ("4a6abf8885fb43078c48ebf13a1ec1915af094211dc36342b6c4b3d9b21d363e",
                     "3873b0a369ef3dba2e0b100cb3a579b6e522ac6b9448d6dbb50b472bc7c12b49"),
    "plain": ("fb01eb46ca9f7a8315df380a0ae6e495333e7db7b752f3d5a5afbe560a453066",
             "8e5320a98acc6278714cf125d1f152c71aa5246d8d87e97accb775c6bb609a72"),
    "unicode-whitespace": ("cb1c8059146f8930ec437e90df29a49b7e4c271dd6bbaab7ff92fd35ed7eadfd",
                          "8e5320a98acc6278714cf125d1f152c71aa5246d8d87e97accb775c6bb609a72"),
    "unparseable": ("e6e34c6f63442befe06d3ea6fd6a6ece4d23684dc4f338565ed72bf41ff9ee88",
                   "8b36295b7be9fa7b6ebca97d8ceca40788231df43da9746cb4af659511089b45"),
    "whitespace-body": ("8bca001f58bcf64c15a703d59f2593d7c29eda3b6a9f4c9fe32fa0683c5a89cd",
                       "8e5320a98acc6278714cf125d1f152c71aa5246d8d87e97accb775c6bb609a72"),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_r_d2_fingerprints_are_those_already_stored(name):
    mail = Mail(MESSAGES[name]())
    assert (f2(mail), f3(mail)) == PINNED[name]


def _old_f2(mail: Mail) -> str:
    """F2 as b7bf780 computed it: the body's words joined in memory."""
    if mail.parse_error:
        return _digest("F2/1-raw", f1(mail.raw))
    return _digest("F2/1", fingerprints._subject(mail), mail.from_address,
                   fingerprints._recipients(mail), " ".join(mail.text_body.split()),
                   fingerprints._attachments(mail))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 4096])
def test_r_d2_streamed_body_equals_the_joined_one_at_every_chunk_size(monkeypatch, chunk):
    """Words and whitespace runs cut by every chunk boundary still hash as one text."""
    monkeypatch.setattr(fingerprints, "_CHUNK", chunk)
    bodies = ["", " ", "a", " a", "a ", "  a  b  ", "\u3000a\u2003\u2003b\x85", "ab cd",
              "x" * 50, " " * 50, _words(3, 300), "🙂 🙂\u00a0🙂"]
    for body in bodies:
        mail = Mail(plain(body))
        assert f2(mail) == _old_f2(mail), repr(body)


@pytest.mark.parametrize("chunk, hold", [(1, 0), (5, 0), (16, 1 << 20), (16, 40)])
def test_r_d2_streamed_body_equals_the_joined_one_on_random_text(monkeypatch, chunk, hold):
    """Both ways of feeding the length first: pieces kept (small bodies) or read twice."""
    monkeypatch.setattr(fingerprints, "_CHUNK", chunk)
    monkeypatch.setattr(fingerprints, "_HOLD", hold)
    rng = random.Random(5)
    alphabet = "ab \t\n\r\u00a0\u2003\u3000\u2028\x1c\x1f\x85\x0b\x0c\xe9\u65e5\U0001f642"
    for _ in range(300):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        mail = Mail(plain(body))
        assert f2(mail) == _old_f2(mail), repr(body)


def test_r_d2_a_body_over_the_hold_is_read_twice_not_kept(monkeypatch):
    """Past ``_HOLD`` normalised bytes, nothing of the body is kept between the passes."""
    passes = []
    pieces = fingerprints._word_pieces

    def counted(text):
        passes.append(0)
        for piece in pieces(text):
            passes[-1] += 1
            yield piece
    monkeypatch.setattr(fingerprints, "_word_pieces", counted)
    mail = Mail(MESSAGES["large"]())
    assert f2(mail) == PINNED["large"][0]
    assert len(passes) == 2 and passes[0] == passes[1] > 10
    passes.clear()
    assert f2(Mail(MESSAGES["plain"]())) == PINNED["plain"][0]
    assert len(passes) == 1
