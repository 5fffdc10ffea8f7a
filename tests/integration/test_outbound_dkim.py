"""R-O4: every DKIM signature the gateway makes verifies with two independent
verifiers, dkimpy and OpenDKIM (Debian's ``opendkim``, keys from a file instead
of DNS), for RSA, Ed25519 and both at once, on headers with non-ASCII and folded
values; and a table with a bad key stops ``mailgate serve``."""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap

import dkim
import pytest

from gateway.config import DkimKey
from gateway.outbound.dkim import DkimSigner
from tests import opendkim
from tests.e2e.helpers import DEPARTMENTS, deliver, mail
from tests.integration.test_outbound_delivery import ACKS, outbound, sink  # noqa: F401
from tests.unit.test_dkim_signing import make_ed25519_key, make_key

# Realistic header shapes: RFC 2047 words (Q and B, folded between words), raw UTF-8
# (RFC 6532), long folded address lists, tabs and runs of spaces in values.
HEADER_SHAPES = [
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_Z=C3=BCrich_=E2=80=94_Drucker?=\r\n"
    b" =?utf-8?q?_brennt?=\r\n",
    b"Subject: =?utf-8?b?0J/RgNC40L3RgtC10YAg0L3QtSDRgNCw0LHQvtGC0LDQtdGC?=\r\n",
    b"Subject: Gr\xc3\xbc\xc3\x9fe \xe2\x80\x94 \xe6\x89\x93\xe5\x8d\xb0\xe6\x9c\xba\r\n",
    b"Subject:    spaces\t and\t\ttabs   \r\n",
    b"To: =?utf-8?q?Ren=C3=A9e_M=C3=BCller?= <renee@customer.test>,\r\n"
    b"\tcarol@customer.test,\r\n dave@customer.test\r\n",
    b"Cc: a@customer.test, b@customer.test, c@customer.test, d@customer.test,\r\n"
    b"  e@customer.test\r\n",
    b"References: <one@customer.test>\r\n <two@customer.test>\r\n\t<three@customer.test>\r\n",
    b"Content-Type: text/plain;\r\n charset=\"utf-8\";\r\n format=flowed\r\n",
]
FROMS = [b"From: Helpdesk <support@example.com>\r\n",
         b"From: =?utf-8?q?B=C3=BCro_Z=C3=BCrich?=\r\n <support@example.com>\r\n",
         b"From: \"M\xc3\xbcller, Anna\" <support@Example.COM>\r\n"]
BODIES = [b"We received your request.\r\n",
          b"Gr\xc3\xbc\xc3\x9fe  \t aus Z\xc3\xbcrich   \r\n\r\n\tindented\r\n\r\n\r\n",
          b"",
          b"=?not-a-word?= \r\n" * 3 + b"-- \r\nsignature\r\n"]


def corpus(seed: int = 18, count: int = 24) -> list[bytes]:
    rng = random.Random(seed)
    messages = []
    for n in range(count):
        head = [rng.choice(FROMS), b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n",
                f"Message-ID: <{n}.ack@gw1.mailgate>\r\n".encode(),
                b"MIME-Version: 1.0\r\n", b"X-Mailgate-Ref: 12-T\r\n"]
        head += rng.sample(HEADER_SHAPES, rng.randrange(2, len(HEADER_SHAPES)))
        rng.shuffle(head)
        messages.append(b"".join(head) + b"\r\n" + rng.choice(BODIES))
    return messages


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dkim-keys")
    return {"rsa": make_key(directory, "rsa"), "ed25519": make_ed25519_key(directory, "ed")}


@pytest.fixture(scope="module")
def records(keys):
    return {"rsa1._domainkey.example.com": keys["rsa"][1].decode(),
            "ed1._domainkey.example.com": keys["ed25519"][1].decode()}


def tables(keys, which: str) -> list[DkimKey]:
    rsa = DkimKey("example.com", "rsa1", str(keys["rsa"][0]))
    ed = DkimKey("example.com", "ed1", str(keys["ed25519"][0]), algorithm="ed25519-sha256")
    return {"rsa": [rsa], "ed25519": [ed], "dual": [rsa, ed]}[which]


def dkimpy_results(signed: bytes, records: dict[str, str]) -> list[bool]:
    dns = {name: txt.encode() for name, txt in records.items()}
    verifier = dkim.DKIM(signed)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    return [verifier.verify(idx=i, dnsfunc=lambda name, timeout=5: dns.get(
        name.decode().rstrip("."))) for i in range(count)]


@pytest.mark.parametrize("which", ["rsa", "ed25519", "dual"])
def test_r_o4_every_signature_verifies_with_dkimpy_and_opendkim(keys, records, which,
                                                                tmp_path):
    signer = DkimSigner(tables(keys, which))
    algorithms = {"rsa": ["rsa-sha256"], "ed25519": ["ed25519-sha256"],
                  "dual": ["rsa-sha256", "ed25519-sha256"]}[which]
    for n, raw in enumerate(corpus()):
        signed, domain = signer.sign(raw)
        assert domain == "example.com"
        assert dkimpy_results(signed, records) == [True] * len(algorithms), raw
        results = opendkim.verify(signed, records, tmp_path / str(n))
        assert sorted(r.algorithm for r in results) == sorted(algorithms), results
        assert all(r.result == "pass" for r in results), (results, raw)


@pytest.mark.parametrize("which", ["rsa", "ed25519"])
def test_r_o4_opendkim_fails_what_was_changed_after_signing(keys, records, which, tmp_path):
    """The independent verifier is not vacuous: it fails a changed Subject and body."""
    signed, _ = DkimSigner(tables(keys, which)).sign(corpus()[0])
    for n, change in enumerate([(b"X-Mailgate-Ref: 12-T", b"X-Mailgate-Ref: 12-T"),
                                (b"Date: Mon, 02 Jun", b"Date: Tue, 03 Jun"),
                                (b"\r\n\r\n", b"\r\n\r\nP.S. added\r\n")]):
        results = opendkim.verify(signed.replace(*change, 1), records, tmp_path / str(n))
        expected = "pass" if change[0] == change[1] else "fail"
        assert [r.result for r in results] == [expected], (change, results)


def test_r_o4_lf_line_ends_in_and_out_still_verify_with_opendkim(keys, records, tmp_path):
    raw = corpus()[1].replace(b"\r\n", b"\n")
    signed, _ = DkimSigner(tables(keys, "dual")).sign(raw)
    assert b"\r" not in signed
    assert [r.result for r in opendkim.verify(signed, records, tmp_path)] == ["pass", "pass"]
    assert dkimpy_results(signed, records) == [True, True]


async def test_r_o4_acknowledgement_sent_through_delivery_verifies_with_both(
        start_gateway, sink, tmp_path):  # noqa: F811
    """The real path: a customer's non-ASCII Subject comes back in the acknowledgement,
    which the delivery worker signs (RSA and Ed25519) on its threads and relays."""
    rsa_path, rsa_txt = make_key(tmp_path, "corp-rsa")
    ed_path, ed_txt = make_ed25519_key(tmp_path, "corp-ed")
    gw = await start_gateway(connectors=DEPARTMENTS, routes=ACKS, outbound=outbound(
        sink.port, dkim=(DkimKey("corp.test", "rsa1", str(rsa_path)),
                         DkimKey("corp.test", "ed1", str(ed_path),
                                 algorithm="ed25519-sha256"))))
    await deliver(gw, mail(subject="Grüße aus Zürich — der Drucker im zweiten Stock brennt "
                                   "schon wieder, bitte dringend helfen",
                           sender="René Müller <carol@customer.test>"))
    await gw.delivery.drain()
    [(_, _, raw)] = sink.received
    assert b"=?utf-8?" in raw.lower().split(b"\r\n\r\n")[0]     # the Subject came back encoded
    records = {"rsa1._domainkey.corp.test": rsa_txt.decode(),
               "ed1._domainkey.corp.test": ed_txt.decode()}
    assert dkimpy_results(raw, records) == [True, True]
    results = await asyncio.to_thread(opendkim.verify, raw, records, tmp_path / "odk")
    assert sorted((r.algorithm, r.result) for r in results) == [
        ("ed25519-sha256", "pass"), ("rsa-sha256", "pass")]


def test_r_o4_mailgate_serve_refuses_a_bad_ed25519_key_naming_the_table(tmp_path):
    key = tmp_path / "ed.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    config = tmp_path / "gateway.toml"
    config.write_text(textwrap.dedent(f"""
        [storage]
        url = "sqlite:///{tmp_path}/mailgate.db"
        [lmtp]
        listen = "127.0.0.1:0"
        [http]
        listen = "127.0.0.1:0"
        admin_token = "t0ken-for-the-test"
        [outbound]
        enabled = true
        [outbound.default_gateway]
        host = "127.0.0.1"
        [[outbound.dkim]]
        domain = "corp.test"
        selector = "ed1"
        key_file = "{key}"
        algorithm = "ed25519-sha256"
        """))
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert ("[[outbound.dkim]] domain='corp.test' selector='ed1' algorithm='ed25519-sha256' "
            f"key_file='{key}': not a usable private key") in done.stderr
    assert "openssl genpkey -algorithm ed25519" in done.stderr
