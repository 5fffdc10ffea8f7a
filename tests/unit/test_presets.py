"""R-C1 service presets and the connector checks the API, the config seeds and the
directory file share (gateway.presets, gateway.directory_file)."""
from __future__ import annotations

import dataclasses

import pytest

from gateway.directory import presets
from gateway.directory.connector_checks import (POLL_CHECKS, connector_problems,
                                                credential_problems, implied_protocol,
                                                used_settings, with_preset)
from gateway.model import POLL_FIELDS, Connector


def connector(service: str, **fields) -> Connector:
    return Connector(name="c", service=service, primary_address="c@example.test", **fields)


@pytest.mark.parametrize("service,direction,expected", [
    ("gmail_imap", "incoming", ("imap", "imap.gmail.com", 993, "implicit", "")),
    ("gmail_pop3", "both", ("pop3", "pop.gmail.com", 995, "implicit", "smtp.gmail.com")),
    ("o365_imap", "outgoing", ("imap", "outlook.office365.com", 993, "implicit",
                               "smtp.office365.com")),
    ("o365_pop3", "incoming", ("pop3", "outlook.office365.com", 995, "implicit", "")),
    ("o365_graph", "both", ("graph", "", 0, "implicit", "")),
    ("lmtp", "incoming", ("lmtp", "", 0, "implicit", "")),
])
def test_r_c1_each_service_preset_fills_protocol_host_port_tls(service, direction, expected):
    c = presets.apply(connector(service, direction=direction))
    assert (c.protocol, c.host, c.port, c.tls, c.smtp_host) == expected


def test_r_c1_a_preset_fills_only_what_is_blank():
    c = presets.apply(connector("gmail_imap", host="imap.proxy.test", port=1993,
                                smtp_host="relay.test", direction="both"))
    assert (c.host, c.port, c.smtp_host) == ("imap.proxy.test", 1993, "relay.test")


@pytest.mark.parametrize("protocol,tls,port", [
    ("imap", "implicit", 993), ("imap", "starttls", 143), ("imap", "none", 143),
    ("pop3", "implicit", 995), ("pop3", "starttls", 110), ("pop3", "none", 110),
    ("graph", "implicit", 0), ("lmtp", "implicit", 0)])
def test_r_c1_default_ports(protocol, tls, port):
    assert presets.default_port(protocol, tls) == port


def test_r_c1_a_given_tls_is_kept_and_the_port_follows_it():
    """presets.apply fills a blank host together with the preset's TLS mode; an explicit
    tls must win over it."""
    c = with_preset(connector("o365_imap", tls="starttls"), given={"tls"})
    assert (c.host, c.tls, c.port) == ("outlook.office365.com", "starttls", 143)
    c = with_preset(connector("o365_imap", tls="starttls", port=1143), given={"tls", "port"})
    assert c.port == 1143
    assert with_preset(connector("o365_imap")).tls == "implicit"


@pytest.mark.parametrize("service,given,implied,clash", [
    ("gmail_imap", None, "imap", False), ("gmail_imap", "imap", "imap", False),
    ("gmail_imap", "pop3", "imap", True), ("lmtp", "imap", "lmtp", True),
    ("o365_graph", None, "graph", False), ("other", "pop3", "pop3", False),
    ("other", None, "", False), ("other", "", "", False)])
def test_r_c1_the_protocol_is_implied_except_for_other(service, given, implied, clash):
    protocol, problem = implied_protocol(service, given)
    assert protocol == implied and (problem is not None) == clash
    if clash:
        assert problem[0] == "protocol" and problem[1].startswith("R-C1: ")


@pytest.mark.parametrize("c,given,field,rule", [
    (connector("other", protocol=""), (), "protocol", "R-C1"),
    (connector("other", protocol="imap"), (), "host", "R-C1"),
    (connector("o365_graph", protocol="graph"), (), "tenant_id", "R-I6"),
    (connector("o365_graph", protocol="graph", tenant_id="t"), (), "application_id", "R-I6"),
    (connector("gmail_pop3", protocol="pop3", host="h", folders=("INBOX", "Sent")), (),
     "folders", "R-I5"),
    (connector("lmtp"), ("host",), "host", "R-C1"),
    (connector("o365_graph", protocol="graph", tenant_id="t", application_id="a"),
     ("port",), "port", "R-C1"),
    (connector("gmail_imap", protocol="imap", host="h"), ("tenant_id",), "tenant_id", "R-C1"),
    (connector("o365_graph", protocol="graph", tenant_id="t", application_id="a",
               certificate_file="/k.PEM"), (), "certificate_thumbprint", "R-I6"),
])
def test_r_c1_connector_problems_name_field_and_rule(c, given, field, rule):
    found = connector_problems(c, given)
    assert found and found[0][0] == field and found[0][1].startswith(f"{rule}: "), found


def test_r_c1_an_outgoing_only_connector_needs_no_poll_server():
    c = connector("other", protocol="imap", direction="outgoing", smtp_host="relay.test")
    assert connector_problems(c) == []
    assert credential_problems(c, None, None, {}) == []


@pytest.mark.parametrize("c,username,password,secrets,field", [
    (connector("gmail_imap", protocol="imap"), None, None, {}, "username"),
    (connector("gmail_imap", protocol="imap"), "u", None, {}, "password"),
    (connector("o365_graph", protocol="graph"), None, None, {}, "client_secret"),
    (connector("o365_graph", protocol="graph", certificate_file="/c.pfx"), None, None,
     {"client_secret": "s"}, "certificate_file"),
])
def test_r_c1_r_i6_an_enabled_polled_connector_needs_its_login(c, username, password,
                                                              secrets, field):
    [(found, _)] = credential_problems(c, username, password, secrets)
    assert found == field
    assert credential_problems(dataclasses.replace(c, enabled=False), username, password,
                               secrets) == []


def test_the_settings_each_protocol_uses():
    assert used_settings("lmtp") == ()
    assert "host" in used_settings("imap") and "tenant_id" not in used_settings("pop3")
    assert "port" not in used_settings("graph") and "graph_base_url" in used_settings("graph")
    assert set(used_settings("imap")) | set(used_settings("graph")) == set(POLL_FIELDS)


@pytest.mark.parametrize("field,good,bad", [
    ("host", ["", "imap.example.com", "127.0.0.1", "::1"], ["a b", "x/y", 1, "é.test"]),
    ("port", [1, 993, 65535], [0, 65536, "993", True, 9.5]),
    ("tls", ["implicit", "starttls", "none"], ["ssl", "", None]),
    ("folders", [["INBOX"], ["INBOX", "Über/Ordner"]],
     [[], [""], [" "], ["x" * 256], ["a\r\nb"], ["A", "A"], "INBOX", [1]]),
    ("poll_interval", [10, 60, 86400], [9, 86401, 60.0, False]),
    ("authority_host", ["https://login.microsoftonline.com", "https://127.0.0.1:8443"],
     ["http://login.microsoftonline.com", "https://", "https://a b", ""]),
    ("graph_base_url", ["https://graph.microsoft.com/v1.0", "https://[::1]:8443/v1.0"],
     ["graph.microsoft.com", "ftp://x"]),
    ("application_id", ["", "11111111-2222-3333-4444-555555555555"], ["app", "1111"]),
    ("tenant_id", ["", "contoso.onmicrosoft.com", "11111111-2222-3333-4444-555555555555"],
     ["-x", "a b"]),
    ("certificate_thumbprint", ["", "0123456789abcdef0123456789ABCDEF01234567"],
     ["0123", "g" * 40]),
    ("start_from", ["all", "now"], ["today", ""]),
    ("tls_verify", [True, False], [0, "false"]),
    ("ca_file", ["", "/etc/ssl/ca.pem"], ["a\nb", 3]),
])
def test_poll_setting_checks(field, good, bad):
    test, what = POLL_CHECKS[field]
    assert what and all(test(v) for v in good), [v for v in good if not test(v)]
    assert not any(test(v) for v in bad), [v for v in bad if test(v)]


def test_every_poll_setting_has_a_check():
    assert set(POLL_CHECKS) == set(POLL_FIELDS)
