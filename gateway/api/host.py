"""What the HTTP API needs of the gateway it serves: a small protocol, not ``Gateway``.

The API modules are typed against :class:`ApiHost`, so they depend on the parts
they call (the store, the directory's write door, work-item operations, the
pipeline's R-U1 actions, the pollers) and never on the module that builds them.
"""
from __future__ import annotations

from typing import Protocol

from gateway.directory.ops import DirectoryOps
from gateway.directory.snapshot import Directory
from gateway.listeners import Listener
from gateway.pipeline.runner import Runner
from gateway.polling.supervisor import Pollers
from gateway.workitems.ops import WorkItemOps
from metrics import Metrics
from storage.base import Store


class ApiHost(Protocol):
    admin_token: str
    draining: bool
    store: Store
    directory: Directory
    directory_ops: DirectoryOps
    workitems: WorkItemOps
    pipeline: Runner
    pollers: Pollers
    metrics: Metrics
    listeners: dict[str, Listener]

    async def send_email(self, ref: str, **fields) -> tuple[int, str]: ...

    def runtime_settings(self) -> dict: ...

    async def update_settings(self, **values) -> dict: ...
