"""The JSON clients see: the job resource and each event's `data`, as typed models.

The routes and the event log serialise these, and `api/openapi.py` generates its schemas
from them, so the document cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .contract import JOB_ERROR_CODES, JOB_ID_PATTERN, JobStatus, Stage, TextStage, WorkStage

Progress = Annotated[int, Field(ge=0, le=100, description="0..100; it never decreases.")]
Index = Annotated[int, Field(ge=0, description="The section's 0-based index.")]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
JobErrorCode = Literal[JOB_ERROR_CODES]  # type: ignore[valid-type]


class Model(BaseModel):
    # Every field is always sent, so the schema marks every field required.
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)


class JobErrorBody(Model):
    """Why a job failed or was cancelled."""

    code: JobErrorCode
    message: str


class Links(Model):
    self: str
    events: str


class Usage(Model):
    """What the job's LLM calls used so far, as the provider reported it."""

    llm_calls: int = Field(ge=0, description="Calls to the LLM, each attempt counted.")
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cost_usd: float | None = Field(
        ge=0, description="US dollars, from the model's price (LLM_PRICE_PER_MTOK or the "
                          "built-in table); null when the model's price is unknown.")


class WebhookDelivery(Model):
    """One event the receiver took."""

    type: Literal["job.started", "job.progress", "job.completed"]
    id: str = Field(description="The delivery's `webhook-id` (the same on every retry).")
    attempts: int = Field(ge=1, description="How many tries it took.")


class WebhookStatus(Model):
    """What became of the job's webhook deliveries."""

    url: str
    delivered: list[WebhookDelivery] = Field(
        description="The deliveries the receiver took, oldest first (the last 20).")
    pending: int = Field(ge=0, description="Deliveries not yet taken: queued, or waiting to retry.")
    last_error: str | None = Field(
        description="Why the latest failed attempt failed; null if none has.")


class Job(Model):
    """A job as `GET /api/jobs/{id}` shows it."""

    id: str = Field(pattern=JOB_ID_PATTERN,
                    description="Opaque and URL-safe, with 128 bits of randomness.")
    topic: str
    status: JobStatus
    stage: Stage
    progress: Progress
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    sections: list[str] | None = Field(description="The section titles, once the outline exists.")
    article: str | None = Field(description="The styled article (Markdown), once the job succeeded.")
    error: JobErrorBody | None = Field(description="Why the job failed or was cancelled.")
    usage: Usage = Field(description="Tokens and cost of the job's LLM calls so far.")
    links: Links
    webhook: WebhookStatus | None = Field(
        default=None, description="The job's webhook and its deliveries; null without one.")


class JobList(Model):
    jobs: list[Job] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="The `cursor` of the next page; null on the last.")


class Event(Model):
    """The JSON of one event's `data` line; `event` is the SSE event name."""

    event: ClassVar[str]


class StatusEvent(Event):
    event = "status"
    status: Literal[JobStatus.queued, JobStatus.running]
    stage: Stage
    progress: Progress


class OutlineEvent(Event):
    event = "outline"
    sections: list[str] = Field(min_length=1)
    progress: Progress


class ProgressEvent(Event):
    event = "progress"
    stage: WorkStage
    progress: Progress
    message: str


class DeltaEvent(Event):
    """Appends `text` to a section (`content` and its 0-based `index`) or to the styled
    article (`style`, `index` null); `reset` drops the text held for that part first."""

    event = "delta"
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"properties": {"stage": {"const": "content"}, "index": {"type": "integer", "minimum": 0}}},
        {"properties": {"stage": {"const": "style"}, "index": {"type": "null"}}},
    ]})
    stage: TextStage
    index: int | None
    text: str
    reset: bool


class SectionEvent(Event):
    event = "section"
    index: Index
    title: str
    content: str
    completed: int = Field(ge=1)
    total: int = Field(ge=1)
    progress: Progress


class DoneEvent(Job, Event):
    """The finished job, with its article."""

    event = "done"
    status: Literal[JobStatus.succeeded]
    article: str


class ErrorEvent(JobErrorBody, Event):
    """The failed job's error."""

    event = "error"


class CancelledEvent(Event):
    event = "cancelled"
    code: Literal["cancelled"]
    message: str
