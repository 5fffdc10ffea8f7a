"""Prometheus metrics of one gateway, on a registry of its own.

A registry per Gateway (not the process-global default) lets a host embed
several gateways, and tests build fresh ones, without duplicate-series errors.
Names follow Prometheus conventions: ``mailgate_`` prefix, base units,
``_total`` for counters; label values are bounded (connector names come from
the directory, never addresses or Message-IDs).
"""
from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_SIZE_BUCKETS = (1e3, 4e3, 16e3, 64e3, 256e3, 1e6, 4e6, 16e6, 64e6)
_COMMIT_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, version: str = "0"):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.build_info = Info("mailgate_build", "Version of the running gateway.", registry=r)
        self.build_info.info({"version": version, "python": platform.python_version()})
        self.messages_received = Counter(
            "mailgate_messages_received_total",
            "Copies journaled, by source and receiving connector.",
            ["source", "connector"], registry=r)
        self.message_size = Histogram(
            "mailgate_message_size_bytes", "Size of journaled messages.", ["source"],
            buckets=_SIZE_BUCKETS, registry=r)
        self.sessions_active = Gauge(
            "mailgate_sessions_active", "Open LMTP/SMTP sessions.", ["protocol"], registry=r)
        self.replies = Counter(
            "mailgate_replies_total", "Replies sent to LMTP/SMTP clients, by class.",
            ["protocol", "class"], registry=r)
        self.commit_seconds = Histogram(
            "mailgate_store_commit_duration_seconds",
            "Journal group commits: time from first INSERT to durable COMMIT.",
            ["backend"], buckets=_COMMIT_BUCKETS, registry=r)
        self.commit_batch = Histogram(
            "mailgate_store_commit_batch_copies", "Copies per journal group commit.",
            ["backend"], buckets=_BATCH_BUCKETS, registry=r)
        self.store_errors = Counter(
            "mailgate_store_errors_total", "Failed store operations.", ["backend", "op"],
            registry=r)
        self.ready = Gauge("mailgate_ready", "1 while the gateway accepts mail.", registry=r)
        self.draining = Gauge("mailgate_draining", "1 while the gateway drains on shutdown.",
                              registry=r)
        for protocol in ("lmtp", "smtp"):
            self.sessions_active.labels(protocol)
            for cls in ("2", "4", "5"):
                self.replies.labels(protocol, cls)
        self.store_errors.labels("sqlite", "commit")

    def observe_commit(self, copies: int, seconds: float, committed: bool) -> None:
        if not committed:
            self.store_errors.labels("sqlite", "commit").inc()
            return
        self.commit_seconds.labels("sqlite").observe(seconds)
        self.commit_batch.labels("sqlite").observe(copies)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
