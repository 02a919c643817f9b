"""Prometheus metrics, on a registry of the app's own (no process-global state)."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .usage import CallUsage

_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_submitted = Counter("articlestream_jobs_submitted_total",
                                      "Jobs accepted by POST /api/jobs.", registry=r)
        self.jobs_finished = Counter("articlestream_jobs_finished_total",
                                     "Jobs that ended, by final status and error code.",
                                     ["status", "code"], registry=r)
        self.job_seconds = Histogram("articlestream_job_duration_seconds",
                                     "From start to the final event.", ["status"],
                                     buckets=_DURATION_BUCKETS, registry=r)
        self.stage_seconds = Histogram("articlestream_stage_duration_seconds",
                                       "Time spent in each workflow stage.", ["stage"],
                                       buckets=_DURATION_BUCKETS, registry=r)
        self.llm_seconds = Histogram("articlestream_llm_call_duration_seconds",
                                     "One LLM call, the SDK's own retries included, by the "
                                     "workflow node that made it.", ["provider", "node"],
                                     buckets=_DURATION_BUCKETS, registry=r)
        self.llm_errors = Counter("articlestream_llm_errors_total",
                                  "Failed LLM calls, by error code.", ["provider", "code"],
                                  registry=r)
        self.llm_tokens = Counter("articlestream_llm_tokens_total",
                                  "Tokens used, from the provider's usage report, by model "
                                  "and kind (input, output).",
                                  ["provider", "model", "kind"], registry=r)
        self.llm_cost = Counter("articlestream_llm_cost_usd_total",
                                "US dollars spent on LLM calls whose model has a known price.",
                                ["provider", "model"], registry=r)
        self.llm_calls_waiting = Gauge("articlestream_llm_calls_waiting",
                                       "LLM calls waiting for one of the MAX_LLM_CALLS places.",
                                       registry=r)
        self.llm_place_wait_seconds = Histogram(
            "articlestream_llm_place_wait_seconds",
            "How long an LLM call waited for a place, when it had to wait.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.queue_depth = Gauge("articlestream_queued_jobs", "Jobs waiting to run.", registry=r)
        self.running_jobs = Gauge("articlestream_running_jobs", "Jobs running now.", registry=r)
        self.open_streams = Gauge("articlestream_open_streams", "Open event streams.", registry=r)
        self.events_sent = Counter("articlestream_events_sent_total",
                                   "Event frames written to streams.", registry=r)
        self.streams_dropped = Counter("articlestream_streams_dropped_total",
                                       "Streams ended because the client stopped reading.",
                                       registry=r)
        self.webhook_deliveries = Counter(
            "articlestream_webhook_deliveries_total",
            "Webhook deliveries that ended: delivered, failed (out of attempts), lost (pending "
            "when this process stopped without Redis).", ["outcome"], registry=r)
        self.webhook_attempts = Counter("articlestream_webhook_attempts_total",
                                        "Webhook delivery attempts, by outcome (ok or failed).",
                                        ["outcome"], registry=r)
        self.webhook_latency = Histogram(
            "articlestream_webhook_delivery_latency_seconds",
            "From the event to its delivery, retries included.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900), registry=r)

        self.tasks = Gauge("articlestream_asyncio_tasks",
                           "Tasks alive in the event loop (read at scrape time).", registry=r)
        self.tasks.set_function(lambda: len(asyncio.all_tasks()))
        #: the open-streams gauge's value, kept as a plain int for the MAX_STREAMS check
        self.streams_open = 0

    def stream_opened(self) -> None:
        self.streams_open += 1
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.streams_open -= 1
        self.open_streams.dec()

    def observe_llm_call(self, provider: str, node: str, seconds: float,
                         code: str | None) -> None:
        self.llm_seconds.labels(provider, node).observe(seconds)
        if code is not None:
            self.llm_errors.labels(provider, code).inc()

    def observe_usage(self, provider: str, usage: CallUsage) -> None:
        self.llm_tokens.labels(provider, usage.model, "input").inc(usage.input_tokens)
        self.llm_tokens.labels(provider, usage.model, "output").inc(usage.output_tokens)
        if usage.cost_usd is not None:
            self.llm_cost.labels(provider, usage.model).inc(usage.cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
