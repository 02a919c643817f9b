"""A job's state, and the events clients see."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from . import payloads
from .contract import DEFAULT_WEBHOOK_EVENTS, TERMINAL_EVENTS, TERMINAL_STATUSES, JobStatus, Stage
from .errors import TransitionError
from .payloads import JobErrorBody
from .usage import CallUsage, Usage

__all__ = ["Event", "Job", "WebhookSpec", "machine_of", "new_job_id"]


def new_job_id(machine: str | None = None) -> str:
    """An opaque id with 128 bits of randomness, naming the `machine` that holds the job."""
    return "j_" + (f"{machine}." if machine else "") + secrets.token_urlsafe(16)


def machine_of(job_id: str) -> str | None:
    """The machine a job id names, if it names one."""
    head, dot, _ = job_id.removeprefix("j_").partition(".")
    return head if dot else None


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_or_none(timestamp: float | None) -> str | None:
    return None if timestamp is None else _iso(timestamp)


@dataclass(frozen=True)
class WebhookSpec:
    """Where a job's events are POSTed, and which of them (`start`, `progress`, `completed`)."""

    url: str
    events: tuple[str, ...] = DEFAULT_WEBHOOK_EVENTS


@dataclass
class Job:
    topic: str
    owner: str | None = None
    id: str = field(default_factory=new_job_id)
    status: JobStatus = JobStatus.queued
    stage: Stage = Stage.queued
    progress: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    sections: list[str] | None = None
    article: str | None = None
    error: JobErrorBody | None = None
    #: the text of each finished section by index: what a job resumed elsewhere need not redo
    contents: dict[int, str] = field(default_factory=dict)
    #: what the job's LLM calls used, added as each call ends
    usage: Usage = field(default_factory=Usage)
    #: the job's place in a trace, kept so whichever instance runs or ends it continues it
    trace: str | None = None
    webhook: WebhookSpec | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def copy(self) -> Job:
        """A copy to change without touching this one (a store never hands out what it holds)."""
        return replace(self, sections=None if self.sections is None else list(self.sections),
                       contents=dict(self.contents))

    def used(self, call: CallUsage) -> None:
        self.usage = self.usage.add(call)

    def start(self) -> None:
        if self.status is not JobStatus.queued:
            raise TransitionError(f"Job {self.id} cannot start: it is {self.status.value}.")
        self.status = JobStatus.running
        self.stage = Stage.outline
        self.started_at = time.time()

    def advance(self, stage: Stage, progress: int) -> None:
        self.stage = stage
        self.progress = max(self.progress, progress)

    def finish(self, status: JobStatus, *, error: JobErrorBody | None = None,
               article: str | None = None) -> None:
        if self.terminal:
            raise TransitionError(f"Job {self.id} cannot become {status.value}: it is "
                                  f"{self.status.value}.")
        if status not in TERMINAL_STATUSES:
            raise TransitionError(f"{status.value} is not a final status.")
        self.status = status
        self.error = error
        self.finished_at = time.time()
        if status is JobStatus.succeeded:
            self.article = article
            self.advance(Stage.done, 100)

    def public(self, webhook: payloads.WebhookStatus | None = None) -> payloads.Job:
        """The job as the contract shows it to clients, with its `webhook` status if given."""
        return payloads.Job(
            id=self.id,
            topic=self.topic,
            status=self.status,
            stage=self.stage,
            progress=self.progress,
            created_at=_iso(self.created_at),
            started_at=_iso_or_none(self.started_at),
            finished_at=_iso_or_none(self.finished_at),
            sections=self.sections,
            article=self.article,
            error=self.error,
            usage=payloads.Usage(
                llm_calls=self.usage.llm_calls, input_tokens=self.usage.input_tokens,
                output_tokens=self.usage.output_tokens,
                cost_usd=self.usage.cost_usd),
            links=payloads.Links(self=f"/api/jobs/{self.id}", events=f"/api/jobs/{self.id}/events"),
            webhook=webhook,
        )


@dataclass(frozen=True)
class Event:
    """One numbered event of a job, with its SSE frame encoded once for every subscriber."""

    id: int
    type: str
    frame: bytes

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS
