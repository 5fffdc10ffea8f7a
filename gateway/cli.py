"""The ``mailgate`` command: ``serve``, ``check``, ``explain`` and ``directory`` (SPEC §5.1).

Library code never exits the process; only :func:`main` turns outcomes into
exit codes (0 ok, 1 runtime failure, 2 configuration problems).
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys

from gateway.config import ConfigError, Settings, load
from storage.base import StoreError

log = logging.getLogger("mailgate")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every command at INFO: far too much for a busy gateway.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _load(path: str | None) -> Settings | None:
    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} configuration problem(s); nothing was started.",
              file=sys.stderr)
        return None


def _new_loop(choice: str) -> asyncio.AbstractEventLoop:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
            return uvloop.new_event_loop()
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("[gateway] event_loop = \"uvloop\" but uvloop is not "
                                 "installed: pip install uvloop")
    return asyncio.new_event_loop()


async def _serve(settings: Settings) -> int:
    from gateway.app import Gateway

    try:
        gateway = Gateway(settings)
    except ValueError as exc:   # a setting the gateway cannot work with (a DKIM key, ...)
        log.error("cannot start: %s", exc)
        return 2
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def on_signal(signame: str) -> None:
        if not stopping:
            log.info("%s received: draining", signame)
            stopping.append(loop.create_task(gateway.stop()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    reloading: set[asyncio.Task] = set()

    async def reload() -> None:
        """SIGHUP: re-read the directory from the database (after `mailgate directory
        import`): RCPT checks, routes and pollers follow it, with no restart."""
        try:
            await gateway.reload_directory()
        except Exception as exc:  # a reload must never take the gateway down
            log.error("SIGHUP: directory reload failed: %s", exc)
        else:
            log.info("SIGHUP: directory reloaded: %d connector(s), %d poller(s) running",
                     len(gateway.directory.connectors), len(gateway.pollers.running))

    def on_reload() -> None:
        if stopping or not gateway.pollers.started:
            return
        task = loop.create_task(reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, on_reload)
    from gateway.app import StartupError
    try:
        await gateway.start()
    except (OSError, StartupError) as exc:
        log.error("cannot start: %s", exc)
        await gateway.stop()
        return 1
    await gateway.wait_stopped()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _configure_logging(args.verbose)
    settings = _load(args.config)
    if settings is None:
        return 2
    loop = _new_loop(settings.gateway.event_loop)
    try:
        return loop.run_until_complete(_serve(settings))
    finally:
        loop.close()


def cmd_check(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    print(f"{settings.source}: ok")
    return 0


async def _explain(settings: Settings, raw: bytes, connector: str) -> int:
    from gateway.app import Gateway

    gateway = Gateway(settings)
    await gateway.open_offline()
    try:
        if connector not in gateway.directory.connectors:
            known = ", ".join(sorted(gateway.directory.connectors)) or "none"
            print(f"no connector {connector!r} in the directory (known: {known})",
                  file=sys.stderr)
            return 2
        verdict, trace = await gateway.explain(raw, connector)
    finally:
        await gateway.close_offline()
    for line in trace:
        matched = f" [{', '.join(line['matched'])}]" if line["matched"] else ""
        print(f"{line['stage']:<15} {line['verdict']:<12} {line['duration_ms']:8.3f} ms"
              f"  {line['reason']}{matched}")
    targets = ", ".join(f"{t['ref']} ({t['action']})" for t in verdict.targets)
    print(f"outcome: {verdict.outcome}" + (f" ({verdict.reason})" if verdict.reason else "")
          + (f" -> {targets}" if targets else ""))
    print("dry run: nothing was stored")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    try:
        with open(args.message, "rb") as f:
            raw = f.read()
    except OSError as exc:
        print(f"{args.message}: {exc.strerror}", file=sys.stderr)
        return 2
    if b"\r\n" not in raw:
        raw = raw.replace(b"\n", b"\r\n")   # a .eml saved with Unix line ends
    return asyncio.run(_explain(settings, raw, args.connector))


async def _directory(settings: Settings, action: str, text: str, path: str) -> list[str]:
    """Export to ``path`` (``-``: stdout), or import ``text``; the import's problems."""
    from gateway.app import Gateway
    from gateway.directory import transfer

    gateway = Gateway(settings)
    await gateway.open_offline()
    try:
        if action == "import":
            return await transfer.import_directory(gateway.directory_ops, text, path,
                                                   actor=_cli_actor())
        text = await transfer.export_directory(gateway.directory_ops)
    finally:
        await gateway.close_offline()
    if path == "-":
        sys.stdout.write(text)
    else:       # a reader never sees half a file
        with open(f"{path}.tmp", "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(f"{path}.tmp", path)
        print(f"{path}: exported the directory of {settings.sqlite_path}", file=sys.stderr)
    return []


def _cli_actor() -> str:
    """R-C5 "who" for a change made from the command line: the OS user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def cmd_directory(args: argparse.Namespace) -> int:
    """``directory export FILE`` / ``directory import FILE`` (``-``: stdout / stdin).
    A file with problems is refused before the store is even opened."""
    from gateway.directory.file import check_directory

    settings = _load(args.config)
    if settings is None:
        return 2
    text, problems = "", []
    if args.action == "import":
        try:
            if args.file == "-":
                text = sys.stdin.read()
            else:
                with open(args.file, encoding="utf-8") as f:
                    text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{args.file}: cannot read: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return 2
        wanted, problems = check_directory(text, args.file)
    try:
        problems = problems or asyncio.run(_directory(settings, args.action, text, args.file))
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"{settings.sqlite_path}: cannot use the database: {exc}", file=sys.stderr)
        return 1
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print(f"{len(problems)} problem(s); nothing was imported.", file=sys.stderr)
        return 2
    if args.action == "import":
        print(f"{args.file}: imported {len(wanted.connectors)} connector(s), "
              f"{len(wanted.routes)} route(s), {len(wanted.contacts)} contact(s): the directory "
              "is now exactly this file (a running `mailgate serve` on this database uses it "
              "after SIGHUP: systemctl reload mailgate, or kill -HUP <pid>)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailgate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (embedded default without --config)")
    serve.add_argument("--config", help="TOML process config (SPEC 5.2)")
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.set_defaults(func=cmd_serve)
    check = sub.add_parser("check", help="validate the config; exit non-zero on any problem")
    check.add_argument("--config", help="TOML process config (SPEC 5.2)")
    check.set_defaults(func=cmd_check)
    explain = sub.add_parser("explain", help="dry-run a message through the pipeline and "
                                             "print the decision trace (R-B6)")
    explain.add_argument("message", help="the message file (.eml)")
    explain.add_argument("--connector", required=True, help="the receiving connector's name")
    explain.add_argument("--config", help="TOML process config (SPEC 5.2)")
    explain.set_defaults(func=cmd_explain)
    directory = sub.add_parser("directory", help="connectors, routes and contacts as a "
                                                 "reviewable TOML file")
    directory.add_argument("action", choices=("export", "import"),
                           help="export: write the file; import: check it all, then make the "
                                "directory exactly the file (all or nothing)")
    directory.add_argument("file", metavar="FILE.toml", help="the file, or - for stdout/stdin")
    directory.add_argument("--config", help="TOML process config (SPEC 5.2)")
    directory.set_defaults(func=cmd_directory)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
