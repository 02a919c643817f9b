"""The OpenAPI document of the HTTP and SSE contract, served at GET /openapi.json.

It is OpenAPI 3.2 because 3.2's `itemSchema` describes one event of a `text/event-stream`:
each event's `data` names its JSON with `contentMediaType` and `contentSchema`, so a fuzzer
checks every event a stream sends, not only the status line. The job, the job list and each
event's `data` are generated from the models in `pipeline/payloads.py`, which the service
serialises, and every contract word comes from `pipeline/contract.py`; so neither can drift
from what is sent. Request errors are declared once (`ERRORS`) and attached to operations by
code, so each documented status also pins the codes it may carry.
"""

from __future__ import annotations

import json
from collections import defaultdict
from copy import deepcopy
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from pipeline import contract
from pipeline.payloads import Event, Job, JobList
from pipeline.settings import Settings
from pipeline.webhook_target import MAX_URL_CHARS

__all__ = ["openapi_document"]

Json = dict[str, Any]

DEFAULT_MAX_TOPIC_CHARS = Settings.max_topic_chars
SCHEMA_REF = "#/components/schemas/{model}"
# Empty counts as no id at all, as when EventSource has none yet.
EVENT_ID_PATTERN = "^([0-9]{1,18})?$"
_JOB_ID = contract.JOB_ID_PATTERN.strip("^$")
#: every event's `data` model, in the contract's order; one whose name the contract lacks fails here
EVENTS = sorted(Event.__subclasses__(), key=lambda model: contract.EVENT_TYPES.index(model.event))

# code -> (status, when it happens): every request error the service answers with.
ERRORS: dict[str, tuple[int, str]] = {
    "malformed_body": (400, "the body cannot be read: not a JSON object in UTF-8 (nested too "
                            "deeply, a number too long, NaN) or not a UTF-8 form"),
    "invalid_idempotency_key": (400, "`Idempotency-Key` is not 1..200 printable ASCII characters"),
    "invalid_last_event_id": (400, "`Last-Event-ID` or `last_event_id` is not an event id"),
    "invalid_cursor": (400, "`cursor` is not one this service handed out"),
    "invalid_limit": (400, f"`limit` is not a whole number from 1 to {contract.MAX_PAGE}"),
    "invalid_status": (400, "`status` is not a job status"),
    "cors_refused": (400, "a CORS preflight from an origin, method or header not allowed"),
    "unauthorized": (401, "`API_TOKENS` is set and the bearer token (or `?token=`) is missing "
                          "or wrong"),
    "not_found": (404, "no such job, or it expired"),
    "method_not_allowed": (405, "the path exists, but not with this method"),
    "held_elsewhere": (421, "on Fly without Redis, another machine holds the job: the answer carries "
                            "`fly-replay: instance=<id>` and Fly's proxy replays the request there"),
    "idempotency_conflict": (409, "this `Idempotency-Key` was used with another body"),
    "not_cancellable": (409, "the job already succeeded or failed"),
    "body_too_large": (413, "the body is larger than the service accepts"),
    "unsupported_media_type": (415, "the body is neither JSON nor form-encoded"),
    "invalid_topic": (422, "`topic` is missing, not a string, empty after trimming, too long, "
                           "or holds a control character"),
    "invalid_webhook": (422, "`webhook` is not an https URL to a public address, "
                             "`webhook_events_filter` names an unknown event, or `WEBHOOK_SECRET` "
                             "is not set"),
    "queue_full": (429, "the job queue is full"),
    "rate_limited": (429, "this client submitted too many jobs"),
    "too_many_streams": (429, "too many event streams are open"),
    "shutting_down": (503, "the service is draining before it stops"),
    "not_ready": (503, "the service does not accept jobs now: it is draining, or Redis is away"),
    "store_unavailable": (503, "`REDIS_URL` is set and Redis cannot be reached now"),
}

# What `str.strip()` trims, and what a topic may not hold: control characters (Unicode Cc)
# and the line and paragraph separators. Lone surrogates are refused too, but a JSON Schema
# pattern cannot name them, so only the description says so.
_TRIMMED = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029"


def topic_pattern(max_chars: int) -> str:
    """Trimmed, 1..max_chars characters are left, none of them `_CONTROL`; so the first and
    the last are neither trimmed nor control characters."""
    return (
        rf"^[{_TRIMMED}]*[^{_TRIMMED}{_CONTROL}]"
        rf"(?:[^{_CONTROL}]{{0,{max_chars - 2}}}[^{_TRIMMED}{_CONTROL}])?[{_TRIMMED}]*$"
    )


_STRING: Json = {"type": "string"}
_RETRY_AFTER: Json = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
_FLY_REPLAY: Json = {
    "description": "The machine that holds the job, for Fly's proxy to replay the request on.",
    "required": True,
    "schema": {"type": "string", "pattern": "^instance=" + contract.MACHINE_ID_PATTERN.removeprefix("^")},
}
_WWW_AUTHENTICATE: Json = {
    "description": "The bearer challenge.",
    "required": True,
    "schema": {"type": "string", "pattern": "^Bearer "},
}
_LOCATION: Json = {
    "description": "The job's URL, `/api/jobs/{id}`.",
    "required": True,
    "schema": {"type": "string", "pattern": f"^/api/jobs/{_JOB_ID}$"},
}
# Stateful testing follows these from a job to the operations on it.
_JOB_LINKS: Json = {
    name: {"operationId": operation_id, "parameters": {"id": "$response.body#/id"}}
    for name, operation_id in (("GetJob", "getJob"), ("CancelJob", "cancelJob"),
                               ("StreamJobEvents", "streamJobEvents"))
}


def _ref(name: str) -> Json:
    return {"$ref": SCHEMA_REF.format(model=name)}


def _param(name: str) -> Json:
    return {"$ref": f"#/components/parameters/{name}"}


def _object(properties: Json) -> Json:
    """An object schema with every property required; other properties are allowed."""
    return {"type": "object", "required": list(properties), "properties": properties}


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _errors(*codes: str) -> dict[str, Json]:
    """One response per status among `codes`, its `error.code` pinned to those codes."""
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in codes:
        by_status[ERRORS[code][0]].append(code)
    responses: dict[str, Json] = {}
    for status, status_codes in sorted(by_status.items()):
        schema = {
            "allOf": [_ref("Error")],
            "properties": {"error": {"properties": {"code": {"enum": status_codes}}}},
        }
        description = "; ".join(f"`{code}`: {ERRORS[code][1]}" for code in status_codes)
        response: Json = {"description": description + ".", "content": _json(schema)}
        if status in (429, 503):
            response["headers"] = {"Retry-After": _RETRY_AFTER}
        elif status == 401:
            response["headers"] = {"WWW-Authenticate": _WWW_AUTHENTICATE}
        elif status == 421:
            response["headers"] = {"fly-replay": _FLY_REPLAY}
        responses[str(status)] = response
    return responses


def _job_response(description: str, *, location: bool = True) -> Json:
    response: Json = {"description": description, "content": _json(_ref("Job")),
                      "links": deepcopy(_JOB_LINKS)}
    if location:
        response["headers"] = {"Location": _LOCATION}
    return response


def _payload_schemas() -> Json:
    """The job, the job list and each event's `data` as the service serialises them, with
    the types they name (JobErrorBody, Links, JobStatus, Stage), keyed by class name.
    Pydantic's titles only repeat the class and field names, so they are left out."""
    models: list[type[BaseModel]] = [Job, JobList, *EVENTS]
    _, generated = models_json_schema([(model, "serialization") for model in models],
                                      ref_template=SCHEMA_REF)
    schemas: Json = generated["$defs"]
    for schema in schemas.values():
        schema.pop("title", None)
        for field in schema.get("properties", {}).values():
            field.pop("title", None)
    return schemas


def _schemas(max_topic_chars: int) -> Json:
    return {
        "Topic": {
            "type": "string",
            "pattern": topic_pattern(max_topic_chars),
            "description": (f"What the article is about. Trimmed of surrounding whitespace, "
                            f"then 1..{max_topic_chars} characters with no control character "
                            "(Unicode Cc), lone surrogate, U+2028 or U+2029."),
            "examples": ["Home composting"],
        },
        "JobRequest": {"type": "object", "required": ["topic"], "properties": {
            "topic": _ref("Topic"),
            "webhook": {"type": "string", "format": "uri", "maxLength": MAX_URL_CHARS,
                        "description": "An https URL to POST the job's events to, signed as "
                                       "Standard Webhooks says with `WEBHOOK_SECRET`."},
            "webhook_events_filter": {
                "type": "array", "minItems": 1, "uniqueItems": True,
                "items": {"enum": list(contract.WEBHOOK_EVENTS)},
                "description": "Which events to send; "
                               f"`{json.dumps(list(contract.DEFAULT_WEBHOOK_EVENTS))}` when left out. In a "
                               "form, a comma-separated list."},
        }},
        **_payload_schemas(),
        "ErrorBody": _object({
            "code": {"type": "string", "pattern": "^[a-z][a-z0-9]*(_[a-z0-9]+)*$"},
            "message": {"type": "string", "description": "One human sentence."},
        }),
        "Error": _object({"error": _ref("ErrorBody")}),
        "StreamEvent": {
            **_object({
                "id": {"type": "string", "pattern": "^[1-9][0-9]*$",
                       "description": "The job's own sequence number: 1, 2, 3, ... with no gaps."},
                "event": {"enum": [model.event for model in EVENTS]},
                "data": {"type": "string",
                         "description": "One line of JSON; its shape depends on `event`."},
            }),
            "description": "One event as an SSE parser reads it.",
            "oneOf": [
                {"properties": {"event": {"const": model.event},
                                "data": {"contentMediaType": "application/json",
                                         "contentSchema": _ref(model.__name__)}}}
                for model in EVENTS
            ],
        },
    }


def _parameters() -> Json:
    event_id = {"type": "string", "pattern": EVENT_ID_PATTERN}
    return {
        "JobId": {"name": "id", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": contract.JOB_ID_PATTERN}},
        "IdempotencyKey": {
            "name": "Idempotency-Key", "in": "header",
            "description": ("The same key with the same body returns the same job (200); "
                            "with another body, 409."),
            "schema": {"type": "string", "pattern": "^[!-~]{1,200}$"},
        },
        "Prefer": {
            "name": "Prefer", "in": "header",
            "description": (f"`wait=N` (N is capped at {contract.MAX_PREFER_WAIT_S}): hold the "
                            "answer up to N seconds, and return 201 with the finished job if it "
                            "ends by then. Other preferences are ignored (RFC 7240)."),
            "schema": _STRING,
            "examples": {"wait": {"value": "wait=5"}},
        },
        "LastEventIdHeader": {
            "name": "Last-Event-ID", "in": "header",
            "description": ("Replay the events with a larger id; EventSource sends it when it "
                            "reconnects."),
            "schema": event_id,
        },
        "LastEventIdQuery": {
            "name": "last_event_id", "in": "query",
            "description": "As `Last-Event-ID`, for clients that cannot set headers.",
            "schema": event_id,
        },
        # An empty `status` or `cursor` counts as not given, as an HTML form sends it.
        "Status": {"name": "status", "in": "query",
                   "description": "Only jobs in this status; empty means any.",
                   "schema": {"enum": [*(status.value for status in contract.JobStatus), ""]}},
        "Limit": {"name": "limit", "in": "query", "description": "Page size.",
                  "schema": {"type": "integer", "minimum": 1, "maximum": contract.MAX_PAGE,
                             "default": contract.DEFAULT_PAGE}},
        "Cursor": {"name": "cursor", "in": "query",
                   "description": ("`next_cursor` of the previous page; an unknown one gets 400, "
                                   "an empty one means the first page."),
                   "schema": {"type": "string", "pattern": f"^({_JOB_ID})?$"}},
    }


def _stream_response() -> Json:
    terminal = sorted(contract.TERMINAL_EVENTS)
    return {
        "description": ("The job's events; the stream ends after its terminal event, one of "
                        + ", ".join(f"`{event}`" for event in terminal)
                        + ". It opens with `retry: 2000`, and `: keep-alive` comments go out "
                        "while nothing happens."),
        "headers": {
            "Cache-Control": {"required": True, "schema": {"const": "no-store"}},
            "X-Accel-Buffering": {"required": True, "schema": {"const": "no"}},
        },
        "content": {"text/event-stream": {
            "itemSchema": _ref("StreamEvent"),
            # The whole stream, as a list of events: at most one terminal event.
            "schema": {"type": "array",
                       "contains": {"properties": {"event": {"enum": terminal}}},
                       "minContains": 0, "maxContains": 1},
        }},
    }


def _api_paths() -> Json:
    job_body = {"required": True, "content": {
        "application/json": {"schema": _ref("JobRequest")},
        "application/x-www-form-urlencoded": {"schema": _ref("JobRequest")},
    }}
    next_page = {"operationId": "listJobs", "parameters": {"cursor": "$response.body#/next_cursor"}}
    return {
        "/api/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Start writing an article",
                "parameters": [_param("IdempotencyKey"), _param("Prefer")],
                "requestBody": job_body,
                "responses": {
                    "200": _job_response("The job this `Idempotency-Key` made, for the same body."),
                    "201": _job_response("`Prefer: wait=N` and the job ended in time."),
                    "202": _job_response("Accepted: the job is queued or running."),
                    **_errors("malformed_body", "invalid_idempotency_key", "unauthorized",
                              "idempotency_conflict", "body_too_large", "unsupported_media_type",
                              "invalid_topic", "invalid_webhook", "queue_full", "rate_limited",
                              "shutting_down", "store_unavailable"),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "Jobs, newest first (only the caller's when tokens are set)",
                "parameters": [_param("Status"), _param("Limit"), _param("Cursor")],
                "responses": {
                    "200": {"description": "One page of jobs.", "content": _json(_ref("JobList")),
                            "links": {"NextPage": next_page}},
                    **_errors("invalid_cursor", "invalid_limit", "invalid_status", "unauthorized",
                              "store_unavailable"),
                },
            },
        },
        "/api/jobs/{id}": {
            "parameters": [_param("JobId")],
            "get": {
                "operationId": "getJob",
                "summary": "A job's state",
                "responses": {"200": _job_response("The job.", location=False),
                              **_errors("unauthorized", "not_found", "held_elsewhere",
                                        "store_unavailable")},
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued or running job; it stays readable",
                "responses": {
                    "202": _job_response("Accepted: the job ends `cancelled` promptly."),
                    **_errors("unauthorized", "not_found", "not_cancellable", "held_elsewhere",
                              "store_unavailable"),
                },
            },
        },
        "/api/jobs/{id}/events": {
            "parameters": [_param("JobId")],
            "get": {
                "operationId": "streamJobEvents",
                "summary": "The job's events as Server-Sent Events",
                "security": [{}, {"bearerAuth": []}, {"queryToken": []}],
                "parameters": [_param("LastEventIdHeader"), _param("LastEventIdQuery")],
                "responses": {
                    "200": _stream_response(),
                    "204": {"description": "The client already has the terminal event."},
                    **_errors("invalid_last_event_id", "unauthorized", "not_found", "held_elsewhere",
                              "store_unavailable",
                              "too_many_streams"),
                },
            },
        },
    }


def _service_paths() -> Json:
    def get(operation_id: str, summary: str, responses: Json) -> Json:
        return {"get": {"operationId": operation_id, "summary": summary, "security": [],
                        "responses": responses}}

    def ok(description: str, media_type: str, schema: Json) -> Json:
        return {"200": {"description": description, "content": {media_type: {"schema": schema}}}}

    file_param = {"name": "file", "in": "path", "required": True, "schema": _STRING,
                  "examples": {"script": {"value": "app.js"}}}
    return {
        "/": get("demoPage", "The demo page", ok("The page.", "text/html", _STRING)),
        "/static/{file}": {
            "parameters": [file_param],
            **get("staticFile", "A file of the demo page", {
                **ok("The file.", "*/*", _STRING),
                "404": {"description": "No such file."},
            }),
        },
        "/healthz": get("healthz", "Liveness: 200 while the process lives",
                        ok("Alive.", "application/json", _object({"status": {"const": "ok"}}))),
        "/readyz": get("readyz", "Readiness: 200 while it accepts jobs", {
            **ok("Ready.", "application/json", _object({"status": {"const": "ready"}})),
            **_errors("not_ready"),
        }),
        "/metrics": get("metrics", "Prometheus metrics",
                        ok("The Prometheus text format.", "text/plain", _STRING)),
        "/openapi.json": get("openapi", "This document",
                             ok("OpenAPI 3.2.", "application/json", {"type": "object"})),
    }


@cache
def _document(max_topic_chars: int) -> Json:
    return {
        "openapi": "3.2.0",
        "info": {
            "title": "ArticleStream",
            "version": "0.1.0",
            "summary": "Submit a topic, then watch the article being written, as Server-Sent Events.",
        },
        # Open unless API_TOKENS is set: no credentials at all is also a way in.
        "security": [{}, {"bearerAuth": []}],
        "paths": {**_api_paths(), **_service_paths()},
        "components": {
            "schemas": _schemas(max_topic_chars),
            "parameters": _parameters(),
            # Not tied to an operation: any path answers it for a method it does not list.
            "responses": {"MethodNotAllowed": _errors("method_not_allowed")["405"]},
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "One of the tokens in API_TOKENS."},
                "queryToken": {"type": "apiKey", "in": "query", "name": "token",
                               "description": "A bearer token as `?token=`, for EventSource."},
            },
        },
    }


def openapi_document(max_topic_chars: int = DEFAULT_MAX_TOPIC_CHARS) -> Json:
    """The OpenAPI 3.2 document for the service's MAX_TOPIC_CHARS; a fresh copy each call, so
    no caller alters the shared one."""
    return deepcopy(_document(max_topic_chars))
