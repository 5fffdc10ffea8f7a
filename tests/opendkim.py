"""OpenDKIM as an independent DKIM verifier, with its keys from a file instead of DNS.

``opendkim -t FILE`` evaluates a message the way the milter would and exits;
``TestPublicKeys`` (opendkim.conf(5)) makes libopendkim read the TXT records
from a file, so the test needs no DNS server. With ``-vvv`` it prints the
Authentication-Results field it would add, one ``dkim=`` result per signature,
which is what ``verify`` returns. (``opendkim-testmsg`` only asks DNS.)

Fails, never skips, when OpenDKIM is missing: scripts/test installs it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

BINARY = "/usr/sbin/opendkim"
_RESULT = re.compile(r"\bdkim=(\w+)(?: reason=\"([^\"]*)\")?[^;]*?header\.d=(\S+)"
                     r"[^;]*?header\.a=(\S+)[^;]*?header\.s=(\S+)")


@dataclass(frozen=True)
class Result:
    result: str             # pass, fail, neutral, ...
    domain: str
    algorithm: str
    selector: str
    reason: str = ""


class OpenDkimError(RuntimeError):
    pass


def verify(message: bytes, records: dict[str, str], workdir: Path) -> list[Result]:
    """One Result per DKIM-Signature in ``message``, in OpenDKIM's order.

    ``records`` maps ``selector._domainkey.domain`` to the TXT record's text.
    """
    binary = shutil.which("opendkim") or BINARY
    if not Path(binary).exists():
        raise OpenDkimError("opendkim is not installed: run scripts/test, which installs "
                            "Debian's opendkim")
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "test-public-keys"
    keys.write_text("".join(f"{name} {txt}\n" for name, txt in records.items()))
    conf = workdir / "opendkim.conf"
    conf.write_text(f"Mode v\nSyslog no\nTestPublicKeys {keys}\n")
    path = workdir / "message.eml"
    path.write_bytes(message)
    done = subprocess.run([binary, "-x", str(conf), "-vvv", "-t", str(path)],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise OpenDkimError(f"opendkim -t exited {done.returncode}: {output}")
    header = re.search(r"hname='Authentication-Results' hvalue='(.*?)'", output, re.S)
    if header is None:
        raise OpenDkimError(f"no Authentication-Results in opendkim's output: {output}")
    return [Result(m.group(1), m.group(3), m.group(4), m.group(5), m.group(2) or "")
            for m in _RESULT.finditer(header.group(1))]
