"""The OpenAPI document: valid 3.2, complete, served, and kept to by the live service."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV32SpecValidator
from starlette.routing import Mount, Route

from api.openapi import openapi_document
from app import create_app
from pipeline import contract
from pipeline.payloads import (
    CancelledEvent,
    DeltaEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    OutlineEvent,
    ProgressEvent,
    SectionEvent,
    StatusEvent,
)
from pipeline.settings import Settings

# Every route the contract names, as (method, path) with path parameters left unnamed.
CONTRACT_ROUTES = {
    ("get", "/"),
    ("get", "/static/{}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/api/jobs"),
    ("get", "/api/jobs"),
    ("get", "/api/jobs/{}"),
    ("delete", "/api/jobs/{}"),
    ("get", "/api/jobs/{}/events"),
}
# Listed here by hand, so a model the document leaves out is noticed.
EVENT_MODELS: tuple[type[Event], ...] = (StatusEvent, OutlineEvent, ProgressEvent, DeltaEvent,
                                          SectionEvent, DoneEvent, ErrorEvent, CancelledEvent)
SCHEMA_REF = "#/components/schemas/{model}"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace", "query"}
_PATH_PARAMETER = re.compile(r"\{[^}]*\}")

# Bounded so the run takes about half a minute; a fixed seed makes it repeatable, and no
# example database means nothing is written into the work tree. One worker: hypothesis
# describes strategies by parsing source, which breaks when threads do it at once.
SCHEMATHESIS_RUN_S = 200
SCHEMATHESIS_ARGS = (
    "--checks", "all",
    # DELETE cancels a job, which stays readable (contract); it is not a removal.
    "--exclude-checks", "use_after_free",
    "--max-examples", "300",
    "--seed", "20261125",
    "--workers", "1",
    "--request-timeout", "30",
    "--generation-database", "none",
    "--no-color",
)
SCHEMATHESIS_CONFIG = """
# A job ends within a second at 1 ms per LLM call: read each stream whole, to its terminal event.
max-stream-events = 1000

# A cursor is opaque: a well-formed one the service never handed out is rightly refused (400).
[[operations]]
include-operation-id = "listJobs"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]

# Whether a webhook URL is taken depends on more than its shape (WEBHOOK_SECRET, what its host
# resolves to): a well-formed one is rightly refused (422 invalid_webhook).
[[operations]]
include-operation-id = "submitJob"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
# A long `webhook` that breaks the schema may also break MAX_BODY_BYTES first (413).
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "404", "405", "406", "409",
                                                    "413", "415", "422", "428", "429", "5xx"]
"""


def _unnamed(path: str) -> str:
    return _PATH_PARAMETER.sub("{}", path)


def documented_routes() -> set[tuple[str, str]]:
    return {(method, _unnamed(path)) for path, item in openapi_document()["paths"].items()
            for method in HTTP_METHODS & item.keys()}


def served_routes() -> set[tuple[str, str]]:
    routes: set[tuple[str, str]] = set()
    for route in create_app(Settings()).routes:
        if isinstance(route, Mount):
            routes.add(("get", f"{route.path}/{{}}"))
        elif isinstance(route, Route) and route.methods:
            # Starlette answers HEAD wherever it answers GET.
            routes |= {(method.lower(), _unnamed(route.path)) for method in route.methods
                       if method != "HEAD"}
    return routes


def test_document_is_valid_openapi_3_2() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.2.0"
    validate(document, cls=OpenAPIV32SpecValidator)


def test_document_lists_every_route_the_app_serves() -> None:
    assert documented_routes() == served_routes() == CONTRACT_ROUTES


def test_every_error_response_carries_the_error_schema() -> None:
    for path, item in openapi_document()["paths"].items():
        for method in HTTP_METHODS & item.keys():
            for status, response in item[method]["responses"].items():
                if status.startswith(("4", "5")) and "content" in response:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["allOf"] == [{"$ref": "#/components/schemas/Error"}], (
                        method, path, status)


def test_stream_describes_each_event_with_item_schema() -> None:
    document = openapi_document()
    stream = document["paths"]["/api/jobs/{id}/events"]["get"]["responses"]["200"]
    item = stream["content"]["text/event-stream"]["itemSchema"]
    event = document["components"]["schemas"][item["$ref"].rsplit("/", 1)[1]]
    assert set(event["properties"]) == {"id", "event", "data"}
    described = {branch["properties"]["event"]["const"] for branch in event["oneOf"]}
    assert described == set(event["properties"]["event"]["enum"])


def test_stream_event_names_each_event_model_as_the_contract_does() -> None:
    stream_event = openapi_document()["components"]["schemas"]["StreamEvent"]
    assert sorted(stream_event["properties"]["event"]["enum"]) == sorted(contract.EVENT_TYPES)
    data_schemas = {branch["properties"]["event"]["const"]:
                    branch["properties"]["data"]["contentSchema"]["$ref"]
                    for branch in stream_event["oneOf"]}
    assert data_schemas == {model.event: SCHEMA_REF.format(model=model.__name__)
                            for model in EVENT_MODELS}


def test_service_serves_this_document(start_server: Any) -> None:
    server = start_server()
    response = httpx.get(f"{server.url}/openapi.json", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == openapi_document()


@pytest.mark.timeout(SCHEMATHESIS_RUN_S + 30)
def test_live_service_keeps_to_the_document(start_server: Any, tmp_path: Path) -> None:
    server = start_server(OFFLINE_LLM_DELAY_MS="1", MAX_QUEUED_JOBS="100000",
                          MAX_RUNNING_JOBS="50", HEARTBEAT_SECONDS="1")
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         f"{server.url}/openapi.json", *SCHEMATHESIS_ARGS],
        cwd=tmp_path, capture_output=True, text=True, timeout=SCHEMATHESIS_RUN_S,
    )
    assert run.returncode == 0, (f"{run.stdout[-20_000:]}\n{run.stderr[-2_000:]}\n"
                                 f"--- server log ---\n{server.log()[-5_000:]}")


def test_query_numbers_are_ascii_digits(start_server: Any) -> None:
    # The document says digits 0-9; str.isdigit and re's \d also take "²" and "٣".
    server = start_server(OFFLINE_LLM_DELAY_MS="1")
    job = httpx.post(f"{server.url}/api/jobs", json={"topic": "Home composting"},
                     headers={"Prefer": "wait=10"}, timeout=15).json()
    events = f"{server.url}/api/jobs/{job['id']}/events"
    cases = {
        "limit=²": (f"{server.url}/api/jobs", {"limit": "²"}, {}),
        "limit=٣": (f"{server.url}/api/jobs", {"limit": "٣"}, {}),
        "last_event_id=٣": (events, {"last_event_id": "٣"}, {}),
        "last_event_id=\\x84 beside an empty Last-Event-ID": (
            events, {"last_event_id": "\x84"}, {"Last-Event-ID": ""}),
    }
    # One connection each: after a 500 the server may drop the connection it came on.
    statuses = {name: httpx.get(url, params=params, headers=headers, timeout=10).status_code
                for name, (url, params, headers) in cases.items()}
    assert statuses == dict.fromkeys(statuses, 400)


def test_the_document_states_the_configured_topic_limit(start_server: Any) -> None:
    server = start_server(MAX_TOPIC_CHARS="50")
    topic = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]["Topic"]
    assert "1..50 characters" in topic["description"]
    assert re.fullmatch(topic["pattern"], "x" * 50)
    assert not re.fullmatch(topic["pattern"], "x" * 51)
