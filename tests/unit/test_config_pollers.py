"""Config seeds of polled connectors (SPEC §5.2, R-C1, R-I6, R-I5, R-B5): the API's rules,
each problem at its file:line with a fix; secrets from ``*_file``; ``entry()`` applies the
service's preset."""
from __future__ import annotations

import textwrap

import pytest

from gateway.config import BootstrapConnector, ConfigError, load
from gateway.model import Connector, ConnectorEntry


def write(tmp_path, text: str):
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(str(path), env={})
    return info.value.problems


def line_of(path, needle: str, after: str = "") -> int:
    text = path.read_text()
    start = text.index(after) if after else 0
    return text[:text.index(needle, start)].count("\n") + 1


def secret_file(tmp_path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value + "\n")
    return str(path)


def test_r_c1_a_gmail_seed_gets_its_preset_and_its_password_from_a_file(tmp_path):
    password = secret_file(tmp_path, "imap.secret", "app-passw0rd")
    path = write(tmp_path, f"""
        [[directory.connectors]]
        name = "gmail"
        service = "gmail_imap"
        primary_address = "desk@example.test"
        direction = "both"
        username = "desk@example.test"
        password_file = "{password}"
        folders = ["INBOX", "Support"]
        keep_on_server = true
        start_from = "now"
        """)
    [seed] = load(str(path), env={}).directory.connectors
    entry = seed.entry()
    connector, username, secret, secrets = (entry.connector, entry.username, entry.password,
                                            entry.secrets)
    assert (connector.protocol, connector.host, connector.port, connector.tls) == \
        ("imap", "imap.gmail.com", 993, "implicit")
    assert connector.smtp_host == "smtp.gmail.com"                     # direction both
    assert connector.folders == ("INBOX", "Support") and connector.keep_on_server
    assert connector.start_from == "now" and connector.polled
    assert (username, secret, secrets) == ("desk@example.test", "app-passw0rd", {})


def test_r_i6_a_graph_seed_reads_its_secrets_from_files(tmp_path):
    client = secret_file(tmp_path, "graph.secret", "cl1ent~secret")
    pfx = secret_file(tmp_path, "pfx.secret", "pfx-password")
    path = write(tmp_path, f"""
        [[directory.connectors]]
        name = "graph"
        service = "o365_graph"
        primary_address = "team@example.test"
        tenant_id = "contoso.onmicrosoft.com"
        application_id = "11111111-2222-3333-4444-555555555555"
        client_secret_file = "{client}"
        certificate_password_file = "{pfx}"
        shared_mailbox = "team@contoso.test"
        authority_host = "https://127.0.0.1:8443"
        graph_base_url = "https://127.0.0.1:8443/v1.0"
        ca_file = "/etc/mailgate/test-ca.pem"
        """)
    [seed] = load(str(path), env={}).directory.connectors
    entry = seed.entry()
    connector, username, password, secrets = (entry.connector, entry.username, entry.password,
                                              entry.secrets)
    assert connector.protocol == "graph" and connector.port == 0 and connector.host == ""
    assert connector.graph_base_url == "https://127.0.0.1:8443/v1.0"
    assert (username, password) == (None, None)
    assert secrets == {"client_secret": "cl1ent~secret", "certificate_password": "pfx-password"}


def test_r_c1_an_other_seed_keeps_what_it_gives():
    seed = BootstrapConnector(name="pop", service="other", protocol="pop3",
                              primary_address="pop@example.test", host="pop.example.test",
                              tls="starttls", username="u", password="p")
    connector = seed.entry().connector
    assert (connector.protocol, connector.host, connector.port, connector.tls) == \
        ("pop3", "pop.example.test", 110, "starttls")


def test_an_lmtp_seed_is_the_connector_it_always_was():
    seed = BootstrapConnector(name="support", primary_address="support@example.test",
                              aliases=("help@example.test",))
    assert seed.entry() == ConnectorEntry(Connector(name="support", service="lmtp",
                                                    protocol="lmtp",
                                                    primary_address="support@example.test",
                                                    aliases=("help@example.test",)))


def test_each_seed_problem_is_at_its_own_connectors_line_with_a_fix(tmp_path):
    path = write(tmp_path, """
        [[directory.connectors]]
        name = "support"
        primary_address = "support@example.test"

        [[directory.connectors]]
        name = "gmail"
        service = "gmail_imap"
        primary_address = "desk@example.test"
        username = "desk@example.test"
        password = "ppppppppppppppppppppppppppppppppppppppppppppppppppp"
        port = 70000
        poll_interval = 5
        fodlers = ["INBOX"]

        [[directory.connectors]]
        name = "odd"
        service = "other"
        protocol = "imap"
        primary_address = "odd@example.test"
        enabled = false

        [[directory.connectors]]
        name = "graph"
        service = "o365_graph"
        primary_address = "g@example.test"
        application_id = "11111111-2222-3333-4444-555555555555"
        client_secret = "x"
        start_from = "today"
        authority_host = "http://login.example.test"

        [[directory.connectors]]
        name = "pushed"
        primary_address = "pushed@example.test"
        host = "mail.example.test"
        """)
    found = problems(path)
    expected = [
        (line_of(path, "password =", "gmail"), "'gmail': R-C1: password is at most 50"),
        (line_of(path, "port = 70000"), "'gmail': port must be a port from 1 to 65535"),
        (line_of(path, "poll_interval = 5"), "'gmail': poll_interval must be whole seconds"),
        (line_of(path, "fodlers"), "unknown key [directory.connectors] fodlers: did you "
                                   "mean 'folders'?"),
        (line_of(path, 'name = "odd"') - 1, "'odd': R-C1: "),
        (line_of(path, 'name = "odd"') - 1, 'connectors need a host (service '
         "'other' has no preset); write host = \"imap.example.com\""),
        (line_of(path, 'start_from = "today"'), "'graph': start_from must be 'all' or 'now'"),
        (line_of(path, "authority_host"), "'graph': authority_host must be an https:// URL"),
        (line_of(path, 'name = "graph"') - 1,
         "'graph': R-I6: Graph connectors need tenant_id; write tenant_id = "),
        (line_of(path, 'host = "mail.example.test"'), "'pushed': R-C1: host is a poll "
         "setting, and an lmtp connector's mail is pushed"),
    ]
    for line, message in expected:
        assert any(p.startswith(f"{path}:{line}: ") and message in p for p in found), \
            (line, message, found)
    assert len(found) == len(expected) - 1, found       # the host line is checked twice


@pytest.mark.parametrize("seed,message", [
    ('service = "o365_graph"\ntenant_id = "t.example"\n'
     'application_id = "11111111-2222-3333-4444-555555555555"',
     "R-I6: an enabled graph connector needs client_secret"),
    ('service = "gmail_imap"', "R-C1: an enabled imap connector logs in: set username"),
    ('service = "gmail_pop3"\nusername = "u"\npassword = "p"\nfolders = ["INBOX", "Sent"]',
     "R-I5: a POP3 mailbox has only INBOX"),
    ('service = "gmail_imap"\nprotocol = "pop3"', "R-C1: service 'gmail_imap' implies "
                                                 "protocol 'imap'"),
    ('service = "gmail_pop3"\nusername = "u"\npassword = "p"\nmove_to = "Done"',
     "R-B5: a POP3 mailbox has no folders to move mail to"),
    ('service = "gmail_imap"\nusername = "u"\npassword = "p"\nfolders = ["INBOX", "Done"]\n'
     'move_to = "done/"', "R-B5: move_to 'done/' is one of the polled folders"),
    ('service = "hotmail"', "service = 'hotmail': use one of 'gmail_imap'"),
    ('service = "gmail_imap"\nusername = "u"\npassword_file = "/nonexistent/secret"',
     "password_file: cannot read /nonexistent/secret"),
])
def test_r_c1_a_seed_the_api_would_refuse_is_refused(tmp_path, seed, message):
    path = write(tmp_path, '[[directory.connectors]]\nname = "x"\n'
                           'primary_address = "x@example.test"\n' + seed + "\n")
    found = problems(path)
    assert any(p.startswith(f"{path}:") and message in p for p in found), found


def test_a_disabled_polled_seed_may_wait_for_its_credentials(tmp_path):
    path = write(tmp_path, """
        [[directory.connectors]]
        name = "later"
        service = "o365_imap"
        primary_address = "later@example.test"
        enabled = false
        """)
    [seed] = load(str(path), env={}).directory.connectors
    entry = seed.entry()
    connector, username, password = entry.connector, entry.username, entry.password
    assert connector.host == "outlook.office365.com" and (username, password) == (None, None)
