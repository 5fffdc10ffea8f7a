"""A throwaway, real Dovecot 2.3 serving IMAP and POP3 to the pollers' tests (R-I4).

Why a real server: the pollers must survive what a real IMAP/POP3 server does
(greeting, capabilities after STARTTLS and LOGIN, UIDVALIDITY, UIDPLUS, POP3's
UPDATE state, exact error texts, certificate checks) and a fake would only echo
our own assumptions.  Dovecot runs rootless (as root, it runs as uid 65534
through ``setpriv``).

One instance = one temp dir holding config, users, logs, TLS files and every
user's Maildir, and four listeners on 127.0.0.1: IMAP (plain and STARTTLS),
IMAPS, POP3 (plain and STLS), POP3S.  The server certificate is issued by a test
CA (``trustme``) whose PEM is ``ca_file``; ``stranger_ca_file`` is a second CA
that signed nothing here, so a connector trusting only it must refuse the server
(R-C4).  A master user (``master_user``, separator ``*``) may log in as anyone,
which is how the "access another mailbox" setting is tested.

Every method blocks: from an async test call them through ``asyncio.to_thread``.
"""
from __future__ import annotations

import contextlib
import grp
import imaplib
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from gateway.model import Connector
from gateway.protocols.mailbox import Credentials

NOBODY = 65534          # who Dovecot runs as when the tests run as root
DOMAIN = "example.test"


class DovecotError(RuntimeError):
    """Dovecot could not be set up, started, stopped or driven; the message says why."""


@dataclass(frozen=True)
class Stored:
    """One message as Dovecot holds it (read back with stdlib imaplib)."""
    uid: int
    flags: frozenset[str]
    raw: bytes


def dovecot_binary() -> str | None:
    """Where Debian's dovecot-core puts the daemon (it is not on a user's PATH)."""
    return shutil.which("dovecot") or next(
        (p for p in ("/usr/sbin/dovecot",) if os.access(p, os.X_OK)), None)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def quote(name: str) -> str:
    """An IMAP quoted string (RFC 3501 section 4.3), for stdlib imaplib which quotes nothing."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Test-only choices: plaintext auth allowed (tls "none" is tested too), no delay or
# per-IP penalty after a failed login (Dovecot would otherwise slow every later
# login from 127.0.0.1 by 2-15 s), no fsync, "/" as the folder separator (as on
# Exchange), one passwd-file per user (see add_user) and a master passdb for the
# "access another mailbox" login ``target*master``.
CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap pop3
listen = {host}
ssl = yes
ssl_cert = <{root}/tls/server.pem
ssl_key = <{root}/tls/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
auth_verbose = yes
auth_master_user_separator = *
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_fsync = never
pop3_uidl_format = %08Xu%08Xv
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  master = yes
  pass = yes
  args = scheme=PLAIN username_format=%u {root}/masters
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users/%u
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


class DovecotInstance:
    """A private Dovecot in a temp dir; ``start()``, use, ``stop()`` (or ``with``)."""

    master_user = f"master@{DOMAIN}"
    master_password = "master-secret"

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.binary = dovecot_binary()
        if self.binary is None:
            raise DovecotError("dovecot is not installed: run scripts/test, which installs "
                               "Debian's dovecot-imapd and dovecot-pop3d")
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-dovecot-"))
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = (
            free_port(host) for _ in range(4))
        self.ca_file = str(self.root / "tls" / "ca.pem")
        self.stranger_ca_file = str(self.root / "tls" / "stranger-ca.pem")
        self._passwords: dict[str, str] = {}
        self._names = itertools.count(1)
        self._seeded = itertools.count(1)
        self._process: subprocess.Popen | None = None
        self._pids: dict[int, str] = {}     # pid -> start time, seen at stop()
        if os.geteuid() == 0:       # Dovecot refuses root for its services: run as nobody
            self.uid = self.gid = NOBODY
            self._prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups"]
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            self._prefix = []

    # -- life cycle --------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    def start(self, timeout: float = 15.0) -> "DovecotInstance":
        """Write config, users and TLS files, start Dovecot in the foreground (``-F``, so
        this object owns the master process) and wait until every port accepts."""
        for sub in ("run", "state", "home", "tls", "users"):
            (self.root / sub).mkdir(exist_ok=True)
        self._write_tls()
        (self.root / "masters").write_text(
            f"{self.master_user}:{{PLAIN}}{self.master_password}::::::\n")
        self.config_path.write_text(CONFIG.format(
            root=self.root, host=self.host, user=pwd.getpwuid(self.uid).pw_name,
            group=grp.getgrgid(self.gid).gr_name, uid=self.uid, gid=self.gid,
            imap_port=self.imap_port, imaps_port=self.imaps_port,
            pop3_port=self.pop3_port, pop3s_port=self.pop3s_port))
        self._chown(self.root)
        with open(self.root / "stderr.log", "wb") as stderr:
            self._process = subprocess.Popen(
                [*self._prefix, self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        for port in self.ports():
            while not _accepts(self.host, port):
                if self._process.poll() is not None:
                    failure = (f"dovecot exited ({self._process.returncode}):\n"
                               f"{self.log_tail()}")
                    self.stop()
                    raise DovecotError(failure)
                if time.monotonic() > deadline:
                    failure = (f"dovecot did not listen on {port} within {timeout}s:\n"
                               f"{self.log_tail()}")
                    self.stop()
                    raise DovecotError(failure)
                time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0, *, grace: float = 0.2, remove: bool = True) -> None:
        """SIGTERM the master (what ``dovecot stop`` sends), SIGKILL its process group
        after ``grace`` seconds, wait until the master and every child are gone, then
        delete the temp dir unless ``remove`` is false.

        Why not wait for a clean exit: Dovecot 2.3 lingers about 3 s on idle login
        processes at shutdown, ten times the cost of a whole test module here, and a
        throwaway instance has nothing to flush."""
        process, self._process = self._process, None
        if process is not None:
            self._pids = {pid: _started(pid) for pid in self.pids(process.pid)}
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout)
            deadline = time.monotonic() + timeout
            while self.leftover_pids():
                if time.monotonic() > deadline:
                    raise DovecotError(f"dovecot processes survived stop: "
                                       f"{sorted(self.leftover_pids())}")
                for pid in self.leftover_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "DovecotInstance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ports(self) -> tuple[int, int, int, int]:
        return self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port

    def pids(self, master: int | None = None) -> set[int]:
        """The master's pid and those of all its descendants (from /proc)."""
        master = master if master is not None else (self._process.pid if self._process else None)
        if master is None:
            return set()
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        found = {master}
        grew = True
        while grew:
            children = {pid for pid, ppid in parents.items() if ppid in found} - found
            found |= children
            grew = bool(children)
        return found

    def leftover_pids(self) -> set[int]:
        """Pids seen at ``stop()`` that still run (zombies count as gone). A pid is
        only ours while its start time matches, so a reused pid is never touched."""
        return {pid for pid, started in self._pids.items()
                if _alive(pid) and _started(pid) == started}

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        for name in ("stderr.log", "dovecot.log"):
            with contextlib.suppress(OSError):
                text += (self.root / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- users -------------------------------------------------------------------------

    def add_user(self, name: str, password: str) -> str:
        """Add a user, usable at once. One passwd-file per user: Dovecot looks at a
        changed passwd-file at most once a second, so a shared file would hide users
        added right after a login."""
        if (":" in name + password or "\n" in name + password or "/" in name
                or name.startswith(".")):
            raise DovecotError(f"unusable user name or password: {name!r}")
        self._passwords[name] = password
        path = self.root / "users" / name
        path.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        self._chown(path)
        return name

    def new_user(self, prefix: str = "user") -> str:
        """A fresh user (unique within this instance) with password ``password(name)``."""
        name = f"{prefix}{next(self._names)}@{DOMAIN}"
        return self.add_user(name, f"pw-{name}")

    def password(self, user: str) -> str:
        return self._passwords[user]

    def credentials(self, user: str) -> Credentials:
        return Credentials(username=user, password=self._passwords[user])

    def connector(self, user: str = "", *, protocol: str = "imap", tls: str = "implicit",
                  **fields) -> Connector:
        """A polled connector pointing at this instance, trusting its CA (R-C4)."""
        ports = {("imap", "implicit"): self.imaps_port, ("imap", "starttls"): self.imap_port,
                 ("imap", "none"): self.imap_port, ("pop3", "implicit"): self.pop3s_port,
                 ("pop3", "starttls"): self.pop3_port, ("pop3", "none"): self.pop3_port}
        values = dict(name=f"{protocol}-{tls}", service="other", protocol=protocol,
                      primary_address=user or f"poll@{DOMAIN}", host=self.host,
                      port=ports[(protocol, tls)], tls=tls, ca_file=self.ca_file)
        values.update(fields)
        return Connector(**values)

    # -- mail --------------------------------------------------------------------------

    @contextlib.contextmanager
    def imap(self, user: str) -> Iterator[imaplib.IMAP4]:
        """A logged-in stdlib imaplib session (plain, loopback) as ``user``."""
        client = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        try:
            client.login(user, self._passwords[user])
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def create_folder(self, user: str, folder: str) -> None:
        """CREATE ``folder`` (IMAP name, ``/`` separated) if it does not exist yet."""
        if folder.upper() == "INBOX":
            return
        with self.imap(user) as client:
            _, listed = client.list('""', quote(folder))
            if not any(line for line in listed if line):
                typ, data = client.create(quote(folder))
                # Seen once in CI, with a poller's session open on the same user: LIST
                # showed nothing, then CREATE said ALREADYEXISTS. The folder exists,
                # which is all this method promises.
                if not (typ == "NO" and b"[ALREADYEXISTS]" in b" ".join(data or [b""])):
                    _ok((typ, data), "CREATE")

    def append(self, user: str, folder: str, raw: bytes, flags: str = "") -> int:
        """APPEND ``raw`` to ``folder`` (created if needed); the new message's UID."""
        self.create_folder(user, folder)
        with self.imap(user) as client:
            typ, data = client.append(quote(folder), flags or None, None, raw)
            _ok((typ, data), "APPEND")
        match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
        return int(match.group(1)) if match else 0

    def seed(self, user: str, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        """Bulk-load ``messages`` by writing Maildir files directly (thousands per second,
        unlike APPEND); Dovecot assigns UIDs at its next look at the folder. ASCII folder
        names only. Returns how many were written."""
        if not folder.isascii() or "." in folder:
            raise DovecotError("seed() takes ASCII folder names without '.' (Maildir++ maps "
                               "'/' to '.'); use append() for others")
        self.create_folder(user, folder)
        maildir = self.root / "home" / user / "Maildir"
        if folder.upper() != "INBOX":
            maildir = maildir / ("." + folder.replace("/", "."))
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self._chown(self.root / "home" / user)
        stamp, pid, count = int(time.time()), os.getpid(), 0
        for raw in messages:
            n = next(self._seeded)
            # Fixed-width numbers: with names of mixed widths (M9999 beside M10001)
            # Dovecot 2.3's Maildir sync took 0.1 s per sync, for the bench's
            # ceiling and its mailgate runs alike.
            name = f"{stamp}.M{n:08d}P{pid}Q{n:08d}.seed,S={len(raw)}:2,"
            path = maildir / "tmp" / name
            path.write_bytes(raw)
            os.chown(path, self.uid, self.gid)
            path.rename(maildir / "cur" / name)
            count += 1
        return count

    def count(self, user: str, folder: str = "INBOX") -> int:
        with self.imap(user) as client:
            typ, data = client.select(quote(folder), readonly=True)
            _ok((typ, data), "SELECT")
            return int(data[0])

    def messages(self, user: str, folder: str = "INBOX") -> list[Stored]:
        """Every message of ``folder`` with its UID and flags, oldest UID first."""
        with self.imap(user) as client:
            _ok(client.select(quote(folder), readonly=True), "SELECT")
            typ, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            _ok((typ, data), "FETCH")
        found = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, raw = item
            uid = int(re.search(rb"UID (\d+)", head).group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", head)
            found.append(Stored(uid, frozenset((flags.group(1).decode().split()
                                                if flags else [])), raw))
        return sorted(found, key=lambda s: s.uid)

    def raw_messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        return [stored.raw for stored in self.messages(user, folder)]

    # -- internals ---------------------------------------------------------------------

    def _write_tls(self) -> None:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert(self.host, "localhost")
        tls = self.root / "tls"
        ca.cert_pem.write_to_path(str(tls / "ca.pem"))
        with open(tls / "server.pem", "wb") as chain:
            for pem in server.cert_chain_pems:
                chain.write(pem.bytes())
        server.private_key_pem.write_to_path(str(tls / "server.key"))
        trustme.CA().cert_pem.write_to_path(self.stranger_ca_file)

    def _chown(self, top: Path) -> None:
        if os.geteuid() != 0:
            return
        os.chown(top, self.uid, self.gid)
        for base, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(base, name), self.uid, self.gid, follow_symlinks=False)


def _ok(reply: tuple, what: str) -> None:
    typ, data = reply
    if typ != "OK":
        raise DovecotError(f"{what} failed: {typ} {data!r}")


def _accepts(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _started(pid: int) -> str:
    """A process's start time (field 22 of /proc/<pid>/stat); "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotInstance]:
    """One running Dovecot per test module; give every test its own ``new_user()``.

    Fails (never skips) when Dovecot is missing: scripts/test installs it."""
    try:
        instance = DovecotInstance()
    except DovecotError as e:
        pytest.fail(str(e), pytrace=False)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
