"""schemathesis against the served OpenAPI document: no 5xx, no response off the schema.

The gateway runs as a real process (schemathesis' client is synchronous), on a
database seeded with a work item and an unprocessed email so that the
generated requests reach more than the 404 paths.
"""
from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from tests.integration.serve import ServeProcess

TOKEN = "t"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("openapi")
    gw = ServeProcess(workdir).write_config('[[directory.connectors]]\nname = "sales"\n'
                                            'primary_address = "sales@example.test"\n'
                                            'aliases = ["orders@example.test"]\n')
    gw.start()
    subprocess.run(["swaks", "--protocol", "LMTP", "--server", f"127.0.0.1:{gw.lmtp_port}",
                    "--to", "support@example.test"], capture_output=True, timeout=30, check=True)
    subprocess.run(["swaks", "--protocol", "LMTP", "--server", f"127.0.0.1:{gw.lmtp_port}",
                    "--to", "orders@example.test"], capture_output=True, timeout=30, check=True)
    yield gw
    gw.stop()


def test_api_matches_its_openapi_document(served):
    base = f"http://127.0.0.1:{served.http_port}"
    with urllib.request.urlopen(f"{base}/api/v1/openapi.json", timeout=10) as response:
        document = json.load(response)
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def exercise(case):
            case.call_and_validate(base_url=base, headers=headers, checks=CHECKS)

        exercise()


def test_openapi_document_lists_exactly_the_served_operations():
    """Every route the server answers is documented, and nothing documented is missing."""
    from gateway.api.openapi import document
    from gateway.api.server import build_app

    app = build_app(gateway=None)
    served = {(route.method.lower(), route.resource.canonical)
              for route in app.router.routes() if route.method != "HEAD"}
    served -= {("get", "/metrics"), ("get", "/api/v1/openapi.json")}
    documented = {(method, path) for path, item in document("test")["paths"].items()
                  for method in item}
    assert served == documented
