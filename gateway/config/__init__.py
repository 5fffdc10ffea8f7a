"""Process configuration (SPEC §5.2): the names the rest of mailgate imports.

The package is split by job: ``schema`` holds the settings dataclasses and what
constrains their values, ``binding`` turns TOML text, ``MAILGATE_*`` variables
and secret files into those values (with file and line for every mistake), and
``load`` is the entry point that adds the cross-field checks. This module only
re-exports, so ``from gateway.config import Settings, load`` keeps working and
callers need not know which file a name lives in.
"""
from gateway.config.binding import parse_listen
from gateway.config.load import ConfigError, load
from gateway.config.schema import (AutogenSection, BootstrapConnector, BootstrapRoute,
                                   DefaultGatewaySection, DirectorySection, DkimKey, HttpSection,
                                   ListenerSection, LmtpSection, LoopsSection, MatchingSection,
                                   OutboundSection, Settings, SmtpSection, StorageSection, Webhook)

__all__ = [
    "AutogenSection", "BootstrapConnector", "BootstrapRoute", "ConfigError",
    "DefaultGatewaySection", "DirectorySection", "DkimKey", "HttpSection", "ListenerSection",
    "LmtpSection",
    "LoopsSection", "MatchingSection", "OutboundSection", "Settings", "SmtpSection",
    "StorageSection", "Webhook", "load", "parse_listen",
]
