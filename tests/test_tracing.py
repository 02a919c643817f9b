"""Traces: one per job (submit, job, nodes, LLM calls), joined to a caller's `traceparent`.

Spans are caught with the SDK's InMemorySpanExporter in-process, and once through a real
OTLP/HTTP receiver (a Starlette app on a loopback port) from a real server process.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx
import httpx2
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app import create_app
from pipeline.contract import JobStatus
from pipeline.job import Job
from pipeline.payloads import JobErrorBody
from pipeline.tracing_otel import OtelTracing

from .anthropic_mock import API_KEY, FAST_RETRY, INPUT_TOKENS, Call, FakeAnthropic, good_answer, settings, status
from .conftest import ROOT
from .ports import free_port
from .redis_server import RedisServer
from .waiting import wait_for

TOPIC = "Zanzibar gardening secrets"
MODEL = "claude-sonnet-5-5"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
WAIT_S = 20


def traced_job(serve_app: Any, answer: Callable[[Call], httpx2.Response],
               headers: dict[str, str] | None = None) -> tuple[dict[str, Any], list[ReadableSpan]]:
    """One job through the real SDK with spans kept in memory: the job, and its spans."""
    exporter = InMemorySpanExporter()
    fake = FakeAnthropic(answer)
    config = settings(anthropic_model=MODEL)
    tracing = OtelTracing(SimpleSpanProcessor(exporter))
    served = serve_app(create_app(config, provider=fake.provider(config), tracing=tracing))
    response = httpx.post(f"{served.url}/api/jobs", json={"topic": TOPIC}, timeout=WAIT_S,
                          headers={"Prefer": f"wait={WAIT_S}", **(headers or {})})
    assert response.status_code == 201, response.text
    wait_for(lambda: any(span.name == "job" for span in exporter.get_finished_spans()), WAIT_S,
             "the job's span")
    return response.json(), list(exporter.get_finished_spans())


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def test_one_trace_holds_the_submit_the_job_its_nodes_and_calls(serve_app: Any) -> None:
    job, spans = traced_job(serve_app, good_answer, {"traceparent": TRACEPARENT})

    # Every span is in the caller's trace.
    assert {format(span.context.trace_id, "032x") for span in spans} == {TRACE_ID}
    [submit] = named(spans, "POST /api/jobs")
    assert submit.kind is SpanKind.SERVER
    assert parent_of(submit) == int(CALLER_SPAN, 16)
    assert submit.attributes is not None
    assert submit.attributes["http.response.status_code"] == 201

    [job_span] = named(spans, "job")
    assert parent_of(job_span) == submit.context.span_id
    assert job_span.attributes is not None
    assert job_span.attributes["articlestream.job.id"] == job["id"]
    assert job_span.attributes["articlestream.job.status"] == "succeeded"
    assert job_span.status.status_code is not StatusCode.ERROR
    # It covers the job from queued (during the submit) to terminal (after its last call).
    assert job_span.start_time is not None and job_span.end_time is not None
    assert submit.start_time is not None and submit.end_time is not None
    assert submit.start_time <= job_span.start_time <= submit.end_time
    inside = [span for span in spans if span not in (submit, job_span)]
    assert all(job_span.start_time <= (span.start_time or 0) for span in inside)
    assert all(job_span.end_time >= (span.end_time or 0) for span in inside)
    assert [event.name for event in job_span.events] == ["started"]

    nodes = {span.name: span for span in spans if span.name.startswith("node ")}
    assert set(nodes) == {"node outline", "node content", "node style"}
    assert {parent_of(node) for node in nodes.values()} == {job_span.context.span_id}

    calls = named(spans, f"chat {MODEL}")
    by_node = {name: [call for call in calls if parent_of(call) == node.context.span_id]
               for name, node in nodes.items()}
    assert {name: len(found) for name, found in by_node.items()} == {
        "node outline": 1, "node content": 3, "node style": 1}
    for call in calls:
        assert call.kind is SpanKind.CLIENT
        assert call.attributes is not None
        assert call.attributes["gen_ai.operation.name"] == "chat"
        assert call.attributes["gen_ai.system"] == "anthropic"
        assert call.attributes["gen_ai.request.model"] == MODEL
        assert call.attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS
        assert call.attributes["gen_ai.usage.output_tokens"] == 4
    assert job_span.attributes["gen_ai.usage.input_tokens"] == job["usage"]["input_tokens"]

    # No attribute or event carries the topic (or any of its words), the article, or the key.
    texts = [str(value) for span in spans
             for attributes in (span.attributes, *(event.attributes for event in span.events))
             for value in (attributes or {}).values()]
    for secret in (TOPIC, "Zanzibar", API_KEY, job["article"][:40]):
        assert not any(secret in text for text in texts), secret


def test_a_submit_without_traceparent_starts_a_trace(serve_app: Any) -> None:
    _, spans = traced_job(serve_app, good_answer)
    [submit] = named(spans, "POST /api/jobs")
    assert submit.parent is None
    assert len({span.context.trace_id for span in spans}) == 1


def test_a_failed_job_has_an_error_status_and_its_code(serve_app: Any) -> None:
    def answer(call: Call) -> httpx2.Response:
        return status(500, headers=FAST_RETRY) if call.task == "style" else good_answer(call)

    job, spans = traced_job(serve_app, answer)
    assert job["status"] == "failed"
    [job_span] = named(spans, "job")
    assert job_span.status.status_code is StatusCode.ERROR
    assert job_span.attributes is not None
    assert job_span.attributes["articlestream.job.error_code"] == job["error"]["code"] == "llm_error"
    [style] = named(spans, "node style")
    assert style.status.status_code is StatusCode.ERROR
    [failed_call] = [span for span in named(spans, f"chat {MODEL}")
                     if parent_of(span) == style.context.span_id]
    assert failed_call.status.status_code is StatusCode.ERROR
    assert failed_call.attributes is not None
    assert failed_call.attributes["error.type"] == "llm_error"


# -- a real server process, a real OTLP/HTTP receiver ------------------------------------------


async def healthz(request: Request) -> Response:
    return Response(b"ok")


class Receiver:
    """An OTLP/HTTP collector's traces endpoint that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/traces", self.traces, methods=["POST"]),
                                     Route("/healthz", healthz)])  # serve_app waits on it

    async def traces(self, request: Request) -> Response:
        decoded = ExportTraceServiceRequest()
        decoded.ParseFromString(await request.body())
        with self.lock:
            self.requests.append(decoded)
        return Response(b"", media_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict[str, str], Any]]:
        """Every span received, with its resource's attributes."""
        with self.lock:
            return [({a.key: a.value.string_value for a in rs.resource.attributes}, span)
                    for request in self.requests for rs in request.resource_spans
                    for ss in rs.scope_spans for span in ss.spans]


def test_spans_reach_an_otlp_http_collector(start_server: Any, serve_app: Any) -> None:
    receiver = Receiver()
    collector = serve_app(receiver.app)
    server = start_server(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_BSP_SCHEDULE_DELAY="50")
    job = httpx.post(f"{server.url}/api/jobs", json={"topic": TOPIC}, timeout=WAIT_S,
                     headers={"Prefer": f"wait={WAIT_S}", "traceparent": TRACEPARENT}).json()
    assert job["status"] == "succeeded"
    # Batches go out every 50 ms: the submit's span may come in a later one than the job's.
    wait_for(lambda: len(receiver.spans()) >= 10, WAIT_S, "the trace's ten spans at the collector")

    received = receiver.spans()
    assert {resource["service.name"] for resource, _ in received} == {"articlestream"}
    assert {span.trace_id.hex() for _, span in received} == {TRACE_ID}
    names = sorted(span.name for _, span in received)
    assert names == sorted(["POST /api/jobs", "job", "node outline", "node content",
                            "node style", *["chat offline"] * 5])
    [job_span] = [span for _, span in received if span.name == "job"]
    attributes = {a.key: a.value for a in job_span.attributes}
    assert attributes["articlestream.job.id"].string_value == job["id"]
    assert attributes["articlestream.usage.llm_calls"].int_value == 5


def test_a_collector_that_is_down_changes_nothing_for_jobs(start_server: Any) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    server = start_server(OTEL_EXPORTER_OTLP_ENDPOINT=closed, OTEL_BSP_SCHEDULE_DELAY="50")
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        for _ in range(3):
            job = client.post("/api/jobs", json={"topic": TOPIC},
                              headers={"Prefer": f"wait={WAIT_S}"}).json()
            assert job["status"] == "succeeded"
            assert job["usage"]["llm_calls"] == 5
        assert client.get("/readyz").status_code == 200


def test_otel_sdk_disabled_sends_nothing(start_server: Any, serve_app: Any) -> None:
    receiver = Receiver()
    collector = serve_app(receiver.app)
    server = start_server(OTEL_EXPORTER_OTLP_ENDPOINT=collector.url, OTEL_SDK_DISABLED="true",
                          OTEL_BSP_SCHEDULE_DELAY="50")
    job = httpx.post(f"{server.url}/api/jobs", json={"topic": TOPIC}, timeout=WAIT_S,
                     headers={"Prefer": f"wait={WAIT_S}"}).json()
    assert job["status"] == "succeeded"
    server.proc.terminate()  # a server that traced would send what it holds as it stops
    server.proc.wait(timeout=WAIT_S)
    assert receiver.spans() == []


OFF_SCRIPT = """
import sys
from starlette.testclient import TestClient
from app import create_app
from pipeline.settings import Settings

settings = Settings.from_env({"LLM_PROVIDER": "offline", "OFFLINE_LLM_DELAY_MS": "0"})
with TestClient(create_app(settings)) as client:
    job = client.post("/api/jobs", json={"topic": "x"}, headers={"Prefer": "wait=10"}).json()
assert job["status"] == "succeeded", job
print(sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry"))
"""


def test_tracing_off_imports_no_opentelemetry() -> None:
    result = subprocess.run([sys.executable, "-c", OFF_SCRIPT], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, env={"PATH": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("env", [{}, {"OTEL_SDK_DISABLED": "true",
                                      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}])
def test_tracing_is_off_without_an_endpoint(env: dict[str, str]) -> None:
    from pipeline.settings import Settings
    from pipeline.tracing import open_tracing

    assert not open_tracing(Settings.from_env(env)).enabled


def test_a_job_resumed_on_another_instance_continues_its_trace(
        start_server: Any, serve_app: Any, redis_server: RedisServer) -> None:
    receiver = Receiver()
    collector = serve_app(receiver.app)
    env = {"REDIS_URL": redis_server.url, "LEASE_SECONDS": "2", "SECTION_CONCURRENCY": "1",
           "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    a = start_server(**env, OFFLINE_LLM_DELAY_MS="1500")
    job = httpx.post(f"{a.url}/api/jobs", json={"topic": TOPIC},
                     headers={"traceparent": TRACEPARENT}).json()

    def calls_sent() -> int:
        return sum(1 for _, span in receiver.spans() if span.name == "chat offline")

    # A dies with the outline and the first section written (and their spans sent).
    wait_for(lambda: calls_sent() == 2, WAIT_S, "A's outline and first section")
    b = start_server(**env, OFFLINE_LLM_DELAY_MS="50")
    a.proc.kill()
    a.proc.wait(timeout=10)
    wait_for(lambda: any(span.name == "job" for _, span in receiver.spans()), WAIT_S * 2,
             "B to resume and end the job")

    finished = httpx.get(f"{b.url}/api/jobs/{job['id']}").json()
    assert finished["status"] == "succeeded"
    # A's two calls were saved with the job; B made the other three (A's half-written
    # section was cut off with A, before it could report).
    assert finished["usage"] == {"llm_calls": 5, "input_tokens": 0, "output_tokens": 0,
                                 "cost_usd": 0.0}
    spans = [span for _, span in receiver.spans()]
    assert {span.trace_id.hex() for span in spans} == {TRACE_ID}
    [job_span] = [span for span in spans if span.name == "job"]
    nodes = [span for span in spans if span.name.startswith("node ")]
    # A's outline node, B's content and style nodes: all under the one job span.
    assert sorted(span.name for span in nodes) == ["node content", "node outline", "node style"]
    assert {span.parent_span_id for span in nodes} == {job_span.span_id}
    assert job_span.start_time_unix_nano < min(span.start_time_unix_nano for span in nodes)


def test_a_new_trace_asks_the_configured_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sampled or not is decided once, for the job span and every span under it; a job started
    # outside any span (no submit request) must not have its nodes recorded without their job.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    exporter = InMemorySpanExporter()
    tracing = OtelTracing(SimpleSpanProcessor(exporter))
    job = Job(topic=TOPIC, trace=tracing.new_job_trace())
    with tracing.job(job), tracing.node("outline"):
        pass
    job.finish(JobStatus.cancelled, error=JobErrorBody(code="cancelled", message="Cancelled."))
    tracing.job_ended(job)
    assert exporter.get_finished_spans() == ()
