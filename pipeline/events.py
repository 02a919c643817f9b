"""Turning what happens to a job into its stored state and its numbered events.

The runner says when a job is queued, starts and ends; the nodes report the rest as
`messages` records on the job's queue. `JobEvents` applies each to the job, saves it, and
appends the matching event to the job's log, coalescing live text on the way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .contract import JobStatus, Stage
from .deltas import DeltaCoalescer, LiveParts
from .job import Job
from .messages import (
    CallEnded,
    DeltasDue,
    FlowEnded,
    OutlineReady,
    Report,
    SectionWritten,
    StageStarted,
    TextDelta,
    TextReset,
)
from .metrics import Metrics
from .payloads import (
    CancelledEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    JobErrorBody,
    OutlineEvent,
    ProgressEvent,
    SectionEvent,
    StatusEvent,
)
from .settings import Settings
from .store import JobStore
from .tracing import Tracing

if TYPE_CHECKING:
    from .webhooks import Webhooks

logger = logging.getLogger(__name__)

#: progress at the start of each stage; sections fill the span from content to style
STAGE_PROGRESS = {Stage.outline: 5, Stage.content: 20, Stage.style: 80}
OUTLINE_PROGRESS = 15


class JobEvents:
    """Writes a job's state and events to the store; the only writer of a job's log."""

    def __init__(self, store: JobStore, settings: Settings, metrics: Metrics,
                 tracing: Tracing | None = None) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.live = LiveParts(settings.deltas_per_s)
        self.tracing = tracing or Tracing()
        #: webhooks: told of each event of a job that has one (set by the backend)
        self.webhooks: Webhooks | None = None

    async def started(self, job: Job) -> None:
        job.start()
        logger.info("job running", extra={"job_id": job.id})
        await self._publish(job, StatusEvent(status=JobStatus.running, stage=job.stage,
                                             progress=job.progress), save=True)

    async def finish(self, job: Job, status: JobStatus, error: JobErrorBody | None = None, *,
                     article: str | None = None, only_if: JobStatus | None = None) -> bool:
        """End the job with its one terminal event; False if it had already ended (or its
        stored status is not `only_if`), and then nothing changes."""
        if job.terminal:
            return False
        job.finish(status, error=error, article=article)
        data: Event
        if status is JobStatus.succeeded:
            data = DoneEvent(**dict(job.public()))
        elif error is None:
            raise ValueError(f"A {status.value} job needs an error.")
        elif status is JobStatus.cancelled:
            data = CancelledEvent(code="cancelled", message=error.message)
        else:
            data = ErrorEvent(code=error.code, message=error.message)
        if not await self.store.finish(job, data, only_if=only_if):
            return False
        if job.webhook is not None and self.webhooks is not None:  # webhooks
            await self.webhooks.notify(job, data)
        code = error.code if error else ""
        self.metrics.jobs_finished.labels(status.value, code).inc()
        if job.started_at is not None and job.finished_at is not None:
            self.metrics.job_seconds.labels(status.value).observe(job.finished_at - job.started_at)
        logger.info("job %s%s", status.value, f" ({code})" if code else "", extra={"job_id": job.id})
        self.tracing.job_ended(job)
        return True

    async def pump(self, job: Job, queue: asyncio.Queue[Report], *, resumed: bool = False) -> None:
        """Apply the nodes' reports to the job until the flow has ended."""
        coalescer = DeltaCoalescer(self.settings.delta_interval_ms / 1000, self.live)
        try:
            await self._pump(job, queue, coalescer, resumed=resumed)
        finally:
            coalescer.close()

    async def _pump(self, job: Job, queue: asyncio.Queue[Report], coalescer: DeltaCoalescer, *,
                    resumed: bool) -> None:
        if resumed and self.settings.stream_deltas:
            # Text the lost instance streamed for unfinished parts is void: clients drop it
            # when the first delta of each part comes, marked `reset`.
            for unfinished in range(len(job.sections or ())):
                if unfinished not in job.contents:
                    coalescer.void((Stage.content, unfinished))
            coalescer.void((Stage.style, None))
        stage_started = time.monotonic()
        # One timer a job for held text, armed when text is held and none is set, rather
        # than a timeout around the wait for each chunk (a tenth of the CPU under load).
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                if timer is None and (wait := coalescer.next_due(time.monotonic())) is not None:
                    timer = loop.call_later(wait, queue.put_nowait, DeltasDue())
                match await queue.get():
                    case DeltasDue():
                        timer = None
                        for delta in coalescer.due(time.monotonic()):
                            await self._publish(job, delta)
                    case TextDelta(stage, index, text):
                        # Only with STREAM_DELTAS: otherwise the nodes report no text.
                        if ready := coalescer.add((stage, index), text, time.monotonic()):
                            await self._publish(job, ready)
                    case TextReset(stage, index):
                        coalescer.reset((stage, index))
                    case SectionWritten(index=index) as section:
                        # The section's held text goes first: its deltas all come before it.
                        if held := coalescer.flush((Stage.content, index), time.monotonic()):
                            await self._publish(job, held)
                        await self._section(job, section)
                    case StageStarted(stage, message):
                        if stage is not job.stage:
                            self._observe_stage(job, stage_started)
                        stage_started = time.monotonic()
                        job.advance(stage, STAGE_PROGRESS[stage])
                        await self._publish(job, ProgressEvent(stage=stage, progress=job.progress,
                                                               message=message), save=True)
                    case OutlineReady(sections):
                        job.sections = list(sections)
                        job.advance(job.stage, OUTLINE_PROGRESS)
                        await self._publish(job, OutlineEvent(sections=job.sections,
                                                              progress=job.progress), save=True)
                    case CallEnded(usage):
                        job.used(usage)  # saved, so GET and a resumed job show it
                        await self.store.save(job)
                    case FlowEnded():
                        self._observe_stage(job, stage_started)
                        for delta in coalescer.flush_all(time.monotonic()):
                            await self._publish(job, delta)
                        return
        finally:
            if timer is not None:
                timer.cancel()

    async def _section(self, job: Job, section: SectionWritten) -> None:
        job.contents[section.index] = section.content  # saved: a resumed job keeps it
        completed = len(job.contents)
        total = len(job.sections or ())
        span = STAGE_PROGRESS[Stage.style] - STAGE_PROGRESS[Stage.content]
        job.advance(job.stage, STAGE_PROGRESS[Stage.content] + span * completed // total)
        await self._publish(job, SectionEvent(
            index=section.index, title=section.title, content=section.content,
            completed=completed, total=total, progress=job.progress), save=True)

    def _observe_stage(self, job: Job, started: float) -> None:
        self.metrics.stage_seconds.labels(job.stage.value).observe(time.monotonic() - started)

    async def _publish(self, job: Job, data: Event, *, save: bool = False) -> None:
        """Append `data` to the job's log; with `save`, the job's new state goes with it."""
        await self.store.append(job.id, data, save=job if save else None)
        if job.webhook is not None and self.webhooks is not None:  # webhooks
            await self.webhooks.notify(job, data)
