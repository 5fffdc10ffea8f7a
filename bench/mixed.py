#!/usr/bin/env python3
"""A realistic mixed load over LMTP: mailgate (intake + pipeline) against the bare aiosmtpd sink.

    .venv/bin/python bench/mixed.py [--rounds 3] [--messages 20000] [--sessions 20] [--seed 1]
                                    [--rate R|half] [--json out.json]
    .venv/bin/python bench/mixed.py soak [--stored 10000,100000,1000000] [--messages 5000]

The mix (generated here, deterministic for a --seed, all of it built as bytes before the
clock starts): every message goes to the one connector's address, support@bench.test, with
distinct content, Date and Message-ID headers, bodies from a few hundred bytes to ~8 KB,
~30% multipart/alternative with a quoted-printable HTML part, a few dot-stuffed lines.
  60% new requests from >= 2,000 distinct senders, whose subjects hit 24 keyword routes
      (~5% fall to the fallback); every route, the fallback too, acknowledges;
  30% replies by the requester to a request sent earlier in the same run (In-Reply-To and
      References name the request's Message-ID, at least 200 messages back);
  10% auto-replies (Auto-Submitted: auto-replied or X-Autoreply, some with a null
      envelope sender) answering a request of the run the same way.
No sender brings more than R-B3's sender budget (20 per 10 minutes) and no sender gets
more acknowledgements than the budget of 10 a day: senders default to max(2000, N/4).

The load generator is this file's own minimal pipelined LMTP client, in a separate
process (uvloop when installed): N sessions (LHLO once each), then per message one write of
MAIL+RCPT+DATA, the body after 354, and the reply per recipient. End-of-data latency is
from writing the body with its final "." to the last reply. Closed loop: each session
sends its next message when the previous is answered. --rate R: open loop, message i is
due at start + i/R whatever the replies; a free session takes the next message and waits
for its due time, so a server that falls behind shows as late sends (lag).

Every round: bare (the yardstick's `lmtp_models.py --model bare`, the same bytes from the
same client), then mailgate (`mailgate serve` on a fresh database, config from
bench/mixed.toml.in, outbound delivery off so acknowledgements only queue). For mailgate,
T_load is the client's time, then the database is polled read-only every 50 ms until no
copy is 'journaled'; processed msgs/s = messages / (T_load + T_drain). CPU is utime+stime
of every process of the server (its process group, plus what it reaped); peak RSS is the
largest sum of VmRSS over the server's process tree, polled every 50 ms. After the drain
the outcomes are counted (every message must be 'done'), per kind of message, with the
acknowledgements queued and the routes that created items.

soak: a store is seeded with N messages already processed, then a fixed measured load (the
same mix) runs on top of it; see README.md ("Mixed load") for exactly what is seeded.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import collections
import datetime as dt
import email.utils
import gc
import json
import math
import multiprocessing
import os
import quopri
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from email.header import Header, decode_header, make_header
from email.parser import BytesHeaderParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from procfs import process_tree, tail  # noqa: E402
MAILGATE = REPO / ".venv" / "bin" / "mailgate"
ADDRESS = "support@bench.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
RATIO_GOAL = 0.5            # processed / bare, median (aim 1.0)
P99_GOAL_MS = 20.0          # open loop at half the sustained rate
SOAK_GOAL = 0.10            # CPU/msg with 100k stored within 10% of 10k
SENDER_BUDGET = 20          # R-B3 defaults the config keeps
ACK_BUDGET = 10
GAP = 200                   # a reply answers a request at least this many messages back


def log(*a) -> None:
    print("mixed.py:", *a, file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(msg)
    sys.exit(2)


# == the routes (config and subjects come from the same table) ===============================

ROUTES = [  # name, subject_keywords, subject templates ({n} number, {p} product, {c} city)
    ("billing", "invoice; billing",
     ["Invoice {n} shows the wrong amount", "Question about billing for account {n}",
      "Billing address for customer {n} changed"]),
    ("refund", "refund; chargeback",
     ["Refund request for purchase {n}", "Still waiting for my refund ({n})",
      "Chargeback on card payment {n}"]),
    ("password", "password; reset link",
     ["Password expired for user {n}", "Reset link for {p} never arrives",
      "Cannot change my password in {p}"]),
    ("login", "login; sign in; locked out",
     ["Login to {p} fails with code {n}", "Unable to sign in since this morning ({n})",
      "Locked out of {p} after the update"]),
    ("outage", "outage; down; unreachable",
     ["{p} is down for our office in {c}", "Outage at site {n} in {c}",
      "{p} unreachable from {c} since 09:{n2}"]),
    ("shipping", "shipping; delivery; parcel",
     ["Delivery of shipment {n} is late", "Shipping costs on quote {n}",
      "Parcel {n} arrived damaged"]),
    ("tracking", "tracking number; order status",
     ["Tracking number for {n} does not work", "Order status of {n}?",
      "No tracking number for purchase {n}"]),
    ("cancel", "cancel; cancellation",
     ["Please cancel subscription {n}", "Cancellation of {p} plan {n}",
      "How do I cancel the {p} trial"]),
    ("upgrade", "upgrade; downgrade",
     ["Upgrade {p} to the enterprise plan", "Downgrade account {n} next month",
      "Upgrade of {p} failed at step {n2}"]),
    ("license", "license; licence; activation key",
     ["License {n} expired too early", "Activation key for {p} rejected",
      "Licence count for {c} office"]),
    ("security", "security; phishing; suspicious",
     ["Suspicious sign-in from {c}", "Phishing mail pretending to be {p}",
      "Security questionnaire {n} for our audit"]),
    ("api", "api; rate limit",
     ["API returns 500 for request {n}", "Rate limit hit on {p} integration account",
      "API token for project {n}"]),
    ("webhook", "webhook; integration",
     ["Webhook deliveries to {c} endpoint stopped", "Integration with {p} broken since {n}",
      "Webhook signature mismatch ({n})"]),
    ("mobile", "mobile app; android; iphone",
     ["Mobile app crashes on start ({n})", "Android version of {p} will not sync",
      "iPhone notifications missing for {p}"]),
    ("printer", "printer; scanner",
     ["Printer on floor {n2} jams constantly", "Scanner in {c} sends empty pages",
      "New printer for the {c} office"]),
    ("vpn", "vpn; remote access",
     ["VPN disconnects every {n2} minutes", "Remote access for contractor {n}",
      "VPN profile for {c} missing"]),
    ("mailbox", "mailbox; shared calendar",
     ["Shared mailbox {n} full", "Shared calendar for {c} team not visible",
      "Mailbox migration of user {n}"]),
    ("hardware", "laptop; monitor; keyboard",
     ["Laptop {n} will not boot", "Second monitor for desk {n}",
      "Keyboard replacement for {c} reception"]),
    ("onboarding", "onboarding; new hire; new starter",
     ["Onboarding for new hire on {d}", "New starter in {c} needs accounts ({n})",
      "Onboarding checklist {n}"]),
    ("offboarding", "offboarding; leaver",
     ["Offboarding of employee {n}", "Leaver on {d}: remove access to {p}",
      "Offboarding checklist for {c}"]),
    ("contract", "contract; renewal",
     ["Contract {n} renewal terms", "Renewal of the {p} agreement for {c}",
      "Contract amendment {n}"]),
    ("complaint", "complaint; unacceptable",
     ["Complaint about service visit {n}", "Unacceptable wait time on ticket line {n2}",
      "Formal complaint from {c} branch"]),
    ("feature", "feature request; suggestion",
     ["Feature request: export {p} reports", "Suggestion for the {p} dashboard",
      "Feature request {n}: dark mode"]),
    ("bug", "bug; crash; error message",
     ["Bug in {p} report totals ({n})", "Crash when saving form {n}",
      "Error message 0x{n} in {p}"]),
]
FALLBACK_SUBJECTS = ["Question about {p}", "Quick question ({n})", "Help needed in {c}",
                     "Follow-up from our call on {d}", "Request from {c} office"]
FALLBACK_SHARE = 0.05
PRODUCTS = ["Acme Portal", "FleetView", "PayDesk", "CloudSync", "DocuFlow", "TimeSheet Pro",
            "HelioCRM", "StockPilot", "MeetRoom", "Ledgerly", "NetGuard", "ShiftPlanner"]
CITIES = ["Berlin", "Lisbon", "Kraków", "Lyon", "Aarhus", "Bologna", "Leeds", "Graz",
          "Utrecht", "Porto", "Malmö", "Cork", "Brno", "Gent", "Bilbao", "Tampere"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
FIRST = ["Anna", "Ben", "Chloé", "David", "Emma", "François", "Greta", "Hiro", "Isabel",
         "Jonas", "Karin", "Liam", "María", "Noah", "Olga", "Paul", "Quentin", "Rosa",
         "Søren", "Tomasz", "Uma", "Viktor", "Wei", "Xenia", "Yusuf", "Zoë", "Björn",
         "Łukasz", "Aoife", "José", "Mei", "Ines", "Omar", "Petra", "Ravi", "Sanne", "Tariq",
         "Ulla", "Vera", "Willem"]
LAST = ["Müller", "Smith", "García", "Nguyen", "Kowalski", "O'Brien", "Rossi", "Ødegaard",
        "Jensen", "Dubois", "Schmidt", "Tanaka", "Silva", "Novak", "Papadopoulos", "Ivanova",
        "Kim", "Brown", "Wilson", "Fischer", "Martin", "López", "Andersson", "Kaya", "Horvat",
        "Virtanen", "Byrne", "de Vries", "Costa", "Nowak"]
COMPANIES = ["contoso", "fabrikam", "northwind", "initech", "globex", "umbrella", "hooli",
             "vandelay", "soylent", "tyrell", "wonka", "acme", "cyberdyne", "oscorp",
             "aperture", "monarch", "dunder", "pied-piper", "wayne", "stark"]
WORDS = """the a our your this that it we they you I is was are be been have has had will
would can could should may might not no yes and or but so because when after before since
until while if then also still again already just only very really quite about around
between from into onto over under with without for to of in on at by as up down out
system account order invoice customer user report page screen button file folder data
update version release change request issue problem error message warning setting option
network server client browser laptop phone office team colleague manager department
meeting call week month today yesterday tomorrow morning afternoon evening time date
number amount price cost payment contract service support ticket case document form field
list table entry record value total balance address name email login session connection
works fails failed broken slow missing wrong correct expected shown sent received opened
closed saved deleted added removed changed moved checked tried restarted installed
please thanks kindly urgent soon possible necessary important unclear helpful available
attached below above following previous next last first second third several many few
all every each some any other another same different new old current latest
""".split()  # noqa: SIM905


def keyword_pattern(text: str) -> re.Pattern:
    """The documented R-R2 semantics (whole words, case-insensitive, any inner whitespace),
    written here again so the generator can check what each subject will hit."""
    words = [r"\s+".join(map(re.escape, k.split())) for k in
             (p.strip() for p in text.split(";")) if k]
    return re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)


ROUTE_PATTERNS = [keyword_pattern(kw) for _, kw, _ in ROUTES]


def first_route(subject: str) -> int | None:
    for i, pattern in enumerate(ROUTE_PATTERNS):
        if pattern.search(subject):
            return i
    return None


def routes_toml() -> str:
    out = []
    for name, keywords, _ in ROUTES:
        out += ["[[directory.routes]]", 'connector = "support"', f'name = "{name}"',
                f'email_address = "{ADDRESS}"', f'subject_keywords = "{keywords}"',
                "send_automated_emails = true", ""]
    out += ["[[directory.routes]]", 'connector = "support"', 'name = "fallback"',
            f'email_address = "{ADDRESS}"', "fallback = true", "send_automated_emails = true"]
    return "\n".join(out)


def write_config(path: Path, port: int, db: Path) -> Path:
    text = (HERE / "mixed.toml.in").read_text()
    text = text.replace("@PORT@", str(port)).replace("@DB@", str(db)) \
        .replace("@ADDRESS@", ADDRESS).replace("@ROUTES@", routes_toml())
    path.write_text(text)
    p = subprocess.run([MAILGATE, "check", "--config", path], capture_output=True, text=True,
                       check=False)
    if p.returncode != 0:
        die(f"generated config {path} is not valid:\n{p.stdout}{p.stderr}")
    return path


# == the mix ==================================================================================

def ascii_part(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.replace("ø", "o").replace("Ø", "O")
                                 .replace("ł", "l").replace("Ł", "L"))
    return re.sub(r"[^a-z]", "", text.encode("ascii", "ignore").decode().lower())


def sender(i: int) -> tuple[str, str, str]:
    """(display name, address, domain) of sender number i: every i its own address."""
    first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
    company = COMPANIES[i % len(COMPANIES)]
    domain = f"{company}{(i // len(COMPANIES)) % 50}.test"
    return f"{first} {last}", f"{ascii_part(first)}.{ascii_part(last)}{i}@{domain}", domain


def display(name: str, address: str) -> str:
    if name.isascii():
        return f'"{name}" <{address}>'
    return f"{Header(name, 'utf-8').encode(linesep=chr(13) + chr(10))} <{address}>"


def subject_header(subject: str) -> str:
    return subject if subject.isascii() else \
        Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")


def wrap(text: str, width: int = 72) -> list[str]:
    lines, cur, n = [], [], 0
    for w in text.split(" "):
        if cur and n + 1 + len(w) > width:
            lines.append(" ".join(cur))
            cur, n = [w], len(w)
        else:
            n += len(w) + (1 if cur else 0)
            cur.append(w)
    if cur:
        lines.append(" ".join(cur))
    return lines


class Text:
    """Sentences and paragraphs from a seeded pool: distinct, cheap, no ref-like tokens."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        extra = ["Grüße", "naïve", "€", "café", "Zürich", "résumé", "façade", "Øresund"]
        pool = []
        for _ in range(4000):
            k = rng.randint(6, 17)
            words = [rng.choice(WORDS) for _ in range(k)]
            if rng.random() < 0.15:
                words[rng.randrange(k)] = rng.choice(PRODUCTS)
            if rng.random() < 0.1:
                words[rng.randrange(k)] = str(rng.randint(2, 99999))
            if rng.random() < 0.04:
                words[rng.randrange(k)] = rng.choice(extra)
            s = " ".join(words)
            pool.append(s[0].upper() + s[1:] + rng.choice(".....?!"))
        self.pool = pool

    def paragraphs(self, nbytes: int) -> list[str]:
        out, size, rng, pool = [], 0, self.rng, self.pool
        while size < nbytes:
            p = " ".join(rng.choice(pool) for _ in range(rng.randint(2, 5)))
            out.append(p)
            size += len(p) + 4
        return out


class Mix:
    """The messages as (commands, data, recipients) plus what the outcome check needs."""

    def __init__(self):
        self.items: list[tuple[bytes, bytes, int]] = []
        self.kinds: list[str] = []
        self.msgids: list[str] = []
        self.requests: list[tuple[str, str, str, str, list[str]]] = []  # id, name, addr, subj, text
        self.route_of: list[int | None] = []  # per request: expected route index (None: fallback)
        self.per_sender: collections.Counter = collections.Counter()
        self.acks_per_sender: collections.Counter = collections.Counter()

    def stats(self) -> dict:
        sizes = sorted(len(d) for _, d, _ in self.items)
        html = sum(1 for _, d, _ in self.items if b"multipart/alternative" in d[:4000])
        routes = collections.Counter(self.route_of)
        return {"messages": len(self.items), "kinds": dict(collections.Counter(self.kinds)),
                "senders": len({s for s in self.per_sender}),
                "max_per_sender": max(self.per_sender.values(), default=0),
                "max_requests_per_sender": max(self.acks_per_sender.values(), default=0),
                "html_share": round(html / max(1, len(self.items)), 3),
                "bytes_p50": sizes[len(sizes) // 2] if sizes else 0,
                "bytes_min": sizes[0] if sizes else 0, "bytes_max": sizes[-1] if sizes else 0,
                "bytes_total": sum(sizes),
                "routes_expected": len([r for r in routes if r is not None]),
                "fallback_requests": routes.get(None, 0)}


def build_mix(n: int, *, seed: int, senders: int, tag: str,
              external: list[dict] | None = None, external_share: float = 0.5,
              shares=(0.6, 0.3, 0.1), html_share: float = 0.3) -> Mix:
    """``n`` messages. ``external``: threads already in a seeded store (soak); that share of
    the replies answers one of them, and of the auto-replies one of their acknowledgements."""
    rng = random.Random(f"mixed/{seed}/{tag}/{n}")
    text = Text(random.Random(f"text/{seed}"))
    n_req = round(n * shares[0])
    n_rep = round(n * shares[1])
    n_auto = n - n_req - n_rep
    gap = min(GAP, max(1, n_req // 3))     # small runs answer closer
    head = gap
    kinds = ["q"] * (n_req - head) + ["r"] * n_rep + ["a"] * n_auto
    rng.shuffle(kinds)
    kinds = ["q"] * head + kinds
    order = list(range(senders)) * (n_req // senders + 1)
    order = order[:n_req]
    rng.shuffle(order)
    ext_acked = [t for t in (external or []) if t.get("ack")]
    base = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    mix = Mix()
    req_pos: list[int] = []
    for pos, kind in enumerate(kinds):
        html = rng.random() < html_share     # the HTML part takes ~55% of the body's bytes
        shrink = 0.45 if html else 1.0
        date = email.utils.format_datetime(base + dt.timedelta(seconds=2 * pos))
        msgid = f"<{rng.getrandbits(32):08x}.{tag}{pos:x}.{seed}@"
        headers: list[str] = []
        mail_from = None
        if kind == "q":
            s = order.pop()
            name, addr, domain = sender(s)
            if rng.random() < FALLBACK_SHARE:
                route, templates = None, FALLBACK_SUBJECTS
            else:
                route = rng.randrange(len(ROUTES))
                templates = ROUTES[route][2]
            subject = rng.choice(templates).format(
                n=rng.randint(1000, 99999), n2=rng.randint(10, 59), p=rng.choice(PRODUCTS),
                c=rng.choice(CITIES), d=rng.choice(DAYS))
            if rng.random() < 0.08:
                subject += " – dringend" if rng.random() < 0.5 else " (ürgent)"
            got = first_route(subject)
            if got != route:
                raise AssertionError(f"subject {subject!r} hits route {got}, meant {route}")
            msgid += domain + ">"
            body_len = int(shrink * math.exp(rng.uniform(math.log(300), math.log(8000))))
            paras = ["Hello support team,"] + text.paragraphs(body_len) + \
                [(f"Customer number {rng.randint(100000, 999999)}, reference "
                  f"{tag}{pos:06d}{rng.randrange(1 << 20):05x}.")]
            mix.requests.append((msgid, name, addr, subject, paras))
            mix.route_of.append(route)
            req_pos.append(pos)
            mix.per_sender[addr] += 1
            mix.acks_per_sender[addr] += 1
            label = "request"
        else:
            thread = None
            use_ext = external and rng.random() < external_share and \
                (kind == "r" or ext_acked)
            if use_ext:
                thread = rng.choice(external if kind == "r" else ext_acked)
                name, addr = thread["name"], thread["addr"]
                domain = addr.rpartition("@")[2]
                subject0, req_id, ack_id = thread["subject"], thread["id"], thread.get("ack")
                quoted = text.paragraphs(rng.randint(200, 1500))
            else:
                eligible = 0
                lo, hi = 0, len(req_pos)
                while lo < hi:      # requests at least GAP positions back
                    mid = (lo + hi) // 2
                    if req_pos[mid] <= pos - gap:
                        lo = mid + 1
                    else:
                        hi = mid
                eligible = lo
                if eligible == 0:
                    raise AssertionError("no request to answer yet")
                for _ in range(20):     # keep every sender well inside its budget
                    req_id, name, addr, subject0, quoted = mix.requests[rng.randrange(eligible)]
                    if mix.per_sender[addr] < SENDER_BUDGET // 2:
                        break
                domain = addr.rpartition("@")[2]
                ack_id = None
            msgid += domain + ">"
            refs = [req_id] + ([ack_id] if ack_id else [])
            headers += [f"In-Reply-To: {refs[-1]}", "References: " + " ".join(refs)]
            if kind == "r":
                subject = "Re: " + subject0
                body_len = int(shrink * math.exp(rng.uniform(math.log(250), math.log(4000))))
                paras = ["Hi,"] + text.paragraphs(body_len)
                quote = [f"On {DAYS[pos % 5]}, support wrote:" if ack_id else
                         f"On {DAYS[pos % 5]}, {name} wrote:"]
                for p in quoted[:4 if not html else 2]:
                    quote += ["> " + line for line in wrap(p, 70)] + [">"]
                paras.append("\r\n".join(quote))
                mix.per_sender[addr] += 1
                label = "reply (seeded)" if thread else "reply"
            else:
                style = rng.randrange(3)
                prefix = ["Automatic reply: ", "Out of Office: ", "Abwesenheitsnotiz: "][style]
                subject = prefix + subject0
                headers += [["Auto-Submitted: auto-replied", "X-Autoreply: yes",
                             "Auto-Submitted: auto-replied"][style]]
                if style == 1:
                    headers.append("Precedence: auto_reply")
                if style == 2:
                    headers.append("X-Auto-Response-Suppress: All")
                    mail_from = ""            # a null envelope sender (RFC 3834)
                until = (base + dt.timedelta(days=rng.randint(2, 20))).strftime("%d %B")
                paras = [(f"Thank you for your message. I am out of the office until {until} "
                          "with limited access to email. For urgent matters please contact "
                          f"{sender(rng.randrange(senders))[0]} instead."),
                         "Kind regards, " + name]
                label = "auto-reply to an ack (seeded)" if thread else "auto-reply"
                if not thread:
                    mix.per_sender[addr] += 1
        plain = "\r\n\r\n".join("\r\n".join(wrap(p)) if not p.startswith(">") and
                                "\r\n" not in p else p for p in paras)
        if rng.random() < 0.04:       # a line that needs dot-stuffing
            plain += "\r\n\r\n...and one more thing.\r\n.\r\n." + "x" * rng.randint(1, 9)
        plain += f"\r\n\r\n-- \r\n{name}\r\n{domain}\r\nPhone +{rng.randint(10**9, 10**10)}"
        head = [f"Received: from mail.{domain} (mail.{domain} [198.51.100.{rng.randint(1, 254)}])",
                f"\tby mx1.bench.test (Postfix) with ESMTPS id {rng.getrandbits(40):010X}",
                f"\tfor <{ADDRESS}>; {date}",
                "From: " + display(name, addr), f"To: Support <{ADDRESS}>",
                "Subject: " + subject_header(subject), f"Date: {date}",
                f"Message-ID: {msgid}", *headers, "MIME-Version: 1.0",
                rng.choice(["User-Agent: Mozilla Thunderbird 115.8",
                            "X-Mailer: Microsoft Outlook 16.0", "X-Mailer: Apple Mail (2.3774)",
                            "User-Agent: Roundcube Webmail/1.6.6"])]
        plain_bytes = plain.encode("utf-8")
        cte = "7bit" if plain.isascii() else "8bit"
        if html:
            boundary = f"=_mg{rng.getrandbits(48):012x}"
            html_text = ('<html><head><meta http-equiv="Content-Type" content="text/html; '
                         'charset=utf-8"></head><body><div style="font-family:Calibri,'
                         'sans-serif;font-size:11pt">' +
                         "".join("<p>" + p.replace("&", "&amp;").replace("<", "&lt;")
                                 .replace(">", "&gt;").replace("\r\n", "<br>\r\n") + "</p>\r\n"
                                 for p in paras) + "</div></body></html>")
            qp = quopri.encodestring(html_text.encode("utf-8")).replace(b"\r\n", b"\n") \
                .replace(b"\n", b"\r\n")
            head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
            body = (b"This is a multi-part message in MIME format.\r\n\r\n--" +
                    boundary.encode() + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n" + plain_bytes +
                    b"\r\n--" + boundary.encode() + b"\r\nContent-Type: text/html; "
                    b"charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
                    qp + b"\r\n--" + boundary.encode() + b"--\r\n")
        else:
            head += ["Content-Type: text/plain; charset=utf-8; format=flowed",
                     f"Content-Transfer-Encoding: {cte}"]
            body = plain_bytes + b"\r\n"
        raw = "\r\n".join(head).encode("utf-8") + b"\r\n\r\n" + body
        data = (b"." if raw.startswith(b".") else b"") + raw.replace(b"\r\n.", b"\r\n..")
        data += b".\r\n"
        envelope = addr if mail_from is None else mail_from
        cmds = f"MAIL FROM:<{envelope}>\r\nRCPT TO:<{ADDRESS}>\r\nDATA\r\n".encode()
        mix.items.append((cmds, data, 1))
        mix.kinds.append(label)
        mix.msgids.append(msgid)
    return mix


# == the client (its own process) ============================================================

ITEMS: list = []            # set in the parent before the fork; the child reads it

GREET, LHLO, IDLE, CMDS, EOD, RSET, QUIT = range(7)


class Client:
    def __init__(self, loop, items, rate: float | None):
        self.loop = loop
        self.items = items
        self.n = len(items)
        self.rate = rate
        self.next_i = 0
        self.retry: collections.deque = collections.deque()
        self.t_cmd = array.array("d", bytes(8 * self.n))
        self.t_data = array.array("d", bytes(8 * self.n))
        self.t_reply = array.array("d", bytes(8 * self.n))
        self.done = 0
        self.ok = 0
        self.perm = 0
        self.temp = 0
        self.errors: list[str] = []
        self.sessions: list[Session] = []
        self.t0 = 0.0
        self.finished: asyncio.Future | None = None

    def take(self) -> int:
        """The next message: a due retry, the next in order, -1 (retries pending), -2."""
        if self.retry and self.retry[0][0] <= time.perf_counter():
            return self.retry.popleft()[1]
        if self.next_i < self.n:
            self.next_i += 1
            return self.next_i - 1
        return -1 if self.retry or self.done < self.n else -2

    def outcome(self, i: int, codes: list[bytes], eod: bool) -> None:
        if eod and all(c[:1] == b"2" for c in codes):
            self.ok += 1
        elif any(c[:1] == b"4" for c in codes):
            self.temp += 1
            if len(self.errors) < 5:
                self.errors.append(f"msg {i}: {b' '.join(codes).decode(errors='replace')}")
            self.retry.append((time.perf_counter() + 0.1, i))
            return
        else:
            self.perm += 1
            if len(self.errors) < 5:
                self.errors.append(f"msg {i}: {b' '.join(codes).decode(errors='replace')}")
        self.done += 1
        if self.done >= self.n and self.finished and not self.finished.done():
            self.finished.set_result(time.perf_counter())

    def lost(self, session, exc) -> None:
        if len(self.errors) < 5:
            self.errors.append(f"connection lost: {exc!r}")
        if session.state in (CMDS, EOD) and session.cur >= 0:
            self.retry.append((time.perf_counter(), session.cur))
        if session in self.sessions:
            self.sessions.remove(session)
        if not self.sessions and self.finished and not self.finished.done():
            self.finished.set_result(time.perf_counter())

    async def connect(self, port: int, sessions: int) -> list[str]:
        for _ in range(sessions):
            _, s = await self.loop.create_connection(lambda: Session(self), "127.0.0.1", port)
            self.sessions.append(s)
        await asyncio.gather(*(s.ready for s in self.sessions))
        return self.sessions[0].caps

    async def run(self, cap: float) -> dict:
        self.finished = self.loop.create_future()
        self.t0 = time.perf_counter() + 0.002
        timer = self.loop.call_later(cap, lambda: self.finished.done() or
                                     self.finished.set_result(None))
        for s in list(self.sessions):
            s.next()
        end = await self.finished
        timer.cancel()
        last = max(self.t_reply) if self.n else self.t0
        return {"t0": self.t0, "t_end": last if end is not None else time.perf_counter(),
                "capped": end is None, "ok": self.ok, "permfail": self.perm,
                "tempfail_retried": self.temp, "errors": self.errors,
                "sent": self.next_i}

    async def quit(self) -> None:
        for s in list(self.sessions):
            s.state = QUIT
            try:
                s.t.write(b"QUIT\r\n")
            except (OSError, RuntimeError):     # the server closed it already
                pass
        await asyncio.sleep(0.2)
        for s in list(self.sessions):
            s.t.close()


class Session(asyncio.Protocol):
    def __init__(self, c: Client):
        self.c = c
        self.t = None
        self.buf = bytearray()
        self.state = GREET
        self.codes: list[bytes] = []
        self.need = 0
        self.cur = -1
        self.caps: list[str] = []
        self.ready = c.loop.create_future()

    def connection_made(self, transport) -> None:
        self.t = transport

    def connection_lost(self, exc) -> None:
        if self.state != QUIT:
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(f"closed: {exc!r}"))
            self.c.lost(self, exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            if nl - pos > 3 and buf[pos + 3] == 0x2D:      # "250-..." continues
                if self.state == LHLO:
                    self.caps.append(bytes(buf[pos + 4:nl]).strip().decode(errors="replace"))
            else:
                self.reply(bytes(buf[pos:pos + 3]))
            pos = nl + 1
        if pos:
            del buf[:pos]

    def reply(self, code: bytes) -> None:
        st = self.state
        if st == CMDS:
            self.codes.append(code)
            if len(self.codes) < self.need:
                return
            if code == b"354":
                accepted = sum(1 for c in self.codes[1:-1] if c[:1] == b"2")
                self.need = max(1, accepted)
                self.codes = []
                self.state = EOD
                data = self.c.items[self.cur][1]
                self.c.t_data[self.cur] = time.perf_counter()
                self.t.write(data)
            else:
                self.c.outcome(self.cur, self.codes, False)
                self.state = RSET
                self.t.write(b"RSET\r\n")
        elif st == EOD:
            self.codes.append(code)
            if len(self.codes) < self.need:
                return
            self.c.t_reply[self.cur] = time.perf_counter()
            i, self.cur = self.cur, -1
            self.state = IDLE
            self.c.outcome(i, self.codes, True)
            self.next()
        elif st == RSET:
            self.state = IDLE
            self.next()
        elif st == GREET:
            if code[:1] == b"2":
                self.state = LHLO
                self.t.write(b"LHLO loadgen.bench.test\r\n")
            else:
                self.ready.set_exception(ConnectionError(f"greeting {code!r}"))
        elif st == LHLO:
            self.state = IDLE
            if code[:1] == b"2":
                self.ready.set_result(True)
            else:
                self.ready.set_exception(ConnectionError(f"LHLO {code!r}"))

    def next(self) -> None:
        c = self.c
        if c.finished is None or c.finished.done():
            return
        i = c.take()
        if i == -2:
            return
        if i == -1:
            c.loop.call_later(0.05, self.next)
            return
        if c.rate and c.t_cmd[i] == 0.0:
            delay = c.t0 + i / c.rate - time.perf_counter()
            if delay > 0.0002:
                c.loop.call_later(delay, self.send, i)
                return
        self.send(i)

    def send(self, i: int) -> None:
        self.cur = i
        cmds, _, nrcpt = self.c.items[i]
        self.need = nrcpt + 2
        self.codes = []
        self.state = CMDS
        self.c.t_cmd[i] = time.perf_counter()
        self.t.write(cmds)


def client_main(conn, port: int, sessions: int, rate: float | None, cap: float) -> None:
    gc.freeze()
    gc.disable()
    try:
        import uvloop
        loop = uvloop.new_event_loop()
        loop_name = "uvloop"
    except ImportError:
        loop = asyncio.new_event_loop()
        loop_name = "asyncio"
    asyncio.set_event_loop(loop)
    c = Client(loop, ITEMS, rate)
    try:
        caps = loop.run_until_complete(asyncio.wait_for(c.connect(port, sessions), 30))
    except Exception as exc:  # noqa: BLE001  (whatever it is, the parent reports it)
        conn.send(("error", repr(exc)))
        return
    conn.send(("ready", {"caps": caps, "loop": loop_name}))
    if conn.recv() != "go":
        return
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    res = loop.run_until_complete(c.run(cap))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    res["client_cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    res["t_cmd"], res["t_data"], res["t_reply"] = (c.t_cmd.tobytes(), c.t_data.tobytes(),
                                                   c.t_reply.tobytes())
    conn.send(("done", res))
    try:
        loop.run_until_complete(c.quit())
    except (OSError, RuntimeError, TimeoutError):   # after the clock: only tidying
        pass


# == the server's processes ==================================================================

def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def read_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rfind(")") + 2:].split()


class Server:
    """One server process (its own session and process group) and everything it starts."""

    def __init__(self, name: str, argv: list, port: int, logpath: Path, env=None, cwd=None):
        if not port_free(port):
            raise RuntimeError(f"port {port} is busy; not starting {name}")
        self.name, self.port, self.logpath = name, port, logpath
        self.logf = open(logpath, "w")  # noqa: SIM115  (the server writes it until stop())
        self.proc = subprocess.Popen([str(x) for x in argv], stdout=self.logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env, cwd=cwd)
        self.pid = self.proc.pid
        self._tree = [self.pid]
        self._tree_at = 0.0
        self.peak_rss_kb = 0
        self.max_procs = 1

    def wait_ready(self, timeout: float) -> float:
        t0 = time.perf_counter()
        end = t0 + timeout
        last = None
        while time.perf_counter() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early with rc={self.proc.returncode}: "
                                   + " | ".join(tail(self.logpath, 3)))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    greet = s.recv(512)
                    if greet.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        try:
                            s.recv(512)
                        except OSError:
                            pass
                        return time.perf_counter() - t0
                    last = greet
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready on {self.port} after {timeout:.0f} s: {last!r}")

    def settle(self, cap: float = 60.0) -> float:
        """Wait until the server's CPU use stays below 5% for a second (startup work done)."""
        t0 = time.perf_counter()
        prev = self.cpu_ticks()
        while time.perf_counter() - t0 < cap:
            time.sleep(1.0)
            now = self.cpu_ticks()
            if now - prev <= 0.05 * CLK_TCK:
                break
            prev = now
        return time.perf_counter() - t0

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def sample_rss(self) -> int:
        now = time.perf_counter()
        if now - self._tree_at > 0.5:
            self._tree = self.tree()
            self._tree_at = now
            self.max_procs = max(self.max_procs, len(self._tree))
        total = 0
        for pid in self._tree:
            try:
                with open(f"/proc/{pid}/statm") as f:
                    total += int(f.read().split()[1]) * PAGE_KB
            except (OSError, ValueError, IndexError):
                pass
        self.peak_rss_kb = max(self.peak_rss_kb, total)
        return total

    def cpu_ticks(self) -> int:
        """utime+stime of every live process in the group, plus what the leader reaped."""
        total = 0
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            rest = read_stat(int(d))
            try:
                if rest and int(rest[2]) == self.pid:
                    total += int(rest[11]) + int(rest[12])
                    if int(d) == self.pid:
                        total += int(rest[13]) + int(rest[14])
            except (IndexError, ValueError):
                pass
        return total

    def group(self) -> list[int]:
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                rest = read_stat(int(d))
                if rest and len(rest) > 2 and rest[2] == str(self.pid):
                    out.append(int(d))
        return out

    def stop(self, timeout: float = 60.0) -> dict:
        """SIGTERM to the server itself (it drains and stops what it started); whatever of
        its group is still there after it exited is reported, then killed."""
        res = {"exit_code": None, "left_behind": 0, "killed": False}
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            res["exit_code"] = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            res["killed"] = True
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            res["exit_code"] = self.proc.wait(10)
        left = self.group()
        end = time.perf_counter() + 5.0     # multiprocessing's helpers notice in a moment
        while left and time.perf_counter() < end:
            time.sleep(0.2)
            left = self.group()
        res["left_behind"] = len(left)
        if left:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.logf.close()
        return res


def log_problems(path: Path) -> dict:
    """Lines of the server's log at WARNING or worse, and tracebacks."""
    counts = collections.Counter()
    first: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        m = re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)
        key = m.group(1) if m else ("Traceback" if line.startswith("Traceback") else None)
        if key:
            counts[key] += 1
            short = re.sub(r"^\S+ \S+ ", "", line)[:200]
            if short not in first and len(first) < 6:
                first.append(short)
    return {"counts": dict(counts), "first": first}


# == the database, read-only ================================================================

class Journal:
    def __init__(self, db: Path):
        self.con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None,
                                   timeout=10)

    def backlog(self) -> int:
        return self.con.execute("SELECT COUNT(*) FROM emails WHERE state = 'journaled'"
                                ).fetchone()[0]

    def one(self, sql: str, params=()):
        try:
            return self.con.execute(sql, params).fetchone()[0]
        except sqlite3.Error as exc:
            return f"n/a ({exc})"

    def counts(self, mix: Mix, after_email: int = 0, after_number: int = 0,
               after_event: int = 0) -> dict:
        """Outcomes of the run's mail (ids above the seeded store's), by kind of message."""
        q = self.con.execute
        out: dict = {}
        try:
            rows = q("SELECT message_id, state, COALESCE(outcome, '(none)'), COALESCE(reason,"
                     " '') FROM emails WHERE id > ? AND direction = 'incoming'",
                     (after_email,)).fetchall()
        except sqlite3.Error as exc:
            return {"error": repr(exc)}
        kind_of = dict(zip(mix.msgids, mix.kinds))
        by_kind: dict = collections.defaultdict(collections.Counter)
        outcomes, reasons, states = collections.Counter(), collections.Counter(), \
            collections.Counter()
        unknown = 0
        for mid, state, outcome, reason in rows:
            states[state] += 1
            outcomes[outcome] += 1
            if reason and outcome not in ("created", "appended"):
                reasons[f"{outcome}:{reason}"] += 1
            k = kind_of.get(mid)
            if k is None:
                unknown += 1
                k = "(not in the mix)"
            by_kind[k][outcome if not reason or outcome in ("created", "appended")
                       else f"{outcome}:{reason}"] += 1
        out["incoming"] = len(rows)
        out["distinct_message_ids"] = len({r[0] for r in rows})
        out["states"] = dict(states)
        out["outcomes"] = dict(outcomes.most_common())
        out["reasons"] = dict(reasons.most_common(8))
        out["by_kind"] = {k: dict(v.most_common()) for k, v in sorted(by_kind.items())}
        out["not_in_mix"] = unknown
        out["acks_queued"] = self.one("SELECT COUNT(*) FROM emails WHERE id > ? AND"
                                      " direction = 'outgoing' AND automated = 1",
                                      (after_email,))
        out["outbound_queue"] = self.one("SELECT COUNT(*) FROM outbound_queue WHERE"
                                         " email_id > ?", (after_email,))
        out["work_items"] = self.one("SELECT COUNT(*) FROM work_items WHERE number > ?",
                                     (after_number,))
        out["ack_refused_budget"] = self.one(
            "SELECT COUNT(*) FROM emails WHERE id > ? AND direction = 'incoming' AND"
            " trace LIKE '%automated mails a day%'", (after_email,))
        try:
            names = dict(q("SELECT id, name FROM routes").fetchall())
            routes = q("SELECT json_extract(data, '$.route'), COUNT(*) FROM events WHERE"
                       " id > ? AND type = 'workitem.created' GROUP BY 1",
                       (after_event,)).fetchall()
            out["routes_hit"] = {names.get(r, str(r)): c for r, c in routes}
        except sqlite3.Error as exc:
            out["routes_hit"] = {"n/a": repr(exc)}
        return out

    def close(self) -> None:
        self.con.close()


def fresh_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def db_size(db: Path) -> int:
    return sum(Path(f"{db}{s}").stat().st_size for s in ("", "-wal")
               if Path(f"{db}{s}").exists())


# == one load against one server =============================================================

def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def drive(server: Server, items: list, a, rate: float | None) -> dict:
    """Fork the client, let it connect, start the clock, sample the server's RSS until the
    client reports; the client's timings and the server's CPU over the load."""
    global ITEMS
    ITEMS = items
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    cap = a.time_cap if rate is None else max(a.time_cap, 3 * len(items) / rate)
    p = ctx.Process(target=client_main, args=(child, server.port, a.sessions, rate, cap))
    p.start()
    child.close()
    rec: dict = {}
    try:
        if not parent.poll(60):
            raise RuntimeError("client did not connect within 60 s")
        kind, info = parent.recv()
        if kind != "ready":
            raise RuntimeError(f"client: {info}")
        rec["client_loop"] = info["loop"]
        rec["pipelining_advertised"] = "PIPELINING" in info["caps"]
        server.sample_rss()
        c0 = server.cpu_ticks()
        w0 = time.time()
        parent.send("go")
        while not parent.poll(0.05):
            server.sample_rss()
            if not p.is_alive():
                raise RuntimeError(f"client died (exit {p.exitcode})")
        kind, res = parent.recv()
        c1 = server.cpu_ticks()
        server.sample_rss()
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
    t_cmd = array.array("d")
    t_cmd.frombytes(res.pop("t_cmd"))
    t_data = array.array("d")
    t_data.frombytes(res.pop("t_data"))
    t_reply = array.array("d")
    t_reply.frombytes(res.pop("t_reply"))
    done = [i for i in range(len(items)) if t_reply[i] > 0.0]
    eod = sorted((t_reply[i] - t_data[i]) * 1000 for i in done)
    txn = sorted((t_reply[i] - t_cmd[i]) * 1000 for i in done)
    elapsed = res["t_end"] - res["t0"]
    rec.update(res)
    rec.update({"messages": res["ok"], "elapsed_s": elapsed, "wall_start": w0,
                "msgs_per_s": res["ok"] / elapsed if elapsed > 0 else None,
                "server_cpu_s_load": (c1 - c0) / CLK_TCK, "cpu_c0": c0, "cpu_c1": c1,
                "eod_ms": {"p50": pct(eod, .5), "p99": pct(eod, .99), "max": eod[-1] if eod
                           else None},
                "txn_ms": {"p50": pct(txn, .5), "p99": pct(txn, .99)},
                "client_cpu_ms_per_msg": res["client_cpu_s"] * 1000 / res["ok"] if res["ok"]
                else None, "client_busy": res["client_cpu_s"] / elapsed if elapsed else None})
    if rate:
        lag = sorted((t_cmd[i] - (res["t0"] + i / rate)) * 1000 for i in done)
        sched = sorted((t_reply[i] - (res["t0"] + i / rate)) * 1000 for i in done)
        rec["rate"] = rate
        rec["lag_ms"] = {"p50": pct(lag, .5), "p99": pct(lag, .99), "max": lag[-1] if lag
                         else None}
        rec["due_to_reply_ms"] = {"p99": pct(sched, .99), "max": sched[-1] if sched else None}
        # kept up: sends stayed on schedule (p99 lag under 100 ms, the end not later than
        # 1 s or 2% behind)
        rec["kept_up"] = bool(lag) and lag[-1] < max(1000.0, 0.02 * elapsed * 1000) and \
            pct(lag, .99) < 100.0 and not res["capped"]
    return rec


def wait_drained(journal: Journal, server: Server, load_end: float, cap: float,
                 poll: float = 0.05) -> tuple[float | None, int]:
    while True:
        left = journal.backlog()
        server.sample_rss()
        now = time.perf_counter()
        if left == 0:
            return now - load_end, 0
        if now - load_end >= cap:
            return None, left
        time.sleep(poll)


def bare_argv(a) -> list:
    return [a.bare_python, a.yardstick / "lmtp_models.py", "--model", "bare", "--loop",
            a.bare_loop, "--port", str(a.bare_port)]


def run_bare(a, items: list, label: str, rate: float | None = None) -> dict:
    rec = {"target": "bare", "ok": False, "problems": []}
    server = None
    try:
        server = Server("bare", bare_argv(a), a.bare_port, a.runs / f"bare-{label}.log",
                        cwd=a.runs)
        server.wait_ready(30)
        d = drive(server, items, a, rate)
        rec.update(d)
        rec["cpu_ms_per_msg"] = d["server_cpu_s_load"] * 1000 / d["messages"] \
            if d["messages"] else None
        rec["peak_rss_mb"] = server.peak_rss_kb / 1024
        rec["ok"] = d["messages"] == len(items) and not d["capped"]
        if not rec["ok"]:
            rec["problems"].append(f"{d['messages']}/{len(items)} delivered "
                                   f"{d['errors'][:2]}")
    except Exception as exc:  # noqa: BLE001  (a failed run is a row of the table)
        rec["problems"].append(f"run failed: {exc!r}"[:200])
    finally:
        if server is not None:
            st = server.stop(10)
            rec["exit_code"] = st["exit_code"]
            for line in tail(server.logpath, 5):
                if line.startswith("stats {"):
                    try:
                        rec["server_stats"] = json.loads(line[6:])
                    except ValueError:
                        pass
    if rec.get("server_stats") and rec.get("messages") is not None and \
            rec["server_stats"].get("messages") != rec["messages"]:
        rec["problems"].append(f"bare counted {rec['server_stats'].get('messages')}")
    return rec


def gateway_version() -> str:
    """The commit and a hash of the gateway's sources as they are on disk now: other work
    may change them between two starts, and a table must not mix versions unnoticed."""
    import hashlib
    sha = hashlib.sha1()
    for top in ("gateway", "storage", "metrics"):
        for f in sorted((REPO / top).rglob("*")):
            if f.suffix in (".py", ".sql", ".toml") and "__pycache__" not in f.parts:
                sha.update(str(f.relative_to(REPO)).encode())
                sha.update(f.read_bytes())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip() or "?"
    return f"{head}+{sha.hexdigest()[:8]}"


def run_mailgate(a, mix: Mix, db: Path, label: str, rate: float | None = None, *,
                 fresh: bool = True, seeded: dict | None = None) -> dict:
    """mailgate serve on ``db`` (fresh, or a seeded store), the load, the drain, the counts."""
    if fresh:
        fresh_db(db)
    cfg = write_config(a.work / f"mailgate-{label}.toml", a.port, db)
    env = dict(os.environ)
    if a.loop != "auto":
        env["MAILGATE_GATEWAY_EVENT_LOOP"] = a.loop
    rec = {"target": "mailgate", "ok": False, "problems": [], "version": gateway_version()}
    server = journal = None
    seeded = seeded or {}
    try:
        server = Server("mailgate", [MAILGATE, "serve", "--config", cfg], a.port,
                        a.runs / f"mailgate-{label}.log", env=env, cwd=a.work)
        rec["ready_s"] = server.wait_ready(a.ready_timeout)
        rec["settle_s"] = server.settle()
        journal = Journal(db)
        d = drive(server, mix.items, a, rate)
        rec.update(d)
        load_end = d["t_end"]
        rec["backlog_at_load_end"] = journal.backlog()
        drain, left = wait_drained(journal, server, load_end, a.drain_cap)
        c2 = server.cpu_ticks()
        rec["drain_s"], rec["left_at_cap"] = drain, left
        n = d["messages"]
        if n:
            total = d["elapsed_s"] + (drain if drain is not None else a.drain_cap)
            rec["processed_msgs_per_s"] = (n - left) / total
            rec["cpu_ms_per_msg_load"] = d["server_cpu_s_load"] * 1000 / n
            rec["cpu_ms_per_msg"] = (c2 - d["cpu_c0"]) / CLK_TCK * 1000 / n
        rec["peak_rss_mb"] = server.peak_rss_kb / 1024
        rec["processes"] = server.max_procs
        rec["db"] = journal.counts(mix, seeded.get("emails", 0), seeded.get("number", 0),
                                   seeded.get("event", 0))
        rec["db_bytes"] = db_size(db)
        db_ = rec["db"]
        if d["capped"] or n != len(mix.items):
            rec["problems"].append(f"{n}/{len(mix.items)} delivered "
                                   f"{'(capped) ' if d['capped'] else ''}{d['errors'][:2]}")
        if d["tempfail_retried"]:
            rec["problems"].append(f"{d['tempfail_retried']} 4xx replies (retried)")
        if drain is None:
            rec["problems"].append(f"not drained after {a.drain_cap:.0f} s ({left} left)")
        if "error" in db_:
            rec["problems"].append(f"counting failed: {db_['error']}")
        else:
            if db_["incoming"] != n:
                rec["problems"].append(f"{db_['incoming']} incoming rows for {n} messages")
            if db_["states"].get("done", 0) != db_["incoming"]:
                rec["problems"].append(f"without outcome: {db_['states']}")
            if db_["not_in_mix"]:
                rec["problems"].append(f"{db_['not_in_mix']} rows not from the mix")
        rec["ok"] = n == len(mix.items) and not d["capped"]
    except Exception as exc:  # noqa: BLE001  (a failed run is a row of the table)
        rec["problems"].append(f"run failed: {exc!r}"[:300])
    finally:
        if journal is not None:
            journal.close()
        if server is not None:
            st = server.stop(a.stop_timeout)
            rec["exit_code"] = st["exit_code"]
            if st["exit_code"] != 0:
                rec["problems"].append(f"exit code {st['exit_code']} after SIGTERM")
            if st["left_behind"]:
                rec["problems"].append(f"{st['left_behind']} processes left after exit")
            rec["log"] = log_problems(server.logpath)
            if rec["log"].get("counts", {}).get("ERROR") or \
                    rec["log"].get("counts", {}).get("Traceback"):
                rec["problems"].append(f"log: {rec['log']['counts']}")
    return rec


# == tables ==================================================================================

def fmt(v, nd=0, suffix="") -> str:
    if v is None or isinstance(v, str):
        return "-" if v is None else v
    return f"{v:,.{nd}f}{suffix}"


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def lat(d: dict, key: str = "eod_ms") -> str:
    x = d.get(key) or {}
    return f"{fmt(x.get('p50'), 2)} / {fmt(x.get('p99'), 2)}"


def outcome_lines(label: str, m: dict) -> list[str]:
    db = m.get("db") or {}
    if not db or "error" in db:
        return [f"| {label} | {db.get('error', '-')} | | | | |"]
    kinds = "; ".join(f"{k}: " + ", ".join(f"{o} {c:,}" for o, c in v.items())
                      for k, v in db["by_kind"].items())
    routes = db.get("routes_hit") or {}
    kw = [r for r in routes if r != "fallback"]
    return [(f"| {label} | {db['incoming']:,} ({', '.join(f'{k} {v:,}' for k, v in db['states'].items())}) "
             f"| {', '.join(f'{k} {v:,}' for k, v in db['outcomes'].items())} | {kinds} | "
             f"{fmt(db.get('acks_queued'))} (refused by budget {fmt(db.get('ack_refused_budget'))})"
             f" | {len(kw)} keyword routes + fallback {routes.get('fallback', 0):,} |")]


def rounds_table(results: list[dict], open_results: list[dict], a, mix_stats: dict) -> tuple[str, bool]:
    out = []
    ok = True
    out.append("| round | bare msgs/s | mailgate intake msgs/s | backlog at load end | drain s |"
               " processed msgs/s | processed / bare | mailgate CPU ms/msg (load / incl. drain)"
               " | bare CPU ms/msg | EOD p50 / p99 ms bare | EOD p50 / p99 ms mailgate |"
               " mailgate peak RSS MB (procs) | client CPU ms/msg (busy) | exit | checks |")
    out.append("|" + "---|" * 15)
    cols = collections.defaultdict(list)
    for r in results:
        b, m = r["bare"], r["mailgate"]
        bare = b.get("msgs_per_s") if b.get("ok") else None
        proc = m.get("processed_msgs_per_s") if m.get("ok") else None
        pb = proc / bare if bare and proc else None
        for k, v in (("bare", bare), ("intake", m.get("msgs_per_s")), ("proc", proc),
                     ("pb", pb), ("drain", m.get("drain_s")), ("mcpu", m.get("cpu_ms_per_msg")),
                     ("mcpu_l", m.get("cpu_ms_per_msg_load")), ("bcpu", b.get("cpu_ms_per_msg")),
                     ("b50", (b.get("eod_ms") or {}).get("p50")),
                     ("b99", (b.get("eod_ms") or {}).get("p99")),
                     ("m50", (m.get("eod_ms") or {}).get("p50")),
                     ("m99", (m.get("eod_ms") or {}).get("p99")),
                     ("rss", m.get("peak_rss_mb")), ("backlog", m.get("backlog_at_load_end"))):
            cols[k].append(v)
        probs = list(m.get("problems", [])) + [f"bare: {p}" for p in b.get("problems", [])]
        for side, d in (("bare", b), ("mailgate", m)):
            if (d.get("client_busy") or 0) > 0.85:
                probs.append(f"client busy {d['client_busy']:.0%} on {side}: client-bound?")
        if probs:
            ok = False
        out.append(
            f"| {r['round']} | {fmt(bare)} | {fmt(m.get('msgs_per_s'))} | "
            f"{fmt(m.get('backlog_at_load_end'))} | {fmt(m.get('drain_s'), 2)} | {fmt(proc)} | "
            f"{fmt(pb, 3)} | {fmt(m.get('cpu_ms_per_msg_load'), 3)} / "
            f"{fmt(m.get('cpu_ms_per_msg'), 3)} | {fmt(b.get('cpu_ms_per_msg'), 3)} | {lat(b)} | "
            f"{lat(m)} | {fmt(m.get('peak_rss_mb'), 1)} ({m.get('processes', '-')}) | "
            f"{fmt(b.get('client_cpu_ms_per_msg'), 3)} ({fmt((b.get('client_busy') or 0) * 100)}%)"
            f" / {fmt(m.get('client_cpu_ms_per_msg'), 3)} ({fmt((m.get('client_busy') or 0) * 100)}%)"
            f" | {m.get('exit_code', '-')} | {'; '.join(probs) or 'ok'} |")
    med = collections.defaultdict(lambda: None, {k: median(v) for k, v in cols.items()})
    if results:
        out.append(f"| **median** | {fmt(med['bare'])} | {fmt(med['intake'])} | "
                   f"{fmt(med['backlog'])} | {fmt(med['drain'], 2)} | {fmt(med['proc'])} | "
                   f"**{fmt(med['pb'], 3)}** | {fmt(med['mcpu_l'], 3)} / {fmt(med['mcpu'], 3)} | "
                   f"{fmt(med['bcpu'], 3)} | {fmt(med['b50'], 2)} / {fmt(med['b99'], 2)} | "
                   f"{fmt(med['m50'], 2)} / {fmt(med['m99'], 2)} | {fmt(med['rss'], 1)} | | | |")
        met = med["pb"] is not None and med["pb"] >= RATIO_GOAL
        out.append(f"\ngoal: processed / bare ≥ {RATIO_GOAL:.1f}× (median; aim 1.0×): "
                   f"**{fmt(med['pb'], 3)}× — {'met' if met else 'NOT met'}**")
        ok = ok and met
    else:
        out = []
    out.append("\noutcomes after the drain (`emails`, incoming rows of the run; by kind of "
               "message as generated; acknowledgements queued; routes that created items):\n")
    out.append("| run | incoming (state) | outcomes | by kind | acks queued | routes |")
    out.append("|---|---|---|---|---|---|")
    for r in results:
        out += outcome_lines(f"round {r['round']}", r["mailgate"])
    for r in open_results:
        out += outcome_lines(f"open loop {r['round']}", r["mailgate"])
    if open_results:
        out.append("\n**Open loop** (`--rate`): message i due at start + i/R; EOD = final dot "
                   "→ last reply; lag = actual send − due time.\n")
        out.append("| round | rate msgs/s | target | achieved msgs/s | EOD p50 / p99 / max ms | "
                   "send lag p99 / max ms | kept up | drain s | CPU ms/msg (incl. drain) | "
                   "peak RSS MB | checks |")
        out.append("|" + "---|" * 11)
        p99s = []
        for r in open_results:
            for side in ("bare", "mailgate"):
                d = r[side]
                e = d.get("eod_ms") or {}
                lg = d.get("lag_ms") or {}
                if side == "mailgate":
                    p99s.append(e.get("p99"))
                cpu = d.get("cpu_ms_per_msg")
                out.append(f"| {r['round']} | {fmt(r['rate'])} | {side} | {fmt(d.get('msgs_per_s'))}"
                           f" | {fmt(e.get('p50'), 2)} / {fmt(e.get('p99'), 2)} / "
                           f"{fmt(e.get('max'), 1)} | {fmt(lg.get('p99'), 1)} / "
                           f"{fmt(lg.get('max'), 1)} | {'yes' if d.get('kept_up') else 'NO'} | "
                           f"{fmt(d.get('drain_s'), 2) if side == 'mailgate' else '-'} | "
                           f"{fmt(cpu, 3)} | {fmt(d.get('peak_rss_mb'), 1)} | "
                           f"{'; '.join(d.get('problems', [])) or 'ok'} |")
        worst = max([p for p in p99s if p is not None], default=None)
        met2 = worst is not None and worst < P99_GOAL_MS and \
            all(r["mailgate"].get("kept_up") for r in open_results)
        out.append(f"\ngoal: open loop at the given rate, mailgate p99 end-of-data < "
                   f"{P99_GOAL_MS:.0f} ms in every round (worst {fmt(worst, 2)} ms) and kept up: "
                   f"**{'met' if met2 else 'NOT met'}**")
        ok = ok and met2
    return "\n".join(out), ok


# == soak: a seeded store ====================================================================

# Tables the SQL multiplication copies, with the key that says which rows the base had.
BASE_KEY = {"messages": "id", "emails": "id", "work_items": "number",
            "item_emails": "email_id", "fingerprints": "email_id", "events": "id",
            "outbound_queue": "email_id", "ref_numbers": "number", "reopens": "email_id",
            "automated_sent": "email_id"}
DIRECTORY_TABLES = {"connectors", "routes", "activity", "settings", "contacts", "processes",
                    "connector_tests", "polled", "schema_migrations", "migrations"}


def _ref_k(ref, k, w):
    if ref is None:
        return None
    num, dash, rest = ref.partition("-")
    return f"{int(num) + k * w}-{rest}" if dash and num.isdigit() else ref


def _mid_k(mid, k):
    """A stored Message-ID of copy k: the first 8 hex characters replaced by k, and for the
    gateway's own <EMAIL-UUID.WORKITEM-UUID@domain> the work item's part too (as its uuid)."""
    if mid is None or len(mid) < 10 or mid[0] != "<":
        return mid
    kk = f"{k:08x}"
    if len(mid) > 75 and mid[37] == "." and mid[46] == "-":
        return "<" + kk + mid[9:38] + kk + mid[46:]
    return "<" + kk + mid[9:]


def _fp_k(value, k):
    return None if value is None else value[:-6] + f"{k:06x}"


def _uuid_k(u, k):
    return None if u is None else f"{k:08x}" + u[8:]


def _refs_json_k(text, k, w):
    try:
        refs = json.loads(text)
    except (TypeError, ValueError):
        return text
    if not isinstance(refs, list):
        return text
    return json.dumps([_ref_k(r, k, w) if isinstance(r, str) else r for r in refs])


def seed_store(base: Path, out: Path, info: dict, copies: int, now: float) -> dict:
    """A copy of the base store grown ``copies`` times by SQL (the gateway is stopped), and
    its own rows moved in time. See README.md ("Mixed load: soak") for what and why."""
    t_start = time.perf_counter()
    fresh_db(out)
    shutil.copyfile(base, out)
    con = sqlite3.connect(out, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1500000")
    con.execute("PRAGMA temp_store=MEMORY")
    t0, t1 = info["t0"], info["t1"]
    span = max(t1 - t0, 1.0)

    def remap(t, now_):          # the base: 60% over the day before, 40% in the last 10 min
        if t is None or not (t0 - 1 <= t <= t1 + 1):
            return t
        f = min(1.0, max(0.0, (t - t0) / span))
        if f < 0.6:
            return now_ - 82800 + f / 0.6 * (82800 - 600)
        return now_ - 600 + (f - 0.6) / 0.4 * 540

    con.create_function("remap", 2, remap, deterministic=True)
    con.create_function("ref_k", 3, _ref_k, deterministic=True)
    con.create_function("mid_k", 2, _mid_k, deterministic=True)
    con.create_function("fp_k", 2, _fp_k, deterministic=True)
    con.create_function("uuid_k", 2, _uuid_k, deterministic=True)
    con.create_function("refs_k", 3, _refs_json_k, deterministic=True)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                        " AND name NOT LIKE 'sqlite_%'")]
    cols = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in tables}
    M, E, W, EV = info["M"], info["E"], info["W"], info["EV"]
    offsets = {"M": M, "E": E, "W": W, "EV": EV}
    notes = []
    untouched = [t for t in tables if t not in BASE_KEY and t not in DIRECTORY_TABLES and
                 con.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone()[0]]
    if untouched:
        notes.append(f"tables with rows not copied: {untouched}")

    def expr(table: str, col: str) -> str:
        if col == "at" or col.endswith("_at"):
            return f"remap({col}, :now) + :shift"
        ref_cols = {"ref", "parent", "merged_into", "converted_to", "copied_from"}
        table_map = {
            "messages": {"id": "id + :k * :M"},
            "emails": {"id": "id + :k * :E", "message": "message + :k * :M",
                       "message_id": "mid_k(message_id, :k)", "f1": "fp_k(f1, :k)"},
            "work_items": {"number": "number + :k * :W", "uuid": "uuid_k(uuid, :k)",
                           "split_into": "refs_k(split_into, :k, :W)",
                           "linked": "refs_k(linked, :k, :W)"},
            "item_emails": {"email_id": "email_id + :k * :E"},
            "fingerprints": {"email_id": "email_id + :k * :E", "value": "fp_k(value, :k)",
                             "target": "CASE WHEN target GLOB '[0-9]*-[A-Z]' THEN "
                                       "ref_k(target, :k, :W) ELSE target END"},
            "events": {"id": "id + :k * :EV", "email_id": "email_id + :k * :E"},
            "outbound_queue": {"email_id": "email_id + :k * :E"},
            "ref_numbers": {"number": "number + :k * :W"},
            "reopens": {"email_id": "email_id + :k * :E"},
        }
        m = table_map.get(table, {})
        if col in m:
            return m[col]
        if col in ref_cols:
            return f"ref_k({col}, :k, :W)"
        return col

    limit = {"messages": ":M", "emails": ":E", "work_items": ":W", "item_emails": ":E",
             "fingerprints": ":E", "events": ":EV", "outbound_queue": ":E", "ref_numbers": ":W",
             "reopens": ":E", "automated_sent": ":E"}
    per_copy = 24 * 86400 / max(copies, 1)
    for k in range(1, copies + 1):
        shift = -(86400 + (k - 1) * per_copy)
        params = dict(offsets, k=k, now=now, shift=shift)
        con.execute("BEGIN")
        for t in tables:
            if t not in BASE_KEY or t == "automated_sent":   # older than a day: not copied
                continue
            names = cols[t]
            sel = ", ".join(expr(t, c) for c in names)
            con.execute(f"INSERT INTO {t} ({', '.join(names)}) SELECT {sel} FROM {t} WHERE "
                        f"{BASE_KEY[t]} <= {limit[t]}",
                        {x[1:]: params[x[1:]] for x in
                         set(re.findall(r":\w+", sel + limit[t]))})
        con.execute("COMMIT")
        if k % 10 == 0 or k == copies:
            log(f"  seeded copy {k}/{copies} ({time.perf_counter() - t_start:.0f} s)")
    # the base's own rows last, relative to the time seeding ends
    now_final = time.time()
    con.execute("BEGIN")
    for t in tables:
        if t in DIRECTORY_TABLES:
            continue
        for c in cols[t]:
            if c == "at" or c.endswith("_at"):
                where = f" AND {BASE_KEY[t]} <= {limit[t]}" if t in BASE_KEY else ""
                params = {x.lstrip(":"): offsets[x.lstrip(":")] for x in
                          re.findall(r":[A-Z]+", where)}
                con.execute(f"UPDATE {t} SET {c} = remap({c}, :now) WHERE {c} BETWEEN"
                            f" :t0 AND :t1{where}",
                            dict(params, now=now_final, t0=t0 - 1, t1=t1 + 1))
    con.execute("COMMIT")
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return {"seed_s": time.perf_counter() - t_start, "now": now_final, "notes": notes}


def store_marks(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        def one(sql: str) -> int:
            return con.execute(sql).fetchone()[0] or 0
        return {"M": one("SELECT MAX(id) FROM messages"), "E": one("SELECT MAX(id) FROM emails"),
                "W": max(one("SELECT MAX(number) FROM work_items"),
                         one("SELECT MAX(number) FROM ref_numbers")),
                "EV": one("SELECT MAX(id) FROM events"),
                "incoming": one("SELECT COUNT(*) FROM emails WHERE direction = 'incoming'"),
                "outgoing": one("SELECT COUNT(*) FROM emails WHERE direction = 'outgoing'"),
                "work_items": one("SELECT COUNT(*) FROM work_items"),
                "open_items": one("SELECT COUNT(*) FROM work_items WHERE state NOT IN"
                                  " ('RESOLVED', 'CLOSED')"),
                "fingerprints": one("SELECT COUNT(*) FROM fingerprints"),
                "automated_sent_last_day": one(
                    "SELECT COUNT(*) FROM automated_sent WHERE at >= "
                    "CAST(strftime('%s', 'now') AS REAL) - 86400"),
                "senders_last_10min": one(
                    "SELECT COUNT(*) FROM emails WHERE sender IS NOT NULL AND processed_at >= "
                    "CAST(strftime('%s', 'now') AS REAL) - 600")}
    finally:
        con.close()


def seeded_threads(db: Path, count: int, seed: int) -> list[dict]:
    """Requests already in the store, with their acknowledgement, for the measured load to
    answer (read-only, before the clock)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rng = random.Random(f"threads/{seed}")
    parser = BytesHeaderParser()
    out = []
    try:
        top = con.execute("SELECT MAX(number) FROM work_items").fetchone()[0] or 0
        tries = 0
        while len(out) < count and tries < count * 5 and top:
            tries += 1
            num = rng.randint(1, top)
            row = con.execute("SELECT ref FROM work_items WHERE number = ?", (num,)).fetchone()
            if not row:
                continue
            ref = row[0]
            req = con.execute(
                "SELECT e.message_id, m.raw FROM item_emails ie JOIN emails e ON e.id ="
                " ie.email_id JOIN messages m ON m.id = e.message WHERE ie.ref = ? AND"
                " ie.action = 'created' AND e.direction = 'incoming' LIMIT 1", (ref,)).fetchone()
            if not req or not req[0]:
                continue
            ack = con.execute(
                "SELECT e.message_id FROM item_emails ie JOIN emails e ON e.id = ie.email_id"
                " WHERE ie.ref = ? AND ie.action = 'sent' LIMIT 1", (ref,)).fetchone()
            h = parser.parsebytes(bytes(req[1]))
            name, addr = email.utils.parseaddr(str(h.get("From", "")))
            try:
                name = str(make_header(decode_header(name)))
                subject = str(make_header(decode_header(str(h.get("Subject", "")))))
            except (LookupError, ValueError, UnicodeError):   # a bad encoded-word
                subject = str(h.get("Subject", ""))
            if not addr:
                continue
            out.append({"id": req[0], "ack": ack[0] if ack else None, "name": name or addr,
                        "addr": addr, "subject": subject, "ref": ref})
    finally:
        con.close()
    return out


def deliver_base(a, n: int, meas_senders: int) -> dict:
    """n messages of the mix through mailgate on a fresh database, drained and stopped;
    the database left as one file (no WAL) with its marks and the wall-clock span. With
    --bases DIR a base already there (base-N.db and base-N.json) is used instead, and a new
    one is kept there."""
    senders = max(meas_senders, math.ceil(0.6 * n / 3))   # ~3 requests (acks) per sender
    where = a.bases or a.work / "db"
    db, meta = where / f"base-{n}.db", where / f"base-{n}.json"
    if a.bases and db.exists() and meta.exists():
        base = json.loads(meta.read_text())
        if base.get("senders") == senders and base.get("seed") == a.seed:
            base["db"] = db
            base["reused"] = True
            log(f"base {n:,}: reusing {db} (delivered by {base['run'].get('version')}, "
                f"{time.time() - base['info']['t1']:.0f} s ago)")
            return base
    t = time.perf_counter()
    mix = build_mix(n, seed=a.seed, senders=senders, tag=f"b{n}")
    log(f"base {n:,}: mix generated in {time.perf_counter() - t:.1f} s ({senders:,} senders)")
    saved = a.time_cap, a.drain_cap
    a.time_cap, a.drain_cap = max(a.time_cap, n / 40), max(a.drain_cap, n / 40)
    w0 = time.time()
    try:
        run = run_mailgate(a, mix, db, f"seed-{n}")
    finally:
        a.time_cap, a.drain_cap = saved
    w1 = time.time()
    del mix
    if not run.get("ok") or run.get("drain_s") is None:
        raise RuntimeError(f"delivering the base of {n:,} failed: {run.get('problems')}")
    took = run["elapsed_s"] + run["drain_s"]
    log(f"base {n:,} delivered and processed in {took:.1f} s "
        f"({fmt(run['processed_msgs_per_s'])} msgs/s); {run['db']['outcomes']}, acks "
        f"{run['db']['acks_queued']}; {'; '.join(run['problems']) or 'ok'}")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    info = store_marks(db)
    info.update(t0=w0, t1=w1)
    base = {"n": n, "info": info, "run": run, "senders": senders, "seconds": took,
            "seed": a.seed, "reused": False}
    if a.bases:
        meta.write_text(json.dumps(base, default=str))
    base["db"] = db
    return base


def soak(a) -> int:
    """Seed every store first, then measure them back to back (the order alternating per
    round), so that all measured runs see the same gateway code as far as possible."""
    stored = sorted({int(x) for x in a.stored.split(",")})
    meas_senders = a.senders or max(2000, math.ceil(a.messages / 4))
    grow_from = max([n for n in stored if n <= a.deliver_max] or [a.deliver_max])
    log(f"soak: stores {stored} (up to {a.deliver_max:,} delivered through mailgate, larger "
        f"ones grown by SQL from the {grow_from:,} base); measured load {a.messages:,} "
        f"messages ({meas_senders:,} senders), {a.rounds} round(s)")
    bases: dict[int, dict] = {}
    rows = []
    for n in stored:                       # 1. seeding
        b = n if n <= a.deliver_max else grow_from
        if b not in bases:
            bases[b] = deliver_base(a, b, meas_senders)
        base = bases[b]
        copies = max(0, round(n / b) - 1)
        store = a.work / "db" / f"store-{n}.db"
        log(f"store {n:,}: the {b:,} base + {copies} SQL copies")
        seeding = seed_store(base["db"], store, base["info"], copies, time.time())
        marks = store_marks(store)
        seeding.update(marks=marks, bytes=db_size(store), base=b, copies=copies,
                       base_seconds=base["seconds"], base_senders=base["senders"],
                       base_reused=base["reused"],
                       base_rate=base["run"].get("processed_msgs_per_s"))
        log(f"store {n:,} seeded in {seeding['seed_s']:.1f} s (its base: "
            f"{'reused' if base['reused'] else 'delivered in'} {base['seconds']:.0f} s): "
            f"{marks}, {seeding['bytes'] / 1e6:,.0f} MB {seeding['notes']}")
        if not a.bases and b == n and n != grow_from:   # nothing else grows from it
            fresh_db(base["db"])
        threads = seeded_threads(store, max(50, a.messages // 5), a.seed)
        mix = build_mix(a.messages, seed=a.seed, senders=meas_senders, tag="s",
                        external=threads)
        rows.append({"stored": n, "store": store, "seeding": seeding, "threads": len(threads),
                     "mix": mix, "runs": []})
    if not a.bases:
        for base in bases.values():
            fresh_db(base["db"])
    for rnd in range(1, a.rounds + 1):     # 2. measuring, back to back
        for r in (rows if rnd % 2 else rows[::-1]):
            n, store, marks = r["stored"], r["store"], r["seeding"]["marks"]
            run_db = store
            if rnd < a.rounds:             # the last round may use the store itself
                run_db = a.work / "db" / "run.db"
                fresh_db(run_db)
                shutil.copyfile(store, run_db)
            m = run_mailgate(a, r["mix"], run_db, f"soak-{n}-r{rnd}", fresh=False,
                             seeded={"emails": marks["E"], "number": marks["W"],
                                     "event": marks["EV"]})
            m["round"] = rnd
            log(f"[round {rnd}, stored {n:,}] processed {fmt(m.get('processed_msgs_per_s'))} "
                f"msgs/s, CPU {fmt(m.get('cpu_ms_per_msg'), 3)} ms/msg, EOD {lat(m)} ms, "
                f"ready {fmt(m.get('ready_s'), 1)} s, {m.get('version')}; "
                f"{(m.get('db') or {}).get('outcomes')} {'; '.join(m['problems'])}")
            r["runs"].append(m)
            if run_db != store:
                fresh_db(run_db)
    for r in rows:
        fresh_db(r["store"])
        r["mix"] = r["mix"].stats()
        r["store"] = str(r["store"])
    # 3. the table
    out = [("| stored | how seeded | seeding s | DB MB | incoming / open items / fingerprints |"
            " automated_sent last day | processed msgs/s | CPU ms/msg (load / incl. drain) |"
            " CPU per round | vs smallest | EOD p50 / p99 ms | peak RSS MB | ready s | checks |"),
           "|" + "---|" * 14]
    first = None
    for r in rows:
        cpu = median([m.get("cpu_ms_per_msg") for m in r["runs"]])
        cpu_l = median([m.get("cpu_ms_per_msg_load") for m in r["runs"]])
        proc = median([m.get("processed_msgs_per_s") for m in r["runs"]])
        if first is None:
            first = cpu
        sd = r["seeding"]
        mk = sd["marks"]
        probs = sorted({p for m in r["runs"] for p in m.get("problems", [])})
        r["cpu_ms_per_msg"], r["processed_msgs_per_s"] = cpu, proc
        r["vs_smallest"] = cpu / first if cpu and first else None
        how = (f"delivered ({fmt(sd['base_rate'])} msgs/s)" if not sd["copies"] else
               f"{sd['base']:,} delivered + {sd['copies']} SQL copies")
        secs = (0 if sd["base_reused"] else sd["base_seconds"]) + sd["seed_s"]
        per_round = ", ".join(fmt(m.get("cpu_ms_per_msg"), 2) for m in r["runs"])
        out.append(f"| {r['stored']:,} | {how} | {secs:,.0f}"
                   f"{' (base reused)' if sd['base_reused'] else ''} | "
                   f"{sd['bytes'] / 1e6:,.0f} | "
                   f"{mk['incoming']:,} / {mk['open_items']:,} / {mk['fingerprints']:,} | "
                   f"{mk['automated_sent_last_day']:,} | {fmt(proc)} | {fmt(cpu_l, 3)} / "
                   f"{fmt(cpu, 3)} | {per_round} | {fmt(r['vs_smallest'], 3)} | "
                   f"{lat(r['runs'][0])} | {fmt(r['runs'][0].get('peak_rss_mb'), 1)} | "
                   f"{fmt(r['runs'][0].get('ready_s'), 1)} | {'; '.join(probs) or 'ok'} |")
    goal = None
    small = next((r for r in rows if r["stored"] == 10000), rows[0])
    big = next((r for r in rows if r["stored"] == 100000), None)
    if big and small["cpu_ms_per_msg"] and big["cpu_ms_per_msg"]:
        ratio = big["cpu_ms_per_msg"] / small["cpu_ms_per_msg"]
        goal = ratio <= 1 + SOAK_GOAL
        out.append(f"\ngoal: CPU per message with 100k stored within {SOAK_GOAL:.0%} of 10k "
                   f"(medians): **{ratio:.3f}× — {'met' if goal else 'NOT met'}**")
    versions = [m.get("version") for r in rows for m in r["runs"]]
    if len(set(versions)) > 1:
        out.append("\n**The gateway's code changed between the measured runs** (commit+source "
                   "hash per run, in run order: " + ", ".join(
                       f"{m['round']}/{r['stored']:,}: {m.get('version')}" for r in rows
                       for m in r["runs"]) + "); compare only runs of one version.")
    elif versions:
        out.append(f"\ngateway version (commit+source hash) in every measured run: "
                   f"{versions[0]}; bases delivered by " + ", ".join(
                       f"{n:,}: {b['run'].get('version')}" for n, b in bases.items()))
    out.append("\noutcomes of the measured load:\n")
    out.append("| run | incoming (state) | outcomes | by kind | acks queued | routes |")
    out.append("|---|---|---|---|---|---|")
    for r in rows:
        for m in r["runs"]:
            out += outcome_lines(f"{r['stored']:,} stored, round {m['round']}", m)
    text = "\n".join(out)
    st = rows[0]["mix"] if rows else {}
    print(f"# soak: {a.messages:,} measured messages ("
          f"{', '.join(f'{k} {v:,}' for k, v in st.get('kinds', {}).items())}) on stores of "
          f"{a.stored}; {a.sessions} sessions, closed loop; {a.rounds} round(s), order "
          f"alternating; seed {a.seed}; nproc {os.cpu_count()}; load {os.getloadavg()}")
    print(text)
    path = Path(a.json) if a.json else a.work / "mixed-soak.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                "bases": {n: {k: v for k, v in b.items() if k != "db"}
                                          for n, b in bases.items()},
                                "rows": rows}, indent=1, default=str))
    (a.work / "mixed-soak.md").write_text(text + "\n")
    print(f"\nraw results: {path}; work dir: {a.work}")
    bad = any(m.get("problems") for r in rows for m in r["runs"])
    return 1 if bad or goal is False or len(set(versions)) > 1 else 0


# == main ====================================================================================

def rounds(a) -> int:
    senders = a.senders or max(2000, math.ceil(a.messages / 4))
    t = time.perf_counter()
    mix = build_mix(a.messages, seed=a.seed, senders=senders, tag="r")
    st = mix.stats()
    log(f"mix generated in {time.perf_counter() - t:.1f} s: {st}")
    if st["max_per_sender"] > SENDER_BUDGET or st["max_requests_per_sender"] > ACK_BUDGET:
        log("warning: some sender goes over a budget; raise --senders")
    db = a.work / "db" / "mailgate.db"
    results, open_results = [], []
    rate = None
    if a.rate not in (None, "half"):
        rate = float(a.rate)
    closed = a.rate in (None, "half")
    if closed:
        for rnd in range(1, a.rounds + 1):
            b = run_bare(a, mix.items, f"r{rnd}")
            log(f"[round {rnd}/{a.rounds}] bare {fmt(b.get('msgs_per_s'))} msgs/s, EOD "
                f"{lat(b)} ms, CPU {fmt(b.get('cpu_ms_per_msg'), 3)} ms/msg, client "
                f"{fmt(b.get('client_cpu_ms_per_msg'), 3)} ms/msg {'; '.join(b['problems'])}")
            m = run_mailgate(a, mix, db, f"r{rnd}")
            fresh_db(db)
            log(f"[round {rnd}/{a.rounds}] mailgate intake {fmt(m.get('msgs_per_s'))} msgs/s, "
                f"backlog {m.get('backlog_at_load_end')}, drain {fmt(m.get('drain_s'), 2)} s, "
                f"processed {fmt(m.get('processed_msgs_per_s'))} msgs/s, CPU "
                f"{fmt(m.get('cpu_ms_per_msg'), 3)} ms/msg, EOD {lat(m)} ms, RSS "
                f"{fmt(m.get('peak_rss_mb'), 1)} MB; {(m.get('db') or {}).get('outcomes')} "
                f"acks {(m.get('db') or {}).get('acks_queued')} {'; '.join(m['problems'])}")
            results.append({"round": rnd, "bare": b, "mailgate": m})
    if a.rate == "half":
        sustained = median([r["mailgate"].get("processed_msgs_per_s") for r in results])
        rate = sustained / 2 if sustained else None
        if rate:
            log(f"open loop at half the sustained rate: {rate:.0f} msgs/s")
    if rate:
        for rnd in range(1, (a.rate_rounds or a.rounds) + 1):
            b = run_bare(a, mix.items, f"open{rnd}", rate)
            m = run_mailgate(a, mix, db, f"open{rnd}", rate)
            fresh_db(db)
            for side, d in (("bare", b), ("mailgate", m)):
                log(f"[open loop {rnd}] {side} at {rate:.0f}/s: achieved "
                    f"{fmt(d.get('msgs_per_s'))}, EOD {lat(d)} ms (max "
                    f"{fmt((d.get('eod_ms') or {}).get('max'), 1)}), lag p99 "
                    f"{fmt((d.get('lag_ms') or {}).get('p99'), 1)} ms, kept up "
                    f"{d.get('kept_up')}, drain {fmt(d.get('drain_s'), 2)} "
                    f"{'; '.join(d.get('problems', []))}")
            open_results.append({"round": rnd, "rate": rate, "bare": b, "mailgate": m})
    text, ok = rounds_table(results, open_results, a, st)
    versions = [r["mailgate"].get("version") for r in results + open_results]
    if len(set(versions)) > 1:
        ok = False
        text += ("\n\n**The gateway's code changed during this invocation** (commit+source "
                 "hash per mailgate start: " + ", ".join(f"{v}" for v in versions) +
                 "); compare only rows of one version.")
    elif versions:
        text += f"\n\ngateway version (commit+source hash) in every run: {versions[0]}"
    kinds = ", ".join(f"{k} {v:,}" for k, v in st["kinds"].items())
    print(f"# mixed load: {st['messages']:,} messages ({kinds}); {st['senders']:,} senders "
          f"(at most {st['max_per_sender']} messages, {st['max_requests_per_sender']} requests "
          f"each); {st['routes_expected']} keyword routes + {st['fallback_requests']:,} to the "
          f"fallback; HTML {st['html_share']:.0%}; sizes {st['bytes_min']:,}..{st['bytes_max']:,}"
          f" B (median {st['bytes_p50']:,}); {a.sessions} sessions, seed {a.seed}; "
          f"nproc {os.cpu_count()}; load {os.getloadavg()}")
    print(f"# mailgate loop {a.loop}, bare loop {a.bare_loop}; bare: "
          f"{' '.join(shlex.quote(str(x)) for x in bare_argv(a))}")
    print(text)
    path = Path(a.json) if a.json else a.work / "mixed-results.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "mix": st,
                                "rounds": results, "open_loop": open_results}, indent=1,
                               default=str))
    (a.work / "mixed-table.md").write_text(text + "\n")
    print(f"\nraw results: {path}; work dir: {a.work}")
    return 0 if ok else 1


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so every server started is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    argv = sys.argv[1:]
    mode = "rounds"
    if argv[:1] == ["soak"]:
        mode, argv = "soak", argv[1:]
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds (default 3; soak: measured runs per store, default 1)")
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per run (default 20000; soak: the measured load, 5000)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--senders", type=int, default=0,
                    help="distinct senders (default max(2000, messages/4))")
    ap.add_argument("--rate", default=None,
                    help="open loop: msgs/s, or 'half' (closed rounds first, then open-loop "
                         "rounds at half of mailgate's median processed rate)")
    ap.add_argument("--rate-rounds", type=int, default=0,
                    help="open-loop rounds (default: --rounds)")
    ap.add_argument("--stored", default="10000,100000,1000000",
                    help="soak: stored messages, comma list")
    ap.add_argument("--deliver-max", type=int, default=100000,
                    help="soak: stores up to this size are delivered through mailgate; larger "
                         "ones are grown by SQL copies of the largest delivered one")
    ap.add_argument("--bases", default=None,
                    help="soak: keep delivered bases in this dir, and reuse them next time")
    ap.add_argument("--port", type=int, default=18130, help="mailgate's LMTP port")
    ap.add_argument("--bare-port", type=int, default=18131)
    ap.add_argument("--bare-loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--bare-python", default=None,
                    help="python with aiosmtpd for the bare sink (default: the repo's .venv)")
    ap.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                    help="mailgate's loop (auto: uvloop when installed, as in production)")
    ap.add_argument("--time-cap", type=float, default=600.0, help="seconds per load")
    ap.add_argument("--drain-cap", type=float, default=300.0)
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--stop-timeout", type=float, default=60.0)
    ap.add_argument("--json", help="raw results (default <work>/mixed-results.json)")
    a = ap.parse_args(argv)
    if a.rounds is None:
        a.rounds = 1 if mode == "soak" else 3
    if a.messages is None:
        a.messages = 5000 if mode == "soak" else 20000
    if a.bases:
        a.bases = Path(a.bases).resolve()
        a.bases.mkdir(parents=True, exist_ok=True)
    if not MAILGATE.exists():
        die(f"no {MAILGATE}: create the repo's venv and pip install -e . first")
    a.yardstick = Path(os.environ.get("LMTP_BENCH_YARDSTICK") or REPO.parent / "shared" / "bench")
    if not (a.yardstick / "lmtp_models.py").is_file():
        die(f"no yardstick at {a.yardstick} (set LMTP_BENCH_YARDSTICK)")
    a.bare_python = a.bare_python or str(REPO / ".venv" / "bin" / "python")
    p = subprocess.run([a.bare_python, "-c", "import aiosmtpd; print(aiosmtpd.__version__)"],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        die(f"{a.bare_python} cannot import aiosmtpd (--bare-python)")
    a.aiosmtpd = p.stdout.strip()
    if os.environ.get("MIXED_BENCH_DIR"):
        a.work = Path(os.environ["MIXED_BENCH_DIR"]).resolve()
        a.work.mkdir(parents=True, exist_ok=True)
    else:
        a.work = Path(tempfile.mkdtemp(prefix="mailgate-mixed."))
    a.runs = a.work / "runs"
    a.runs.mkdir(exist_ok=True)
    (a.work / "db").mkdir(exist_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(a.work)], capture_output=True,
                        text=True, check=False).stdout.strip()
    if fs == "tmpfs":
        log(f"warning: {a.work} is on tmpfs: fsync is free there, the figures mean little")
    for port in (a.port, a.bare_port):
        if not port_free(port):
            die(f"port {port} is busy on 127.0.0.1 (--port / --bare-port)")
    log(f"work dir {a.work}; mailgate on 127.0.0.1:{a.port}, bare on {a.bare_port} "
        f"(aiosmtpd {a.aiosmtpd}); load {os.getloadavg()}")
    return soak(a) if mode == "soak" else rounds(a)


if __name__ == "__main__":
    sys.exit(main())
