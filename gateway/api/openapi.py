"""``/api/v1/openapi.json``: the API as the server really serves it (SPEC §5.3).

Kept beside the handlers and checked by schemathesis in the test suite
(tests/integration/test_openapi.py): every response the server gives must
validate against this document, and none may be a 5xx. Every error of every
operation has the one shape ``{"error": {"code", "message", "field"}}``.
"""
from __future__ import annotations

from gateway.directory import presets
from gateway.model import MODES, STATES

S = {"type": "string"}
NULLABLE_S = {"type": ["string", "null"]}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STR_LIST = {"type": "array", "items": S}


def obj(properties: dict, required: list[str] | None = None, extra: bool = True) -> dict:
    schema = {"type": "object", "properties": properties,
              "required": required if required is not None else list(properties)}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS = {
    "Error": obj({"error": obj({"code": S, "message": S, "field": NULLABLE_S})}),
    "Target": obj({"ref": S, "action": {"type": "string", "enum": ["created", "appended"]}}),
    "TraceLine": obj({"stage": S, "verdict": S, "reason": S, "matched": STR_LIST,
                      "duration_ms": {"type": "number"}}),
    "Email": obj({
        "id": INT, "message_id": NULLABLE_S, "subject": NULLABLE_S, "connector": S,
        "direction": {"type": "string", "enum": ["incoming", "outgoing"]}, "source": S,
        "state": S, "outcome": NULLABLE_S, "reason": NULLABLE_S,
        "targets": {"type": "array", "items": ref("Target")}, "received_at": S, "size": INT,
        "envelope": obj({"mail_from": NULLABLE_S, "rcpt_to": STR_LIST}),
        "folder_path": S}, required=["id", "message_id", "subject", "connector", "direction",
                                    "source", "outcome", "reason", "targets", "received_at"]),
    "Id": {"type": "integer"},
    "EmailList": obj({"emails": {"type": "array", "items": ref("Email")}}),
    "WorkItem": obj({
        "ref": S, "kind": {"type": "string", "enum": ["Ticket", "Case", "Action"]}, "uuid": S,
        "connector": S, "mode": {"type": "string", "enum": list(MODES)},
        "state": {"type": "string", "enum": list(STATES)}, "wait_type": NULLABLE_S,
        "new_info": BOOL, "parent": NULLABLE_S, "split_into": STR_LIST,
        "merged_into": NULLABLE_S, "converted_to": NULLABLE_S, "linked": STR_LIST,
        "copied_from": NULLABLE_S, "contacts": STR_LIST, "custom_data": {"type": "object"},
        "send_automated_emails": BOOL, "created_at": S, "updated_at": S}),
    "Event": obj({"id": INT, "type": S, "ref": NULLABLE_S, "email_id": {"type": ["integer", "null"]},
                  "data": {"type": "object"}, "created_at": S}),
    "Settings": obj({"mode": {"type": "string", "enum": ["off", "mixed", "plus_only"]},
                     "hide_plus_in_from": BOOL}),
    "Connector": obj({
        "name": S, "service": S, "direction": S, "protocol": S, "primary_address": S,
        "aliases": STR_LIST, "enabled": BOOL, "route_on_envelope": BOOL, "username": NULLABLE_S,
        "smtp_host": S, "smtp_port": INT, "smtp_tls": S, "password_set": BOOL,
        # polled connectors only (protocol imap, pop3, graph):
        "host": S, "port": INT, "tls": S, "folders": STR_LIST, "poll_interval": INT,
        "shared_mailbox": S, "tenant_id": S, "application_id": S, "certificate_file": S,
        "certificate_thumbprint": S, "authority_host": S, "graph_base_url": S, "ca_file": S,
        "tls_verify": BOOL, "keep_on_server": BOOL, "start_from": S, "idle": BOOL,
        "move_to": S,
        "client_secret_set": BOOL, "certificate_password_set": BOOL,
        "warnings": {**STR_LIST, "description": "accepted but risky settings (R-C4: "
                     "tls_verify false, tls none)"}},
        required=["name", "service", "direction", "protocol", "primary_address", "aliases",
                  "enabled", "route_on_envelope", "username", "smtp_host", "smtp_port",
                  "smtp_tls", "password_set"]),
    "ConnectorTest": {**obj({"ok": BOOL, "detail": S, "tested_at": {"type": "number"}}),
                      "description": "R-C3: ok false means the MAILBOX failed (detail holds "
                                     "the server's own words), not the request"},
    "PollerStatus": obj({
        "connector": S, "protocol": S,
        "state": {"type": "string", "enum": ["starting", "ok", "failing", "stopped"]},
        "rounds": INT, "failures": INT, "last_error": NULLABLE_S,
        "last_success_at": {"type": ["number", "null"]}, "last_round_fetched": INT,
        "fetched_total": INT, "next_poll_at": {"type": ["number", "null"]}}),
    "Route": obj({
        "id": INT, "name": S, "connector": S, "email_address": S, "folder_path": S,
        "rules": obj({"important": {"type": ["boolean", "null"]}, "attachment_types": S,
                      "subject_keywords": S, "sender_companies": S,
                      "sender_list_includes": S, "recipient_list_includes": S}),
        "target": obj({"kind": S, "process": S, "customer": S, "contract": S, "service": S,
                       "ticket_category": S}),
        "send_automated_emails": BOOL, "ack_cc": BOOL, "test_mode": BOOL, "enabled": BOOL,
        "order": INT, "fallback": BOOL, "flags": STR_LIST}),
    "Contact": obj({"id": INT, "pattern": S, "company": S}),
    "Activity": obj({"id": INT, "entity": S, "action": S, "actor": S, "at": S,
                     "changes": {"type": "object"}}),
    "Placed": obj({"id": INT, "outcome": S, "reason": NULLABLE_S,
                   "targets": {"type": "array", "items": ref("Target")}}),
}

ERROR = {"description": "refused; the message names the rule (R-…) it breaks",
         "content": {"application/json": {"schema": ref("Error")}}}


def answer(schema: dict | None, status: str = "200", description: str = "ok") -> dict:
    responses: dict = {"default": ERROR}
    if schema is None:
        responses[status] = {"description": description}
    else:
        responses[status] = {"description": description,
                             "content": {"application/json": {"schema": schema}}}
    return responses


def body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def path_param(name: str, schema: dict = S) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query(name: str, schema: dict = S, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema}


REF_PATH = path_param("ref")
EMAIL_ID = path_param("id", INT)
ITEM = answer(ref("WorkItem"))


def enum(values) -> dict:
    return {"type": "string", "enum": list(values)}


PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
CONNECTOR_IN = {
    "name": S, "service": enum(presets.SERVICES),
    "protocol": {**enum(presets.PROTOCOLS), "description": "R-C1: required for service "
                 "'other' only; the other services imply it"},
    "direction": enum(["incoming", "outgoing", "both"]), "primary_address": S,
    "aliases": STR_LIST, "enabled": BOOL, "route_on_envelope": BOOL, "username": NULLABLE_S,
    "password": {**NULLABLE_S, "maxLength": 50, "description": "R-C1: at most 50 characters; "
                 "never returned (password_set)"},
    "smtp_host": S, "smtp_port": PORT, "smtp_tls": enum(presets.TLS_MODES),
    # R-C1 poll settings (polled services only; blank host/port take the service's preset)
    "host": S, "port": PORT, "tls": enum(presets.TLS_MODES),
    "folders": {**STR_LIST, "minItems": 1}, "poll_interval": {"type": "integer",
                                                              "minimum": 10, "maximum": 86400},
    "shared_mailbox": S, "tenant_id": S, "application_id": S, "certificate_file": S,
    "certificate_thumbprint": S, "authority_host": {**S, "description": "https:// URL"},
    "graph_base_url": {**S, "description": "https:// URL"}, "ca_file": S,
    "tls_verify": {**BOOL, "description": "R-C4: false turns certificate checks off (warned)"},
    "keep_on_server": BOOL, "start_from": enum(["all", "now"]),
    "idle": {**BOOL, "description": "IMAP: new mail wakes the poller through IDLE (RFC 2177) "
             "instead of waiting for poll_interval"},
    "move_to": {**S, "description": "R-B5: a folder processed mail is moved to instead of "
                "being deleted (IMAP, Graph); \"\" deletes"},
    "client_secret": {**NULLABLE_S, "description": "R-I6; never returned (client_secret_set)"},
    "certificate_password": {**NULLABLE_S, "description": "R-I6; never returned "
                             "(certificate_password_set)"}}
CONNECTOR_PATCH = {**CONNECTOR_IN, "force": {
    **BOOL, "description": "R-C3: enable even though the connector's last test failed"}}
ROUTE_IN = {
    "name": S, "email_address": S, "folder_path": S, "send_automated_emails": BOOL,
    "ack_cc": BOOL, "test_mode": BOOL, "enabled": BOOL, "fallback": BOOL,
    "rules": {"type": "object"}, "target": {"type": "object"}}
NAME_PATH = path_param("name")
NO_CONTENT = {"default": ERROR, "204": {"description": "deleted"}}


def directory_paths(v1: str) -> dict:
    """Connectors, routes, contacts and the activity history (R-C*, R-R*)."""
    connector = f"{v1}/connectors/{{name}}"
    route = f"{v1}/routes/{{id}}"
    return {
        f"{v1}/connectors": {
            "get": {"responses": answer(obj({"connectors": {"type": "array",
                                                            "items": ref("Connector")}}))},
            "post": {"requestBody": body(obj(CONNECTOR_IN, ["name", "primary_address"], False)),
                     "responses": answer(ref("Connector"), "201", "created")}},
        connector: {
            "get": {"parameters": [NAME_PATH], "responses": answer(ref("Connector"))},
            "patch": {"parameters": [NAME_PATH],
                      "requestBody": body(obj(CONNECTOR_PATCH, [], False)),
                      "responses": answer(ref("Connector"))},
            "delete": {"parameters": [NAME_PATH], "responses": NO_CONTENT}},
        f"{connector}/test": {"post": {
            "parameters": [NAME_PATH],
            "description": "R-C3: log in for real (IMAP LOGIN + SELECT, POP3 USER/PASS + STAT,"
                           " Graph token + one folder read, SMTP EHLO + AUTH) and keep the "
                           "result. 200 whenever the test ran: ok false is the mailbox failing"
                           ". Enabling an incoming connector whose last test failed then needs"
                           " \"force\": true (PATCH).",
            "responses": answer(ref("ConnectorTest"), description="the test ran")}},
        f"{connector}/poll": {"post": {
            "parameters": [NAME_PATH],
            "description": "R-I4 poll now: run one round of the connector's poller and answer "
                           "its status (200 also when the round failed: state and last_error "
                           "say how). 409 when the connector is not polled now.",
            "responses": answer(ref("PollerStatus"), description="the round ran")}},
        f"{connector}/routes": {
            "get": {"parameters": [NAME_PATH, query("q")],
                    "responses": answer(obj({"routes": {"type": "array",
                                                        "items": ref("Route")}}))},
            "post": {"parameters": [NAME_PATH],
                     "requestBody": body(obj(ROUTE_IN, ["email_address"], False)),
                     "responses": answer(ref("Route"), "201", "created")}},
        route: {
            "get": {"parameters": [EMAIL_ID], "responses": answer(ref("Route"))},
            "patch": {"parameters": [EMAIL_ID], "requestBody": body(obj(ROUTE_IN, [], False)),
                      "responses": answer(ref("Route"))},
            "delete": {"parameters": [EMAIL_ID], "responses": NO_CONTENT}},
        f"{route}/move": {"post": {"parameters": [EMAIL_ID],
                                   "requestBody": body(obj({"order": INT}, extra=False)),
                                   "responses": answer(ref("Route"))}},
        f"{v1}/contacts": {
            "get": {"responses": answer(obj({"contacts": {"type": "array",
                                                          "items": ref("Contact")}}))},
            "post": {"requestBody": body(obj({"pattern": S, "company": S}, extra=False)),
                     "responses": {**answer(ref("Contact"), "201", "created"),
                                   "200": {"description": "the pattern now names this company",
                                           "content": {"application/json": {
                                               "schema": ref("Contact")}}}}}},
        f"{v1}/contacts/{{id}}": {"delete": {"parameters": [EMAIL_ID],
                                            "responses": NO_CONTENT}},
        f"{v1}/activity": {"get": {
            "parameters": [query("entity"), query("after", INT), query("limit", INT)],
            "responses": answer(obj({"activity": {"type": "array",
                                                  "items": ref("Activity")}}))}},
    }


def paths() -> dict:
    v1 = "/api/v1"
    workitem = f"{v1}/workitems/{{ref}}"
    return {
        **directory_paths(v1),
        "/healthz": {"get": {"security": [], "responses": answer(obj({"status": S}))}},
        "/readyz": {"get": {"security": [], "responses": {
            "200": {"description": "ready", "content": {"application/json": {
                "schema": obj({"ready": BOOL, "checks": {"type": "object"}})}}},
            "503": {"description": "not ready (draining, store down)", "content": {
                "application/json": {"schema": obj({"ready": BOOL,
                                                    "checks": {"type": "object"}})}}}}}},
        f"{v1}/emails": {"get": {"parameters": [query("message_id", S, True)],
                                 "description": "The copies with this Message-ID, oldest "
                                 "first; at most 100.",
                                 "responses": answer(ref("EmailList"))}},
        f"{v1}/emails/{{id}}": {"get": {"parameters": [EMAIL_ID],
                                        "responses": answer(ref("Email"))}},
        f"{v1}/emails/{{id}}/raw": {"get": {"parameters": [EMAIL_ID], "responses": {
            "default": ERROR, "200": {"description": "the message exactly as received",
                                      "content": {"message/rfc822": {"schema": S}}}}}},
        f"{v1}/unprocessed": {"get": {"parameters": [query("after", INT), query("limit", INT)],
                                      "responses": answer(ref("EmailList"))}},
        f"{v1}/unprocessed/{{id}}/reprocess": {"post": {
            "parameters": [EMAIL_ID],
            "responses": answer(obj({"id": INT, "state": S}), "202", "back in the journal")}},
        f"{v1}/unprocessed/{{id}}/attach": {"post": {
            "parameters": [EMAIL_ID], "requestBody": body(obj({"ref": S}, extra=False)),
            "responses": answer(ref("Placed"))}},
        f"{v1}/unprocessed/{{id}}/create": {"post": {
            "parameters": [EMAIL_ID], "requestBody": body(obj({"route_id": INT}, extra=False)),
            "responses": answer(ref("Placed"))}},
        f"{v1}/events": {"get": {
            "parameters": [query("after", {"type": "integer", "minimum": 0}),
                           query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
            "responses": answer(obj({"events": {"type": "array", "items": ref("Event")},
                                     "last": INT}))}},
        f"{v1}/settings": {
            "get": {"responses": answer(ref("Settings"))},
            "patch": {"requestBody": body(obj(
                {"mode": {"type": "string", "enum": ["off", "mixed", "plus_only"]},
                 "hide_plus_in_from": BOOL}, required=[], extra=False)),
                "responses": answer(ref("Settings"))}},
        f"{v1}/workitems": {
            "get": {"parameters": [query("connector"), query("state"), query("mode"),
                                   query("limit", {"type": "integer", "minimum": 1,
                                                   "maximum": 1000})],
                    "responses": answer(obj({"workitems": {"type": "array",
                                                           "items": ref("WorkItem")}}))},
            "post": {"requestBody": body(obj({
                "kind": {"type": "string", "enum": ["Ticket", "Case", "Action"]},
                "connector": S, "parent": NULLABLE_S, "mode": S, "state": S,
                "wait_type": NULLABLE_S, "custom_data": {"type": "object"},
                "contacts": STR_LIST, "send_automated_emails": BOOL},
                required=["kind", "connector"], extra=False)),
                "responses": answer(ref("WorkItem"), "201", "created")}},
        workitem: {"get": {"parameters": [REF_PATH], "responses": ITEM}},
        f"{workitem}/transition": {"post": {
            "parameters": [REF_PATH],
            "requestBody": body(obj({"state": S, "wait_type": NULLABLE_S}, ["state"], False)),
            "responses": ITEM}},
        f"{workitem}/split": {"post": {
            "parameters": [REF_PATH], "requestBody": body(obj({"children": INT}, extra=False)),
            "responses": answer(obj({"children": {"type": "array", "items": ref("WorkItem")}}),
                                "201", "the new child Tickets")}},
        f"{workitem}/merge": {"post": {
            "parameters": [REF_PATH], "requestBody": body(obj({"into": S}, extra=False)),
            "responses": ITEM}},
        f"{workitem}/convert": {"post": {
            "parameters": [REF_PATH], "requestBody": body(obj({}, [], False), required=False),
            "responses": answer(ref("WorkItem"), "201", "the Case")}},
        f"{workitem}/link": {"post": {
            "parameters": [REF_PATH], "requestBody": body(obj({"ref": S}, extra=False)),
            "responses": ITEM}},
        f"{workitem}/parent": {"post": {
            "parameters": [REF_PATH], "requestBody": body(obj({"parent": NULLABLE_S},
                                                              extra=False)),
            "responses": ITEM}},
        f"{workitem}/emails": {
            "get": {"parameters": [REF_PATH], "responses": answer(ref("EmailList"))},
            "post": {"parameters": [REF_PATH], "requestBody": body(obj(
                {"to": STR_LIST, "cc": STR_LIST, "subject": S, "body": S,
                 "in_reply_to": NULLABLE_S, "share_with_linked": BOOL,
                 "attachments": {"type": "array", "items": obj(
                     {"filename": S, "content_type": S, "content_base64": S}, extra=False)}},
                ["to", "subject", "body"], False)),
                "responses": answer(obj({"id": INT, "message_id": S}), "202", "queued")}},
    }


def document(version: str) -> dict:
    """The OpenAPI 3.1 document; handlers registered elsewhere add their own paths."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailgate", "version": version,
                 "description": "Mail gateway for case management (SPEC §5.3). Errors are "
                                "{\"error\": {\"code\", \"message\", \"field\"}} naming the "
                                "rule they enforce."},
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "admin": {"type": "http", "scheme": "bearer"}}},
        "security": [{"admin": []}],
        "paths": paths(),
    }
