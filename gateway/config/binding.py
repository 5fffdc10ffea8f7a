"""Binding a config file to the schema: TOML text + environment → settings values.

A file that names an unknown key or gives a value of the wrong type is refused
with the file, the line and a fix, so an admin never learns about a typo from a
message that went missing: ``_LineIndex`` finds the line of each key (and of
each ``[[table]]`` element), ``_Loader`` builds the dataclasses of ``schema``
while collecting every problem. Any value can be overridden by
``MAILGATE_<SECTION>_<KEY>`` (nested tables join with ``_``), so secrets never
have to sit in the file; ``<key>_file`` variants read a secret from a file.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from gateway.config.schema import (CHOICES, LISTEN_KEYS, NON_NEGATIVE_KEYS, POSITIVE_KEYS,
                                   SECRET_FILES, TABLE_ARRAYS, Settings)


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port); ``[::1]:8024`` for IPv6."""
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d{1,5})", value.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535 or not m.group(1):
        raise ValueError(f"{value!r} is not host:port (e.g. \"127.0.0.1:8024\")")
    return m.group(1), int(m.group(2))


class _LineIndex:
    """Finds the line of a ``[section]`` key in the TOML text, for error messages; in a
    ``[[section]]`` array, of the key of the index-th element (the second connector's
    mistake is on the second connector's line)."""

    def __init__(self, text: str):
        self.lines: dict[tuple[str, str], int] = {}
        self.tables: dict[str, int] = {}
        self.elements: dict[tuple[str, int, str | None], int] = {}
        counts: dict[str, int] = {}
        section, element = "", None
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?", stripped)
            if header:
                section = header.group(2).replace(" ", "").replace('"', "")
                self.tables.setdefault(section, number)
                element = None
                if header.group(1) == "[[":
                    element = counts.get(section, 0)
                    counts[section] = element + 1
                    self.elements[(section, element, None)] = number
                continue
            key = re.match(r"^([A-Za-z0-9_\-\"\.]+)\s*=", stripped)
            if key:
                self.lines.setdefault((section, key.group(1).strip('"')), number)
                if element is not None:
                    self.elements.setdefault((section, element, key.group(1).strip('"')),
                                             number)

    def line(self, section: str, key: str | None = None, index: int | None = None
             ) -> int | None:
        if index is not None:
            found = self.elements.get((section, index, key)) or \
                self.elements.get((section, index, None))
            if found:
                return found
        if key is not None and (section, key) in self.lines:
            return self.lines[(section, key)]
        if key is not None and f"{section}.{key}".lstrip(".") in self.tables:
            return self.tables[f"{section}.{key}".lstrip(".")]
        return self.tables.get(section)


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"known keys: {', '.join(sorted(options))}"


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, "a list of strings")


def _coerce(value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default``; raise TypeError with a hint."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise TypeError(_type_name(bool))
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(_type_name(float))
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(_type_name(int))
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise TypeError(_type_name(str))
    if isinstance(default, tuple):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise TypeError(_type_name(tuple))
    raise TypeError("a table")


class _Loader:
    def __init__(self, source: str, text: str):
        self.source = source
        self.index = _LineIndex(text)
        self.problems: list[str] = []

    def problem(self, section: str, key: str | None, message: str,
                index: int | None = None) -> None:
        line = self.index.line(section, key, index)
        where = f"{self.source}:{line}" if line else self.source
        self.problems.append(f"{where}: {message}")

    def build(self, cls: type, data: dict, section: str, index: int | None = None) -> Any:
        """Build dataclass ``cls`` from ``data`` (the ``index``-th of a ``[[section]]``
        array when given), collecting problems as it goes."""
        defaults = cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = f"[{section}] {key}" if section else f"section [{key}]"
            if key not in fields or key == "source":
                known = [f for f in fields if f != "source"]
                self.problem(section, key, f"unknown {'key ' if section else ''}{name}: "
                             f"{_suggest(key, known)}", index)
                continue
            default = getattr(defaults, key)
            if dataclasses.is_dataclass(default):
                if not isinstance(value, dict):
                    self.problem(section, key, f"{name} must be a table [{section}.{key}]")
                    continue
                values[key] = self.build(type(default), value, f"{section}.{key}" if section else key)
                continue
            if isinstance(default, tuple) and key in TABLE_ARRAYS:
                element = TABLE_ARRAYS[key]
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    self.problem(section, key, f"{name} must be written as [[{section}.{key}]] tables")
                    continue
                values[key] = tuple(self.build(element, v, f"{section}.{key}", i)
                                    for i, v in enumerate(value))
                continue
            try:
                values[key] = _coerce(value, default)
            except TypeError as hint:
                self.problem(section, key, f"{name} = {value!r} is not valid: write {hint}"
                             f" (default: {default!r})", index)
                continue
            self.check_value(section, key, values[key], index)
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - defensive
            self.problem(section, None, str(exc))
            return defaults

    def check_value(self, section: str, key: str, value: Any, index: int | None = None) -> None:
        choices = CHOICES.get((section, key))
        if choices and value not in choices:
            self.problem(section, key, f"[{section}] {key} = {value!r}: use one of "
                         f"{', '.join(repr(c) for c in choices)}", index)
        if (section, key) in LISTEN_KEYS:
            try:
                parse_listen(value)
            except ValueError as exc:
                self.problem(section, key, f"[{section}] {key}: {exc}")
        if key in POSITIVE_KEYS and value <= 0:
            self.problem(section, key, f"[{section}] {key} = {value!r}: must be greater than 0")
        if key in NON_NEGATIVE_KEYS and value < 0:
            self.problem(section, key, f"[{section}] {key} = {value!r}: must be 0 (no limit) "
                         "or more")


def _env_overrides(env: dict[str, str]) -> tuple[dict, list[str]]:
    """``MAILGATE_<SECTION>_<KEY>`` variables → a nested dict to merge over the file."""
    targets: dict[str, tuple[str, ...]] = {}

    def walk(cls: type, path: tuple[str, ...]) -> None:
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if f.name == "source" or (isinstance(default, tuple) and f.name in TABLE_ARRAYS):
                continue
            if dataclasses.is_dataclass(default):
                walk(type(default), path + (f.name,))
            else:
                targets["MAILGATE_" + "_".join(path + (f.name,)).upper()] = path + (f.name,)

    walk(Settings, ())
    overrides: dict = {}
    problems = []
    for name, raw in env.items():
        if not name.startswith("MAILGATE_") or name == "MAILGATE_CONFIG":
            continue
        path = targets.get(name)
        if path is None:
            problems.append(f"environment: unknown variable {name}: "
                            f"{_suggest(name, list(targets))}")
            continue
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(raw, path, problems)
    return overrides, problems


def _parse_env_value(raw: str, path: tuple[str, ...], problems: list[str]) -> Any:
    default: Any = Settings()
    for part in path:
        default = getattr(default, part)
    if isinstance(default, str):
        return raw
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return raw
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if isinstance(default, tuple):
            return [item.strip() for item in raw.split(",") if item.strip()]
        return raw


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_secret_files(data: dict, loader: _Loader, section: str = "",
                       index: int | None = None) -> None:
    """``admin_token_file = "/run/secrets/x"`` fills ``admin_token`` from that file; in
    ``[[directory.connectors]]`` tables too (each connector's own password file)."""
    for key, value in list(data.items()):
        inner = f"{section}.{key}" if section else key
        if isinstance(value, dict):
            _read_secret_files(value, loader, inner)
        elif isinstance(value, list) and key in TABLE_ARRAYS:
            for i, element in enumerate(value):
                if isinstance(element, dict):
                    _read_secret_files(element, loader, inner, i)
        elif key in SECRET_FILES and isinstance(value, str) and value:
            try:
                data[SECRET_FILES[key]] = Path(value).read_text().strip()
            except OSError as exc:
                where = f"[[{section}]]" if index is not None else f"[{section}]"
                loader.problem(section, key, f"{where} {key}: cannot read {value}: "
                               f"{exc.strerror}; fix the path or its permissions", index)
