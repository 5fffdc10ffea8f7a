"""Gateway: builds every part from settings; start, run, drain, stop.

``await Gateway(settings).start()`` inside any running event loop (the host's,
for embedding: SPEC §5.4), ``await gateway.stop()`` to drain. The CLI's
``serve`` is a thin wrapper that adds signal handling.

Drain order (SIGTERM, SPEC §5.1): stop accepting connections; let every
session inside DATA finish its commit and replies; say ``421 4.3.2`` to idle
sessions (the MTA retries them); stop HTTP; let the writer commit what is
queued; close the store. Nothing acknowledged is lost, nothing half-received
is acknowledged.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from gateway.api.server import build_app
from gateway.bootstrap import seed_directory
from gateway.config import Settings, parse_listen
from gateway.directory.addresses import AddressBook
from gateway.directory.ops import FALLBACK, DirectoryOps
from gateway.directory.snapshot import Directory
from gateway.events.dispatcher import EventDispatcher
from gateway.events.webhooks import WebhookSender
from gateway.intake import Intake
from gateway.listeners import Listener, listen
from gateway.mail_classes import CLASSIFIER, read_classifier
from gateway.model import Connector, ConnectorEntry, Route, WorkItem
from gateway.outbound.delivery import Delivery
from gateway.outbound.dkim import DkimSigner
from gateway.pipeline.context import PipelineSettings
from gateway.pipeline.runner import Runner
from gateway.polling.supervisor import Pollers
from gateway.tokens import Tokens
from gateway.version import VERSION
from gateway.workitems.ops import WorkItemOps
from metrics import Metrics
from storage import open_store

log = logging.getLogger("mailgate")

HOST = "host"       # R-C5's actor for a change a host makes through the Python API


class StartupError(Exception):
    """A setting that cannot work with the directory as it is; the process must not start."""


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = Metrics(VERSION)
        self.store = open_store(settings.storage.url, batch_max=settings.storage.commit_batch_max,
                                on_commit=self.metrics.observe_commit,
                                on_write=self._wake_events)
        self.events = EventDispatcher(self.store)
        self.webhooks = [WebhookSender(self.store, hook) for hook in settings.webhooks]
        self.delivery: Delivery | None = None
        if settings.outbound.enabled:
            signer = DkimSigner(settings.outbound.dkim).sign if settings.outbound.dkim else None
            self.delivery = Delivery(self.store, settings.outbound, signer=signer,
                                     on_result=self.metrics.observe_outbound)
        for sender in self.webhooks:
            self.events.subscribe(sender.wake)
        self.directory = Directory()
        self.intake = Intake(self.store, lambda: self.directory.book,
                             on_received=self._count_received, on_journaled=self._wake_pipeline,
                             backlog_high_water=settings.storage.backlog_high_water,
                             on_throttle=self.metrics.observe_throttle,
                             on_refused=self.metrics.observe_throttled_transaction)
        self.pipeline_settings = PipelineSettings(
            matching_mode=settings.matching.mode,
            hide_plus_in_from=settings.matching.hide_plus_in_from,
            ref_requires_participant=settings.matching.ref_requires_participant,
            trusted_authserv_ids=frozenset(
                a.lower() for a in settings.matching.trusted_authserv_ids),
            autogen_extended=settings.autogen.extended,
            autogen_disabled=frozenset(settings.autogen.disabled),
            message_id_domain=settings.gateway.message_id_domain,
            dedup_window_days=settings.dedup.window_days,
            ack_budget_per_day=settings.outbound.ack_budget_per_day,
            sender_budget=settings.loops.sender_budget,
            sender_window=settings.loops.sender_window_minutes * 60.0,
            reopen_budget=settings.loops.reopen_budget,
            reopen_window=settings.loops.reopen_window_hours * 3600.0,
            classifier=(read_classifier(settings.autogen.classes_file)
                        if settings.autogen.classes_file else CLASSIFIER))
        self.pipeline = Runner(self.store, lambda: self.directory, lambda: self.pipeline_settings,
                               observer=self.metrics.pipeline_observer())
        self.workitems = WorkItemOps(self.store)
        # Connectors, routes and contacts with every check and history line (R-C*, R-R*)
        self.directory_ops = DirectoryOps(self.store, self.reload_directory)
        self.pollers = Pollers(self.store, self.intake.accept_polled,
                               observe=self.metrics.observe_poll,
                               forget=self.metrics.forget_poller,
                               max_size=settings.lmtp.max_message_size,
                               paused=self.intake.throttled)
        self.listeners: dict[str, Listener] = {}
        self.http_runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.admin_token = ""
        self.draining = False
        self._stopped = asyncio.Event()
        self._received_children: dict[tuple[str, str], tuple] = {}

    # -- start -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self.store.open()
        await self._load_runtime_settings()
        await self.events.start()
        for sender in self.webhooks:
            await sender.start()
        await seed_directory(self.directory_ops, s)
        await self.reload_directory()
        self._check_unmonitored_address()
        await self.intake.start()           # a restart over a full journal starts throttled
        await self.pipeline.start()
        if self.delivery is not None:
            self.delivery.start()
        self.pollers.started = True
        await self._sync_pollers()
        for protocol in ("lmtp", "smtp"):
            section = getattr(s, protocol)
            if section.enabled:
                self.listeners[protocol] = await listen(protocol, section, self.intake,
                                                        self.metrics,
                                                        server_name=s.gateway.server_name)
        if s.http.enabled:
            await self._start_http()
        self.metrics.ready.set(1)
        self._log_startup()

    def _check_unmonitored_address(self) -> None:
        """R-O1: without the default gateway, system mail needs an outgoing connector."""
        outbound = self.settings.outbound
        if not outbound.enabled or outbound.default_gateway.enabled:
            return
        owner = self.directory.owner(outbound.unmonitored_address)
        connector = self.directory.connectors.get(owner) if owner else None
        if connector is None or connector.direction not in ("outgoing", "both") \
                or not connector.smtp_host:
            raise StartupError(
                f"R-O1: [outbound] unmonitored_address {outbound.unmonitored_address!r} must "
                "belong to an enabled outgoing connector with an smtp_host when "
                "[outbound.default_gateway] enabled = false")

    async def open_offline(self) -> None:
        """The store and the directory only: for ``mailgate explain`` beside a running gateway."""
        await self.store.open()
        await self.reload_directory()
        await self._load_runtime_settings(record=False)     # matching mode, R-B1 tokens

    async def close_offline(self) -> None:
        await self.store.close()

    async def reload_directory(self) -> None:
        """Rebuild the snapshot intake and the pipeline read (after any directory change)."""
        self.directory = await self.directory_ops.snapshot()
        if self.pollers.started:
            await self._sync_pollers()

    async def _sync_pollers(self) -> None:
        """Pollers follow the directory: started, restarted or stopped per connector."""
        await self.pollers.sync(self.directory_ops.connectors)

    @property
    def addresses(self) -> AddressBook:
        return self.directory.book

    async def _start_http(self) -> None:
        self.admin_token = self._admin_token()
        host, port = parse_listen(self.settings.http.listen)
        self.http_runner = web.AppRunner(build_app(self), access_log=None)
        await self.http_runner.setup()
        site = web.TCPSite(self.http_runner, host, port, reuse_address=True)
        await site.start()
        self.http_port = self.http_runner.addresses[0][1]

    def _admin_token(self) -> str:
        """The configured token, or one generated into a 0600 file beside the database."""
        if self.settings.http.admin_token:
            return self.settings.http.admin_token
        path = Path(self.settings.sqlite_path or ".").resolve().parent / "mailgate.admin-token"
        if path.exists():
            token = path.read_text().strip()
            if not token:       # an empty token would let anyone in (the API refuses it)
                raise RuntimeError(f"{path} is empty: delete it to have a new admin token "
                                   "generated, or set [http] admin_token_file")
            return token
        token = secrets.token_urlsafe(32)
        # Written whole under another name first, then linked into place: a crash never
        # leaves an empty token file behind, and a second gateway never overwrites one.
        part = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(part, path)
        finally:
            os.unlink(part)
        log.info("http: no admin_token configured; generated one into %s", path)
        return token

    def _log_startup(self) -> None:
        s = self.settings
        log.info("mailgate %s (%s): database %s", VERSION, s.source,
                 Path(s.sqlite_path or "").resolve())
        for listener in self.listeners.values():
            host, _ = parse_listen(getattr(s, listener.protocol).listen)
            log.info("%s listening on %s:%d", listener.protocol.upper(), host, listener.port)
        if self.http_port is not None:
            host, _ = parse_listen(s.http.listen)
            base = f"http://{host}:{self.http_port}"
            log.info("HTTP listening on %s (/healthz, /readyz, /metrics, /api/v1)", base)
        for connector in self.addresses.connectors.values():
            log.info("connector %r receives %s%s", connector.name,
                     ", ".join(connector.addresses()), "" if connector.enabled else " (disabled)")
        if "lmtp" in self.listeners and self.http_port is not None and self.addresses.connectors:
            first = next(iter(self.addresses.connectors.values()))
            host, _ = parse_listen(s.lmtp.listen)
            log.info("try it: swaks --protocol LMTP --server %s:%d --to %s --from "
                     "carol@customer.test ; then: curl -H "
                     "\"Authorization: Bearer $TOKEN\" '%s/api/v1/emails?message_id=<ID>'",
                     host, self.listeners["lmtp"].port, first.primary_address,
                     f"http://{parse_listen(s.http.listen)[0]}:{self.http_port}")

    # -- host operations (SPEC §5.4): the same as the HTTP API ------------------------------

    async def create_workitem(self, **fields) -> WorkItem:
        return await self.workitems.create_workitem(**fields)

    async def workitem(self, ref: str) -> WorkItem | None:
        return await self.workitems.workitem(ref)

    async def transition(self, ref: str, state: str, wait_type: str | None = None):
        return await self.workitems.transition(ref, state, wait_type)

    async def split(self, ref: str, children: int):
        return await self.workitems.split(ref, children)

    async def merge(self, refs: list[str], into: str):
        return await self.workitems.merge(refs, into)

    async def convert(self, ref: str):
        return await self.workitems.convert(ref)

    async def link(self, ref: str, other: str):
        return await self.workitems.link(ref, other)

    async def set_parent(self, ref: str, parent: str | None):
        return await self.workitems.set_parent(ref, parent)

    async def send_email(self, ref: str, **fields) -> tuple[int, str]:
        return await self.workitems.send_email(ref, composing=self.pipeline_settings.composing,
                                               directory=self.directory, **fields)

    async def add_connector(self, connector: Connector, *, username: str | None = None,
                            password: str | None = None, secrets: dict | None = None,
                            fallback: Route = FALLBACK) -> ConnectorEntry:
        """R-C1: a connector with its fallback route (``fallback`` says what that route is
        like), checked and recorded as through the API, with the actor ``host``."""
        entry = ConnectorEntry(connector, username, password, dict(secrets or {}))
        return await self.directory_ops.create_connector(entry, HOST, fallback=fallback)

    async def add_route(self, route: Route) -> Route:
        """R-R1..R-R7: a route at the end of its band, as through the API (actor ``host``)."""
        created, _ = await self.directory_ops.create_route(route, HOST)
        return created

    async def add_contact(self, pattern: str, company: str) -> None:
        await self.directory_ops.save_contact(pattern, company)

    async def explain(self, raw: bytes, connector: str, **options):
        return await self.pipeline.explain(raw, connector, **options)

    def on_event(self, callback, types: set[str] | None = None) -> None:
        """R-X1 for embedding hosts: ``callback(event)`` (plain or async) for every new
        event, in feed order, after the change that made it has committed."""
        self.events.subscribe(callback, types)

    # -- runtime settings (SPEC §5.3 /settings) ----------------------------------------

    SETTABLE = {"matching_mode": ("off", "mixed", "plus_only"), "hide_plus_in_from": (True, False)}

    async def _load_runtime_settings(self, *, record: bool = True) -> None:
        """The run-time settings the store keeps over the config file's; ``record``
        False (``mailgate explain`` beside a running gateway) writes nothing."""
        stored = await self.store.settings()
        known = {k: v for k, v in stored.items() if k in self.SETTABLE}
        if known:
            self.pipeline_settings = dataclasses.replace(self.pipeline_settings, **known)
        matching = self.settings.matching
        if matching.sign_tokens:
            # R-B1: the transition window runs from the first start with signing on.
            since = stored.get("sign_tokens_since")
            if since is None:
                since = time.time()
                if record:
                    await self.store.save_settings({"sign_tokens_since": since})
            tokens = Tokens(secret=matching.token_secret.encode(), since=since,
                            unsigned_until=since + matching.unsigned_token_days * 86400)
            self.pipeline_settings = dataclasses.replace(self.pipeline_settings, tokens=tokens)

    def runtime_settings(self) -> dict:
        return {key: getattr(self.pipeline_settings, key) for key in self.SETTABLE}

    async def update_settings(self, **values) -> dict:
        """Change matching mode / hide_plus_in_from at run time; kept across restarts."""
        for key, value in values.items():
            if key not in self.SETTABLE:
                raise KeyError(key)
            if value not in self.SETTABLE[key] or type(value) is not type(self.SETTABLE[key][0]):
                raise ValueError(key)
        await self.store.save_settings(values)
        self.pipeline_settings = dataclasses.replace(self.pipeline_settings, **values)
        return self.runtime_settings()

    def _wake_events(self) -> None:
        self.events.wake()
        if self.delivery is not None:
            self.delivery.wake()

    def _wake_pipeline(self) -> None:
        self.pipeline.wake()

    def _count_received(self, source: str, connector: str, size: int) -> None:
        # Labelled children are cached: .labels() per message was ~4% of the
        # CPU in the bench profile.
        key = (source, connector)
        children = self._received_children.get(key)
        if children is None:
            children = (self.metrics.messages_received.labels(source, connector),
                        self.metrics.message_size.labels(source))
            self._received_children[key] = children
        children[0].inc()
        children[1].observe(size)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self) -> None:
        """Drain and stop (idempotent)."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        self.metrics.ready.set(0)
        self.metrics.draining.set(1)
        started = time.monotonic()
        for listener in self.listeners.values():
            listener.server.close()
        deadline = started + self.settings.gateway.drain_timeout
        while any(l.stats.busy() for l in self.listeners.values()):
            if time.monotonic() >= deadline:
                log.warning("drain timeout: closing sessions still inside DATA")
                break
            await asyncio.sleep(0.02)
        for listener in self.listeners.values():
            for session in list(listener.stats.sessions):
                if not session.close_idle() and session.transport is not None:
                    session.transport.close()
        await asyncio.sleep(0)
        self.pollers.started = False
        # Each part stops on its own: one that fails (a worker that died earlier
        # re-raises here) must not keep the store from closing or serve from exiting.
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.http_runner is not None:
            parts.append(("http", self.http_runner.cleanup))
        parts += [("pollers", self.pollers.stop), ("pipeline", self.pipeline.stop)]
        if self.delivery is not None:
            parts.append(("delivery", self.delivery.stop))
        parts.append(("events", self.events.stop))
        parts.append(("intake", self.intake.stop))
        parts += [("webhooks", sender.stop) for sender in self.webhooks]
        try:
            for name, stop in parts:
                try:
                    await stop()
                except Exception:
                    log.exception("stopping %s failed", name)
            await self.store.close()
        finally:
            self.metrics.draining.set(0)
            log.info("stopped after draining for %.2fs", time.monotonic() - started)
            self._stopped.set()
