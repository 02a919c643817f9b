"""The OpenAPI document: valid 3.2, complete, served, and kept by the live service under schemathesis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV32SpecValidator

from api.openapi import openapi_document

# Every route the contract names, as (method, OpenAPI path).
CONTRACT_ROUTES = {
    ("get", "/"),
    ("get", "/static/{file}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/api/jobs"),
    ("get", "/api/jobs"),
    ("get", "/api/jobs/{id}"),
    ("delete", "/api/jobs/{id}"),
    ("get", "/api/jobs/{id}/events"),
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace", "query"}

# Bounded so the whole run stays near a minute: a fixed seed for a repeatable run,
# no example database so nothing is written into the work tree.
SCHEMATHESIS_RUN_S = 200
SCHEMATHESIS_ARGS = (
    "--checks", "all",
    "--max-examples", "30",
    "--seed", "20261125",
    "--workers", "4",
    "--request-timeout", "30",
    "--generation-database", "none",
    "--no-color",
)


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item
            if method in HTTP_METHODS}


def test_document_is_valid_openapi_3_2() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.2.0"
    validate(document, cls=OpenAPIV32SpecValidator)


def test_document_lists_every_route_of_the_contract() -> None:
    assert operations(openapi_document()) == CONTRACT_ROUTES


def test_every_error_status_carries_the_error_schema() -> None:
    for path, item in openapi_document()["paths"].items():
        for method in HTTP_METHODS & item.keys():
            for status, response in item[method]["responses"].items():
                if status.startswith(("4", "5")) and "content" in response:
                    schema = response["content"]["application/json"]["schema"]
                    assert {"$ref": "#/components/schemas/Error"} in schema["allOf"], (method, path, status)


def test_stream_describes_each_event_with_item_schema() -> None:
    document = openapi_document()
    stream = document["paths"]["/api/jobs/{id}/events"]["get"]["responses"]["200"]
    item = stream["content"]["text/event-stream"]["itemSchema"]
    event = document["components"]["schemas"][item["$ref"].rsplit("/", 1)[1]]
    assert set(event["properties"]) == {"id", "event", "data"}
    assert {branch["properties"]["event"]["const"] for branch in event["oneOf"]} == set(
        event["properties"]["event"]["enum"])


def test_service_serves_this_document(start_server: Any) -> None:
    server = start_server()
    response = httpx.get(f"{server.url}/openapi.json", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == openapi_document()


@pytest.mark.timeout(SCHEMATHESIS_RUN_S + 30)
def test_live_service_keeps_to_the_document(start_server: Any, tmp_path: Path) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="1", MAX_QUEUED_JOBS="100000", MAX_RUNNING_JOBS="50",
                          HEARTBEAT_SECONDS="1")
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", *SCHEMATHESIS_ARGS],
        cwd=tmp_path, capture_output=True, text=True, timeout=SCHEMATHESIS_RUN_S,
    )
    assert run.returncode == 0, f"{run.stdout[-20_000:]}\n{run.stderr[-2_000:]}\n--- server log ---\n{server.log()[-5_000:]}"
