"""``/api/v1/workitems``: the host operations of R-W3 over HTTP, and agent mail (R-O6).

This module checks only the *shape* of a request (JSON types, unknown and missing
fields, that a connector exists); what a state, a kind or a relation may be is
decided once, in ``gateway.workitems``, and arrives here as a ``RuleViolation``
(answered 422 ``rule_violation``, message starting with the rule id). A ref in the
path that names nothing is 404; a ref in the body that names nothing is 422 with
that field, so a client can tell "wrong URL" from "wrong request".
"""
from __future__ import annotations

import base64
import re
from typing import Any, Awaitable, Callable

from aiohttp import web

from gateway.api.body import json_object
from gateway.api.emails import _iso, email_json
from gateway.api.errors import api_error
from gateway.model import MODES, STATES, RuleViolation, WorkItem

FIELDS = ("ref", "kind", "uuid", "connector", "mode", "state", "wait_type", "new_info",
          "parent", "split_into", "merged_into", "converted_to", "linked", "copied_from",
          "contacts", "custom_data", "send_automated_emails", "created_at", "updated_at")
MAX_LIMIT = 1000
MAX_ADDRESSES = 100
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,900}@[!-;=?-~]{1,90}>")

Handler = Callable[[web.Request], Awaitable[web.Response]]
Check = tuple[Callable[[Any], bool], str]          # test, what the value must be


def workitem_json(item: WorkItem) -> dict:
    """R-W1: every field under its API name; times as ISO-8601 UTC."""
    body = {name: getattr(item, name) for name in FIELDS}
    body["created_at"], body["updated_at"] = _iso(item.created_at), _iso(item.updated_at)
    return body


def _addresses(value: Any) -> bool:
    """A list of bare ASCII addresses: no display names, no commas or line breaks that
    could turn one recipient into several (the composer only flattens line breaks), and
    no UTF-8 local part, which the composer would encode into an invalid address."""
    return (isinstance(value, list) and len(value) <= MAX_ADDRESSES
            and all(isinstance(a, str) and len(a) <= 254 and _ADDRESS.fullmatch(a)
                    for a in value))


def _is(*types: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, types) and not (isinstance(v, bool) and bool not in types)


STRING = (_is(str), "a string")
REF = (_is(str), "a ref like 12-T")
OPTIONAL_REF = (lambda v: v is None or isinstance(v, str), "a ref like 12-T or null")
OPTIONAL_STRING = (lambda v: v is None or isinstance(v, str), "a string or null")
ADDRESSES = (_addresses, f"a list of at most {MAX_ADDRESSES} addresses like a@example.com")

CREATE = {"kind": STRING, "connector": STRING, "parent": OPTIONAL_REF, "mode": STRING,
          "state": STRING, "wait_type": OPTIONAL_STRING, "custom_data": (_is(dict), "an object"),
          "contacts": ADDRESSES, "send_automated_emails": (_is(bool), "true or false")}
def _attachments(value: Any) -> bool:
    """[{"filename", "content_type", "content_base64"}]: at most 20, each decodable."""
    import base64
    import binascii
    if not isinstance(value, list) or len(value) > 20:
        return False
    for item in value:
        if not isinstance(item, dict) or set(item) != {"filename", "content_type",
                                                        "content_base64"}:
            return False
        if not all(isinstance(item[k], str) for k in item) or not item["filename"].strip():
            return False
        if not re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", item["content_type"].lower()):
            return False
        try:
            base64.b64decode(item["content_base64"], validate=True)
        except (binascii.Error, ValueError):
            return False
    return True


SEND = {"to": ADDRESSES, "cc": ADDRESSES, "subject": STRING, "body": STRING,
        "share_with_linked": (_is(bool), "true or false"),
        "attachments": (_attachments, "a list of {filename, content_type, content_base64}"),
        "in_reply_to": (lambda v: v is None or isinstance(v, str) and bool(
            _MESSAGE_ID.fullmatch(v)), "a Message-ID like <id@host> or null")}


def _invalid(body: dict, rule: str, spec: dict[str, Check],
             required: tuple[str, ...] = ()) -> web.Response | None:
    """The first shape error, naming the field and the rule; None when the body is fine."""
    unknown = sorted(set(body) - set(spec))
    if unknown:
        return api_error(422, "unknown_field", f"{rule}: unknown field {unknown[0]!r}; "
                         f"expected {', '.join(spec)}", unknown[0])
    for name in required:
        if name not in body:
            return api_error(422, "missing_field", f"{rule}: {name} is required", name)
    for name, (test, what) in spec.items():
        if name in body and not test(body[name]):
            return api_error(422, "invalid", f"{rule}: {name} must be {what}", name)
    return None


def _operation(key: web.AppKey, body_ref: str | None = None, *, lost_sender: bool = False
               ) -> Callable[[Handler], Handler]:
    """Turn the operations' exceptions into API errors. ``body_ref``: the body field whose
    ref the operation looks up, blamed when the path's item does exist."""
    def wrap(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except RuleViolation as exc:
                return api_error(422, "rule_violation", str(exc), exc.field)
            except LookupError as exc:
                if isinstance(exc, (KeyError, IndexError)):
                    raise       # a bug, not an unknown ref
                ref = request.match_info.get("ref")
                if ref is not None and await request.app[key].workitems.workitem(ref) is None:
                    return _no_item(ref)
                if lost_sender:     # R-O6 sends from the item's connector, now deleted
                    return api_error(409, "no_connector", f"R-O6: {exc}", "connector")
                return api_error(422, "unknown_ref", f"R-W1: {exc}", body_ref)
        return run
    return wrap


def _no_item(ref: str) -> web.Response:
    return api_error(404, "not_found", f"no work item {ref!r}", "ref")


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    async def read(request: web.Request, *, rule: str, spec: dict[str, Check],
                   required: tuple[str, ...] = ()) -> dict | web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        return _invalid(body, rule, spec, required) or body

    @_operation(key, "parent")
    async def create(request: web.Request) -> web.Response:
        """R-W3 create; the connector is the one "given at creation" (R-W1)."""
        body = await read(request, rule="R-W1", spec=CREATE, required=("kind", "connector"))
        if isinstance(body, web.Response):
            return body
        gateway = request.app[key]
        if body["connector"] not in gateway.directory.connectors:
            return api_error(422, "invalid", f"R-W1: no connector {body['connector']!r}",
                             "connector")
        item = await gateway.workitems.create_workitem(**body)
        return web.json_response(workitem_json(item), status=201)

    async def list_all(request: web.Request) -> web.Response:
        query = dict(request.query)
        unknown = sorted(set(query) - {"connector", "state", "mode", "limit"})
        if unknown:
            return api_error(422, "unknown_field", f"unknown parameter {unknown[0]!r}", unknown[0])
        for name, allowed in (("state", STATES), ("mode", MODES)):
            if name in query and query[name] not in allowed:
                return api_error(422, "invalid", f"R-W1: {name} must be one of "
                                 f"{', '.join(allowed)}", name)
        limit = query.pop("limit", "100")
        if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= MAX_LIMIT:
            return api_error(422, "invalid", f"limit must be 1 to {MAX_LIMIT}", "limit")
        items = await request.app[key].workitems.workitems(limit=int(limit), **query)
        return web.json_response({"workitems": [workitem_json(i) for i in items]})

    async def one(request: web.Request) -> web.Response:
        item = await request.app[key].workitems.workitem(request.match_info["ref"])
        if item is None:
            return _no_item(request.match_info["ref"])
        return web.json_response(workitem_json(item))

    def operation(spec: dict[str, Check], required: tuple[str, ...], body_ref: str | None,
                  call: Callable[..., Awaitable[Any]], status: int = 200) -> Handler:
        """One R-W3 operation on the item in the path: shape check, call, answer."""
        @_operation(key, body_ref)
        async def handle(request: web.Request) -> web.Response:
            body = await read(request, rule="R-W3", spec=spec, required=required)
            if isinstance(body, web.Response):
                return body
            result = await call(request.app[key].workitems, request.match_info["ref"], body)
            if isinstance(result, list):
                return web.json_response({"children": [workitem_json(i) for i in result]},
                                         status=status)
            return web.json_response(workitem_json(result), status=status)
        return handle

    async def emails(request: web.Request) -> web.Response:
        """The item's communications, incoming and outgoing, in the order they joined it."""
        gateway, ref = request.app[key], request.match_info["ref"]
        item = await gateway.workitems.workitem(ref)
        if item is None:
            return _no_item(ref)
        found = []
        for email_id in await gateway.workitems.workitem_emails(item.ref):
            record = await gateway.store.email(email_id)
            if record is not None:
                found.append(await email_json(gateway.store, record))
        return web.json_response({"emails": found})

    @_operation(key, lost_sender=True)
    async def send(request: web.Request) -> web.Response:
        """R-O6: the agent's mail is appended to the item as outgoing and queued (202: not
        yet delivered; its delivery status shows on ``/emails/{id}``)."""
        body = await read(request, rule="R-O6", spec=SEND, required=("to", "subject", "body"))
        if isinstance(body, web.Response):
            return body
        if not body["to"]:
            return api_error(422, "invalid", "R-O6: to needs at least one address", "to")
        email_id, message_id = await request.app[key].send_email(
            request.match_info["ref"], to=body["to"], cc=body.get("cc", []),
            subject=body["subject"], body=body["body"], in_reply_to=body.get("in_reply_to"),
            share_with_linked=body.get("share_with_linked", False),
            attachments=[(a["filename"], a["content_type"].lower(),
                          base64.b64decode(a["content_base64"]))
                         for a in body.get("attachments", [])])
        return web.json_response({"id": email_id, "message_id": message_id}, status=202)

    base = "/api/v1/workitems/{ref}"
    router.add_post("/api/v1/workitems", create)
    router.add_get("/api/v1/workitems", list_all)
    router.add_get(base, one)
    router.add_post(f"{base}/transition", operation(
        {"state": STRING, "wait_type": OPTIONAL_STRING}, ("state",), None,
        lambda ops, ref, b: ops.transition(ref, b["state"], b.get("wait_type"))))
    router.add_post(f"{base}/split", operation(
        {"children": (_is(int), "a whole number")}, ("children",), None,
        lambda ops, ref, b: ops.split(ref, b["children"]), status=201))
    router.add_post(f"{base}/merge", operation(
        {"into": REF}, ("into",), "into", lambda ops, ref, b: ops.merge([ref], b["into"])))
    router.add_post(f"{base}/convert", operation(
        {}, (), None, lambda ops, ref, b: ops.convert(ref), status=201))
    router.add_post(f"{base}/link", operation(
        {"ref": REF}, ("ref",), "ref", lambda ops, ref, b: ops.link(ref, b["ref"])))
    router.add_post(f"{base}/parent", operation(
        {"parent": OPTIONAL_REF}, ("parent",), "parent",
        lambda ops, ref, b: ops.set_parent(ref, b["parent"])))
    router.add_get(f"{base}/emails", emails)
    router.add_post(f"{base}/emails", send)
