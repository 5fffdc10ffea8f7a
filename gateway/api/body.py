"""Request shapes for the directory API (connectors, routes, contacts, activity).

The handlers check only the *shape* here (JSON types, unknown and missing
fields) and answer 422 naming the field and the rule; what a value may be
given the rest of the directory is decided in ``directory.ops`` (the
directory's one write door) and arrives as a ``RuleViolation`` (422
``rule_violation``; a ``Conflict`` is 409) or a ``LookupError`` (404).
"""
from __future__ import annotations

import json
import re
from typing import Any, Awaitable, Callable

from aiohttp import web

from gateway.api.errors import api_error
from gateway.model import Conflict, RuleViolation

Check = tuple[Callable[[Any], bool], str]          # test, what the value must be
Handler = Callable[[web.Request], Awaitable[web.Response]]

ACTOR_HEADER = "X-Mailgate-Actor"
_ACTOR = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,99}")


def is_(*types: type) -> Callable[[Any], bool]:
    """isinstance that does not take ``true`` for a number."""
    return lambda v: isinstance(v, types) and not (isinstance(v, bool) and bool not in types)


def text(limit: int, *, empty: bool = True) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and len(v) <= limit and (empty or bool(v.strip()))


def optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


BOOL = (is_(bool), "true or false")


async def json_object(request: web.Request) -> dict | web.Response:
    """The body as a JSON object (an empty body is ``{}``)."""
    data = await request.read()
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        return api_error(400, "invalid_json", "the body is not JSON")
    if not isinstance(body, dict):
        return api_error(400, "invalid_body", "send a JSON object")
    return body


def paging(request: web.Request, default_limit: int = 100) -> tuple[int, int] | web.Response:
    """``?after=&limit=`` for the feeds: ids are 64-bit, pages 1..1000 long."""
    try:
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", str(default_limit)))
    except ValueError:
        return api_error(400, "invalid_parameter", "after and limit are integers", "after")
    if not 0 <= after < 1 << 62:
        return api_error(400, "invalid_parameter", "after is an id, 0 or more", "after")
    if not 1 <= limit <= 1000:
        return api_error(400, "invalid_parameter", "limit is from 1 to 1000", "limit")
    return after, limit


def shape_error(body: dict, rule: str, spec: dict[str, Check], required: tuple[str, ...] = (),
                prefix: str = "") -> web.Response | None:
    """The first shape error (unknown, missing, wrong type), naming the field and the rule."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        return api_error(422, "unknown_field", f"{rule}: unknown field {prefix}{unknown[0]!r};"
                         f" expected {', '.join(spec)}", prefix + unknown[0])
    for name in required:
        if name not in body:
            return api_error(422, "missing_field", f"{rule}: {prefix}{name} is required",
                             prefix + name)
    for name, (test, what) in spec.items():
        if name in body and not test(body[name]):
            return api_error(422, "invalid", f"{rule}: {prefix}{name} must be {what}",
                             prefix + name)
    return None


def actor(request: web.Request) -> str | web.Response:
    """R-C5 "who": the ``X-Mailgate-Actor`` header (a host passes its user), else ``api``."""
    given = request.headers.get(ACTOR_HEADER)
    if given is None:
        return "api"
    if not _ACTOR.fullmatch(given.strip()):
        return api_error(422, "invalid", f"R-C5: {ACTOR_HEADER} is 1 to 100 printable ASCII "
                         "characters", ACTOR_HEADER)
    return given.strip()


def directory_errors(handler: Handler) -> Handler:
    """Operations' exceptions as API errors: rule → 422 (clash → 409), unknown → 404."""
    async def run(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Conflict as exc:
            return api_error(409, "conflict", str(exc), exc.field)
        except RuleViolation as exc:
            return api_error(422, "rule_violation", str(exc), exc.field)
        except LookupError as exc:
            if isinstance(exc, (KeyError, IndexError)):
                raise       # a bug, not an unknown name
            return api_error(404, "not_found", str(exc))
    return run


def path_id(request: web.Request, what: str) -> int | web.Response:
    raw = request.match_info["id"]
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        return api_error(404, "not_found", f"no {what} {raw!r}", "id")
    return int(raw)
