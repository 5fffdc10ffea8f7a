"""The directory's first start: seed it from the config file, or a demo without one.

Only into an EMPTY directory: once the store has a directory it is the source of
truth (the API and ``directory import`` change it, and a restart must not bring
back what they removed). Seeds go through the directory's one write door with the
actor ``config``, so they meet every check and leave the same history as a change
made through the API, and all of them in one transaction: a seed the door refuses
leaves the directory empty, and the next start tries again.
"""
from __future__ import annotations

import dataclasses
import logging

from gateway.config import BootstrapRoute, Settings
from gateway.directory.ops import FALLBACK, DirectoryOps
from gateway.model import Connector, ConnectorEntry, Route, RouteRules, RouteTarget

log = logging.getLogger("mailgate")

ACTOR = "config"
DEMO_CONNECTOR = Connector(name="support", service="lmtp", primary_address="support@example.test")


async def seed_directory(ops: DirectoryOps, settings: Settings) -> None:
    """Connectors (each with its fallback route) and routes from ``settings``, or the demo
    connector when the gateway runs on its embedded default, into an empty directory."""
    if await ops.connectors():
        return
    entries = [seed.entry() for seed in settings.directory.connectors]
    demo = not entries and settings.source == "<embedded default>"
    if demo:        # the quickstart's connector acknowledges, to show what mailgate does
        entries = [ConnectorEntry(DEMO_CONNECTOR)]
    routes = [route_from_seed(seed) for seed in settings.directory.routes]
    connectors = []
    for entry in entries:
        fallback = next((r for r in routes if r.connector == entry.connector.name and r.fallback),
                        dataclasses.replace(FALLBACK, send_automated_emails=demo))
        connectors.append((entry, fallback))
    await ops.create_all(connectors, [r for r in routes if not r.fallback], ACTOR)
    for entry in entries:
        log.info("directory: created connector %r <%s> from %s", entry.connector.name,
                 entry.connector.primary_address, settings.source)


def route_from_seed(seed: BootstrapRoute) -> Route:
    rules = RouteRules(important=True if seed.important else None,
                       attachment_types=seed.attachment_types,
                       subject_keywords=seed.subject_keywords,
                       sender_companies=seed.sender_companies,
                       sender_list_includes=seed.sender_list_includes,
                       recipient_list_includes=seed.recipient_list_includes)
    target = RouteTarget(kind=seed.kind, process=seed.process, customer=seed.customer,
                         contract=seed.contract, service=seed.service,
                         ticket_category=seed.ticket_category)
    return Route(id=0, name=seed.name or seed.email_address, connector=seed.connector,
                 email_address=seed.email_address, order=0, folder_path=seed.folder_path,
                 rules=rules, target=target, send_automated_emails=seed.send_automated_emails,
                 ack_cc=seed.ack_cc, test_mode=seed.test_mode, enabled=seed.enabled,
                 fallback=seed.fallback)
