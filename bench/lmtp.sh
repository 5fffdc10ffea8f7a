#!/usr/bin/env bash
# mailgate on the shared LMTP yardstick: sink, bare and mailgate, round by round.
#
#   bench/lmtp.sh [yardstick options]     e.g. --rounds 3 --rcpts 1,5 --messages 20000
#   bench/lmtp.sh profile [--seconds S] [--rcpts R] [--loop auto|asyncio]
#                         [--server mailgate|bare|bare-uvloop]
#
# See bench/README.md. What the default run does:
#  1. copies the yardstick (../shared/bench beside this checkout) into a fresh temp dir
#     and runs its setup.sh there (a venv with aiosmtpd, uvloop, py-spy; Postfix's
#     smtp-source/smtp-sink if missing, which needs root);
#  2. writes a mailgate config from bench/lmtp.toml.in (LMTP on --port, HTTP off,
#     one connector owning every address smtp-source sends to);
#  3. runs the yardstick with --targets sink,bare,mailgate; mailgate is this repo's
#     .venv/bin/mailgate on a fresh database for every start;
#  4. checks, for every mailgate run, that the rows in `emails` equal the messages
#     smtp-source sent, and that each row carries all the recipients;
#  5. prints the path of the table (yardstick table + mailgate/bare + row check).
#
# Environment:
#   LMTP_BENCH_YARDSTICK  the yardstick to copy (default: <repo>/../shared/bench)
#   LMTP_BENCH_DIR        reuse this work dir (keeps the prepared venv between runs)
#   LMTP_BENCH_PORT       mailgate's LMTP port (default 18124; --port works too)
set -euo pipefail

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")
REPO=$(cd "$HERE/.." && pwd)
PY="$REPO/.venv/bin/python"
MAILGATE="$REPO/.venv/bin/mailgate"

die() { echo "lmtp.sh: $*" >&2; exit 2; }

# -- database row counts ---------------------------------------------------------------

# One ledger line for the database of start number $1: start, emails rows, messages
# rows, fewest and most recipients on a row, smallest and largest stored message.
count_db() {
    "$PY" - "$1" "$2" <<'EOF'
import os, sqlite3, sys
start, db = sys.argv[1], sys.argv[2]
if not os.path.exists(db):
    print(f"{start}\tmissing")
    sys.exit()
try:
    con = sqlite3.connect(db)
    emails, lo, hi = con.execute(
        "SELECT COUNT(*), MIN(json_array_length(rcpt_to)), MAX(json_array_length(rcpt_to))"
        " FROM emails").fetchone()
    messages, small, big = con.execute(
        "SELECT COUNT(*), MIN(size), MAX(size) FROM messages").fetchone()
    con.close()
    print("\t".join(str(v or 0) for v in (start, emails, messages, lo, hi, small, big)))
except sqlite3.Error as exc:
    print(f"{start}\terror: {exc}")
EOF
}

# Count the database the previous start left behind (if any) into the ledger.
ledger_previous() {
    local db=$1 ledger=$2 starts=0
    [ -f "$ledger.starts" ] && starts=$(cat "$ledger.starts")
    if [ "$starts" -gt 0 ] && ! grep -q "^$starts"$'\t' "$ledger" 2>/dev/null; then
        count_db "$starts" "$db" >> "$ledger"
    fi
    echo "$starts"
}

# -- the target command the yardstick starts (internal) ----------------------------------

if [ "${1:-}" = "_serve" ]; then
    # _serve CONFIG DB LEDGER: record the last start's rows, then a fresh database.
    cfg=$2 db=$3 ledger=$4
    starts=$(ledger_previous "$db" "$ledger")
    echo $((starts + 1)) > "$ledger.starts"
    rm -f "$db" "$db-wal" "$db-shm" "$db-journal"
    exec "$MAILGATE" serve --config "$cfg"
fi

# -- options ----------------------------------------------------------------------------

MODE=run
if [ "${1:-}" = "profile" ]; then
    MODE=profile
    shift
fi
PORT=${LMTP_BENCH_PORT:-18124}
RCPTS=1,5
NAME=mailgate
JSON=
SECONDS_=8
LOOP=auto
SERVER=mailgate
SESSIONS=20
args=("$@")
pass=()     # what goes on to the yardstick: all but this script's own options
i=0
while [ $i -lt ${#args[@]} ]; do
    a=${args[$i]}
    v=${args[$((i + 1))]:-}
    case "$a" in
        --port) PORT=$v ;;       --port=*) PORT=${a#*=} ;;
        --rcpts) RCPTS=$v ;;     --rcpts=*) RCPTS=${a#*=} ;;
        --name) NAME=$v ;;       --name=*) NAME=${a#*=} ;;
        --json) JSON=$v ;;       --json=*) JSON=${a#*=} ;;
        --sessions) SESSIONS=$v ;; --sessions=*) SESSIONS=${a#*=} ;;
        --seconds) SECONDS_=$v; i=$((i + 2)); continue ;;
        --loop) LOOP=$v; i=$((i + 2)); continue ;;
        --server) SERVER=$v; i=$((i + 2)); continue ;;
        -h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    esac
    pass+=("$a")
    i=$((i + 1))
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number"
[[ "$RCPTS" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--rcpts must look like 1,5"
[ -x "$MAILGATE" ] || die "no $MAILGATE: create the repo's venv and pip install -e . first"

# -- work dir, yardstick copy, setup ----------------------------------------------------

YARD_SRC=${LMTP_BENCH_YARDSTICK:-$REPO/../shared/bench}
[ -f "$YARD_SRC/run.py" ] || die "no yardstick at $YARD_SRC (set LMTP_BENCH_YARDSTICK)"
YARD_SRC=$(cd "$YARD_SRC" && pwd)
if [ -n "${LMTP_BENCH_DIR:-}" ]; then
    mkdir -p "$LMTP_BENCH_DIR"
    WORK=$(cd "$LMTP_BENCH_DIR" && pwd)
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/mailgate-bench.XXXXXX")
fi
Y="$WORK/yardstick"
mkdir -p "$Y"
# The yardstick's files are read-only; refresh them, keep a prepared .venv.
(cd "$YARD_SRC" && find . -path ./.venv -prune -o -path ./.work -prune -o -type f -print) |
    while read -r f; do
        mkdir -p "$Y/$(dirname "$f")"
        rm -f "$Y/$f"
        cp "$YARD_SRC/$f" "$Y/$f"
        chmod u+w "$Y/$f"
    done
if [ ! -x "$Y/.venv/bin/python" ] || ! "$Y/.venv/bin/python" -c 'import aiosmtpd' 2>/dev/null ||
        [ ! -x "$Y/.venv/bin/py-spy" ] ||
        { ! command -v smtp-source >/dev/null && [ ! -x /usr/sbin/smtp-source ]; }; then
    echo "lmtp.sh: preparing the yardstick in $Y (setup.sh)" >&2
    "$Y/setup.sh" >&2
fi
if [ "$(stat -f -c %T "$WORK")" = tmpfs ]; then
    echo "lmtp.sh: warning: $WORK is on tmpfs, so fsync costs nothing here;" \
         "set TMPDIR to a real disk for figures that mean something" >&2
fi

# -- config -----------------------------------------------------------------------------

mkdir -p "$WORK/db"
DB="$WORK/db/mailgate.db"
CFG="$WORK/mailgate.toml"
LEDGER="$WORK/rows.tsv"
rm -f "$LEDGER" "$LEDGER.starts"
MAXR=$(tr ',' '\n' <<<"$RCPTS" | sort -n | tail -1)
[ "$MAXR" -ge 5 ] || MAXR=5
# smtp-source: rcpt@, 2rcpt@ .. Nrcpt@; the yardstick's loadgen.py: 0rcpt@ .. (N-1)rcpt@
ALIASES=$(for ((n = 0; n <= MAXR; n++)); do printf '"%drcpt@bench.invalid"\n' "$n"; done |
          paste -sd, - | sed 's/,/, /g')
sed -e "s|@PORT@|$PORT|" -e "s|@DB@|$DB|" -e "s|@ALIASES@|$ALIASES|" \
    "$HERE/lmtp.toml.in" > "$CFG"
"$MAILGATE" check --config "$CFG" >/dev/null || die "generated config $CFG is not valid"
"$PY" - "$PORT" <<'EOF' || die "port $PORT is busy on 127.0.0.1: pick another with --port"
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
EOF
TARGET=$(printf '%q ' "$SELF" _serve "$CFG" "$DB" "$LEDGER")
case "$LOOP" in
    auto) ;;
    uvloop|asyncio) TARGET="MAILGATE_GATEWAY_EVENT_LOOP=$LOOP $TARGET" ;;
    *) die "--loop must be auto, uvloop or asyncio" ;;
esac

# -- profile mode: py-spy on a running server under smtp-source load ---------------------

if [ "$MODE" = profile ]; then
    R=${RCPTS%%,*}
    case "$SERVER" in
        mailgate) CMD=$TARGET ;;
        bare) CMD="$(printf '%q ' "$Y/.venv/bin/python" "$Y/lmtp_models.py") --model bare --loop asyncio --port $PORT" ;;
        bare-uvloop) CMD="$(printf '%q ' "$Y/.venv/bin/python" "$Y/lmtp_models.py") --model bare --loop uvloop --port $PORT" ;;
        *) die "--server must be mailgate, bare or bare-uvloop" ;;
    esac
    [ "$SERVER" = mailgate ] || LOOP=$([ "$SERVER" = bare ] && echo asyncio || echo uvloop)
    LABEL=$SERVER-$LOOP-r$R
    LOG="$WORK/prof-$LABEL.log"
    setsid bash -c "$CMD" >"$LOG" 2>&1 </dev/null &
    PID=$!
    stop_server() { kill -TERM -- "-$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
    trap stop_server EXIT
    "$PY" - "$PORT" <<'EOF' || { cat "$LOG" >&2; die "$SERVER did not greet on port $PORT"; }
import socket, sys, time
end = time.monotonic() + 20
while time.monotonic() < end:
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
            if s.recv(64).startswith(b"220"):
                sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
EOF
    RAW="$WORK/prof-$LABEL.txt"
    # smtp-source sends far more than it can finish in the sampling window; it is
    # killed after the window (the bound is the window plus one second of warm-up).
    /usr/sbin/smtp-source -L -d -s "$SESSIONS" -m 1000000 -l 5120 -r "$R" \
        -f sender@bench.invalid -t rcpt@bench.invalid -S bench -M bench.invalid \
        "127.0.0.1:$PORT" >/dev/null 2>&1 &
    SRC=$!
    sleep 1
    # --native: on uvloop the event loop is C, invisible to a Python-only sample.
    timeout $((SECONDS_ + 30)) "$Y/.venv/bin/py-spy" record --native -d "$SECONDS_" -r 250 \
        -f raw -o "$RAW" -p "$PID" >/dev/null 2>&1 ||
        echo "lmtp.sh: py-spy failed (it needs root or ptrace rights)" >&2
    kill "$SRC" 2>/dev/null || true
    wait "$SRC" 2>/dev/null || true
    stop_server
    trap - EXIT
    SUMMARY="$WORK/prof-$LABEL.summary.txt"
    {
        echo "# $SERVER profile: py-spy --native ${SECONDS_}s @ 250 Hz, loop=$LOOP," \
             "smtp-source -L -d -s $SESSIONS -l 5120 -r $R"
        "$PY" - "$RAW" <<'EOF'
import collections, re, sys

# A sample is a wait, not CPU, when its thread is blocked: the loop in epoll, the
# sqlite thread on its job queue, any thread waiting for the GIL or a lock.
# (py-spy cannot tell on this VM; see the yardstick's RESULTS.md.)
WAIT_LEAF = ("epoll_wait", "epoll_pwait", "EpollSelector.select")
WAIT_ANY = ("_queue_SimpleQueue_get", "SimpleQueue.get", "pthread_cond_timedwait",
            "pthread_cond_wait", "PyThread_acquire_lock_timed", "Condition.wait", "Event.wait")
# Categories, first match wins; the writer thread is everything under a Thread.
CATS = [
    ("sqlite writer thread: executemany + COMMIT (CPU)", ("Thread._bootstrap",)),
    ("replies: push -> transport.write (one send() per reply)", ("push (",)),
    ("DATA read (mailgate read_data / aiosmtpd line loop)", ("read_data", "SMTP.smtp_DATA")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("intake + journal on the loop (accept, writer task, store calls, futures)",
     ("Intake.", "SqliteStore", "storage/", "handle_DATA", "_deliver")),
    ("MAIL/RCPT (address parsing, directory lookup)", ("smtp_MAIL", "smtp_RCPT")),
    ("aiosmtpd command loop (readline, parse, dispatch, logging)", ("aiosmtpd/",)),
    ("event loop, socket reads, callbacks (uvloop/libuv or asyncio)", ("",)),
]


def short(frame):
    m = re.match(r"(.*) \((.*?):(\d+)\)$", frame)
    if not m:
        return frame
    path = m.group(2).split("site-packages/")[-1].split("python3.11/")[-1]
    return f"{m.group(1)} ({path}:{m.group(3)})"


def func(frame):
    return re.sub(r":\d+\)$", ")", short(frame))


stacks = []
with open(sys.argv[1]) as f:
    for line in f:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if stack and n.isdigit():
            stacks.append((stack.split(";"), int(n)))
total_all = sum(n for _, n in stacks) or 1
busy, waits, fsync = [], 0, 0
for fr, n in stacks:
    text = ";".join(fr)
    if fr[-1].startswith(WAIT_LEAF) or any(w in text for w in WAIT_ANY):
        waits += n
    elif "fdatasync" in text or "fsync" in fr[-1]:
        fsync += n
    else:
        busy.append((fr, n))
total = sum(n for _, n in busy) or 1
print(f"samples {total_all}: waits (epoll, queue, GIL/lock) {100 * waits / total_all:.1f}%, "
      f"writer blocked in fdatasync {100 * fsync / total_all:.1f}%, "
      f"on-CPU {100 * total / total_all:.1f}% ({total}); shares below are of on-CPU samples")
cat = collections.Counter()
for fr, n in busy:
    text = ";".join(fr)
    for label, needles in CATS:
        if any(x in text for x in needles):
            cat[label] += n
            break
print("\nby category:")
for label, n in cat.most_common():
    print(f"  {100 * n / total:5.1f}%  {label}")
leaf = collections.Counter()
incl = collections.Counter()
for fr, n in busy:
    leaf[short(fr[-1])] += n
    for x in set(func(f) for f in fr):
        incl[x] += n
print("\ntop 25 leaf frames (self):")
for x, n in leaf.most_common(25):
    print(f"  {100 * n / total:5.1f}%  {x}")
print("\ntop 40 Python functions (inclusive):")
shown = 0
for x, n in incl.most_common():
    if ".py)" not in x or x.startswith(("Thread.", "main", "cmd_serve", "<module>", "Runner.",
                                         "BaseEventLoop.", "Handle._run")):
        continue
    print(f"  {100 * n / total:5.1f}%  {x}")
    shown += 1
    if shown == 40:
        break
EOF
    } > "$SUMMARY"
    cat "$SUMMARY"
    echo
    echo "raw stacks: $RAW"
    echo "summary:    $SUMMARY"
    exit 0
fi

# -- run --------------------------------------------------------------------------------

JSON=${JSON:-$WORK/results.json}
RUN_OUT="$WORK/run.out"
echo "lmtp.sh: work dir $WORK; mailgate on 127.0.0.1:$PORT; config $CFG" >&2
set +e
(cd "$Y" && ./run.sh --targets "sink,bare,$NAME" --name "$NAME" --port "$PORT" \
    --target "$TARGET" --json "$JSON" ${pass[@]+"${pass[@]}"}) | tee "$RUN_OUT"
rc=${PIPESTATUS[0]}
set -e
starts=$(ledger_previous "$DB" "$LEDGER")
rm -f "$DB" "$DB-wal" "$DB-shm"

TABLE="$WORK/table.md"
set +e
"$PY" - "$JSON" "$LEDGER" "$NAME" "$SESSIONS" "$RUN_OUT" > "$TABLE" <<'EOF'
import json, statistics, sys

path, ledger_path, name, sessions, run_out = sys.argv[1:6]
sessions = int(sessions)
data = json.load(open(path))
out = open(run_out).read().strip()
print(out[out.find("smtp-source"):] if "smtp-source" in out else out)

res = [r for r in data["results"] if r.get("ok")]
rcpts = data["meta"]["rcpts"]
for base in ("bare", "bare-uvloop"):
    if not any(r["target"] == base for r in res):
        continue
    print(f"\n{name} against {base} (paired: the same round and recipient count):\n")
    print(f"| rcpt/msg | {base} msgs/s | {name} msgs/s | {name}/{base} (paired median) "
          f"| min | max | ratio of medians | {base} CPU ms/msg | {name} CPU ms/msg |")
    print("|" + "---|" * 9)
    for rc in rcpts:
        def by_round(t):
            return {r["round"]: r for r in res if r["target"] == t and r["rcpts"] == rc}
        b, m = by_round(base), by_round(name)
        pairs = [m[k]["msgs_per_s"] / b[k]["msgs_per_s"] for k in m if k in b]
        if not pairs:
            print(f"| {rc} | - | - | - | - | - | - | - | - |")
            continue
        med = lambda d, k: statistics.median(r[k] for r in d.values() if r.get(k) is not None)
        print(f"| {rc} | {med(b, 'msgs_per_s'):,.0f} | {med(m, 'msgs_per_s'):,.0f} | "
              f"{statistics.median(pairs):.3f} | {min(pairs):.3f} | {max(pairs):.3f} | "
              f"{med(m, 'msgs_per_s') / med(b, 'msgs_per_s'):.3f} | "
              f"{med(b, 'server_cpu_ms_per_msg'):.3f} | {med(m, 'server_cpu_ms_per_msg'):.3f} |")

# Starts of the target, in order: throughput runs, then latency runs (if any).
runs = [("throughput", r) for r in data["results"] if r["target"] == name]
runs += [("latency", r) for r in data.get("latency", []) if r["target"] == name]
runs = [(kind, r) for kind, r in runs if "already in use" not in (r.get("error") or "")]
ledger = {}
for line in open(ledger_path):
    parts = line.rstrip("\n").split("\t")
    ledger[int(parts[0])] = parts[1:]
print(f"\nrows stored by {name} (fresh database per start; `emails` rows must equal the "
      "messages smtp-source completed, each row with every recipient):\n")
print("| start | run | round | rcpt/msg | messages sent | emails rows | messages rows "
      "| rcpts per row | bytes per message | check |")
print("|" + "---|" * 10)
bad = 0
for i, (kind, r) in enumerate(runs, start=1):
    got = ledger.get(i)
    sent = r.get("messages")
    loose = r.get("capped") or kind == "latency"
    if not got or len(got) < 6:
        verdict, cells = "NO DATA", [(got or ["none"])[0], "-", "-", "-"]
    else:
        emails, msgs, lo, hi, small, big = map(int, got)
        cells = [f"{emails:,}", f"{msgs:,}", f"{lo}" if lo == hi else f"{lo}-{hi}",
                 f"{small:,}" if small == big else f"{small:,}-{big:,}"]
        fits = (abs(emails - sent) <= sessions) if loose else emails == sent
        fits = fits and emails == msgs and (emails == 0 or lo == hi == r["rcpts"])
        verdict = ("ok" if emails == sent else "ok (±sessions)") if fits else "MISMATCH"
    failed = not r.get("ok") if kind == "throughput" else r.get("rc") != 0
    if failed:
        verdict = "RUN FAILED: " + str(r.get("error") or (r.get("errors") or ["?"])[0])[:80]
    bad += not verdict.startswith("ok")
    sent_s = f"{sent:,}" if isinstance(sent, int) else "-"
    print(f"| {i} | {kind} | {r['round']} | {r['rcpts']} | {sent_s} | " + " | ".join(cells)
          + f" | {verdict} |")
if len(ledger) != len(runs):
    print(f"\nwarning: {len(ledger)} database(s) counted for {len(runs)} run(s)")
    bad += 1
print(f"\nrow check: {'all ' + str(len(runs)) + ' runs ok' if not bad else str(bad) + ' problem(s)'}")
sys.exit(1 if bad else 0)
EOF
check=$?
set -e
echo
awk '/ against bare|^rows stored/ { on = 1 } on' "$TABLE"
echo
echo "table:       $TABLE"
echo "raw results: $JSON"
echo "mailgate log of the last start: $Y/.work/$NAME.log"
[ $rc -eq 0 ] && [ $check -eq 0 ]
