"""A throwaway, real Postfix instance that relays test domains to an LMTP port.

Why: the gateway must behave as the real MTA in front of it expects (one LMTP
reply per recipient, 4xx = keep and retry, 5xx = bounce); fakes cannot prove
that.  So tests inject mail into a private Postfix (config, queue and log in one
temp dir) delivering to 127.0.0.1:<lmtp_port>.  Needs root ("postfix start" is superuser-only) and Debian's
postfix package.  All methods block: from an async test whose LMTP server runs
in the same event loop, call them via ``await asyncio.to_thread(...)``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

SBIN = Path("/usr/sbin")

# Every service unchrooted (5th column "n"): a chroot would need copies of
# /etc files inside the temp queue dir.  postlog is required by maillog_file.
MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
smtp unix - - n - - smtp
relay unix - - n - - smtp
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""

# One delivery-attempt log line of any delivery agent (lmtp, error, ...).
_DELIVERY_RE = re.compile(
    r"postfix[^/\s]*/(?P<agent>[\w-]+)\[\d+\]: (?P<queue_id>[0-9A-Za-z]+): "
    r"to=<(?P<recipient>[^>]*)>,(?:.*? relay=(?P<relay>[^,]*),)?.*?"
    r"(?: dsn=(?P<dsn>[\d.]+),)? status=(?P<status>\w+) \((?P<reply>.*)\)$",
    re.M)


class PostfixError(RuntimeError):
    """Postfix could not be set up, started or driven; message has details."""


class PostfixTimeout(PostfixError, TimeoutError):
    """A wait_* call ran out of time; the message has queue and maillog tail."""


@dataclass(frozen=True)
class Delivery:
    """One ``to=<..> ... status=..`` maillog line."""
    queue_id: str
    recipient: str
    status: str   # sent | deferred | bounced | expired ...
    reply: str    # text in the final parentheses, e.g. "250 2.0.0 ok"
    agent: str    # lmtp, error, ...
    relay: str = ""
    dsn: str = ""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just called free (racy, but fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PostfixInstance:
    """Private Postfix relaying ``domains`` to LMTP at 127.0.0.1:lmtp_port.

    Use as a context manager (``with PostfixInstance(port) as pf:``) or call
    start()/stop().  ``extra_main_cf`` lines ("name = value") are appended to
    main.cf, replacing the default line for the same name (a duplicate would
    make every Postfix process log "overriding earlier entry").  Paths
    (dir, etc, maillog_path) exist only between start() and stop().
    """

    def __init__(self, lmtp_port: int, domains: str | Sequence[str] = "example.test",
                 smtp_port: int | None = None, extra_main_cf: Iterable[str] = ()):
        self.lmtp_port = lmtp_port
        self.domains = [domains] if isinstance(domains, str) else list(domains)
        self.smtp_port = smtp_port or free_port()
        self.extra_main_cf = list(extra_main_cf)
        self.dir: Path | None = None

    @property
    def etc(self) -> Path:
        """The config directory, passed as -c/-C to every Postfix command."""
        return self._dir() / "etc"

    @property
    def maillog_path(self) -> Path:
        return self._dir() / "maillog"

    def _dir(self) -> Path:
        if self.dir is None:
            raise PostfixError("Postfix instance is not started")
        return self.dir

    def main_cf(self, d: Path) -> str:
        """main.cf text; no trailing comments (Postfix would keep them in values)."""
        routes = ", ".join(f"{x}=lmtp:inet:127.0.0.1:{self.lmtp_port}" for x in self.domains)
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {d}/spool", f"data_directory = {d}/data",
            "myhostname = mx.gateway.test", "mydestination =",
            "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8", f"relay_domains = {', '.join(self.domains)}",
            f"transport_maps = inline:{{ {routes} }}",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "alias_maps =", "alias_database =", "biff = no",
            f"maillog_file = {d}/maillog", f"maillog_file_prefixes = {d}",
            # qmgr accepts >= 1s, but stamps "now + backoff" in whole seconds: 1s can
            # mean ~0s, the rescan then finds the file still locked by the lmtp agent
            # ("skipped, still being delivered") and parks it in incoming/ for 60s.
            "queue_run_delay = 1s", "minimal_backoff_time = 2s", "maximal_backoff_time = 4s",
            "lmtp_destination_recipient_limit = 50",
            # No DNS here: bounces to outside senders must fail fast, not sit deferred.
            "default_transport = error:5.3.0 no delivery outside the test domains",
            "smtpd_peername_lookup = no",
        ]
        extra = {x.split("=", 1)[0].strip(): x for x in self.extra_main_cf}
        lines = [x for x in lines if x.split("=", 1)[0].strip() not in extra]
        return "\n".join(lines + list(extra.values())) + "\n"

    def start(self) -> PostfixInstance:
        """Create the instance directory, check the config and start master."""
        if not (SBIN / "postfix").exists():
            raise PostfixError("/usr/sbin/postfix not found: install the Debian package "
                               "'postfix' (apt-get install postfix)")
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix instance must be started as root")
        if self.dir is not None:
            raise PostfixError(f"already started in {self.dir}")
        # Under $TMPDIR (keep it short: Postfix's unix sockets live in spool/).
        d = self.dir = Path(tempfile.mkdtemp(prefix="pf-"))
        d.chmod(0o755)
        for sub in ("etc", "spool", "data"):
            (d / sub).mkdir()
        shutil.chown(d / "data", user="postfix")
        (d / "etc/main.cf").write_text(self.main_cf(d))
        (d / "etc/master.cf").write_text(MASTER_CF.format(smtp_port=self.smtp_port))
        for action in ("check", "start"):
            r = self._run(SBIN / "postfix", "-c", self.etc, action, check=False)
            if r.returncode != 0:
                detail = f"{r.stdout}{r.stderr}\n--- maillog tail ---\n{self._tail()}"
                self.stop()
                raise PostfixError(f"postfix {action} failed (exit {r.returncode}):\n{detail}")
        return self

    def stop(self) -> None:
        """Stop master (SIGKILL its process group if it lingers), remove the dir."""
        if self.dir is None:
            return
        pid = self._master_pid()
        if pid and _alive(pid):
            # "postfix stop" itself waits up to 5 s for master to exit.
            self._run(SBIN / "postfix", "-c", self.etc, "stop", check=False)
            deadline = time.monotonic() + 1
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)  # master leads its process group
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sendmail(self, raw: bytes, sender: str, recipients: Sequence[str]) -> None:
        """Inject ``raw`` as a local program would (pickup adds Received:, and
        Message-Id/Date/From when missing).  ``-i``: a lone "." line is data,
        not end of input.  sender "" is the null sender <>."""
        self._run(SBIN / "sendmail", "-C", self.etc, "-i", "-f", sender, "--",
                  *recipients, input=raw)

    def queue(self) -> list[dict]:
        """``postqueue -j`` records: queue_name, queue_id, sender, recipients
        [{address, delay_reason?}], ...  Empty list when the queue is empty."""
        r = self._run(SBIN / "postqueue", "-c", self.etc, "-j", check=False)
        if r.returncode == 0:
            return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        if "usage" not in r.stderr:  # -j exists since Postfix 3.1
            raise PostfixError(f"postqueue -j exited {r.returncode}: {r.stderr}")
        return parse_postqueue_p(self.postqueue("-p"))

    def postqueue(self, *args: str) -> str:
        """stdout of ``postqueue -c ETC ARGS`` (raises PostfixError on failure)."""
        return self._run(SBIN / "postqueue", "-c", self.etc, *args).stdout

    def flush(self) -> None:
        """Retry deferred (and parked incoming) mail now: ignores backoff time
        stamps and 'dead destination' state."""
        self.postqueue("-f")

    def maillog(self) -> str:
        p = self.maillog_path
        return p.read_text(errors="replace") if p.exists() else ""

    def deliveries(self) -> list[Delivery]:
        """Every delivery attempt logged so far (all agents), oldest first."""
        return [Delivery(**{k: v or "" for k, v in m.groupdict().items()})
                for m in _DELIVERY_RE.finditer(self.maillog())]

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """First match of regex ``pattern`` (multiline) in the maillog."""
        rx = re.compile(pattern, re.M)
        return self.wait_until(lambda: rx.search(self.maillog()), timeout, f"log /{pattern}/")

    def wait_delivered(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Wait until ``count`` lmtp ``status=sent`` lines were logged since
        start (cumulative); returns them all."""
        def sent():
            done = [x for x in self.deliveries() if x.agent == "lmtp" and x.status == "sent"]
            return done if len(done) >= count else None
        return self.wait_until(sent, timeout, f"{count} lmtp status=sent")

    def wait_queue_empty(self, timeout: float = 10.0) -> None:
        self.wait_until(lambda: not self.queue(), timeout, "empty queue")

    def wait_until(self, probe: Callable[[], Any], timeout: float = 10.0,
                   what: str = "condition") -> Any:
        """Poll ``probe`` every 0.1 s; return its first truthy result or raise
        PostfixTimeout with the queue and maillog tail."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise PostfixTimeout(f"timed out after {timeout}s waiting for {what}; "
                                     f"queue={self.queue()}\n--- maillog tail ---\n{self._tail()}")
            time.sleep(0.1)

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.maillog().splitlines()[-lines:]) if self.dir else ""

    def _master_pid(self) -> int | None:
        try:
            return int((self._dir() / "spool/pid/master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _run(*cmd, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(c) for c in cmd], input=input, capture_output=True, timeout=60)
        r.stdout, r.stderr = (x.decode(errors="replace") for x in (r.stdout, r.stderr))
        if check and r.returncode != 0:
            raise PostfixError(f"{' '.join(map(str, cmd))} exited {r.returncode}: "
                               f"{r.stdout}{r.stderr}")
        return r


def _alive(pid: int) -> bool:
    """Is ``pid`` a live (not zombie: init may reap late) process named master?
    The name check guards against a stale pid file whose pid was reused."""
    try:
        name, rest = Path(f"/proc/{pid}/stat").read_text().split(" (", 1)[1].rsplit(") ", 1)
        return name == "master" and rest.split()[0] != "Z"
    except (OSError, IndexError, ValueError):
        return False


def parse_postqueue_p(text: str) -> list[dict]:
    """Fallback for Postfix < 3.1: ``postqueue -p`` text into -j-like dicts."""
    out: list[dict] = []
    for block in text.split("\n\n"):
        lines = [x.strip() for x in block.splitlines() if x.strip() and x[0] != "-"]
        head = lines and re.match(r"([0-9A-Za-z]+)([*!]?)\s+\d+\s.*?\d\d:\d\d:\d\d\s+(\S*)$", lines[0])
        if not head:
            continue  # "-- N Kbytes in M Requests." footer, "Mail queue is empty"
        rcpts, reason = [], None
        for line in lines[1:]:
            if line.startswith("("):
                reason = line[1:-1]
            else:
                rcpts.append({"address": line, **({"delay_reason": reason} if reason else {})})
        out.append({"queue_id": head[1], "sender": head[3], "recipients": rcpts,
                    "queue_name": {"*": "active", "!": "hold"}.get(head[2], "deferred")})
    return out
