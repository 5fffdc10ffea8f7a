"""The directory file of ``mailgate directory export|import`` (SPEC §5.1): format and checks.

Pure, no I/O. A file holds ``[[connectors]]`` (R-C1, with the poll settings their
protocol uses; never a credential or a secret), ``[[routes]]`` under the API's field
names (``rules.*``, ``target.*``, ``order`` = the route's place 1..N on its
connector, R-R5) and ``[[contacts]]`` (R-R2's sender companies). :func:`render`
writes TOML by hand in a fixed order (the standard library reads TOML but cannot
write it), so the same directory always gives the same bytes. :func:`check_directory` finds *every* problem of a file,
each as ``FILE:LINE: message``; ``gateway.directory_io`` applies a clean one.

The connector-setting checks are ``gateway.connector_checks``, shared with the API
and the config seeds.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from typing import Any

from gateway.directory import presets, rules
from gateway.directory.addresses import (NOT_A_CONNECTOR_ADDRESS, is_connector_address,
                                         normalize_address)
from gateway.directory.connector_checks import (POLL_CHECKS, connector_problems, implied_protocol,
                                                used_settings, with_preset)
from gateway.directory.routing import validate_route
from gateway.model import (CONNECTOR_DEFAULTS, POLL_FIELDS, SECRET_FIELDS, Connector, Route,
                           RouteRules, RouteTarget)

FORMAT = 1
REQUIRED = object()
RULES = {"important": None, "attachment_types": "", "subject_keywords": "",
         "sender_companies": "", "sender_list_includes": "", "recipient_list_includes": ""}
TARGET = {"kind": "Ticket", "process": "", "customer": "", "contract": "", "service": "",
          "ticket_category": ""}
SCHEMAS: dict[str, dict] = {
    # protocol "" = the one the service implies (R-C1); poll settings only for polled ones
    "connectors": {"name": REQUIRED, "service": "lmtp", "protocol": "",
                   "direction": "incoming", "primary_address": REQUIRED, "aliases": [],
                   "enabled": True, "route_on_envelope": False, "smtp_host": "",
                   "smtp_port": 587, "smtp_tls": "starttls",
                   **CONNECTOR_DEFAULTS.poll_settings()},
    "routes": {"connector": REQUIRED, "name": REQUIRED, "email_address": REQUIRED,
               "folder_path": "", "order": REQUIRED, "fallback": False, "enabled": True,
               "send_automated_emails": False, "ack_cc": False, "test_mode": False,
               "rules": RULES, "target": TARGET},
    "contacts": {"pattern": REQUIRED, "company": REQUIRED},
}
TYPES = {"order": int, "aliases": list, "folders": list, "rules.important": bool}
TYPE_NAMES = {bool: "true or false", int: "a whole number", str: "a string",
              list: "a list of strings"}
SECRETS = ("username", "password", *SECRET_FIELDS)
SERVICES = presets.SERVICES
# The same shapes as the directory API (gateway/api/connectors.py, body.py, directory_ops.py).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CONTACT = re.compile(r"(\*|[^@\s*;+]+)@[a-z0-9-]+(\.[a-z0-9-]+)*")
_KEY = r"(?:[\w-]+|\"[^\"]*\"|'[^']*')"
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}



def toml_value(value: Any) -> str:
    """TOML for a bool, int, list or string; strings escape quotes, backslashes and every
    control character (U+0000–U+001F, U+007F) and keep the rest of Unicode as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError(f"{value!r}: a lone surrogate cannot be written as TOML")
    return '"' + "".join(_ESCAPES.get(ch) or (f"\\u{ord(ch):04X}" if ch < " " or ch == "\x7f"
                                              else ch) for ch in value) + '"'


def _table(name: str, values: dict, prefix: str = "") -> str:
    """``[[name]]`` with one ``key = value`` line each; nested dicts as ``rules.x = …``."""
    return ("" if prefix else f"\n[[{name}]]\n") + "".join(
        _table(name, v, f"{prefix}{k}.") if isinstance(v, dict) else
        f"{prefix}{k} = {toml_value(v)}\n" for k, v in values.items() if v is not None)


def _connector_values(c: Connector) -> dict:
    """A connector's keys in schema order; of the poll settings only those its protocol
    uses, so the file of a push-only directory reads as it always did."""
    used = used_settings(c.protocol)
    return {k: getattr(c, k) for k in SCHEMAS["connectors"] if k not in POLL_FIELDS or k in used}


def render(connectors: list[Connector], routes: list[dict], contacts: list[tuple[str, str]]
           ) -> str:
    """The file for a directory; ``routes`` are route snapshots (``route_snapshot``) in order.
    A route whose ``important`` is not a rule has no ``rules.important`` line."""
    parts = ["# mailgate directory (SPEC 5.1). `mailgate directory import FILE` checks all of it,\n"
             "# then makes the directory exactly this file, all or nothing. Credentials are\n"
             "# never written here; an import leaves those of the connectors it keeps.\n",
             f"format = {FORMAT}\n"]
    parts += [_table("connectors", _connector_values(c))
              for c in sorted(connectors, key=lambda c: c.name)]
    parts += [_table("routes", {k: r[k] for k in SCHEMAS["routes"]}) for r in routes]
    parts += [_table("contacts", {"pattern": p, "company": c}) for p, c in sorted(contacts)]
    return "".join(parts)


# -- reading and checking -----------------------------------------------------------------

def _path(text: str) -> str:
    return ".".join(p.strip("\"'") for p in re.findall(_KEY, text))


class _Lines:
    """Where each ``[[table]]`` element and each of its keys is: like config._LineIndex, but
    the third ``[[routes]]`` is a place of its own, and ``rules.x`` a key of its own."""

    def __init__(self, text: str):
        self.at: dict[tuple, int] = {}
        counts: dict[str, int] = {}
        where, prefix = ("", 0), ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = re.match(rf"\s*(\[\[?)\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]", line)
            key = re.match(rf"\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*=", line)
            if header:
                path = _path(header.group(2))
                first, _, rest = path.partition(".")
                if header.group(1) == "[[":
                    where, prefix = (path, counts.get(path, 0)), ""
                    counts[path] = where[1] + 1
                elif rest and counts.get(first):        # [routes.rules] of the last [[routes]]
                    where, prefix = (first, counts[first] - 1), rest + "."
                else:
                    where, prefix = (path, 0), ""
                self.at.setdefault((*where, prefix[:-1] or None), number)
            elif key:
                path = prefix + _path(key.group(1))
                self.at.setdefault((*where, path), number)
                self.at.setdefault((*where, path.partition(".")[0]), number)

    def find(self, table: str, index: int, key: str | None = None) -> int | None:
        first = key.partition(".")[0] if key else None
        places = ((table, index, key), (table, index, first), (table, index, None), ("", 0, table))
        return next((self.at[p] for p in places if p in self.at), None)


def line_of(text: str, table: str, index: int, key: str | None = None) -> int | None:
    """The line of key ``key`` of the ``index``-th ``[[table]]`` of ``text`` (or of the
    table itself), for problems found after the file was checked."""
    return _Lines(text).find(table, index, key)


def _suggest(word: str, options: list[str], known: str = "known keys") -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {close[0]!r}?" if close else f"{known}: {', '.join(options) or 'none'}"


@dataclasses.dataclass
class DirectoryFile:
    connectors: list[Connector] = dataclasses.field(default_factory=list)
    routes: list[Route] = dataclasses.field(default_factory=list)
    contacts: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class _Checker:
    """Collects every problem of one file, each with its line; builds what the file holds."""

    def __init__(self, text: str, source: str):
        self.source, self.line = source, _Lines(text).find
        self.problems: list[tuple[int, str]] = []
        self.wanted = DirectoryFile()
        self.connectors: dict[str, tuple[int, Connector]] = {}    # name → (index, connector)
        self.owners: dict[str, tuple[str, int | None]] = {}       # mailbox → (connector, line)
        self.orders: dict[tuple[str, int], tuple[int, Route]] = {}
        self.fallbacks: dict[str, tuple[int, Route]] = {}
        self.placed: dict[str, list[tuple[int, Route]]] = {}      # connector → its routes

    def problem(self, table: str, index: int, key: str | None, message: str) -> None:
        line = self.line(table, index, key)
        self.problems.append((line or 0, f"{self.source}:{line}: {message}" if line
                              else f"{self.source}: {message}"))

    def fields(self, table: str, index: int, raw: Any, schema: dict | None = None,
               prefix: str = "") -> dict | None:
        """Known keys of the right type, defaults filled in; None when a required key is
        missing or wrong (that element is then not checked further)."""
        schema = SCHEMAS[table] if schema is None else schema
        if not isinstance(raw, dict):
            self.problem(table, index, prefix[:-1] or None, f"{prefix[:-1]} must be a table"
                         if prefix else f"{table}: write [[{table}]] tables")
            return None
        values, usable = {}, True
        for key, value in raw.items():
            path, default = prefix + key, schema.get(key)
            want = TYPES.get(path) or (str if default is REQUIRED else type(default))
            if key not in schema:
                hint = ("credentials are never part of the directory file" if key in SECRETS
                        else _suggest(key, list(schema)))
                self.problem(table, index, path, f"[[{table}]] unknown key {path!r}: {hint}")
            elif isinstance(default, dict):
                values[key] = self.fields(table, index, value, default, path + ".")
            elif (isinstance(value, want) and isinstance(value, bool) == (want is bool)
                  and (want is not list or all(isinstance(v, str) for v in value))):
                values[key] = value
            else:
                self.problem(table, index, path, f"{path} = {value!r}: write {TYPE_NAMES[want]}")
                usable = usable and default is not REQUIRED
        for key, default in schema.items():
            if values.get(key) is None and default is REQUIRED:
                if key not in raw:
                    self.problem(table, index, None, f"[[{table}]] needs {prefix}{key}")
                usable = False
            elif values.get(key) is None:
                values[key] = dict(default) if isinstance(default, dict) else default
        return values if usable else None

    def connector(self, i: int, v: dict, given: set[str]) -> None:
        """R-C1: name, service (its preset fills what is blank), direction, poll settings,
        addresses; an address (tags, case ignored) has one owner in the whole file."""
        name = v["name"]
        if name in self.connectors:
            first = self.line("connectors", self.connectors[name][0])
            return self.problem("connectors", i, "name", f"R-C1: connector {name!r} appears "
                                f"twice (first at line {first})")
        protocol, clash = implied_protocol(v["service"], v["protocol"])
        bad: set[str] = set()
        for key, ok, message in [
                ("name", _NAME.fullmatch(name), "letters, digits, '_', '.', '-' (at most 64)"),
                ("service", v["service"] in SERVICES,
                 f"service {v['service']!r}: use one of {', '.join(SERVICES)}"),
                ("protocol", clash is None, clash and clash[1]),
                ("direction", v["direction"] in ("incoming", "outgoing", "both"),
                 "direction: incoming, outgoing or both"),
                *((key, POLL_CHECKS[key][0](v[key]), f"{key} must be {POLL_CHECKS[key][1]}")
                  for key in POLL_FIELDS if key in given)]:
            if not ok:
                bad.add(key)
                self.problem("connectors", i, key, f"connector {name!r}: {message}")
        mine: set[str] = set()
        for key, address in [("primary_address", v["primary_address"]),
                             *(("aliases", a) for a in v["aliases"])]:
            mailbox = normalize_address(address)
            owner = self.owners.setdefault(mailbox, (name, self.line("connectors", i, key)))
            if not is_connector_address(address):
                self.problem("connectors", i, key, f"R-C1: connector {name!r}: {address!r} "
                             f"{NOT_A_CONNECTOR_ADDRESS}")
            elif mailbox in mine:
                self.problem("connectors", i, key, f"R-C1: {address} is listed twice in "
                             f"connector {name!r}")
            elif owner[0] != name:
                self.problem("connectors", i, key, f"R-C1: {address} already belongs to "
                             f"connector {owner[0]!r} (line {owner[1]})")
            mine.add(mailbox)
        connector = with_preset(Connector(
            name=name, service=v["service"], protocol=protocol, direction=v["direction"],
            primary_address=v["primary_address"], aliases=tuple(v["aliases"]),
            enabled=v["enabled"], route_on_envelope=v["route_on_envelope"],
            smtp_host=v["smtp_host"], smtp_port=v["smtp_port"], smtp_tls=v["smtp_tls"],
            **{k: tuple(v[k]) if k == "folders" else v[k] for k in POLL_FIELDS}), given)
        if v["service"] in SERVICES and clash is None:
            for key, message in connector_problems(connector, given):
                if key not in bad:          # already said, in its own words
                    self.problem("connectors", i, key if key in given else None,
                                 f"connector {name!r}: {message}")
        self.connectors[name] = (i, connector)
        self.wanted.connectors.append(connector)

    def route(self, i: int, v: dict) -> None:
        """validate_route (R-R1, R-R2, R-R4, R-R7); unique orders (R-R5), one fallback (R-R7)."""
        if v["connector"] not in self.connectors:
            hint = _suggest(v["connector"], sorted(self.connectors), "known")
            return self.problem("routes", i, "connector", f"route {v['name']!r}: connector "
                                f"{v['connector']!r} is not one of the [[connectors]] in this "
                                f"file ({hint})")
        route = Route(id=0, order=v["order"], rules=RouteRules(**v["rules"]),
                      target=RouteTarget(**v["target"]),
                      **{k: v[k] for k in SCHEMAS["routes"] if k not in ("order", "rules",
                                                                         "target")})
        problems = validate_route(route, self.connectors[route.connector][1], ())
        if not route.name.strip():
            problems.append(("R-R1", "name", "a route needs a name"))
        if route.target.kind not in ("Ticket", "Case"):
            problems.append(("R-R1", "target.kind", "target.kind is Ticket or Case"))
        if route.order < 1:
            problems.append(("R-R5", "order", "order is the route's place, from 1"))
        j, twin = self.orders.setdefault((route.connector, route.order), (i, route))
        if j == i:
            self.placed.setdefault(route.connector, []).append((i, route))
        else:
            problems.append(("R-R5", "order", f"order {route.order} is taken by route "
                             f"{twin.name!r} (line {self.line('routes', j, 'order')}); each "
                             "route has its own"))
        if route.fallback:
            j, first = self.fallbacks.setdefault(route.connector, (i, route))
            if j != i:
                problems.append(("R-R7", "fallback", f"connector {route.connector!r} already has"
                                 f" the fallback route {first.name!r} (line "
                                 f"{self.line('routes', j)}); a connector has exactly one"))
        for rule, field, message in problems:
            if field == "rules":        # point at the first rule given
                field = next((f"rules.{k}" for k, d in RULES.items() if v["rules"][k] != d), field)
            self.problem("routes", i, field, f"route {route.name!r}: {rule}: {message}")
        self.wanted.routes.append(route)

    def bands(self, name: str, index: int) -> None:
        """R-C2/R-R7: the connector has its fallback; R-R5: orders keep the bands in order."""
        if name not in self.fallbacks:
            self.problem("connectors", index, None, f"R-R7: connector {name!r} has no fallback "
                         f"route (R-C2): add a [[routes]] with connector = {toml_value(name)}, "
                         "fallback = true and its primary address or \"*\"")
        ahead: Route | None = None
        for j, route in sorted(self.placed.get(name, []), key=lambda p: p[1].order):
            band, names = rules.band(route), rules.BAND_NAMES
            if ahead and band < rules.band(ahead):
                self.problem("routes", j, "order", f"route {route.name!r}: R-R5: order "
                             f"{route.order} is after route {ahead.name!r} (order {ahead.order})"
                             f", but {names[band]} come before {names[rules.band(ahead)]}")
            elif not ahead or band > rules.band(ahead):
                ahead = route

    def contact(self, i: int, v: dict, seen: dict[str, int]) -> None:
        """R-R2 contact directory: an address or ``*@domain`` → a company."""
        pattern, company = v["pattern"].strip().lower(), v["company"].strip()
        if not _CONTACT.fullmatch(pattern):
            self.problem("contacts", i, "pattern", f"R-R2: contact pattern {v['pattern']!r}: "
                         "write an address (a@example.com, no plus tag) or *@example.com")
        elif seen.setdefault(pattern, i) != i:
            self.problem("contacts", i, "pattern", f"contact {pattern!r} is listed twice (first"
                         f" at line {self.line('contacts', seen[pattern])})")
        if not company or ";" in company:
            self.problem("contacts", i, "company", "R-R2: a contact's company is not blank and "
                         "has no ';' (routes list companies separated by ';')")
        self.wanted.contacts.append((pattern, company))


def check_directory(text: str, source: str) -> tuple[DirectoryFile, list[str]]:
    """Parse and check the whole file: what it holds, and every problem sorted by line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r" \(at line (\d+), column \d+\)", str(exc))
        where, why = (f"{source}:{at.group(1)}", str(exc)[:at.start()]) if at else (source, exc)
        return DirectoryFile(), [f"{where}: TOML syntax error: {why}"]
    c = _Checker(text, source)
    for key, value in data.items():
        if key == "format" and (value != FORMAT or isinstance(value, bool)):
            c.problem(key, 0, None, f"format = {value!r}: this mailgate reads format {FORMAT}")
        elif key != "format" and key not in SCHEMAS:
            c.problem(key, 0, None, f"unknown key {key!r}: {_suggest(key, ['format', *SCHEMAS])}")
        elif key in SCHEMAS and not isinstance(value, list):
            c.problem(key, 0, None, f"{key}: write [[{key}]] tables")
    rows = {t: [(i, c.fields(t, i, raw)) for i, raw in enumerate(data[t])]
            for t in SCHEMAS if isinstance(data.get(t), list)}
    named = {raw.get("name") for raw in rows.get("connectors") and data["connectors"] or []
             if isinstance(raw, dict)}
    for i, v in rows.get("connectors", []):
        if v is not None:
            c.connector(i, v, set(data["connectors"][i]))
    for i, v in rows.get("routes", []):
        # a route of a connector that has problems of its own is not checked further
        if v is not None and (v["connector"] in c.connectors or v["connector"] not in named):
            c.route(i, v)
    for name, (index, _) in c.connectors.items():
        c.bands(name, index)
    seen: dict[str, int] = {}
    for i, v in rows.get("contacts", []):
        if v is not None:
            c.contact(i, v, seen)
    return c.wanted, [message for _, message in sorted(c.problems, key=lambda p: p[0])]
