"""Process configuration: TOML file + environment overrides → frozen settings.

``load()`` is the one entry point: it reads the file, binds it and the
environment to the schema (``binding``), then runs the checks no single key can
make on its own: storage URL, SMTP TLS and AUTH pairs, the outbound relay,
webhooks, signed tokens, the classes file, and each seeded connector and route
(R-C1 / R-I5 / R-I6 / R-B5, the same rules as the API). Every problem found is
raised together in one ``ConfigError``, each naming its file and line.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from pathlib import Path

from gateway.config.binding import _env_overrides, _Loader, _merge, _read_secret_files
from gateway.config.schema import BootstrapConnector, Settings
from gateway.directory import presets
from gateway.directory.addresses import (NOT_A_CONNECTOR_ADDRESS, is_connector_address,
                                         normalize_address)
from gateway.directory.connector_checks import (POLL_CHECKS, connector_problems,
                                                credential_problems, implied_protocol)
from gateway.mail_classes import RulesError, read_classifier


class ConfigError(Exception):
    """One or more problems, each already formatted as ``file:line: message``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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
    owners: dict[str, str] = {}         # R-C1: address (tags, case ignored) → its connector
    for index, connector in enumerate(settings.directory.connectors):
        def problem(key: str | None, message: str, index: int = index) -> None:
            loader.problem("directory.connectors", key, message, index)
        if not connector.name or not connector.primary_address:
            problem(None, "[[directory.connectors]] needs name and primary_address")
        if connector.name in seen:
            problem("name", f"R-C1: [[directory.connectors]] name {connector.name!r} appears "
                    "twice")
        seen.add(connector.name)
        for key, address in (("primary_address", connector.primary_address),
                             *(("aliases", a) for a in connector.aliases)):
            if not address:
                continue
            owner = owners.setdefault(normalize_address(address), connector.name)
            if not is_connector_address(address):
                problem(key, f"R-C1: [[directory.connectors]] {address!r} "
                        f"{NOT_A_CONNECTOR_ADDRESS}")
            elif owner != connector.name:
                problem(key, f"R-C1: {address} already belongs to connector {owner!r}")
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
    entry = seed.entry()
    for key, message in (connector_problems(entry.connector, given)
                         + credential_problems(entry.connector, entry.username, entry.password,
                                               entry.secrets)):
        if key in bad:
            continue                    # already said, in its own words
        fix = _FIXES.get(key) if key not in given else None    # a missing value's fix
        problem(key, f"{name}: {message}" + (f"; {fix}" if fix else ""))
