"""Ed25519 signatures (RFC 8463) alone or beside RSA ("dual signing"), checked with
dkimpy; the tables that configure them, checked when the gateway starts."""
from __future__ import annotations

import base64
import textwrap

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.app import Gateway
from gateway.config import ConfigError, DefaultGatewaySection, DkimKey, OutboundSection, load
from gateway.outbound.dkim import DkimSigner
from tests.conftest import make_settings
from tests.unit.test_dkim_signing import MESSAGE, make_ed25519_key, make_key, signature_tags


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dkim-ed25519")
    return {"rsa": make_key(directory, "example.com"),
            "ed25519": make_ed25519_key(directory, "example.com")}


@pytest.fixture(scope="module")
def dns(keys):
    records = {"rsa1._domainkey.example.com": keys["rsa"][1],
               "ed1._domainkey.example.com": keys["ed25519"][1]}
    return lambda name, timeout=5: records.get(name.decode().rstrip("."))


def ed25519_table(path) -> DkimKey:
    return DkimKey("example.com", "ed1", str(path), algorithm="ed25519-sha256")


@pytest.fixture(scope="module")
def dual(keys):
    return DkimSigner([DkimKey("example.com", "rsa1", str(keys["rsa"][0])),
                       ed25519_table(keys["ed25519"][0])])


def signatures(signed: bytes) -> list[dict[str, str]]:
    """The tags of every DKIM-Signature field, top first."""
    out = []
    while signed.startswith(b"DKIM-Signature:"):
        out.append(signature_tags(signed))
        signed = signed[signed.index(b"\n", signed.index(b"b=")) + 1:]
        while signed[:1] in (b" ", b"\t"):
            signed = signed[signed.index(b"\n") + 1:]
    return out


def test_r_o4_ed25519_signature_verifies_against_the_raw_public_key(keys, dns):
    signed, domain = DkimSigner([ed25519_table(keys["ed25519"][0])]).sign(MESSAGE)
    assert domain == "example.com" and signed.endswith(MESSAGE)
    [tags] = signatures(signed)
    assert (tags["a"], tags["s"], tags["c"]) == ("ed25519-sha256", "ed1", "relaxed/relaxed")
    assert len(base64.b64decode(tags["b"])) == 64
    assert dkim.verify(signed, dnsfunc=dns)


def test_r_o4_ed25519_dns_record_publishes_the_raw_32_byte_key(keys):
    [key] = DkimSigner([ed25519_table(keys["ed25519"][0])]).keys
    record = key.dns_record()
    assert record.startswith("v=DKIM1; k=ed25519; p=")
    public = key.private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
    assert base64.b64decode(record.rpartition("p=")[2]) == public
    assert record.encode() == keys["ed25519"][1]


def test_r_o4_rsa_dns_record_publishes_the_subject_public_key_info(keys):
    [key] = DkimSigner([DkimKey("example.com", "rsa1", str(keys["rsa"][0]))]).keys
    assert key.dns_record().encode() == keys["rsa"][1]


def test_r_o4_dual_signing_adds_an_rsa_and_an_ed25519_signature_that_both_verify(dual, dns):
    signed, domain = dual.sign(MESSAGE)
    assert domain == "example.com" and signed.endswith(MESSAGE)
    tags = signatures(signed)
    assert [t["a"] for t in tags] == ["rsa-sha256", "ed25519-sha256"]
    assert tags[0]["bh"] == tags[1]["bh"] and tags[0]["h"] == tags[1]["h"]
    verifier = dkim.DKIM(signed)
    assert verifier.verify(idx=0, dnsfunc=dns) and verifier.verify(idx=1, dnsfunc=dns)


def test_r_o4_tampering_breaks_both_dual_signatures(dual, dns):
    signed, _ = dual.sign(MESSAGE)
    tampered = dkim.DKIM(signed.replace(b"Subject: [12-T]", b"Subject: [13-T]"))
    assert not tampered.verify(idx=0, dnsfunc=dns)
    assert not tampered.verify(idx=1, dnsfunc=dns)


def test_r_o4_two_ed25519_tables_for_one_domain_are_an_error(keys):
    path = keys["ed25519"][0]
    with pytest.raises(ValueError, match="configured twice with algorithm 'ed25519-sha256'"):
        DkimSigner([ed25519_table(path),
                    DkimKey("EXAMPLE.com", "ed2", str(path), algorithm="ed25519-sha256")])


def test_r_o4_rsa_key_under_ed25519_algorithm_is_refused_with_the_fix(keys):
    with pytest.raises(ValueError) as err:
        DkimSigner([ed25519_table(keys["rsa"][0])])
    assert "holds an RSA key, not an Ed25519 one" in str(err.value)
    assert "openssl genpkey -algorithm ed25519" in str(err.value)
    assert "algorithm = 'rsa-sha256'" in str(err.value)


def test_r_o4_ed25519_key_under_the_default_algorithm_is_refused_with_the_fix(keys):
    with pytest.raises(ValueError, match="set algorithm = 'ed25519-sha256'"):
        DkimSigner([DkimKey("example.com", "ed1", str(keys["ed25519"][0]))])


@pytest.mark.parametrize("content", [
    b"not a key\n",
    b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    None])
def test_r_o4_bad_ed25519_key_file_stops_the_gateway_naming_the_table(tmp_path, content):
    path = tmp_path / "ed25519.pem"
    if content is not None:
        path.write_bytes(content)
    settings = make_settings(tmp_path, outbound=OutboundSection(
        enabled=True, dkim=(ed25519_table(path),),
        default_gateway=DefaultGatewaySection(host="127.0.0.1")))
    with pytest.raises(ValueError) as err:
        Gateway(settings)
    message = str(err.value)
    assert message.startswith("[[outbound.dkim]] domain='example.com' selector='ed1' "
                              "algorithm='ed25519-sha256'")
    assert str(path) in message
    assert ("openssl genpkey -algorithm ed25519" in message
            or "cannot read the key file" in message)


def test_r_o4_algorithm_is_read_from_the_config_file_and_checked(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent("""
        [[outbound.dkim]]
        domain = "example.com"
        selector = "rsa1"
        key_file = "/etc/mailgate/dkim/rsa1.pem"

        [[outbound.dkim]]
        domain = "example.com"
        selector = "ed1"
        key_file = "/etc/mailgate/dkim/ed1.pem"
        algorithm = "ed25519-sha256"
        """))
    first, second = load(str(path), env={}).outbound.dkim
    assert (first.algorithm, second.algorithm) == ("rsa-sha256", "ed25519-sha256")
    path.write_text(path.read_text().replace('"ed25519-sha256"', '"ed25519"'))
    with pytest.raises(ConfigError) as err:
        load(str(path), env={})
    [problem] = err.value.problems
    assert "algorithm = 'ed25519'" in problem and "'ed25519-sha256'" in problem
