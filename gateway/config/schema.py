"""The settings schema: every section, key, type and default (SPEC §5.2).

The frozen dataclasses below are the single source of truth for what a config
file may say; the constants after them describe which values are constrained
(choices, listen addresses, positive or non-negative numbers), which key's
``*_file`` twin holds its secret, and which keys are ``[[table]]`` arrays.
It is kept apart from reading and checking so that code which only needs the
shape of the settings (the app, the relay, tests building ``Settings`` by
hand) imports nothing of TOML, environment or file handling.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gateway.directory import presets
from gateway.directory.connector_checks import implied_protocol, with_preset
from gateway.model import CONNECTOR_DEFAULTS, POLL_FIELDS, SECRET_FIELDS, Connector, ConnectorEntry


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
    # Copies journaled and not yet decided at which new transactions get 451 4.3.2 and
    # pollers wait, until the backlog is down to 80% of it; 0 turns the gate off.
    backlog_high_water: int = 20_000


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
    """One ``[[outbound.dkim]]`` table. A domain may have two, one per algorithm: RSA
    beside Ed25519 signs each mail twice (RFC 8463), for receivers of either kind."""
    domain: str = ""
    selector: str = ""
    key_file: str = ""
    algorithm: str = "rsa-sha256"       # or "ed25519-sha256" (RFC 8463)


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

    def entry(self) -> ConnectorEntry:
        """The connector with its service's preset applied, and its login: what the
        first start stores for this seed (``directory.ops.DirectoryOps.create_connector``)."""
        protocol, _ = implied_protocol(self.service, self.protocol)
        connector = with_preset(Connector(
            name=self.name, service=self.service, protocol=protocol,
            primary_address=self.primary_address, aliases=tuple(self.aliases),
            enabled=self.enabled, direction=self.direction, smtp_host=self.smtp_host,
            smtp_port=self.smtp_port, smtp_tls=self.smtp_tls,
            **{k: getattr(self, k) for k in POLL_FIELDS}), self.given())
        secrets = {k: getattr(self, k) for k in SECRET_FIELDS if getattr(self, k)}
        return ConnectorEntry(connector, self.username or None, self.password or None, secrets)


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
    ("outbound.dkim", "algorithm"): ("rsa-sha256", "ed25519-sha256"),
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
NON_NEGATIVE_KEYS = {"sender_budget", "reopen_budget", "unsigned_token_days",    # 0: off
                     "backlog_high_water"}


TABLE_ARRAYS = {"connectors": BootstrapConnector, "routes": BootstrapRoute, "dkim": DkimKey,
                "webhooks": Webhook}
