"""Tracing with the OpenTelemetry SDK, exported over OTLP/HTTP; imported only when it is on.

A job's span covers its whole life, queued to terminal, so it is recorded when the job ends,
by whichever instance ends it, with the start time the job was created at. Its ids are chosen
when the job is queued and stored with the job (`Job.trace`): the nodes and LLM calls that
run before it is recorded, here or on another instance after a resume, name it as their
parent, and the backend assembles the tree by ids.

The exporter works in the SDK's own thread from a bounded queue (spans past it are dropped)
with a short timeout, so a collector that is down or slow never holds up a job.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import anyio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .contract import JobStatus
from .job import Job
from .tracing import CallSpan, RequestSpan, Tracing
from .usage import CallUsage

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "articlestream"
#: one export's timeout unless OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT says otherwise
EXPORT_TIMEOUT_S = 2.0
#: how long the shutdown waits for the last spans to go out
SHUTDOWN_WAIT_S = 2.0
_NS = 1_000_000_000


class _PresetIds(RandomIdGenerator):
    """Random ids, except while a job's span is recorded: then the ids stored with the job."""

    def __init__(self) -> None:
        self.preset: ContextVar[tuple[int, int] | None] = ContextVar("preset_ids", default=None)

    def generate_trace_id(self) -> int:
        preset = self.preset.get()
        return preset[0] if preset else super().generate_trace_id()

    def generate_span_id(self) -> int:
        preset = self.preset.get()
        return preset[1] if preset else super().generate_span_id()


class _JobTrace:
    """`Job.trace`: the trace, the job span's parent (0: none) and its own id, the flags."""

    def __init__(self, trace_id: int, parent_id: int, span_id: int, flags: int) -> None:
        self.trace_id, self.parent_id, self.span_id, self.flags = trace_id, parent_id, span_id, flags

    def __str__(self) -> str:
        return f"{self.trace_id:032x}-{self.parent_id:016x}-{self.span_id:016x}-{self.flags:02x}"

    @classmethod
    def parse(cls, text: str | None) -> _JobTrace | None:
        try:
            trace_id, parent_id, span_id, flags = (int(part, 16) for part in (text or "").split("-"))
        except ValueError:
            return None
        return cls(trace_id, parent_id, span_id, flags)

    def context(self, span_id: int) -> otel_context.Context:
        """A context whose current span is `span_id` of this trace (a span recorded elsewhere)."""
        span = NonRecordingSpan(SpanContext(self.trace_id, span_id, is_remote=True,
                                            trace_flags=TraceFlags(self.flags)))
        return trace.set_span_in_context(span)


class _RequestSpan(RequestSpan):
    def __init__(self, span: Span) -> None:
        self.span = span

    def answered(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))


class _CallSpan(CallSpan):
    def __init__(self, span: Span) -> None:
        self.span = span

    def ended(self, usage: CallUsage, code: str | None) -> None:
        self.span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if code is not None:
            self.span.set_attribute("error.type", code)
            self.span.set_status(Status(StatusCode.ERROR, code))


class OtelTracing(Tracing):
    """Spans through `processor`: the OTLP exporter's batches, or a test's in-memory one."""

    enabled = True

    def __init__(self, processor: SpanProcessor, resource: Resource | None = None) -> None:
        self._ids = _PresetIds()
        # The SDK's default sampler honours OTEL_TRACES_SAMPLER; parents' decisions are kept.
        self.provider = TracerProvider(resource=resource or service_resource(),
                                       id_generator=self._ids)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("articlestream")

    @classmethod
    def from_environment(cls) -> OtelTracing:
        """OTLP/HTTP (protobuf) to OTEL_EXPORTER_OTLP_ENDPOINT, the OTEL_* variables honoured."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        timeout = None
        if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
                or os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT")):
            timeout = EXPORT_TIMEOUT_S
        exporter = OTLPSpanExporter(timeout=timeout)
        # Queue and batch sizes from OTEL_BSP_*; the SDK's defaults bound the queue at 2048.
        return cls(BatchSpanProcessor(exporter))

    @contextmanager
    def submit(self, method: str, route: str, headers: Mapping[str, str]) -> Iterator[RequestSpan]:
        parent = propagate.extract(headers)
        with self.tracer.start_as_current_span(
                f"{method} {route}", context=parent, kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "http.route": route},
                record_exception=False) as span:
            yield _RequestSpan(span)

    def new_job_trace(self) -> str | None:
        current = trace.get_current_span().get_span_context()
        span_id = self._ids.generate_span_id()
        if current.is_valid:
            return str(_JobTrace(current.trace_id, current.span_id, span_id, current.trace_flags))
        # A new trace: the configured sampler decides now, for the job span and all under it.
        trace_id = self._ids.generate_trace_id()
        sampled = self.provider.sampler.should_sample(None, trace_id, "job").decision.is_sampled()
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        return str(_JobTrace(trace_id, 0, span_id, flags))

    @contextmanager
    def job(self, job: Job) -> Iterator[None]:
        if (place := _JobTrace.parse(job.trace)) is None:
            yield
            return
        token = otel_context.attach(place.context(place.span_id))
        try:
            yield
        finally:
            otel_context.detach(token)

    @contextmanager
    def node(self, name: str) -> Iterator[None]:
        with self.tracer.start_as_current_span(
                f"node {name}", attributes={"articlestream.node": name},
                record_exception=False, set_status_on_exception=False) as span:
            try:
                yield
            except Exception as exc:
                # The error's code, never its message: that may quote the LLM's reply.
                code = getattr(exc, "code", type(exc).__name__)
                span.set_attribute("error.type", code)
                span.set_status(Status(StatusCode.ERROR, code))
                raise

    @contextmanager
    def llm_call(self, *, system: str, model: str, max_tokens: int) -> Iterator[CallSpan]:
        with self.tracer.start_as_current_span(
                f"chat {model}", kind=SpanKind.CLIENT,
                attributes={"gen_ai.operation.name": "chat", "gen_ai.system": system,
                            "gen_ai.request.model": model, "gen_ai.request.max_tokens": max_tokens},
                record_exception=False, set_status_on_exception=False) as span:
            yield _CallSpan(span)

    def job_ended(self, job: Job) -> None:
        if (place := _JobTrace.parse(job.trace)) is None:
            return
        parent = place.context(place.parent_id) if place.parent_id else otel_context.Context()
        attributes: dict[str, str | int | float] = {
            "articlestream.job.id": job.id,
            "articlestream.job.status": job.status.value,
            "articlestream.usage.llm_calls": job.usage.llm_calls,
            "gen_ai.usage.input_tokens": job.usage.input_tokens,
            "gen_ai.usage.output_tokens": job.usage.output_tokens,
        }
        if job.usage.cost_usd is not None:
            attributes["articlestream.usage.cost_usd"] = job.usage.cost_usd
        if job.error is not None:
            attributes["articlestream.job.error_code"] = job.error.code
        token = self._ids.preset.set((place.trace_id, place.span_id))
        try:
            span = self.tracer.start_span("job", context=parent, attributes=attributes,
                                          start_time=int(job.created_at * _NS))
        finally:
            self._ids.preset.reset(token)
        if job.started_at is not None:
            span.add_event("started", timestamp=int(job.started_at * _NS))
        if job.status is JobStatus.failed and job.error is not None:
            span.set_status(Status(StatusCode.ERROR, job.error.code))
        finished = job.finished_at if job.finished_at is not None else job.created_at
        span.end(end_time=int(finished * _NS))

    async def shutdown(self) -> None:
        """Send what is queued, waiting at most SHUTDOWN_WAIT_S (the SDK's thread may go on)."""
        closing = threading.Thread(target=self.provider.shutdown, name="otel-shutdown",
                                   daemon=True)
        closing.start()
        await anyio.to_thread.run_sync(closing.join, SHUTDOWN_WAIT_S)


def service_resource() -> Resource:
    """The SDK's resource (OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME), named articlestream
    unless those name it."""
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource
