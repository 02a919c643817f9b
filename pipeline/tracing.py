"""Traces of each job, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set.

`Tracing` is the switched-off kind: every method does nothing, and OpenTelemetry is never
imported. `open_tracing` loads `tracing_otel.OtelTracing` only when an endpoint is set.

The spans of one job, in one trace: the submit request (joining a `traceparent` it
carried), under it `job` from queued to terminal, under that each node, and under each node
its LLM calls. The job's place in the trace is stored with the job (`Job.trace`), so the
instance that runs it, resumes it or ends it adds to the same trace. No span carries the
topic, the article, a key or a token.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import Job
    from .settings import Settings
    from .usage import CallUsage


class RequestSpan:
    """The submit request's span, told how the request ended."""

    def answered(self, status: int) -> None:
        pass


class CallSpan:
    """An LLM call's span, told how the call ended."""

    def ended(self, usage: CallUsage, code: str | None) -> None:
        pass


_REQUEST = RequestSpan()
_CALL = CallSpan()


class Tracing:
    """Tracing switched off."""

    enabled = False

    @contextmanager
    def submit(self, method: str, route: str, headers: Mapping[str, str]) -> Iterator[RequestSpan]:
        """The span of a submit request, joining the trace its `traceparent` names."""
        yield _REQUEST

    def new_job_trace(self) -> str | None:
        """A place for a new job's span under the current span, to store with the job."""
        return None

    @contextmanager
    def job(self, job: Job) -> Iterator[None]:
        """Make the job's span the parent of the spans started inside (nodes, calls)."""
        yield

    @contextmanager
    def node(self, name: str) -> Iterator[None]:
        yield

    @contextmanager
    def llm_call(self, *, system: str, model: str, max_tokens: int) -> Iterator[CallSpan]:
        yield _CALL

    def job_ended(self, job: Job) -> None:
        """Record the job's span, from its creation to its end (the job has just ended)."""

    async def shutdown(self) -> None:
        pass


def open_tracing(settings: Settings) -> Tracing:
    """Tracing as the settings ask: OpenTelemetry over OTLP/HTTP, or off."""
    if settings.otel_endpoint is None:
        return Tracing()
    from .tracing_otel import OtelTracing

    return OtelTracing.from_environment()
