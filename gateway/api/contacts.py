"""``/api/v1/contacts``: the small contact directory of R-R2's sender-company rule.

A contact maps an address (``bob@acme.test``) or a whole domain
(``*@acme.test``) to a company; the exact address wins over its domain
(``directory.routing.company_of``). POSTing a known pattern re-points it to the
new company (200) instead of failing, since there is no PATCH.
"""
from __future__ import annotations

from aiohttp import web

from gateway.api.body import Check, directory_errors, json_object, path_id, shape_error, text
from gateway.api.errors import api_error
from gateway.directory.ops import DirectoryOps

SPEC: dict[str, Check] = {
    "pattern": (text(254, empty=False), "an address or *@domain"),
    "company": (text(200, empty=False), "a company name"),
}


def contact_json(contact_id: int, pattern: str, company: str) -> dict:
    return {"id": contact_id, "pattern": pattern, "company": company}


def register(router: web.UrlDispatcher, key: web.AppKey) -> None:
    def directory(request: web.Request) -> DirectoryOps:
        return request.app[key].directory_ops

    async def list_all(request: web.Request) -> web.Response:
        found = await directory(request).contacts()
        return web.json_response({"contacts": [contact_json(c.id, c.pattern, c.company)
                                                 for c in found]})

    @directory_errors
    async def create(request: web.Request) -> web.Response:
        body = await json_object(request)
        if isinstance(body, web.Response):
            return body
        problem = shape_error(body, "R-R2", SPEC, ("pattern", "company"))
        if problem is not None:
            return problem
        contact_id, pattern, company, created = await directory(request).save_contact(
            body["pattern"], body["company"])
        return web.json_response(contact_json(contact_id, pattern, company),
                                 status=201 if created else 200)

    async def delete(request: web.Request) -> web.Response:
        contact_id = path_id(request, "contact")
        if isinstance(contact_id, web.Response):
            return contact_id
        if not await directory(request).delete_contact(contact_id):
            return api_error(404, "not_found", f"no contact {contact_id}", "id")
        return web.Response(status=204)

    router.add_get("/api/v1/contacts", list_all)
    router.add_post("/api/v1/contacts", create)
    router.add_delete("/api/v1/contacts/{id}", delete)
