"""One write door for the directory (R-C1, R-C2, R-C5, R-R5, R-R7): every entry path alike.

A connector and its routes can enter the directory four ways: the HTTP API, a host
embedding the gateway (``Gateway.add_connector`` / ``add_route``), the config file's
first start (``[[directory.connectors]]`` / ``[[directory.routes]]``) and
``mailgate directory import FILE`` (a real process). Each test is parametrized by that
path and reads the result back through the HTTP API only, then compares it with what
the HTTP path gives, so a door that diverges (another order, a missing history line,
a refusal it lets through) fails here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import getpass
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.config import (BootstrapConnector, BootstrapRoute, ConfigError, DirectorySection,
                            load)
from gateway.directory import transfer
from gateway.model import Conflict, Connector, Route, RouteRules, RouteTarget, RuleViolation
from tests.conftest import ADMIN_TOKEN, make_settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PATHS = ("http", "embedding", "config", "import")
HTTP_ACTOR = "alice@corp.test"


def cli_actor() -> str:
    """R-C5 "who" of ``mailgate directory import``: the OS user (as gateway.cli has it)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


ACTORS = {"http": HTTP_ACTOR, "embedding": "host", "config": "config", "import": cli_actor()}

# The same directory on every path: a connector with an alias, a wildcard route with a
# sender list and an exact-address route, created in THAT order (the wildcard first), so
# R-R5's bands must put the exact route ahead of it; the fallback is last (R-R7).
DESK = {"name": "desk", "primary_address": "desk@corp.test", "aliases": ["help@corp.test"]}
VIP = {"name": "vip", "email_address": "*",
       "rules": {"sender_list_includes": "*@vip.test; boss@corp.test"}}
HELP = {"name": "help desk", "email_address": "help@corp.test",
        "target": {"process": "Helpdesk"}}
EXPECTED_ORDER = [(1, "help desk", "help@corp.test", False), (2, "vip", "*", False),
                  (3, "desk fallback", "desk@corp.test", True)]

# The first start seeds these (a config file's own words for DESK, VIP and HELP)
SEEDS = textwrap.dedent("""\
    [[directory.connectors]]
    name = "desk"
    primary_address = "desk@corp.test"
    aliases = ["help@corp.test"]

    [[directory.routes]]
    connector = "desk"
    name = "vip"
    email_address = "*"
    sender_list_includes = "*@vip.test; boss@corp.test"

    [[directory.routes]]
    connector = "desk"
    name = "help desk"
    email_address = "help@corp.test"
    process = "Helpdesk"
    """)

# The directory file of the same directory; sparse orders, which the import makes 1..N
DIRECTORY_FILE = textwrap.dedent("""\
    format = 1

    [[connectors]]
    name = "desk"
    primary_address = "desk@corp.test"
    aliases = ["help@corp.test"]

    [[routes]]
    connector = "desk"
    name = "vip"
    email_address = "*"
    order = 20
    rules.sender_list_includes = "*@vip.test; boss@corp.test"

    [[routes]]
    connector = "desk"
    name = "help desk"
    email_address = "help@corp.test"
    order = 10
    target.process = "Helpdesk"

    [[routes]]
    connector = "desk"
    name = "desk fallback"
    email_address = "desk@corp.test"
    order = 30
    fallback = true
    """)


# -- plumbing -------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def running(directory: Path, settings=None):
    """A gateway on ``directory/mailgate.db`` (seeding nothing unless ``settings`` say so),
    with an HTTP session holding the admin token."""
    directory.mkdir(parents=True, exist_ok=True)
    gw = Gateway(settings or make_settings(directory, connectors=[]))
    try:
        await gw.start()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{gw.http_port}",
                                         headers=AUTH) as http:
            yield gw, http
    finally:
        await gw.stop()


async def call(http, method: str, path: str, body=None, **kwargs) -> tuple[int, dict]:
    async with http.request(method, f"/api/v1{path}", json=body, **kwargs) as r:
        return r.status, (await r.json() if r.status != 204 else {})


async def get(http, path: str, **params) -> dict:
    status, body = await call(http, "GET", path, params=params or None)
    assert status == 200, (path, body)
    return body


async def state(directory: Path) -> dict:
    """The whole directory and its whole history, as the HTTP API shows them."""
    async with running(directory) as (_, http):
        connectors = (await get(http, "/connectors"))["connectors"]
        return {"connectors": connectors,
                "routes": {c["name"]: (await get(http, f"/connectors/{c['name']}/routes"))
                           ["routes"] for c in connectors},
                "activity": (await get(http, "/activity", limit="1000"))["activity"]}


def config_file(directory: Path, seeds: str, name: str = "gateway.toml") -> Path:
    """A config file whose database is ``directory/mailgate.db``, with these seeds."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(f"""\
        [storage]
        url = "sqlite:///{directory / 'mailgate.db'}"
        [lmtp]
        listen = "127.0.0.1:0"
        [smtp]
        enabled = false
        [http]
        listen = "127.0.0.1:0"
        admin_token = "{ADMIN_TOKEN}"

        """) + seeds, encoding="utf-8")
    return path


def mailgate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60)


def line_of(text: str, needle: str, after: str = "") -> int:
    start = text.index(after) if after else 0
    return text[:text.index(needle, start)].count("\n") + 1


def located(problem: str, source: str, text: str) -> tuple[str | None, str]:
    """A ``file:line: message`` problem as (the rule it names, the key on that line)."""
    match = re.match(rf"{re.escape(source)}:(\d+): ", problem)
    assert match, problem
    key = text.splitlines()[int(match.group(1)) - 1].partition("=")[0].strip()
    rule = re.search(r"\bR-[A-Z]+\d+\b", problem)
    return (rule.group(0) if rule else None), key


# -- building the same directory through each door ------------------------------------------

async def build_http(directory: Path) -> None:
    who = {"X-Mailgate-Actor": HTTP_ACTOR}
    async with running(directory) as (_, http):
        status, body = await call(http, "POST", "/connectors", DESK, headers=who)
        assert status == 201, body
        for route in (VIP, HELP):
            status, body = await call(http, "POST", "/connectors/desk/routes", route,
                                      headers=who)
            assert status == 201, body


def as_route(fields: dict) -> Route:
    return Route(id=0, connector="desk", order=0, name=fields["name"],
                 email_address=fields["email_address"],
                 rules=RouteRules(**fields.get("rules", {})),
                 target=RouteTarget(**fields.get("target", {})))


async def build_embedding(directory: Path) -> None:
    async with running(directory) as (gw, _):
        await gw.add_connector(Connector(service="lmtp", name=DESK["name"],
                                         primary_address=DESK["primary_address"],
                                         aliases=tuple(DESK["aliases"])))
        for route in (VIP, HELP):
            await gw.add_route(as_route(route))


async def build_config(directory: Path) -> None:
    settings = load(str(config_file(directory, SEEDS)), env={})
    async with running(directory, settings):
        pass                                                # the first start seeds


async def build_import(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "directory.toml"
    path.write_text(DIRECTORY_FILE, encoding="utf-8")
    cli = config_file(directory, "", "cli.toml")
    run = mailgate("directory", "import", str(path), "--config", str(cli))
    assert run.returncode == 0, run.stderr
    assert "imported 1 connector(s), 3 route(s)" in run.stdout


BUILD = {"http": build_http, "embedding": build_embedding, "config": build_config,
         "import": build_import}


@dataclasses.dataclass
class Outcome:
    connector: dict
    routes: list[dict]
    history: dict[str, list[dict]]       # "connector:desk" / "route:<name>" → its lines
    feed: list[dict]                     # the whole /activity feed


_outcomes: dict[str, Outcome] = {}


async def outcome(path: str, factory) -> Outcome:
    """The directory built through ``path``, read through HTTP (built once per session)."""
    if path not in _outcomes:
        directory = factory.mktemp(f"door-{path}")
        await BUILD[path](directory)
        async with running(directory) as (_, http):
            routes = (await get(http, "/connectors/desk/routes"))["routes"]
            history = {"connector:desk": (await get(http, "/activity",
                                                    entity="connector:desk"))["activity"]}
            for route in routes:
                history[f"route:{route['name']}"] = (await get(
                    http, "/activity", entity=f"route:{route['id']}"))["activity"]
            _outcomes[path] = Outcome((await get(http, "/connectors/desk")), routes, history,
                                      (await get(http, "/activity", limit="1000"))["activity"])
    return _outcomes[path]


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# -- what every door creates ------------------------------------------------------------------

@pytest.mark.parametrize("path", PATHS)
async def test_r_r5_r_r7_every_door_numbers_routes_1_to_n_exact_wildcard_fallback(
        path, tmp_path_factory):
    got, http = await outcome(path, tmp_path_factory), await outcome("http", tmp_path_factory)
    placed = [(r["order"], r["name"], r["email_address"], r["fallback"]) for r in got.routes]
    assert placed == EXPECTED_ORDER
    assert placed == [(r["order"], r["name"], r["email_address"], r["fallback"])
                      for r in http.routes]


@pytest.mark.parametrize("path", PATHS)
async def test_r_c1_r_c2_every_door_stores_the_same_connector_and_routes(path,
                                                                         tmp_path_factory):
    """The same connector (enabled: R-C2, it has its fallback) and the same routes, field
    for field; only the ids, which each door hands out in its own sequence, differ."""
    got, http = await outcome(path, tmp_path_factory), await outcome("http", tmp_path_factory)
    assert got.connector["enabled"] is True
    assert got.connector == http.connector
    assert [without(r, "id") for r in got.routes] == [without(r, "id") for r in http.routes]


@pytest.mark.parametrize("path", PATHS)
async def test_r_c5_every_door_records_the_same_history(path, tmp_path_factory):
    got, http = await outcome(path, tmp_path_factory), await outcome("http", tmp_path_factory)
    assert sorted(got.history) == ["connector:desk", "route:desk fallback", "route:help desk",
                                   "route:vip"]
    for entity, lines in got.history.items():          # one create line each, by this door
        assert [(line["action"], line["actor"]) for line in lines] == \
            [("create", ACTORS[path])], entity
    assert len(got.feed) == len(got.history)            # and not one line more
    for entity, lines in got.history.items():
        [line], [theirs] = lines, http.history[entity]
        assert set(line["changes"]) == set(theirs["changes"]), entity
        if path != "import":                            # one change at a time, like HTTP
            assert line["changes"] == theirs["changes"], entity
        else:   # all at once: ``order`` is each route's final place, the rest is the same
            assert without(line["changes"], "order") == without(theirs["changes"], "order")
    if path == "import":
        assert [got.history[f"route:{name}"][0]["changes"]["order"] for _, name, *_ in
                EXPECTED_ORDER] == [[None, 1], [None, 2], [None, 3]]


# -- a name that is taken (R-C1) --------------------------------------------------------------

TWO_DESKS_CONFIG = SEEDS + textwrap.dedent("""\

    [[directory.connectors]]
    name = "desk"
    primary_address = "desk2@corp.test"
    """)
TWO_DESKS_FILE = textwrap.dedent("""\
    format = 1

    [[connectors]]
    name = "desk"
    primary_address = "desk@corp.test"

    [[connectors]]
    name = "desk"
    primary_address = "desk2@corp.test"

    [[connectors]]
    name = "sales"
    primary_address = "sales@corp.test"

    [[routes]]
    connector = "desk"
    name = "desk fallback"
    email_address = "desk@corp.test"
    order = 1
    fallback = true

    [[routes]]
    connector = "sales"
    name = "sales fallback"
    email_address = "*"
    order = 1
    fallback = true
    """)


@pytest.mark.parametrize("path", PATHS)
async def test_r_c1_a_taken_connector_name_is_refused_and_nothing_is_written(path, tmp_path):
    """The directory holds ``desk``; a second ``desk`` (with an address of its own) is
    refused, pointing at its name, and the directory and its history stay as they were."""
    base = tmp_path / "db"
    await build_http(base)
    before = await state(base)
    if path == "http":
        async with running(base) as (_, http):
            status, body = await call(http, "POST", "/connectors",
                                      {"name": "desk", "primary_address": "desk2@corp.test"})
        assert (status, body["error"]["code"]) == (409, "conflict"), body
        assert body["error"]["message"].startswith("R-C1: "), body
        refused = body["error"]["field"]
    elif path == "embedding":
        async with running(base) as (gw, _):
            with pytest.raises(Conflict) as info:
                await gw.add_connector(Connector(name="desk", service="lmtp",
                                                 primary_address="desk2@corp.test"))
        assert info.value.rule == "R-C1"
        refused = info.value.field
    elif path == "config":
        # the loader refuses a second [[directory.connectors]] of one name, at its line
        cfg = config_file(tmp_path / "cfg", TWO_DESKS_CONFIG)
        with pytest.raises(ConfigError) as info:
            load(str(cfg), env={})
        [problem] = [p for p in info.value.problems if "twice" in p]
        assert "'desk'" in problem
        text = cfg.read_text(encoding="utf-8")
        assert problem.startswith(f"{cfg}:{line_of(text, 'desk2') - 1}: ")
        refused = located(problem, str(cfg), text)[1]     # (its words name no rule)
        # and the first start only seeds an EMPTY directory: a config naming ``desk``
        # again (another address, another route) changes nothing in one that has it
        again = SEEDS.replace('"desk@corp.test"', '"desk3@corp.test"').replace(
            '"help desk"', '"seeded again"')
        settings = load(str(config_file(base, again, "again.toml")), env={})
        async with running(base, settings) as (gw, _):
            assert gw.directory.connectors["desk"].primary_address == "desk@corp.test"
    else:
        source = tmp_path / "two-desks.toml"
        source.write_text(TWO_DESKS_FILE, encoding="utf-8")
        run = mailgate("directory", "import", str(source), "--config",
                       str(config_file(base, "", "cli.toml")))
        assert run.returncode == 2, run.stderr
        problem, last = run.stderr.strip().splitlines()
        assert "connector 'desk' appears twice (first at line 3)" in problem
        assert problem.startswith(f"{source}:{line_of(TWO_DESKS_FILE, 'desk2') - 1}: ")
        assert last == "1 problem(s); nothing was imported."
        refused = located(problem, str(source), TWO_DESKS_FILE)[1]    # (names no rule)
    assert refused == "name"                            # the second connector's name
    assert await state(base) == before


# -- an address that belongs to another connector (R-C1) ---------------------------------------

CLASHES = {  # variant → the new connector's fields, the field refused, HTTP's (status, code)
    "primary-in-other-case": ({"primary_address": "Desk@Corp.TEST"}, "primary_address",
                              (409, "conflict")),
    "alias-in-other-case": ({"primary_address": "other@corp.test",
                             "aliases": ["HELP@corp.test"]}, "aliases", (409, "conflict")),
    # HTTP refuses a plus tag in a connector's address outright (422 invalid, R-C1)
    "alias-with-plus-tag": ({"primary_address": "other@corp.test",
                             "aliases": ["Help+vip@Corp.test"]}, "aliases", (422, "invalid")),
}
def _clash_params():
    for path in PATHS:
        for variant in CLASHES:
            yield pytest.param(path, variant, id=f"{path}-{variant}")


def clash_config(fields: dict) -> str:
    aliases = ", ".join(f'"{a}"' for a in fields.get("aliases", []))
    return SEEDS + textwrap.dedent(f"""\

        [[directory.connectors]]
        name = "other"
        primary_address = "{fields['primary_address']}"
        aliases = [{aliases}]
        """)


def clash_file(fields: dict) -> str:
    aliases = ", ".join(f'"{a}"' for a in fields.get("aliases", []))
    return DIRECTORY_FILE + textwrap.dedent(f"""\

        [[connectors]]
        name = "other"
        primary_address = "{fields['primary_address']}"
        aliases = [{aliases}]

        [[routes]]
        connector = "other"
        name = "other fallback"
        email_address = "*"
        order = 1
        fallback = true
        """)


@pytest.mark.parametrize("path,variant", list(_clash_params()))
async def test_r_c1_an_address_of_another_connector_is_refused_on_every_door(path, variant,
                                                                           tmp_path):
    """``desk`` owns desk@ and help@; a connector ``other`` claiming one of them (in another
    case, or with a plus tag) is refused naming R-C1 and the field, and nothing changes."""
    fields, field, http_status = CLASHES[variant]
    base = tmp_path / "db"
    await build_http(base)
    before = await state(base)
    if path == "http":
        async with running(base) as (_, http):
            status, body = await call(http, "POST", "/connectors", {"name": "other", **fields})
        assert (status, body["error"]["code"]) == http_status, body
        refused = (body["error"]["message"].partition(":")[0], body["error"]["field"])
    elif path == "embedding":
        async with running(base) as (gw, _):
            with pytest.raises(RuleViolation) as info:
                await gw.add_connector(Connector(name="other", service="lmtp",
                                                 primary_address=fields["primary_address"],
                                                 aliases=tuple(fields.get("aliases", ()))))
        assert isinstance(info.value, Conflict) == (http_status[0] == 409)    # as HTTP
        refused = (info.value.rule, info.value.field)
    elif path == "config":
        cfg = config_file(tmp_path / "cfg", clash_config(fields))
        with pytest.raises(ConfigError) as info:
            load(str(cfg), env={})
        [problem] = [p for p in info.value.problems if "R-C1" in p]
        refused = located(problem, str(cfg), cfg.read_text(encoding="utf-8"))
    else:
        text = clash_file(fields)
        async with running(base) as (gw, _):
            problems = await transfer.import_directory(gw.directory_ops, text, "clash.toml",
                                                       actor=ACTORS["import"])
        [problem] = problems
        refused = located(problem, "clash.toml", text)
    assert refused == ("R-C1", field)
    assert await state(base) == before


async def test_r_c1_a_seeded_address_clash_writes_nothing(tmp_path):
    """The config check refuses the clash before any start (above). Should seeds reach the
    door anyway (settings built in code, as an embedding host may), the first start seeds
    all of it or nothing: the refusal leaves no half directory that later starts would
    silently keep."""
    text = clash_config(CLASHES["alias-in-other-case"][0])
    data = tomllib.loads(text)["directory"]
    seeds = DirectorySection(
        connectors=tuple(BootstrapConnector(**c) for c in data["connectors"]),
        routes=tuple(BootstrapRoute(**r) for r in data["routes"]))
    settings = dataclasses.replace(make_settings(tmp_path, connectors=[]), directory=seeds)
    with pytest.raises(Conflict) as info:
        async with running(tmp_path, settings):
            pass
    assert (info.value.rule, info.value.field) == ("R-C1", "aliases")
    after = await state(tmp_path)
    assert (after["connectors"], after["activity"]) == ([], [])


# -- an address with a plus tag (R-C1: an address is a mailbox, tags are stripped) --------------

TAGGED = {"primary_address": "sales@corp.test", "aliases": ["orders+eu@corp.test"]}


@pytest.mark.parametrize("path", ["http", "embedding", "config", "import"])
async def test_r_c1_a_plus_tagged_address_is_refused_on_every_door(path, tmp_path):
    """No clash here: a connector address carrying a plus tag is refused as such, naming
    the aliases, and nothing is written."""
    base = tmp_path / "db"
    await build_http(base)
    before = await state(base)
    if path == "http":
        async with running(base) as (_, http):
            status, body = await call(http, "POST", "/connectors", {"name": "sales", **TAGGED})
        assert status == 422 and body["error"]["message"].startswith("R-C1: "), body
        refused = body["error"]["field"]
    elif path == "embedding":
        async with running(base) as (gw, _):
            with pytest.raises(RuleViolation) as info:
                await gw.add_connector(Connector(name="sales", service="lmtp",
                                                 primary_address=TAGGED["primary_address"],
                                                 aliases=tuple(TAGGED["aliases"])))
        refused = info.value.field
    elif path == "config":
        cfg = config_file(tmp_path / "cfg", clash_config(TAGGED))
        with pytest.raises(ConfigError) as info:
            load(str(cfg), env={})
        [problem] = [p for p in info.value.problems if "orders+eu" in p]
        refused = located(problem, str(cfg), cfg.read_text(encoding="utf-8"))[1]
    else:
        text = clash_file(TAGGED)
        async with running(base) as (gw, _):
            [problem] = await transfer.import_directory(gw.directory_ops, text, "tag.toml",
                                                        actor=ACTORS["import"])
        assert "no plus tag" in problem
        refused = located(problem, "tag.toml", text)[1]
    assert refused == "aliases"
    assert await state(base) == before
