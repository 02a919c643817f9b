"""Scheduling jobs: a bounded FIFO queue, at most MAX_RUNNING_JOBS at once, cancel, drain, TTL.

A job runs as a task of its own in the task group that `run()` is started in (the app's
lifespan), started when a place is free, so capacity costs nothing until it is used. What a
job does is `flow.py`'s business; what it reports becomes events in `events.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from types import UnionType

import anyio
from anyio.abc import TaskGroup, TaskStatus

from .contract import JobStatus
from .errors import JobError, KeyTaken, LeaseLost, NotCancellable, QueueFull, ShuttingDown, StoreUnavailable
from .events import JobEvents
from .flow import build_flow, new_shared, resume_stage
from .job import Job, WebhookSpec, new_job_id
from .llm import LLM
from .messages import FlowEnded, Report
from .metrics import Metrics
from .payloads import JobErrorBody, StatusEvent
from .settings import Settings
from .store import JobStore

logger = logging.getLogger(__name__)

CANCELLED = JobErrorBody(code="cancelled", message="The job was cancelled.")
SHUTDOWN = JobErrorBody(code="shutdown",
                        message="The service shut down before the job could finish.")
INTERNAL_ERROR = JobErrorBody(code="internal_error",
                              message="The job failed with an unexpected internal error.")
#: how long a cancel waits for the running job to record its end
CANCEL_WAIT_S = 5.0


class JobRunner:
    """Runs jobs in the task group that `run()` is started in (the app's lifespan)."""

    def __init__(self, store: JobStore, llm: LLM, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.llm = llm
        self.settings = settings
        self.metrics = metrics
        self.events = JobEvents(store, settings, metrics, llm.tracing)
        self.draining = False
        self._task_group: TaskGroup | None = None
        # Queued job ids, oldest first (a dict: FIFO order, and O(1) removal on cancel).
        self._waiting: dict[str, None] = {}
        self._running: dict[str, anyio.CancelScope] = {}
        self._shutdown_ids: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the task group jobs run in, and sweep expired jobs; returns only when cancelled."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._sweep)
            task_status.started()

    async def submit(self, topic: str, *, owner: str | None,
                     idempotency: tuple[str, str] | None = None,
                     webhook: WebhookSpec | None = None) -> Job:
        """Queue a new job; raises ShuttingDown, QueueFull or KeyTaken."""
        if self.draining:
            raise ShuttingDown
        self._check_room()
        job = Job(topic=topic, owner=owner, webhook=webhook,
                  id=new_job_id(self.settings.machine_id if self.settings.placed_ids else None),
                  trace=self.llm.tracing.new_job_trace())
        # Stored with its first event before it can start, so that event is always `queued`.
        first = StatusEvent(status=JobStatus.queued, stage=job.stage, progress=job.progress)
        if (holder := await self.store.add(job, idempotency, first)) != job.id:
            raise KeyTaken(holder)
        self.metrics.jobs_submitted.inc()
        logger.info("job queued", extra={"job_id": job.id})
        self._queued(job.id)
        return job

    def _check_room(self) -> None:
        if len(self._waiting) >= self.settings.max_queued_jobs:
            raise QueueFull

    def _queued(self, job_id: str) -> None:
        self._waiting[job_id] = None
        self._start_waiting()

    async def cancel(self, job_id: str) -> Job | None:
        """Stop a job; returns it once it has ended (or None if unknown)."""
        job = await self.store.get(job_id)
        if job is None:
            return None
        if job.status in (JobStatus.succeeded, JobStatus.failed):
            raise NotCancellable(job.status.value)
        if job.terminal:
            return job
        if job.status is JobStatus.queued and await self.events.finish(
                job, JobStatus.cancelled, CANCELLED, only_if=JobStatus.queued):
            self._waiting.pop(job_id, None)  # its place in the queue goes back at once
            self._update_gauges()
            return job
        # It is running (or has just started): stop it where it runs.
        await self._stop_running(job_id)
        return await self.wait_terminal(job_id, timeout_s=CANCEL_WAIT_S)

    async def _stop_running(self, job_id: str) -> None:
        if scope := self._running.get(job_id):
            scope.cancel()

    async def wait_terminal(self, job_id: str, *, timeout_s: float) -> Job | None:
        """The job once it has ended, or as it is when `timeout_s` runs out."""
        after = 0
        with anyio.move_on_after(timeout_s):
            while True:
                events = await self.store.read(job_id, after, timeout_s=timeout_s)
                if events is None or any(event.terminal for event in events):
                    break
                if events:
                    after = events[-1].id
        return await self.store.get(job_id)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    async def drain(self) -> None:
        """Refuse new jobs, give running ones DRAIN_SECONDS, then end the rest `shutdown`."""
        self.draining = True
        logger.info("draining: %d running, %d queued", self.running, self.queued)
        while self._waiting:
            job_id = next(iter(self._waiting))
            del self._waiting[job_id]
            if (job := await self.store.get(job_id)) is not None:
                await self.events.finish(job, JobStatus.failed, SHUTDOWN)
        self._update_gauges()
        with anyio.move_on_after(self.settings.drain_s):
            await self._idle.wait()
        for job_id, scope in self._running.items():
            self._shutdown_ids.add(job_id)
            scope.cancel()
        with anyio.move_on_after(2.0):
            await self._idle.wait()
        logger.info("drained: %d jobs still running", self.running)

    def _start_waiting(self) -> None:
        """Start queued jobs, oldest first, while places are free."""
        assert self._task_group is not None, "JobRunner.run() must be started first."
        while self._waiting and len(self._running) < self.settings.max_running_jobs:
            job_id = next(iter(self._waiting))
            del self._waiting[job_id]
            # The place is taken now, before the task runs, so the count is always exact.
            self._running[job_id] = anyio.CancelScope()
            self._idle.clear()
            self._task_group.start_soon(self._run, job_id, name=f"job {job_id}")
        self._update_gauges()

    async def _run(self, job_id: str) -> None:
        scope = self._running[job_id]
        try:
            await self._execute(job_id, scope)
        except Exception as exc:
            if _only(exc, LeaseLost):
                logger.info("another instance has taken the job over", extra={"job_id": job_id})
            elif _only(exc, StoreUnavailable):
                # Its lease runs out, and an instance that can reach the store resumes it.
                logger.warning("the store is away: the job is left to be taken over",
                               extra={"job_id": job_id})
            else:
                # A bug in the runner itself: the job still ends, and the service lives on.
                logger.exception("job runner failed", extra={"job_id": job_id})
                await self._fail(job_id)
        finally:
            del self._running[job_id]
            self._shutdown_ids.discard(job_id)
            if not self._running:
                self._idle.set()
            self._place_freed()
            self._update_gauges()

    async def _execute(self, job_id: str, scope: anyio.CancelScope) -> None:
        """Run the job if it is still queued (it may have been cancelled while it waited)."""
        job = await self.store.get(job_id)
        if job is not None and job.status is JobStatus.queued:
            await self._run_flow(job, scope)

    async def _fail(self, job_id: str) -> None:
        with anyio.CancelScope(shield=True):
            try:
                if (job := await self.store.get(job_id)) is not None:
                    await self.events.finish(job, JobStatus.failed, INTERNAL_ERROR)
            except StoreUnavailable:
                logger.error("could not record the job's failure: the store is away",
                             extra={"job_id": job_id})

    def _place_freed(self) -> None:
        if not self.draining:
            self._start_waiting()

    async def _run_flow(self, job: Job, scope: anyio.CancelScope, *, resume: bool = False) -> None:
        """Run the workflow to the job's end; a resumed job starts where its checkpoint is."""
        if not resume:
            await self.events.started(job)
        assert job.started_at is not None
        queue: asyncio.Queue[Report] = asyncio.Queue()
        shared = new_shared(job.topic, queue, sections=job.sections, contents=job.contents)
        flow = build_flow(self.llm, self.settings, resume_stage(job.sections, job.contents))
        # A resumed job has what is left of its deadline, not a new one.
        deadline = job.started_at + self.settings.job_timeout_s - time.time()
        error: JobError | None = None

        async def run_flow() -> None:
            nonlocal error
            try:
                with anyio.fail_after(max(0.0, deadline)):
                    await flow.run_async(shared)
            except Exception as exc:
                error = classify(exc, job)
            finally:
                queue.put_nowait(FlowEnded())

        with scope, self.llm.tracing.job(job):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(self.events.pump, job, queue, resumed=resume))
                await run_flow()
        # Finishing happens outside the cancel scope, so a cancelled job still records its end.
        with anyio.CancelScope(shield=True):
            if scope.cancel_called:
                await self._stopped(job)
            elif error is not None:
                await self.events.finish(job, JobStatus.failed,
                                         JobErrorBody(code=error.code, message=error.message))
            else:
                await self.events.finish(job, JobStatus.succeeded, article=shared["final_article"])

    async def _stopped(self, job: Job) -> None:
        """The end of a job whose scope was cancelled: by a client, or by the drain."""
        if job.id in self._shutdown_ids:
            await self.events.finish(job, JobStatus.failed, SHUTDOWN)
        else:
            await self.events.finish(job, JobStatus.cancelled, CANCELLED)

    async def _sweep(self) -> None:
        period = min(60.0, max(1.0, self.settings.job_ttl_s / 4))
        while True:
            await anyio.sleep(period)
            if removed := await self.store.expire(time.time()):
                logger.info("expired %d finished jobs", removed)

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.queued)
        self.metrics.running_jobs.set(self.running)


def _only(exc: BaseException, kind: type[Exception] | UnionType) -> bool:
    """Whether `exc` is a `kind`, or a group of nothing else (a task group's way to raise)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda inner: not isinstance(inner, kind | BaseExceptionGroup)) is None
    return isinstance(exc, kind)


def classify(exc: BaseException, job: Job) -> JobError:
    """The job error for whatever ended the flow; unexpected ones are logged in full."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, TimeoutError):
        return JobError("The job ran past JOB_TIMEOUT_SECONDS.", code="timeout")
    logger.error("job failed unexpectedly", exc_info=exc, extra={"job_id": job.id})
    return JobError(INTERNAL_ERROR.message, code=INTERNAL_ERROR.code)
