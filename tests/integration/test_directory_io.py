"""``mailgate directory export|import FILE.toml`` (SPEC §5.1): a reviewable file, all or nothing.

The CLI runs as a real process against SQLite databases in temp dirs; the
imported directory then routes mail delivered over LMTP to a gateway started
on that database.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.directory import activity, transfer
from gateway.directory import file as directory_file
from gateway.directory.file import toml_value
from gateway.model import Connector, Route, RouteRules, RouteTarget
from tests.conftest import make_settings
from tests.e2e.helpers import deliver, mail


def mailgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, input=stdin, timeout=60)


def config(directory: Path) -> str:
    """A config whose database is ``directory/mailgate.db`` (as make_settings has it)."""
    directory.mkdir(exist_ok=True)
    path = directory / "gateway.toml"
    path.write_text(f'[storage]\nurl = "sqlite:///{directory / "mailgate.db"}"\n'
                    '[http]\nenabled = false\n[lmtp]\nenabled = false\n')
    return str(path)


def rows(directory: Path, sql: str) -> list:
    with sqlite3.connect(directory / "mailgate.db") as db:
        return db.execute(sql).fetchall()


# -- the TOML writer ------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "", "plain", 'say "hi"', "C:\\path\\", "\\u0041 is not an escape here", "'single' '''",
    '"""triple"""', "Ünïcødé — 日本語 🎉", "tab\tnew\nline\rcr\fform\bback",
    "".join(chr(i) for i in range(32)) + "\x7f", "\u0085\u2028 next-line, line separator",
])
def test_toml_strings_round_trip(text):
    assert tomllib.loads(f"v = {toml_value(text)}")["v"] == text
    assert tomllib.loads(f"v = {toml_value([text, text])}")["v"] == [text, text]


def test_toml_values_round_trip_and_a_lone_surrogate_is_refused():
    for value in (True, False, 0, 1_000_000, -3, [], ["a", "b"]):
        assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value
    with pytest.raises(ValueError):
        toml_value("\ud800")


# -- a directory made through the host operations -------------------------------------------

SUPPORT = Connector(name="support", service="lmtp", primary_address="support@corp.test",
                    aliases=("help@corp.test", "billing@corp.test"), route_on_envelope=True)
SALES = Connector(name="sales", service="lmtp", primary_address="sales@corp.test",
                  direction="both")
ROUTES = [
    Route(id=0, name='urgent "printers" \\ Ω', connector="support", order=0,
          email_address="support@corp.test",
          rules=RouteRules(important=True, subject_keywords="urgent; printer"),
          target=RouteTarget(kind="Case", process="Störungen — Drucker", customer="Ünï",
                             contract="C-1", service="Print", ticket_category=""),
          send_automated_emails=True, ack_cc=True),
    Route(id=0, name="key accounts", connector="support", order=0,
          email_address="support@corp.test",
          rules=RouteRules(sender_companies='ACME "Q" Corp'),
          target=RouteTarget(process="Key accounts")),
    Route(id=0, name="help desk\t(odd name\x01)", connector="support", order=0,
          email_address="help@corp.test", rules=RouteRules(important=False),
          target=RouteTarget(process="Helpdesk", ticket_category="General"), test_mode=False),
    Route(id=0, name="disabled billing", connector="support", order=0,
          email_address="billing@corp.test", folder_path="INBOX/Billing", enabled=False,
          target=RouteTarget(process="Finance")),
    Route(id=0, name="vip", connector="support", order=0, email_address="*",
          rules=RouteRules(sender_list_includes="*@vip.test; boss@x.test"),
          target=RouteTarget(process="VIP")),
    Route(id=0, name="sales catch-all", connector="sales", order=0, email_address="*",
          target=RouteTarget(kind="Case", process="Sales"), fallback=True),
]


async def build_source(directory: Path) -> None:
    directory.mkdir()
    gw = Gateway(make_settings(directory, connectors=[]))
    await gw.open_offline()
    try:
        await gw.add_connector(SUPPORT)
        await gw.add_connector(SALES, fallback=ROUTES[-1])
        for route in ROUTES[:-1]:
            await gw.add_route(route)
        await gw.add_contact("*@acme.test", 'ACME "Q" Corp')
        await gw.add_contact("boss@x.test", "Ünïcode — Werke\\Büro")
    finally:
        await gw.close_offline()
    with sqlite3.connect(directory / "mailgate.db") as db:
        db.execute("UPDATE connectors SET username = 'bob', password = 'pa55word-secret'")


async def test_export_import_export_is_byte_identical(tmp_path):
    await build_source(tmp_path / "src")
    src, dst = config(tmp_path / "src"), config(tmp_path / "dst")
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    assert mailgate("directory", "export", str(first), "--config", src).returncode == 0
    text = first.read_text(encoding="utf-8")
    assert "pa55word-secret" not in text and "bob" not in text and "password" not in text

    imported = mailgate("directory", "import", str(first), "--config", dst)
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 connector(s), 7 route(s), 2 contact(s)" in imported.stdout
    assert mailgate("directory", "export", str(second), "--config", dst).returncode == 0
    assert second.read_bytes() == first.read_bytes()
    stdout = mailgate("directory", "export", "-", "--config", dst)
    assert stdout.returncode == 0 and stdout.stdout == text

    data = tomllib.loads(text)
    assert [c["name"] for c in data["connectors"]] == ["sales", "support"]
    support = [r for r in data["routes"] if r["connector"] == "support"]
    assert [(r["name"], r["order"]) for r in support] == [
        ('urgent "printers" \\ Ω', 1), ("key accounts", 2), ("help desk\t(odd name\x01)", 3),
        ("disabled billing", 4), ("vip", 5), ("support fallback", 6)]
    assert support[0]["rules"]["important"] is True and support[2]["rules"]["important"] is False
    assert "important" not in support[1]["rules"]          # not a rule: no line
    assert [(c["pattern"], c["company"]) for c in data["contacts"]] == [
        ("*@acme.test", 'ACME "Q" Corp'), ("boss@x.test", "Ünïcode — Werke\\Büro")]
    # R-C5: every connector and route the import created has its history line, by the CLI user
    history = rows(tmp_path / "dst", "SELECT entity, action, actor FROM activity")
    assert len(history) == 9 and {h[1] for h in history} == {"create"}
    assert all(h[2].startswith("cli") for h in history)



# -- polled connectors (R-C1 poll settings; never a credential) -------------------------------

IMAP = Connector(name="imap-desk", service="other", protocol="imap", enabled=False,
                 primary_address="desk@corp.test", host="mail.corp.test", port=1993,
                 folders=("INBOX", "Support/Übersicht", 'quote "q"'), poll_interval=300,
                 keep_on_server=True, start_from="now", ca_file="/etc/mailgate/ca.pem",
                 tls_verify=False, shared_mailbox="shared@corp.test")
GRAPH = Connector(name="graph", service="o365_graph", protocol="graph", enabled=False,
                  primary_address="team@corp.test", direction="both",
                  tenant_id="contoso.onmicrosoft.com",
                  application_id="11111111-2222-3333-4444-555555555555",
                  certificate_file="/etc/mailgate/graph.pem",
                  certificate_thumbprint="0123456789abcdef0123456789ABCDEF01234567",
                  authority_host="https://127.0.0.1:8443",
                  graph_base_url="https://127.0.0.1:8443/v1.0")
GRAPH_SECRETS = {"client_secret": "graph-cl1ent-s3cret", "certificate_password": "pfx-pw-s3cret"}


async def build_polled(directory: Path) -> None:
    directory.mkdir()
    gw = Gateway(make_settings(directory, connectors=[]))
    await gw.open_offline()
    try:
        await gw.add_connector(SUPPORT)
        await gw.add_connector(IMAP, username="desk", password="imap-pa55-s3cret")
        await gw.add_connector(GRAPH, secrets=GRAPH_SECRETS)
    finally:
        await gw.close_offline()


def stored_logins(directory: Path) -> list:
    return rows(directory, "SELECT name, username, password, secrets FROM connectors"
                           " ORDER BY name")


async def test_polled_connectors_round_trip_byte_identical_without_a_secret(tmp_path):
    await build_polled(tmp_path / "src")
    src, dst = config(tmp_path / "src"), config(tmp_path / "dst")
    text = mailgate("directory", "export", "-", "--config", src).stdout
    for secret in ("imap-pa55-s3cret", *GRAPH_SECRETS.values()):
        assert secret not in text
    data = {c["name"]: c for c in tomllib.loads(text)["connectors"]}
    assert "host" not in data["support"] and "folders" not in data["support"]  # pushed
    assert data["imap-desk"]["folders"] == list(IMAP.folders)
    assert (data["imap-desk"]["tls_verify"], data["imap-desk"]["start_from"]) == (False, "now")
    assert data["graph"]["certificate_thumbprint"] == GRAPH.certificate_thumbprint
    assert data["graph"]["smtp_host"] == ""     # o365_graph has no SMTP preset
    assert "port" not in data["graph"] and "tenant_id" not in data["imap-desk"]  # not used
    run = mailgate("directory", "import", "-", "--config", dst, stdin=text)
    assert run.returncode == 0, run.stderr
    assert mailgate("directory", "export", "-", "--config", dst).stdout == text
    # a new connector comes without credentials; the source's are kept by its own import
    assert [r[1:] for r in stored_logins(tmp_path / "dst")] == [(None, None, "{}")] * 3
    before = stored_logins(tmp_path / "src")
    changed = text.replace("poll_interval = 300", "poll_interval = 120")
    run = mailgate("directory", "import", "-", "--config", src, stdin=changed)
    assert run.returncode == 0, run.stderr
    assert stored_logins(tmp_path / "src") == before
    assert mailgate("directory", "export", "-", "--config", src).stdout == changed


async def test_a_preset_fills_what_a_hand_written_file_leaves_out(tmp_path):
    text = textwrap.dedent("""\
        [[connectors]]
        name = "gmail"
        service = "gmail_imap"
        primary_address = "desk@corp.test"
        direction = "both"
        enabled = false

        [[routes]]
        connector = "gmail"
        name = "gmail fallback"
        email_address = "desk@corp.test"
        order = 1
        fallback = true
        """)
    wanted, problems = directory_file.check_directory(text, "d.toml")
    assert problems == []
    [gmail] = wanted.connectors
    assert (gmail.protocol, gmail.host, gmail.port, gmail.tls, gmail.smtp_host) == \
        ("imap", "imap.gmail.com", 993, "implicit", "smtp.gmail.com")


async def test_r_c3_an_import_cannot_enable_a_connector_whose_last_test_failed(tmp_path):
    await build_polled(tmp_path / "src")
    src = config(tmp_path / "src")
    with sqlite3.connect(tmp_path / "src" / "mailgate.db") as db:
        db.execute("INSERT INTO connector_tests VALUES ('imap-desk', 0, 'imap: NO [AUTH"
                   "ENTICATIONFAILED] Authentication failed.', 9999999999)")
    text = mailgate("directory", "export", "-", "--config", src).stdout
    enabling = text.replace('name = "imap-desk"\nservice = "other"\nprotocol = "imap"\n'
                            'direction = "incoming"\nprimary_address = "desk@corp.test"\n'
                            'aliases = []\nenabled = false',
                            'name = "imap-desk"\nservice = "other"\nprotocol = "imap"\n'
                            'direction = "incoming"\nprimary_address = "desk@corp.test"\n'
                            'aliases = []\nenabled = true')
    assert enabling != text
    path = tmp_path / "enabling.toml"
    path.write_text(enabling, encoding="utf-8")
    run = mailgate("directory", "import", str(path), "--config", src)
    assert run.returncode == 2
    line = line_of(enabling, "enabled = true", 'name = "imap-desk"')
    assert run.stderr.startswith(f"{path}:{line}: connector 'imap-desk': R-C3: its last test "
                                 "failed (imap: NO [AUTHENTICATIONFAILED]"), run.stderr
    assert mailgate("directory", "export", "-", "--config", src).stdout == text

# -- a broken file ----------------------------------------------------------------------------

BROKEN = textwrap.dedent("""\
    format = 1

    [[connectors]]
    name = "support"
    primary_address = "support@corp.test"
    aliasses = ["help@corp.test"]

    [[connectors]]
    name = "sales"
    primary_address = "sales@@corp.test"
    enabled = "yes"

    [[routes]]
    connector = "support"
    name = "support fallback"
    email_address = "support@corp.test"
    order = 3
    fallback = true

    [[routes]]
    connector = "support"
    name = "anyone"
    email_address = "*"
    order = 1

    [[routes]]
    connector = "support"
    name = "second fallback"
    email_address = "*"
    order = 2
    fallback = true

    [[routes]]
    connector = "sales"
    name = "sales fallback"
    email_address = "*"
    order = 1
    fallback = true

    [[routes]]
    connector = "marketting"
    name = "campaigns"
    email_address = "news@corp.test"
    order = 1
""")


def line_of(text: str, needle: str, after: str = "") -> int:
    start = text.index(after) if after else 0
    return text[:text.index(needle, start)].count("\n") + 1


async def test_a_broken_file_changes_nothing_and_lists_every_problem_with_its_line(tmp_path):
    await build_source(tmp_path / "src")
    src, dst = config(tmp_path / "src"), config(tmp_path / "dst")
    good = tmp_path / "good.toml"
    assert mailgate("directory", "export", str(good), "--config", src).returncode == 0
    assert mailgate("directory", "import", str(good), "--config", dst).returncode == 0
    history = rows(tmp_path / "dst", "SELECT COUNT(*) FROM activity")
    broken = tmp_path / "broken.toml"
    broken.write_text(BROKEN)

    run = mailgate("directory", "import", str(broken), "--config", dst)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    expected = {
        line_of(BROKEN, "aliasses"): "unknown key 'aliasses': did you mean 'aliases'?",
        line_of(BROKEN, "sales@@"): "'sales@@corp.test' is not an address",
        line_of(BROKEN, 'enabled = "yes"'): "enabled = 'yes': write true or false",
        line_of(BROKEN, "[[routes]]", 'order = 3'): "route 'anyone': R-R4: a wildcard route "
                                                    "needs a sender list",
        line_of(BROKEN, "fallback = true", "second fallback"): "R-R7: connector 'support' "
                                                               "already has the fallback route",
        line_of(BROKEN, 'connector = "marketting"'): "connector 'marketting' is not one of the"
                                                     " [[connectors]]",
    }
    assert len(lines) == len(expected) + 1, run.stderr
    for (line, message), got in zip(sorted(expected.items()), lines):
        assert got.startswith(f"{broken}:{line}: ") and message in got, (line, got)
    assert lines[-1] == f"{len(expected)} problem(s); nothing was imported."
    assert "(line 13)" in lines[4]                        # where the first fallback is
    assert "known: sales, support" in lines[5]
    # nothing changed: the same export, no history line
    after = mailgate("directory", "export", "-", "--config", dst)
    assert after.stdout == good.read_text(encoding="utf-8")
    assert rows(tmp_path / "dst", "SELECT COUNT(*) FROM activity") == history
    # a broken import into a store that does not exist yet does not even create it
    fresh = config(tmp_path / "fresh")
    assert mailgate("directory", "import", str(broken), "--config", fresh).returncode == 2
    assert not (tmp_path / "fresh" / "mailgate.db").exists()


POLLED = ("[[connectors]]\nservice = 'gmail_imap'\nname = 'a'\nprimary_address = 'a@x.test'\n")


@pytest.mark.parametrize("text, line, message", [
    ("format = 1\n[[connectors]\nname = 1\n", 2, "TOML syntax error"),
    ("format = 2\n", 1, "this mailgate reads format 1"),
    ("[[connector]]\nname = 'x'\n", 1, "did you mean 'connectors'?"),
    ("[[connectors]]\nname = 'a'\nprimary_address = 'a@x.test'\npassword = 'p'\n"
     "[[routes]]\nconnector = 'a'\nname = 'f'\nemail_address = 'a@x.test'\norder = 1\n"
     "fallback = true\n", 4, "credentials are never part of the directory file"),
    ("[[connectors]]\nname = 'a'\nprimary_address = 'a@x.test'\n", 1,
     "R-R7: connector 'a' has no fallback route"),
    ("[[connectors]]\nname = 'a'\nprimary_address = 'a@x.test'\n[[routes]]\nconnector = 'a'\n"
     "name = 'f'\nemail_address = 'a@x.test'\norder = 2\nfallback = true\n"
     "rules.subject_keywords = 'x'\n[[routes]]\nconnector = 'a'\nname = 'w'\n"
     "email_address = '*'\norder = 1\nrules.sender_list_includes = '*'\n", 10,
     "R-R7: a fallback route has no rules"),
    ("[[connectors]]\nname = 'a'\nprimary_address = 'a@x.test'\n[[routes]]\nconnector = 'a'\n"
     "name = 'f'\nemail_address = '*'\norder = 1\nfallback = true\n[[routes]]\n"
     "connector = 'a'\nname = 'e'\nemail_address = 'a@x.test'\norder = 2\n", 14,
     "R-R5: order 2 is after route 'f' (order 1), but non-wildcard routes come before the "
     "fallback route"),
    ("[[connectors]]\nname = 'a'\nprimary_address = 'a@x.test'\n[[connectors]]\nname = 'b'\n"
     "primary_address = 'b@x.test'\naliases = ['A+tag@X.test']\n", 7, "is not an address"),
    ("[[connectors]]\nname = 'a'\nprimary_address = 'a@x.test'\n[[connectors]]\nname = 'b'\n"
     "primary_address = 'b@x.test'\naliases = ['A@X.test']\n", 7,
     "R-C1: A@X.test already belongs to connector 'a' (line 3)"),
    ("[[contacts]]\npattern = 'a+b@x.test'\ncompany = 'A; B'\n", 2, "contact pattern"),
    ("[[routes]]\nconnector = 'a'\n[routes.rules]\nimportant = 'yes'\n", 4,
     "rules.important = 'yes': write true or false"),
    (POLLED + "port = 0\n", 5, "connector 'a': port must be a port from 1 to 65535"),
    (POLLED + "folders = []\n", 5, "folders must be a list of 1 to 100"),
    (POLLED + "folders = 'INBOX'\n", 5, "folders = 'INBOX': write a list of strings"),
    (POLLED + "poll_interval = 5\n", 5, "poll_interval must be whole seconds from 10"),
    (POLLED + "authority_host = 'http://login.test'\n", 5, "authority_host must be an "
     "https:// URL"),
    (POLLED + "start_from = 'today'\n", 5, "start_from must be 'all' or 'now' (R-B5)"),
    (POLLED + "client_secret = 'x'\n", 5, "credentials are never part of the directory file"),
    (POLLED + "protocol = 'pop3'\n", 5, "R-C1: service 'gmail_imap' implies protocol 'imap'"),
    (POLLED.replace("gmail_imap", "other") + "protocol = 'imap'\n", 1,
     "connector 'a': R-C1: IMAP connectors need a host"),
    (POLLED.replace("gmail_imap", "gmail_pop3") + "folders = ['INBOX', 'Sent']\n", 5,
     "R-I5: a POP3 mailbox has only INBOX"),
    (POLLED.replace("gmail_imap", "o365_graph") + "tenant_id = 'contoso.test'\n", 1,
     "R-I6: Graph connectors need application_id"),
    (POLLED.replace("gmail_imap", "lmtp") + "host = 'mail.corp.test'\n", 5,
     "R-C1: host is a poll setting"),
    (POLLED.replace("gmail_imap", "hotmail"), 2, "service 'hotmail': use one of gmail_imap"),
    (POLLED.replace("gmail_imap", "o365_graph") + "port = 993\n", 5,
     "R-C1: a graph connector does not use port"),
    (POLLED + "tenant_id = 'contoso.test'\n", 5, "R-C1: an imap connector does not use tenant_id"),
])
def test_each_problem_is_found_at_its_line(text, line, message):
    _, problems = directory_file.check_directory(text, "d.toml")
    assert any(p.startswith(f"d.toml:{line}: ") and message in p for p in problems), problems


async def test_a_failure_while_applying_rolls_everything_back(tmp_path, monkeypatch):
    await build_source(tmp_path / "src")
    src = config(tmp_path / "src")
    before = mailgate("directory", "export", "-", "--config", src).stdout
    changed = before.replace('name = "vip"', 'name = "very important"')
    calls = []

    async def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return await record(*args, **kwargs)

    record = activity.record
    monkeypatch.setattr(activity, "record", failing)
    gw = Gateway(make_settings(tmp_path / "src", connectors=[]))
    await gw.open_offline()
    try:
        with pytest.raises(RuntimeError):
            await transfer.import_directory(gw.directory_ops, changed, "x.toml")
        assert await transfer.export_directory(gw.directory_ops) == before
    finally:
        await gw.close_offline()


async def test_import_into_a_used_store_replaces_the_directory(tmp_path):
    await build_source(tmp_path / "src")
    src = config(tmp_path / "src")
    ids = dict(rows(tmp_path / "src", "SELECT name, id FROM routes"))
    text = mailgate("directory", "export", "-", "--config", src).stdout
    # drop the sales connector (and its route), rename one route, drop a contact
    smaller = (text[:text.index("[[connectors]]")]
               + text[text.index('[[connectors]]\nname = "support"'):])
    smaller = smaller[:smaller.index('[[routes]]\nconnector = "sales"')] + \
        smaller[smaller.index('[[routes]]\nconnector = "support"'):]
    smaller = smaller.replace('name = "key accounts"', 'name = "top accounts"')
    smaller = smaller[:smaller.index('\n[[contacts]]\npattern = "boss@x.test"')]
    path = tmp_path / "smaller.toml"
    path.write_text(smaller, encoding="utf-8")
    run = mailgate("directory", "import", str(path), "--config", src)
    assert run.returncode == 0, run.stderr
    assert mailgate("directory", "export", "-", "--config", src).stdout == smaller
    now = dict(rows(tmp_path / "src", "SELECT name, id FROM routes"))
    assert now["vip"] == ids["vip"] and now["support fallback"] == ids["support fallback"]
    assert now["top accounts"] not in ids.values()       # a new route, a new id
    assert rows(tmp_path / "src", "SELECT username, password FROM connectors") == [
        ("bob", "pa55word-secret")]                       # a kept connector keeps them
    history = rows(tmp_path / "src", "SELECT entity, action FROM activity WHERE actor LIKE 'cli%'"
                                     " ORDER BY id")
    assert ("connector:sales", "delete") in history
    assert (f"route:{ids['key accounts']}", "delete") in history
    assert (f"route:{now['top accounts']}", "create") in history


# -- the imported directory routes mail -------------------------------------------------------

async def test_the_imported_directory_routes_mail(tmp_path):
    await build_source(tmp_path / "src")
    exported = mailgate("directory", "export", "-", "--config", config(tmp_path / "src"))
    run = mailgate("directory", "import", "-", "--config", config(tmp_path / "dst"),
                   stdin=exported.stdout)
    assert run.returncode == 0, run.stderr
    gw = Gateway(make_settings(tmp_path / "dst", connectors=[]))
    await gw.start()
    try:
        async def placed(message, **kwargs) -> tuple:
            [copy] = await deliver(gw, message, **kwargs)
            assert copy.outcome == "created", (copy.outcome, copy.reason)
            item = await gw.workitem(copy.targets[0]["ref"])
            return item.kind, item.custom_data.get("process"), item.mode

        urgent = mail(to=["support@corp.test"], subject="Urgent: printer down",
                      headers={"Importance": "high"})
        assert await placed(urgent) == ("Case", "Störungen — Drucker", "live")
        assert await placed(mail(to=["support@corp.test"], sender="eve@acme.test"),
                            sender="eve@acme.test") == ("Ticket", "Key accounts", "live")
        assert await placed(mail(to=["help@corp.test"])) == ("Ticket", "Helpdesk", "live")
        assert await placed(mail(to=["support@corp.test"], sender="al@vip.test"),
                            sender="al@vip.test") == ("Ticket", "VIP", "live")
        assert await placed(mail(to=["support@corp.test"])) == ("Ticket", None, "live")
        assert await placed(mail(to=["sales@corp.test"])) == ("Case", "Sales", "live")
        [copy] = await deliver(gw, mail(to=["billing@corp.test"]))     # its route is disabled
        assert (copy.outcome, copy.reason) == ("unprocessed", "alias_without_route")
    finally:
        await gw.stop()
