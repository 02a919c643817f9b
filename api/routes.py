"""The HTTP endpoints of the contract."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pipeline import payloads
from pipeline.contract import (
    DEFAULT_PAGE,
    JOB_ID_PATTERN,
    MAX_PAGE,
    MAX_PREFER_WAIT_S,
    RETRY_AFTER_S,
    JobStatus,
)
from pipeline.errors import KeyTaken, NotCancellable, QueueFull, ShuttingDown, StoreUnavailable
from pipeline.job import Job, WebhookSpec, machine_of
from pipeline.payloads import JobList

from .access import client_address, owner_of
from .body import check_webhook_host, read_submit, valid_topic, valid_webhook
from .errors import ApiError
from .openapi import openapi_document
from .ratelimit import retry_after
from .service import Service
from .stream import EventStream

RETRY_AFTER = str(RETRY_AFTER_S)
#: how long /readyz waits for Redis to answer a PING
READY_TIMEOUT_S = 1.0
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d+)", re.IGNORECASE)
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
_JOB_ID = re.compile(JOB_ID_PATTERN)
_EVENT_ID = re.compile(r"[0-9]{1,18}")  # \d would take any Unicode digit


def _service(request: Request) -> Service:
    service: Service = request.state.service
    return service


def _model_response(model: BaseModel, status: int = 200,
                    headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status, headers=headers,
                    media_type="application/json")


async def _public(service: Service, job: Job) -> payloads.Job:
    """The job as clients see it, with its webhook's status when it has one."""
    if job.webhook is None or service.webhooks is None:
        return job.public()
    status = await service.webhooks.status(job.id)
    return job.public(status or payloads.WebhookStatus(
        url=job.webhook.url, delivered=[], pending=0, last_error=None))


async def _job_response(service: Service, job: Job, status: int) -> Response:
    return _model_response(await _public(service, job), status,
                           {"Location": f"/api/jobs/{job.id}"})


async def _owned_job(request: Request, owner: str | None) -> Job:
    job_id = request.path_params["job_id"]
    _send_to_holder(request, job_id)
    # Another owner's job is answered exactly like a missing one, so ids leak nothing.
    job = await _service(request).store.get(job_id)
    if job is None or job.owner != owner:
        raise _not_found()
    return job


def _send_to_holder(request: Request, job_id: str) -> None:
    """On Fly without Redis, a job lives on the machine its id names: a request for it that
    lands elsewhere is answered `fly-replay`, and Fly's proxy replays it on that machine."""
    settings = _service(request).settings
    machine = machine_of(job_id)
    if not settings.placed_ids or machine in (None, settings.machine_id):
        return
    if not _JOB_ID.fullmatch(job_id) or "fly-replay-src" in request.headers:
        raise _not_found()  # not an id we made, or replayed here already: that machine is gone
    raise ApiError(421, "held_elsewhere",
                   "Another machine holds this job; Fly's proxy replays the request there.",
                   headers={"fly-replay": f"instance={machine}"})


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No job with this id (it may have expired).")


def _shutting_down() -> ApiError:
    return ApiError(503, "shutting_down", "The service is shutting down; try again shortly.",
                    headers={"Retry-After": RETRY_AFTER})


async def submit_job(request: Request) -> Response:
    """The submit, as a span of its trace (joined when the request carries a traceparent)."""
    with _service(request).tracing.submit("POST", "/api/jobs", request.headers) as span:
        try:
            response = await _submit_job(request)
        except ApiError as exc:
            span.answered(exc.status)
            raise
        except StoreUnavailable:
            span.answered(503)
            raise
        except Exception:
            span.answered(500)
            raise
        span.answered(response.status_code)
        return response


async def _submit_job(request: Request) -> Response:
    service = _service(request)
    settings = service.settings
    owner = owner_of(request, settings)
    if service.runner.draining:
        raise _shutting_down()
    wait_s = _prefer_wait(request.headers.get("prefer", ""))
    fields = await read_submit(request, settings)
    topic = valid_topic(fields.get("topic"), settings)
    webhook = valid_webhook(fields, settings)
    idempotency = None
    key = request.headers.get("idempotency-key")
    if key is not None:
        if not _IDEMPOTENCY_KEY.fullmatch(key):
            raise ApiError(400, "invalid_idempotency_key",
                           "Idempotency-Key must be 1 to 200 printable ASCII characters.")
        idempotency = (key, _fingerprint(topic, webhook))
        if replay := await _idempotent_replay(service, owner, idempotency):
            return replay
    limit_key = owner or client_address(request, settings)
    if wait := await service.limiter.acquire(limit_key):
        raise ApiError(429, "rate_limited", "Too many jobs submitted; slow down.",
                       headers={"Retry-After": retry_after(wait)})
    if webhook is not None:  # a lookup: not for a replay, nor for a submit refused above
        await check_webhook_host(webhook, settings)
    try:
        job = await service.runner.submit(topic, owner=owner, idempotency=idempotency,
                                          webhook=webhook)
    except QueueFull:
        raise ApiError(429, "queue_full", "Too many jobs are waiting; try again shortly.",
                       headers={"Retry-After": RETRY_AFTER}) from None
    except ShuttingDown:
        raise _shutting_down() from None
    except KeyTaken:
        # A concurrent request with the same key won the race: answer as if it came first.
        assert idempotency is not None
        if replay := await _idempotent_replay(service, owner, idempotency):
            return replay
        # Its job is already gone (expired between the two lookups): say so, never a 500.
        raise ApiError(409, "idempotency_conflict", "Another request with this Idempotency-Key "
                       "was handled at the same moment; send it again.") from None
    if wait_s:
        finished = await service.runner.wait_terminal(job.id, timeout_s=wait_s)
        if finished is not None and finished.terminal:
            return await _job_response(service, finished, 201)
    return await _job_response(service, job, 202)


def _fingerprint(topic: str, webhook: WebhookSpec | None) -> str:
    """What makes two submits the same request: the whole body as the service reads it (a
    body without a webhook keeps the fingerprint it had before webhooks existed)."""
    if webhook is None:
        return hashlib.sha256(topic.encode()).hexdigest()
    body = json.dumps([topic, webhook.url, webhook.events])
    return hashlib.sha256(body.encode()).hexdigest()


async def _idempotent_replay(service: Service, owner: str | None,
                             idempotency: tuple[str, str]) -> Response | None:
    """The job an earlier request made with this key (200), 409 for another body, or None."""
    key, fingerprint = idempotency
    if (found := await service.store.find_idempotent(owner, key)) is None:
        return None
    job, earlier = found
    if earlier != fingerprint:
        raise ApiError(409, "idempotency_conflict",
                       "This Idempotency-Key was already used with another body.")
    return await _job_response(service, job, 200)


async def list_jobs(request: Request) -> Response:
    service = _service(request)
    owner = owner_of(request, service.settings)
    params = request.query_params
    status = None
    if params.get("status"):
        try:
            status = JobStatus(params["status"])
        except ValueError:
            raise ApiError(400, "invalid_status", "status must be one of: "
                           + ", ".join(s.value for s in JobStatus) + ".") from None
    raw_limit = params.get("limit") or str(DEFAULT_PAGE)
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise ApiError(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_PAGE}.")
    limit = int(raw_limit)
    cursor = params.get("cursor") or None
    if cursor is not None:
        job = await service.store.get(cursor)
        if job is None or job.owner != owner:
            raise ApiError(400, "invalid_cursor", "The cursor is unknown or has expired.")
    jobs = await service.store.list_jobs(owner, status=status, limit=limit + 1, before=cursor)
    page = jobs[:limit]
    next_cursor = page[-1].id if len(jobs) > limit else None
    # Webhook statuses are looked up side by side: on Redis, one round trip each.
    jobs_shown = await asyncio.gather(*(_public(service, job) for job in page))
    return _model_response(JobList(jobs=list(jobs_shown), next_cursor=next_cursor))


async def get_job(request: Request) -> Response:
    service = _service(request)
    owner = owner_of(request, service.settings)
    return _model_response(await _public(service, await _owned_job(request, owner)))


async def cancel_job(request: Request) -> Response:
    service = _service(request)
    job = await _owned_job(request, owner_of(request, service.settings))
    try:
        cancelled = await service.runner.cancel(job.id)
    except NotCancellable as exc:
        raise ApiError(409, "not_cancellable", f"The job has already {exc}.") from None
    return await _job_response(service, cancelled or job, 202)


async def job_events(request: Request) -> Response | EventStream:
    service = _service(request)
    owner = owner_of(request, service.settings, allow_query=True)
    job = await _owned_job(request, owner)
    after = 0
    # Both are checked; the header, which a reconnecting EventSource sends, wins.
    for raw in (request.query_params.get("last_event_id"), request.headers.get("last-event-id")):
        if raw is not None and raw.strip():
            if not _EVENT_ID.fullmatch(raw.strip()):
                raise ApiError(400, "invalid_last_event_id",
                               "Last-Event-ID must be an event id (digits).")
            after = int(raw)
    if service.metrics.streams_open >= service.settings.max_streams:
        raise ApiError(429, "too_many_streams", "Too many open event streams; try again shortly.",
                       headers={"Retry-After": RETRY_AFTER})
    # Read once before answering: on Redis this starts the job's follower, so a store that
    # is away is a JSON 503 now rather than a stream cut after its headers.
    if await service.store.read(job.id, after, timeout_s=0) is None:
        if not job.terminal:
            raise _not_found()  # it expired just now
        return Response(status_code=204)  # the client already has the terminal event
    return EventStream(service.store, job.id, after, settings=service.settings,
                       metrics=service.metrics, streams=service.streams)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    service = _service(request)
    if service.runner.draining:
        return _not_ready("The service is draining.")
    if service.shared is not None:
        with anyio.move_on_after(READY_TIMEOUT_S) as check:
            try:
                await service.shared.ping()
            except StoreUnavailable:
                return _not_ready("Redis cannot be reached.")
        if check.cancelled_caught:
            return _not_ready("Redis did not answer in time.")
    return JSONResponse({"status": "ready"})


def _not_ready(message: str) -> Response:
    return JSONResponse({"error": {"code": "not_ready", "message": message}}, status_code=503,
                        headers={"Retry-After": RETRY_AFTER})


async def metrics(request: Request) -> Response:
    return Response(_service(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(_service(request).settings.max_topic_chars))


def _prefer_wait(header: str) -> int:
    match = _PREFER_WAIT.search(header)
    return min(int(match.group(1)), MAX_PREFER_WAIT_S) if match else 0


async def jobs(request: Request) -> Response:
    """One route per path, so a 405's Allow header names every method the path has."""
    return await (submit_job if request.method == "POST" else list_jobs)(request)


async def job(request: Request) -> Response:
    return await (cancel_job if request.method == "DELETE" else get_job)(request)
