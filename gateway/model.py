"""Plain data the parts of mailgate hand each other, and the error that names a broken rule.
No behaviour, no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field

SOURCES = ("lmtp", "smtp", "imap", "pop3", "graph")


@dataclass(frozen=True, slots=True)
class Copy:
    """One received message as one receiving connector got it (R-I7).

    ``raw`` is the message exactly as received (after SMTP dot-unstuffing, which
    is transport, not content). Copies of one message share the same ``raw``
    object; the journal stores those bytes once.
    """
    raw: bytes
    connector: str
    source: str
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    message_id: str | None = None
    peer: str | None = None
    helo: str | None = None
    folder_path: str | None = None
    # Polled mail: the message's key in its mailbox folder (IMAP "uidvalidity:uid",
    # POP3 UIDL, Graph id). The journal records it in the same commit as the copy,
    # so a poller that crashed before deleting knows the message is already stored.
    poll_key: str | None = None


@dataclass(frozen=True, slots=True)
class Connector:
    """A mailbox the gateway serves (R-C1), without its secrets (those stay in the
    directory's ``ConnectorEntry`` and are read only by what logs in)."""
    name: str
    service: str
    primary_address: str
    aliases: tuple[str, ...] = ()
    enabled: bool = True
    direction: str = "incoming"
    protocol: str = "lmtp"
    route_on_envelope: bool = False
    smtp_host: str = ""                 # R-C1 outgoing settings; R-O1 uses them
    smtp_port: int = 587
    smtp_tls: str = "starttls"          # none | starttls | implicit
    # R-C1 incoming settings of a polled connector (imap, pop3, graph); see POLL_FIELDS
    host: str = ""
    port: int = 0                       # 0: the protocol's port for ``tls``
    tls: str = "implicit"               # none | starttls | implicit
    folders: tuple[str, ...] = ("INBOX",)
    poll_interval: int = 60             # seconds between rounds (R-I4)
    shared_mailbox: str = ""            # "access another mailbox"; Graph: the mailbox UPN
    tenant_id: str = ""                 # R-I6 Graph client credentials
    application_id: str = ""
    certificate_file: str = ""          # PFX (with certificate_password) or PEM key
    certificate_thumbprint: str = ""    # SHA-1 hex, with a PEM key
    authority_host: str = "https://login.microsoftonline.com"
    graph_base_url: str = "https://graph.microsoft.com/v1.0"
    ca_file: str = ""                   # R-C4 extra trusted CA
    tls_verify: bool = True             # R-C4: off only explicitly, warned at every start
    keep_on_server: bool = False        # R-B5: flag \Seen instead of deleting
    start_from: str = "all"             # R-B5: "now" skips what the mailbox holds at first poll
    idle: bool = True                   # IMAP: between rounds, IDLE (RFC 2177) wakes the poller
    move_to: str = ""                   # R-B5: move processed mail to this folder, not delete

    def addresses(self) -> tuple[str, ...]:
        return (self.primary_address, *self.aliases)

    @property
    def clears_folder(self) -> bool:
        """Processed mail leaves the polled folder: deleted, or moved to ``move_to``
        (R-B5); only ``keep_on_server`` without ``move_to`` leaves it where it is."""
        return not self.keep_on_server or bool(self.move_to)

    @property
    def polled(self) -> bool:
        return self.protocol in POLLED_PROTOCOLS

    def poll_settings(self) -> dict:
        """The POLL_FIELDS as JSON values (folders a list): what the store keeps, the
        API answers and the history compares."""
        values = {name: getattr(self, name) for name in POLL_FIELDS}
        values["folders"] = list(self.folders)
        return values


POLLED_PROTOCOLS = ("imap", "pop3", "graph")
# A connector with every default: the one source of the defaults that the config seeds
# and the directory file show for settings left out.
CONNECTOR_DEFAULTS = Connector(name="", service="", primary_address="")

# Connector fields that only polled connectors use; stored together (one JSON column)
# because nothing queries them: the pollers read them back whole.
POLL_FIELDS = ("host", "port", "tls", "folders", "poll_interval", "shared_mailbox",
               "tenant_id", "application_id", "certificate_file", "certificate_thumbprint",
               "authority_host", "graph_base_url", "ca_file", "tls_verify", "keep_on_server",
               "start_from", "idle", "move_to")
# Secrets a polled connector may carry besides the password (never logged or listed).
SECRET_FIELDS = ("client_secret", "certificate_password")


@dataclass(frozen=True, slots=True)
class ConnectorEntry:
    """A connector with its credentials, as the directory keeps it (R-C1). The password
    and the other secrets (``client_secret``, ``certificate_password``) leave the API
    only as ``*_set`` flags, and the history only masked."""
    connector: Connector
    username: str | None = None
    password: str | None = None
    secrets: dict = field(default_factory=dict)

    def secret(self, name: str) -> str | None:
        return self.secrets.get(name) or None


class RuleViolation(ValueError):
    """A request that breaks a numbered rule; the API answers 4xx naming ``rule``."""

    def __init__(self, rule: str, message: str, field: str | None = None):
        super().__init__(f"{rule}: {message}")
        self.rule, self.message, self.field = rule, message, field


class Conflict(RuleViolation):
    """The change clashes with something that exists (a name, an address): HTTP 409."""


@dataclass(slots=True)
class EmailRecord:
    """An email as the store returns it to readers (API, CLI)."""
    id: int
    connector: str
    source: str
    direction: str
    mail_from: str | None
    rcpt_to: list[str]
    message_id: str | None
    received_at: float
    size: int
    state: str
    outcome: str | None = None
    reason: str | None = None
    targets: list = field(default_factory=list)
    trace: list = field(default_factory=list)
    peer: str | None = None
    helo: str | None = None
    folder_path: str | None = None
    summary: dict | None = None         # the headers shown (gateway.mail_summary), if made


# -- work items (R-W1, R-W2) ------------------------------------------------------------

KIND_LETTERS = {"Ticket": "T", "Case": "C", "Action": "A"}
LETTER_KINDS = {v: k for k, v in KIND_LETTERS.items()}
STATES = ("DRAFT", "TO_DO", "IN_PROGRESS", "WAITING", "RESOLVED", "CLOSED")
WAIT_TYPES = ("more_info", "other")
MODES = ("live", "test")


@dataclass(slots=True)
class WorkItem:
    """A Ticket, Case or Action (R-W1). Field names are the API's JSON names."""
    ref: str                      # "<number>-<T|C|A>"
    kind: str                     # Ticket | Case | Action
    uuid: str                     # random; used in Message-IDs and the body tag
    connector: str
    mode: str = "live"
    state: str = "TO_DO"
    wait_type: str | None = None
    new_info: bool = False
    parent: str | None = None
    split_into: list[str] = field(default_factory=list)
    merged_into: str | None = None
    converted_to: str | None = None
    linked: list[str] = field(default_factory=list)
    copied_from: str | None = None
    contacts: list[str] = field(default_factory=list)
    custom_data: dict = field(default_factory=dict)
    send_automated_emails: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def number(self) -> int:
        return int(self.ref.split("-", 1)[0])


# -- routes (R-R1 .. R-R9) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RouteRules:
    """R-R2 routing rules; an empty/None rule is not checked. JSON names as in the API."""
    important: bool | None = None
    attachment_types: str = ""          # ".pdf; .docx"
    subject_keywords: str = ""          # "urgent; support"
    sender_companies: str = ""          # "ACME; Initech"
    sender_list_includes: str = ""      # "a@x.com; *@y.com; *z.com"
    recipient_list_includes: str = ""

    def empty(self) -> bool:
        return (self.important is None and not self.attachment_types
                and not self.subject_keywords and not self.sender_companies
                and not self.sender_list_includes and not self.recipient_list_includes)


@dataclass(frozen=True, slots=True)
class RouteTarget:
    kind: str = "Ticket"                # Ticket | Case
    process: str = ""
    customer: str = ""
    contract: str = ""
    service: str = ""
    ticket_category: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    id: int
    name: str
    connector: str
    email_address: str                  # one of the connector's addresses, or "*"
    order: int
    folder_path: str = ""               # blank or "*" = any (R-R3)
    rules: RouteRules = field(default_factory=RouteRules)
    target: RouteTarget = field(default_factory=RouteTarget)
    send_automated_emails: bool = False
    ack_cc: bool = False
    test_mode: bool = False
    enabled: bool = True
    fallback: bool = False

    @property
    def wildcard(self) -> bool:
        return self.email_address == "*"


# -- what the pipeline decides (SPEC §3, R-U1) --------------------------------------------

OUTCOMES = ("appended", "created", "ignored", "duplicate", "own_mail", "unprocessed")
UNPROCESSED_REASONS = ("no_visible_address", "no_route", "alias_without_route",
                       "mixed_live_test", "unparseable", "rejected_by_rule", "sender_flood")


@dataclass(slots=True)
class TraceLine:
    """One stage's line in the decision trace (SPEC §3)."""
    stage: str
    verdict: str                        # "pass" or the verdict that ended the pipeline
    reason: str = ""
    matched: list[str] = field(default_factory=list)
    duration_ms: float = 0.0

    def to_json(self) -> dict:
        return {"stage": self.stage, "verdict": self.verdict, "reason": self.reason,
                "matched": self.matched, "duration_ms": round(self.duration_ms, 3)}
