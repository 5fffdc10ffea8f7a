"""mailgate: an embeddable mail gateway for case-management systems.

``from gateway import Gateway`` to run it inside a host's own event loop.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Gateway", "Settings", "load_settings"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that ``storage`` and ``gateway.model`` can import each
    # other's plain types without a cycle through the application module.
    if name == "Gateway":
        from gateway.app import Gateway
        return Gateway
    if name == "Settings":
        from gateway.config import Settings
        return Settings
    if name == "load_settings":
        from gateway.config import load
        return load
    raise AttributeError(name)
