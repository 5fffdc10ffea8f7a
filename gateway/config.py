"""Process configuration: TOML file + environment overrides → frozen settings.

SPEC §5.2. The schema below is the single source of truth: every key, its type
and its default. A file that names an unknown key or gives a value of the wrong
type is refused with the file, the line and a fix, so an admin never learns
about a typo from a message that went missing. Any value can be overridden by
``MAILGATE_<SECTION>_<KEY>`` (nested tables join with ``_``), so secrets never
have to sit in the file; ``<key>_file`` variants read a secret from a file.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import presets
from gateway.pipeline.classify import RulesError, read_classifier
from gateway.connector_checks import (POLL_CHECKS, connector_problems, credential_problems,
                                      implied_protocol, with_preset)
from gateway.model import CONNECTOR_DEFAULTS, POLL_FIELDS, SECRET_FIELDS, Connector


class ConfigError(Exception):
    """One or more problems, each already formatted as ``file:line: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class GatewaySection:
    server_name: str = "mailgate"
    message_id_domain: str = "mailgate.invalid"
    drain_timeout: float = 30.0
    event_loop: str = "auto"


@dataclass(frozen=True)
class StorageSection:
    url: str = "sqlite:///./mailgate.db"
    commit_batch_max: int = 256


@dataclass(frozen=True)
class ListenerSection:
    """What the LMTP and SMTP listeners share: the address and the limits (R-I3)."""
    enabled: bool = True
    listen: str = "127.0.0.1:8024"
    max_message_size: int = 36_700_160
    max_recipients: int = 1000
    max_line_length: int = 1000
    max_header_count: int = 1000
    timeout: float = 300.0


@dataclass(frozen=True)
class LmtpSection(ListenerSection):
    pass


@dataclass(frozen=True)
class SmtpSection(ListenerSection):
    enabled: bool = False
    listen: str = "127.0.0.1:8025"
    tls_cert: str = ""
    tls_key: str = ""
    require_starttls: bool = False
    auth_username: str = ""
    auth_password: str = ""
    auth_password_file: str = ""


@dataclass(frozen=True)
class HttpSection:
    enabled: bool = True
    listen: str = "127.0.0.1:9024"
    admin_token: str = ""
    admin_token_file: str = ""


@dataclass(frozen=True)
class MatchingSection:
    mode: str = "off"
    hide_plus_in_from: bool = False
    ref_requires_participant: bool = False      # R-B2 sender binding
    trusted_authserv_ids: tuple[str, ...] = ()  # R-B2: MTAs whose Authentication-Results count
    sign_tokens: bool = False                   # R-B1 signed plus tags, body tags, Message-IDs
    token_secret: str = ""                      # or token_secret_file, or the environment
    token_secret_file: str = ""
    unsigned_token_days: int = 30               # R-B1 transition window after signing starts


@dataclass(frozen=True)
class AutogenSection:
    extended: bool = True
    disabled: tuple[str, ...] = ()      # R-A2 rules turned off one by one
    classes_file: str = ""              # R-B4: an admin's rules, tried before the shipped ones


@dataclass(frozen=True)
class DedupSection:
    window_days: int = 30


@dataclass(frozen=True)
class LoopsSection:
    """R-B3 loop breakers; 0 turns a budget off."""
    sender_budget: int = 20              # copies one sender may bring one connector ...
    sender_window_minutes: int = 10      # ... within this many minutes
    reopen_budget: int = 5               # reopens by mail of one resolved work item ...
    reopen_window_hours: int = 24        # ... within this many hours


@dataclass(frozen=True)
class DefaultGatewaySection:
    enabled: bool = True                 # false: only outgoing connectors relay (R-O1)
    host: str = ""
    port: int = 25
    tls: str = "none"
    username: str = ""
    password: str = ""
    password_file: str = ""
    ca_file: str = ""                    # extra trusted CA for the relay's certificate (R-C4)
    timeout: float = 60.0


@dataclass(frozen=True)
class DkimKey:
    domain: str = ""
    selector: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class OutboundSection:
    enabled: bool = False
    unmonitored_address: str = ""
    default_gateway: DefaultGatewaySection = field(default_factory=DefaultGatewaySection)
    dkim: tuple[DkimKey, ...] = ()
    ack_budget_per_day: int = 10         # R-B3: automated mails per recipient per day
    retry_initial: float = 30.0          # seconds before the first retry; doubles each time
    retry_max: float = 3600.0
    max_lifetime: float = 5 * 86400.0    # then a temporary failure becomes permanent
    concurrency: int = 4                 # SMTP connections sending at once (each reused)


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = True


@dataclass(frozen=True)
class BootstrapConnector:
    """A connector the config file seeds into an empty-of-it directory (R-C1).

    The keys are the API's. A polled service's preset fills protocol, host, port and
    TLS; ``other`` gives them. Credentials may sit here or, better, in a file named
    by the ``*_file`` twin (``password_file = "/run/secrets/imap"``): the
    environment overrides do not reach ``[[table]]`` arrays."""
    name: str = ""
    service: str = "lmtp"
    protocol: str = ""                   # only for service "other": the others imply it
    primary_address: str = ""
    aliases: tuple[str, ...] = ()
    enabled: bool = True
    direction: str = "incoming"
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_tls: str = "starttls"
    username: str = ""
    password: str = ""
    password_file: str = ""
    client_secret: str = ""
    client_secret_file: str = ""
    certificate_password: str = ""
    certificate_password_file: str = ""
    # R-C1 poll settings (gateway.model.POLL_FIELDS), their defaults Connector's own
    host: str = CONNECTOR_DEFAULTS.host
    port: int = CONNECTOR_DEFAULTS.port
    tls: str = CONNECTOR_DEFAULTS.tls
    folders: tuple[str, ...] = CONNECTOR_DEFAULTS.folders
    poll_interval: int = CONNECTOR_DEFAULTS.poll_interval
    shared_mailbox: str = CONNECTOR_DEFAULTS.shared_mailbox
    tenant_id: str = CONNECTOR_DEFAULTS.tenant_id
    application_id: str = CONNECTOR_DEFAULTS.application_id
    certificate_file: str = CONNECTOR_DEFAULTS.certificate_file
    certificate_thumbprint: str = CONNECTOR_DEFAULTS.certificate_thumbprint
    authority_host: str = CONNECTOR_DEFAULTS.authority_host
    graph_base_url: str = CONNECTOR_DEFAULTS.graph_base_url
    ca_file: str = CONNECTOR_DEFAULTS.ca_file
    tls_verify: bool = CONNECTOR_DEFAULTS.tls_verify
    keep_on_server: bool = CONNECTOR_DEFAULTS.keep_on_server
    start_from: str = CONNECTOR_DEFAULTS.start_from
    idle: bool = CONNECTOR_DEFAULTS.idle
    move_to: str = CONNECTOR_DEFAULTS.move_to

    def given(self) -> tuple[str, ...]:
        """The poll settings this seed sets (those differing from the defaults)."""
        blank = BootstrapConnector()
        return tuple(k for k in POLL_FIELDS if getattr(self, k) != getattr(blank, k))

    def entry(self) -> tuple[Connector, str | None, str | None, dict]:
        """(connector with its service's preset applied, username, password, secrets):
        what ``Operations.add_connector`` stores for this seed."""
        protocol, _ = implied_protocol(self.service, self.protocol)
        connector = with_preset(Connector(
            name=self.name, service=self.service, protocol=protocol,
            primary_address=self.primary_address, aliases=tuple(self.aliases),
            enabled=self.enabled, direction=self.direction, smtp_host=self.smtp_host,
            smtp_port=self.smtp_port, smtp_tls=self.smtp_tls,
            **{k: getattr(self, k) for k in POLL_FIELDS}), self.given())
        secrets = {k: getattr(self, k) for k in SECRET_FIELDS if getattr(self, k)}
        return connector, self.username or None, self.password or None, secrets


@dataclass(frozen=True)
class BootstrapRoute:
    """A route the config file seeds for a connector that has none yet (R-R1..R-R7)."""
    connector: str = ""
    name: str = ""
    email_address: str = ""
    folder_path: str = ""
    kind: str = "Ticket"
    process: str = ""
    customer: str = ""
    contract: str = ""
    service: str = ""
    ticket_category: str = ""
    send_automated_emails: bool = False
    ack_cc: bool = False
    test_mode: bool = False
    enabled: bool = True
    fallback: bool = False
    important: bool = False
    attachment_types: str = ""
    subject_keywords: str = ""
    sender_companies: str = ""
    sender_list_includes: str = ""
    recipient_list_includes: str = ""


@dataclass(frozen=True)
class DirectorySection:
    connectors: tuple[BootstrapConnector, ...] = ()
    routes: tuple[BootstrapRoute, ...] = ()


@dataclass(frozen=True)
class Webhook:
    """R-X1: the events feed POSTed to a URL, HMAC-SHA256-signed, retried with backoff."""
    url: str = ""
    secret: str = ""
    secret_file: str = ""
    types: tuple[str, ...] = ()          # empty: every event


@dataclass(frozen=True)
class Settings:
    gateway: GatewaySection = field(default_factory=GatewaySection)
    storage: StorageSection = field(default_factory=StorageSection)
    lmtp: LmtpSection = field(default_factory=LmtpSection)
    smtp: SmtpSection = field(default_factory=SmtpSection)
    http: HttpSection = field(default_factory=HttpSection)
    matching: MatchingSection = field(default_factory=MatchingSection)
    autogen: AutogenSection = field(default_factory=AutogenSection)
    dedup: DedupSection = field(default_factory=DedupSection)
    loops: LoopsSection = field(default_factory=LoopsSection)
    outbound: OutboundSection = field(default_factory=OutboundSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    directory: DirectorySection = field(default_factory=DirectorySection)
    webhooks: tuple[Webhook, ...] = ()
    source: str = "<embedded default>"

    @property
    def sqlite_path(self) -> str | None:
        """The database path for ``sqlite:///path`` URLs, else None."""
        prefix = "sqlite:///"
        return self.storage.url[len(prefix):] if self.storage.url.startswith(prefix) else None


# Which values are constrained to a set, and what each key's secret file is.
CHOICES = {
    ("gateway", "event_loop"): ("auto", "asyncio", "uvloop"),
    ("matching", "mode"): ("off", "mixed", "plus_only"),
    ("outbound.default_gateway", "tls"): ("none", "starttls", "implicit"),
    ("directory.connectors", "service"): presets.SERVICES,
    ("directory.connectors", "protocol"): ("", *presets.PROTOCOLS),
    ("directory.routes", "kind"): ("Ticket", "Case"),
    ("directory.connectors", "direction"): ("incoming", "outgoing", "both"),
    ("directory.connectors", "smtp_tls"): ("none", "starttls", "implicit"),
}
SECRET_FILES = {"admin_token_file": "admin_token", "auth_password_file": "auth_password",
                "token_secret_file": "token_secret",
                "password_file": "password", "client_secret_file": "client_secret",
                "certificate_password_file": "certificate_password"}
LISTEN_KEYS = {("lmtp", "listen"), ("smtp", "listen"), ("http", "listen")}
POSITIVE_KEYS = {"ack_budget_per_day", "concurrency", "retry_initial", "retry_max", "max_lifetime", "max_message_size", "max_recipients", "max_line_length", "max_header_count",
                 "commit_batch_max", "window_days", "timeout", "drain_timeout",
                 "sender_window_minutes", "reopen_window_hours"}
NON_NEGATIVE_KEYS = {"sender_budget", "reopen_budget", "unsigned_token_days"}     # 0: off


TABLE_ARRAYS = {"connectors": BootstrapConnector, "routes": BootstrapRoute, "dkim": DkimKey,
                "webhooks": Webhook}


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port); ``[::1]:8024`` for IPv6."""
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d{1,5})", value.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535 or not m.group(1):
        raise ValueError(f"{value!r} is not host:port (e.g. \"127.0.0.1:8024\")")
    return m.group(1), int(m.group(2))


class _LineIndex:
    """Finds the line of a ``[section]`` key in the TOML text, for error messages; in a
    ``[[section]]`` array, of the key of the index-th element (the second connector's
    mistake is on the second connector's line)."""

    def __init__(self, text: str):
        self.lines: dict[tuple[str, str], int] = {}
        self.tables: dict[str, int] = {}
        self.elements: dict[tuple[str, int, str | None], int] = {}
        counts: dict[str, int] = {}
        section, element = "", None
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?", stripped)
            if header:
                section = header.group(2).replace(" ", "").replace('"', "")
                self.tables.setdefault(section, number)
                element = None
                if header.group(1) == "[[":
                    element = counts.get(section, 0)
                    counts[section] = element + 1
                    self.elements[(section, element, None)] = number
                continue
            key = re.match(r"^([A-Za-z0-9_\-\"\.]+)\s*=", stripped)
            if key:
                self.lines.setdefault((section, key.group(1).strip('"')), number)
                if element is not None:
                    self.elements.setdefault((section, element, key.group(1).strip('"')),
                                             number)

    def line(self, section: str, key: str | None = None, index: int | None = None
             ) -> int | None:
        if index is not None:
            found = self.elements.get((section, index, key)) or \
                self.elements.get((section, index, None))
            if found:
                return found
        if key is not None and (section, key) in self.lines:
            return self.lines[(section, key)]
        if key is not None and f"{section}.{key}".lstrip(".") in self.tables:
            return self.tables[f"{section}.{key}".lstrip(".")]
        return self.tables.get(section)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"known keys: {', '.join(sorted(options))}"


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, "a list of strings")


def _coerce(value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default``; raise TypeError with a hint."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise TypeError(_type_name(bool))
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(_type_name(float))
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(_type_name(int))
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise TypeError(_type_name(str))
    if isinstance(default, tuple):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError(_type_name(tuple))
    raise TypeError("a table")


class _Loader:
    def __init__(self, source: str, text: str):
        self.source = source
        self.index = _LineIndex(text)
        self.problems: list[str] = []

    def problem(self, section: str, key: str | None, message: str,
                index: int | None = None) -> None:
        line = self.index.line(section, key, index)
        where = f"{self.source}:{line}" if line else self.source
        self.problems.append(f"{where}: {message}")

    def build(self, cls: type, data: dict, section: str, index: int | None = None) -> Any:
        """Build dataclass ``cls`` from ``data`` (the ``index``-th of a ``[[section]]``
        array when given), collecting problems as it goes."""
        defaults = cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = f"[{section}] {key}" if section else f"section [{key}]"
            if key not in fields or key == "source":
                known = [f for f in fields if f != "source"]
                self.problem(section, key, f"unknown {'key ' if section else ''}{name}: "
                             f"{_suggest(key, known)}", index)
                continue
            default = getattr(defaults, key)
            if dataclasses.is_dataclass(default):
                if not isinstance(value, dict):
                    self.problem(section, key, f"{name} must be a table [{section}.{key}]")
                    continue
                values[key] = self.build(type(default), value, f"{section}.{key}" if section else key)
                continue
            if isinstance(default, tuple) and key in TABLE_ARRAYS:
                element = TABLE_ARRAYS[key]
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    self.problem(section, key, f"{name} must be written as [[{section}.{key}]] tables")
                    continue
                values[key] = tuple(self.build(element, v, f"{section}.{key}", i)
                                    for i, v in enumerate(value))
                continue
            try:
                values[key] = _coerce(value, default)
            except TypeError as hint:
                self.problem(section, key, f"{name} = {value!r} is not valid: write {hint}"
                             f" (default: {default!r})", index)
                continue
            self.check_value(section, key, values[key], index)
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - defensive
            self.problem(section, None, str(exc))
            return defaults

    def check_value(self, section: str, key: str, value: Any, index: int | None = None) -> None:
        choices = CHOICES.get((section, key))
        if choices and value not in choices:
            self.problem(section, key, f"[{section}] {key} = {value!r}: use one of "
                         f"{', '.join(repr(c) for c in choices)}", index)
        if (section, key) in LISTEN_KEYS:
            try:
                parse_listen(value)
            except ValueError as exc:
                self.problem(section, key, f"[{section}] {key}: {exc}")
        if key in POSITIVE_KEYS and value <= 0:
            self.problem(section, key, f"[{section}] {key} = {value!r}: must be greater than 0")
        if key in NON_NEGATIVE_KEYS and value < 0:
            self.problem(section, key, f"[{section}] {key} = {value!r}: must be 0 (no limit) "
                         "or more")


def _env_overrides(env: dict[str, str]) -> tuple[dict, list[str]]:
    """``MAILGATE_<SECTION>_<KEY>`` variables → a nested dict to merge over the file."""
    targets: dict[str, tuple[str, ...]] = {}

    def walk(cls: type, path: tuple[str, ...]) -> None:
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if f.name == "source" or (isinstance(default, tuple) and f.name in TABLE_ARRAYS):
                continue
            if dataclasses.is_dataclass(default):
                walk(type(default), path + (f.name,))
            else:
                targets["MAILGATE_" + "_".join(path + (f.name,)).upper()] = path + (f.name,)

    walk(Settings, ())
    overrides: dict = {}
    problems = []
    for name, raw in env.items():
        if not name.startswith("MAILGATE_") or name == "MAILGATE_CONFIG":
            continue
        path = targets.get(name)
        if path is None:
            problems.append(f"environment: unknown variable {name}: "
                            f"{_suggest(name, list(targets))}")
            continue
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(raw, path, problems)
    return overrides, problems


def _parse_env_value(raw: str, path: tuple[str, ...], problems: list[str]) -> Any:
    default: Any = Settings()
    for part in path:
        default = getattr(default, part)
    if isinstance(default, str):
        return raw
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if isinstance(default, tuple):
            return [item.strip() for item in raw.split(",") if item.strip()]
        return raw


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_secret_files(data: dict, loader: _Loader, section: str = "",
                       index: int | None = None) -> None:
    """``admin_token_file = "/run/secrets/x"`` fills ``admin_token`` from that file; in
    ``[[directory.connectors]]`` tables too (each connector's own password file)."""
    for key, value in list(data.items()):
        inner = f"{section}.{key}" if section else key
        if isinstance(value, dict):
            _read_secret_files(value, loader, inner)
        elif isinstance(value, list) and key in TABLE_ARRAYS:
            for i, element in enumerate(value):
                if isinstance(element, dict):
                    _read_secret_files(element, loader, inner, i)
        elif key in SECRET_FILES and isinstance(value, str) and value:
            try:
                data[SECRET_FILES[key]] = Path(value).read_text().strip()
            except OSError as exc:
                where = f"[[{section}]]" if index is not None else f"[{section}]"
                loader.problem(section, key, f"{where} {key}: cannot read {value}: "
                               f"{exc.strerror}; fix the path or its permissions", index)


def load(path: str | None = None, env: dict[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (or the embedded default when None) plus ``env``.

    Raises ConfigError listing every problem found, not just the first.
    """
    env = dict(os.environ) if env is None else env
    if path is None:
        source, text = "<embedded default>", ""
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{source}: cannot read config file: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: TOML syntax error: {exc}"]) from None
    loader = _Loader(source, text)
    overrides, env_problems = _env_overrides(env)
    loader.problems.extend(env_problems)
    data = _merge(data, overrides)
    _read_secret_files(data, loader)
    settings = loader.build(Settings, data, "")
    _check_cross_field(settings, loader)
    if loader.problems:
        raise ConfigError(loader.problems)
    return dataclasses.replace(settings, source=source)


def _check_cross_field(settings: Settings, loader: _Loader) -> None:
    if not settings.storage.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        loader.problem("storage", "url", "[storage] url must be \"sqlite:///path/to/mailgate.db\""
                       " or \"postgresql://user@host/db\"")
    elif not settings.storage.url.startswith("sqlite:///"):
        loader.problem("storage", "url", "[storage] url: PostgreSQL is not supported by this "
                       "release yet; use \"sqlite:///path/to/mailgate.db\"")
    smtp = settings.smtp
    if smtp.enabled and bool(smtp.tls_cert) != bool(smtp.tls_key):
        loader.problem("smtp", "tls_cert" if not smtp.tls_cert else "tls_key",
                       "[smtp] STARTTLS needs both tls_cert and tls_key")
    if smtp.enabled and smtp.require_starttls and not smtp.tls_cert:
        loader.problem("smtp", "require_starttls",
                       "[smtp] require_starttls = true needs tls_cert and tls_key")
    if smtp.enabled and bool(smtp.auth_username) != bool(smtp.auth_password):
        loader.problem("smtp", "auth_username",
                       "[smtp] AUTH needs both auth_username and auth_password "
                       "(or MAILGATE_SMTP_AUTH_PASSWORD)")
    if smtp.enabled and smtp.auth_username and not smtp.tls_cert:
        loader.problem("smtp", "auth_username",
                       "[smtp] AUTH is only offered over TLS: set tls_cert and tls_key")
    outbound = settings.outbound
    if outbound.enabled and outbound.default_gateway.enabled and not outbound.default_gateway.host:
        loader.problem("outbound.default_gateway", "host",
                       "[outbound] enabled = true needs a system default gateway: set "
                       "[outbound.default_gateway] host (R-O1)")
    if outbound.enabled and not outbound.default_gateway.enabled \
            and not outbound.unmonitored_address:
        loader.problem("outbound", "unmonitored_address",
                       "R-O1: with the default gateway disabled, set [outbound] "
                       "unmonitored_address to the address of an outgoing connector")
    for hook in settings.webhooks:
        if not re.fullmatch(r"https?://[^\s/]+\S*", hook.url):
            loader.problem("webhooks", "url", f"[[webhooks]] url {hook.url!r} is not an "
                           "http(s) URL")
        if not (hook.secret or hook.secret_file):
            loader.problem("webhooks", "secret", "[[webhooks]] needs secret or secret_file: "
                           "receivers verify the X-Mailgate-Signature with it")
    matching = settings.matching
    if matching.sign_tokens and len(matching.token_secret.encode()) < 16:
        loader.problem("matching", "sign_tokens",
                       "R-B1: [matching] sign_tokens = true needs a token_secret of at least 16 "
                       "bytes: set token_secret_file (e.g. made with `head -c 32 /dev/urandom "
                       "| base64`) or MAILGATE_MATCHING_TOKEN_SECRET")
    if settings.autogen.classes_file:
        try:
            read_classifier(settings.autogen.classes_file)
        except (OSError, RulesError) as exc:
            detail = f"cannot read it: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            loader.problem("autogen", "classes_file", f"[autogen] classes_file: {detail}")
    named = {c.name for c in settings.directory.connectors}
    for route in settings.directory.routes:
        if route.connector not in named:
            loader.problem("directory.routes", "connector",
                           f"[[directory.routes]] {route.name or route.email_address!r}: connector "
                           f"{route.connector!r} is not one of the [[directory.connectors]]")
        if not route.email_address:
            loader.problem("directory.routes", "email_address",
                           "[[directory.routes]] needs email_address (an address of its "
                           "connector, or \"*\")")
    seen: set[str] = set()
    for index, connector in enumerate(settings.directory.connectors):
        def problem(key: str | None, message: str, index: int = index) -> None:
            loader.problem("directory.connectors", key, message, index)
        if not connector.name or not connector.primary_address:
            problem(None, "[[directory.connectors]] needs name and primary_address")
        if connector.name in seen:
            problem("name", f"[[directory.connectors]] name {connector.name!r} appears twice")
        seen.add(connector.name)
        for address in (connector.primary_address, *connector.aliases):
            if address and not re.fullmatch(r"[^@\s]+@[^@\s]+", address):
                problem("primary_address", f"[[directory.connectors]] {address!r} is not an "
                        "address like support@example.com")
        _check_seed(connector, problem)
    if settings.sqlite_path == "":
        loader.problem("storage", "url", "[storage] url names no file: "
                       "sqlite:///./mailgate.db")


MAX_PASSWORD = 50            # R-C1
# What to write for each thing a seed lacks (the "fix" of a problem)
_FIXES = {
    "protocol": 'write protocol = "imap" (or "pop3", "graph", "lmtp")',
    "host": 'write host = "imap.example.com"',
    "tenant_id": 'write tenant_id = "contoso.onmicrosoft.com" (or the tenant\'s GUID)',
    "application_id": 'write application_id = "<the app registration\'s GUID>"',
    "username": 'write username = "support@example.com"',
    "password": 'write password_file = "/run/secrets/mailbox" (or password)',
    "client_secret": 'write client_secret_file = "/run/secrets/graph" (or client_secret)',
    "certificate_thumbprint": 'write certificate_thumbprint = "<40 hex digits>"',
}


def _check_seed(seed: BootstrapConnector, problem) -> None:
    """R-C1 / R-I6 / R-I5 / R-B5 for a seeded connector: the same rules as the API, so a
    seed the API would refuse never reaches the directory."""
    name = f"[[directory.connectors]] {seed.name!r}"
    given = seed.given()
    bad = [key for key in given if not POLL_CHECKS[key][0](getattr(seed, key))]
    for key in bad:
        problem(key, f"{name}: {key} must be {POLL_CHECKS[key][1]}")
    if len(seed.password) > MAX_PASSWORD:
        problem("password", f"{name}: R-C1: password is at most {MAX_PASSWORD} characters "
                f"(got {len(seed.password)})")
    _, clash = implied_protocol(seed.service, seed.protocol)
    if clash is not None:
        problem("protocol", f"{name}: {clash[1]}")
    if seed.service not in presets.SERVICES or clash is not None:
        return
    connector, username, password, secrets = seed.entry()
    for key, message in (connector_problems(connector, given)
                         + credential_problems(connector, username, password, secrets)):
        if key in bad:
            continue                    # already said, in its own words
        fix = _FIXES.get(key) if key not in given else None    # a missing value's fix
        problem(key, f"{name}: {message}" + (f"; {fix}" if fix else ""))
