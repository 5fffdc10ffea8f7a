"""``/api/v1/connectors/{name}/routes`` and ``/api/v1/routes/{id}`` (SPEC §3.6, R-R1..R-R8).

Shapes are checked here; the rules (R-R4 wildcard sender lists, R-R5 bands,
R-R7 the fallback, and whatever ``routing.validate_route`` checks) in
``directory.ops``, answered 422 ``rule_violation`` with the rule id first.
``order`` is the route's place 1..N on its connector; it changes only by
``POST /routes/{id}/move`` (R-R5). ``flags`` lists why a route that keeps
working needs an admin's look (R-R8).
"""
from __future__ import annotations

from aiohttp import web

from gateway.api.body import (BOOL, Check, actor, directory_errors, is_, json_object, optional,
                              path_id, shape_error, text)
from gateway.api.errors import api_error
from gateway.directory.activity import route_snapshot
from gateway.directory.ops import DirectoryOps
from gateway.model import Route, RouteRules, RouteTarget

RULES: dict[str, Check] = {
    "important": (optional(is_(bool)), "true, false or null (not checked)"),
    **{name: (text(2000), "a string of entries separated by ';'") for name in (
        "attachment_types", "subject_keywords", "sender_companies", "sender_list_includes",
        "recipient_list_includes")},
}
TARGET: dict[str, Check] = {
    "kind": (lambda v: v in ("Ticket", "Case"), "Ticket or Case"),
    **{name: (text(200), "a string") for name in (
        "process", "customer", "contract", "service", "ticket_category")},
}
FIELDS: dict[str, Check] = {
    "name": (text(200, empty=False), "a non-empty string (at most 200 characters)"),
    "connector": (is_(str), "the connector's name"),
    "email_address": (text(254, empty=False), "one of the connector's addresses, or *"),
    "folder_path": (text(1000), "a folder name; blank or * for any"),
    "rules": (is_(dict), "an object"),
    "target": (is_(dict), "an object"),
    "send_automated_emails": BOOL, "ack_cc": BOOL, "test_mode": BOOL, "enabled": BOOL,
    "fallback": BOOL,
    "order": (is_(int), "a whole number"),
}
MOVE: dict[str, Check] = {"order": (lambda v: is_(int)(v) and 1 <= v <= 1_000_000,
                                    "a whole number from 1")}


def route_json(route: Route, order: int, flags: dict[int, list[str]]) -> dict:
    return {"id": route.id, **route_snapshot(route, order), "flags": flags.get(route.id, [])}


def _invalid(body: dict, required: tuple[str, ...] = ()) -> web.Response | None:
    """The first shape problem, nested ``rules`` and ``target`` included."""
    problem = shape_error(body, "R-R1", FIELDS, required)
    for name, spec in (("rules", RULES), ("target", TARGET)):
        if problem is None and isinstance(body.get(name), dict):
            problem = shape_error(body[name], "R-R2" if name == "rules" else "R-R1", spec,
                                  prefix=f"{name}.")
    return problem


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    def routes(request: web.Request) -> DirectoryOps:
        return request.app[key].directory_ops

    async def flags(request: web.Request) -> dict[int, list[str]]:
        """R-R8: flagged routes by id."""
        found: dict[int, list[str]] = {}
        for route, why in await routes(request).flagged_routes():
            found.setdefault(route.id, []).append(why)
        return found

    async def read(request: web.Request, required: tuple[str, ...] = ()
                   ) -> tuple[dict, str] | web.Response:
        body, who = await json_object(request), actor(request)
        for answer in (body, who):
            if isinstance(answer, web.Response):
                return answer
        return _invalid(body, required) or (body, who)

    @directory_errors
    async def list_all(request: web.Request) -> web.Response:
        """R-R6: ``?q=`` keeps routes whose address, process or ticket category starts with it."""
        unknown = sorted(set(request.query) - {"q"})
        if unknown:
            return api_error(422, "unknown_field", f"unknown parameter {unknown[0]!r}",
                             unknown[0])
        found = await routes(request).routes(request.match_info["name"],
                                             request.query.get("q", ""))
        marks = await flags(request)
        return web.json_response({"routes": [route_json(r, n, marks) for r, n in found]})

    @directory_errors
    async def create(request: web.Request) -> web.Response:
        """R-R5: placed at the end of its band; ``order`` is not given but moved to later."""
        name = request.match_info["name"]
        given = await read(request, ("name", "email_address"))
        if isinstance(given, web.Response):
            return given
        body, who = given
        if body.pop("connector", name) != name:
            return api_error(422, "rule_violation", f"R-R1: this route belongs to connector "
                             f"{name!r} (the one in the path)", "connector")
        if "order" in body:
            return api_error(422, "rule_violation", "R-R5: a new route goes to the end of its "
                             "band; move it afterwards (POST /api/v1/routes/{id}/move)", "order")
        route = Route(id=0, connector=name, order=0,
                      rules=RouteRules(**body.get("rules", {})),
                      target=RouteTarget(**body.get("target", {})),
                      **{k: v for k, v in body.items() if k not in ("rules", "target")})
        route, order = await routes(request).create_route(route, who)
        return web.json_response(route_json(route, order, await flags(request)), status=201)

    @directory_errors
    async def one(request: web.Request) -> web.Response:
        route_id = path_id(request, "route")
        found = None if isinstance(route_id, web.Response) else \
            await routes(request).route(route_id)
        if found is None:
            return api_error(404, "not_found", f"no route {request.match_info['id']!r}", "id")
        return web.json_response(route_json(*found, await flags(request)))

    @directory_errors
    async def update(request: web.Request) -> web.Response:
        """Only the fields given change; in ``rules`` and ``target`` only the keys given."""
        route_id, given = path_id(request, "route"), await read(request)
        for answer in (route_id, given):
            if isinstance(answer, web.Response):
                return answer
        body, who = given
        route, order = await routes(request).update_route(route_id, body, who)
        return web.json_response(route_json(route, order, await flags(request)))

    @directory_errors
    async def delete(request: web.Request) -> web.Response:
        route_id, who = path_id(request, "route"), actor(request)
        for answer in (route_id, who):
            if isinstance(answer, web.Response):
                return answer
        await routes(request).delete_route(route_id, who)
        return web.Response(status=204)

    @directory_errors
    async def move(request: web.Request) -> web.Response:
        """R-R5 ``{"order": n}``: within the route's band; the others shift."""
        route_id, body, who = path_id(request, "route"), await json_object(request), \
            actor(request)
        for answer in (route_id, body, who):
            if isinstance(answer, web.Response):
                return answer
        problem = shape_error(body, "R-R5", MOVE, ("order",))
        if problem is not None:
            return problem
        route, order = await routes(request).move_route(route_id, body["order"], who)
        return web.json_response(route_json(route, order, await flags(request)))

    router.add_get("/api/v1/connectors/{name}/routes", list_all)
    router.add_post("/api/v1/connectors/{name}/routes", create)
    router.add_get("/api/v1/routes/{id}", one)
    router.add_patch("/api/v1/routes/{id}", update)
    router.add_delete("/api/v1/routes/{id}", delete)
    router.add_post("/api/v1/routes/{id}/move", move)
