"""The job runner: a bounded FIFO queue, a fixed number of runners, cancel, drain and TTL.

Nodes put plain dicts into the job's `sse_queue`; the runner's pump turns them into the
job's state and its numbered event log, coalescing live text on the way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .deltas import DeltaCoalescer
from .errors import JobError, NotCancellable, QueueFull, ShuttingDown
from .flow import build_flow, new_shared
from .job import Event, Job, JobStatus, Stage
from .llm import LLM
from .metrics import Metrics
from .settings import Settings
from .store import JobStore

logger = logging.getLogger(__name__)

_STOP: dict[str, Any] = {"type": "stop"}
#: progress at the start of each stage; sections fill the span from content to style
_STAGE_PROGRESS = {Stage.outline: 5, Stage.content: 20, Stage.style: 80}
_OUTLINE_PROGRESS = 15


class JobRunner:
    """Runs jobs in the task group that `run()` is started in (the app's lifespan)."""

    def __init__(self, store: JobStore, llm: LLM, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.llm = llm
        self.settings = settings
        self.metrics = metrics
        self.draining = False
        self._send: MemoryObjectSendStream[str]
        self._receive: MemoryObjectReceiveStream[str]
        # The buffer is unbounded; `_waiting` holds the queue to MAX_QUEUED_JOBS, so a job
        # cancelled while it waits gives its place back at once.
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self._waiting: set[str] = set()
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._shutdown_ids: set[str] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- serving -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The runners and the TTL sweeper; returns only when cancelled."""
        with self._send, self._receive:
            async with anyio.create_task_group() as tg:
                for _ in range(self.settings.max_running_jobs):
                    tg.start_soon(self._worker)
                tg.start_soon(self._sweep)
                task_status.started()

    async def submit(self, topic: str, *, owner: str | None,
                     idempotency: tuple[str, str] | None = None) -> Job:
        """Queue a new job; raises ShuttingDown or QueueFull."""
        if self.draining:
            raise ShuttingDown
        if len(self._waiting) >= self.settings.max_queued_jobs:
            raise QueueFull
        job = Job(topic=topic, owner=owner)
        # Stored and announced before a runner can see it, so no runner meets an unknown id.
        await self.store.add(job, idempotency)
        await self._publish(job, "status", {"status": "queued", "stage": "queued", "progress": 0})
        self._waiting.add(job.id)
        self._send.send_nowait(job.id)
        self.metrics.jobs_submitted.inc()
        self._update_gauges()
        logger.info("job queued", extra={"job_id": job.id})
        return job

    async def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop; returns it once it has ended (or None if unknown)."""
        job = await self.store.get(job_id)
        if job is None:
            return None
        if job.status in (JobStatus.succeeded, JobStatus.failed):
            raise NotCancellable(job.status.value)
        if job.terminal:
            return job
        if job.status is JobStatus.queued:
            self._waiting.discard(job_id)
            await self._finish(job, JobStatus.cancelled, _cancelled_error())
            self._update_gauges()
            return job
        scope = self._scopes.get(job_id)
        if scope is not None:
            scope.cancel()
        await self.wait_terminal(job_id, timeout_s=5.0)
        return await self.store.get(job_id)

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
        return len(self._scopes)

    # -- shutdown ------------------------------------------------------------------------

    async def drain(self) -> None:
        """Refuse new jobs, give running ones DRAIN_SECONDS, then end the rest `shutdown`."""
        self.draining = True
        logger.info("draining: %d running, %d queued", self.running, self.queued)
        while True:
            try:
                job_id = self._receive.receive_nowait()
            except anyio.WouldBlock:
                break
            self._waiting.discard(job_id)
            job = await self.store.get(job_id)
            if job is not None and job.status is JobStatus.queued:
                await self._finish(job, JobStatus.failed, _shutdown_error())
        self._update_gauges()
        with anyio.move_on_after(self.settings.drain_s):
            await self._idle.wait()
        for job_id, scope in list(self._scopes.items()):
            self._shutdown_ids.add(job_id)
            scope.cancel()
        with anyio.move_on_after(2.0):
            await self._idle.wait()
        logger.info("drained: %d jobs still running", self.running)

    # -- running a job -------------------------------------------------------------------

    async def _worker(self) -> None:
        async for job_id in self._receive:
            self._waiting.discard(job_id)
            job = await self.store.get(job_id)
            if job is None or job.status is not JobStatus.queued:
                continue  # cancelled while it waited
            self._update_gauges()
            try:
                await self._run(job)
            except Exception:
                # A bug in the runner itself: the job still ends, and this runner lives on.
                logger.exception("job runner failed", extra={"job_id": job.id})
                await self._finish(job, JobStatus.failed, {
                    "code": "internal_error",
                    "message": "The job failed with an unexpected internal error."})

    async def _run(self, job: Job) -> None:
        scope = anyio.CancelScope()
        self._scopes[job.id] = scope
        self._idle.clear()
        try:
            await self._run_in_scope(job, scope)
        finally:
            del self._scopes[job.id]
            self._shutdown_ids.discard(job.id)
            if not self._scopes:
                self._idle.set()
            self._update_gauges()

    async def _run_in_scope(self, job: Job, scope: anyio.CancelScope) -> None:
        job.start()
        await self.store.save(job)
        logger.info("job running", extra={"job_id": job.id})
        await self._publish(job, "status", {"status": "running", "stage": job.stage.value,
                                            "progress": job.progress})
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        shared = new_shared(job.topic, queue)
        error: JobError | None = None

        async def run_flow() -> None:
            nonlocal error
            try:
                with anyio.fail_after(self.settings.job_timeout_s):
                    await build_flow(self.llm, self.settings).run_async(shared)
            except Exception as exc:
                error = classify(exc, job)
            finally:
                queue.put_nowait(_STOP)

        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump, job, queue, shared)
                await run_flow()
        # Finishing happens outside the cancel scope, so a cancelled job still records its end.
        with anyio.CancelScope(shield=True):
            if scope.cancel_called:
                if job.id in self._shutdown_ids:
                    await self._finish(job, JobStatus.failed, _shutdown_error())
                else:
                    await self._finish(job, JobStatus.cancelled, _cancelled_error())
            elif error is not None:
                await self._finish(job, JobStatus.failed, {"code": error.code,
                                                           "message": error.message})
            else:
                await self._finish(job, JobStatus.succeeded, article=shared["final_article"])

    async def _pump(self, job: Job, queue: asyncio.Queue[dict[str, Any]],
                    shared: dict[str, Any]) -> None:
        """Turn what the nodes report into job state and events, until the flow stops."""
        coalescer = DeltaCoalescer(self.settings.delta_interval_ms / 1000)
        stage_started = time.monotonic()
        completed = 0
        while True:
            wait = coalescer.next_due(time.monotonic())
            try:
                # asyncio's timeout, not anyio's: this runs once per chunk of text, and
                # anyio's backend lookup was a fifth of the service's CPU time here.
                async with asyncio.timeout(wait):
                    message = await queue.get()
            except TimeoutError:
                for delta in coalescer.due(time.monotonic()):
                    await self._publish(job, "delta", delta)
                continue
            kind = message["type"]
            if kind == "stop":
                self.metrics.stage_seconds.labels(job.stage.value).observe(
                    time.monotonic() - stage_started)
                for delta in coalescer.flush_all(time.monotonic()):
                    await self._publish(job, "delta", delta)
                return
            if kind == "stage":
                stage = Stage(message["stage"])
                if stage is not job.stage:
                    self.metrics.stage_seconds.labels(job.stage.value).observe(
                        time.monotonic() - stage_started)
                stage_started = time.monotonic()
                job.advance(stage, _STAGE_PROGRESS[stage])
                await self.store.save(job)
                await self._publish(job, "progress", {"stage": stage.value, "progress": job.progress,
                                                      "message": message["message"]})
            elif kind == "outline":
                job.sections = list(message["sections"])
                job.advance(job.stage, _OUTLINE_PROGRESS)
                await self.store.save(job)
                await self._publish(job, "outline", {"sections": job.sections,
                                                     "progress": job.progress})
            elif kind in ("delta", "reset") and self.settings.stream_deltas:
                part = (message["stage"], message["index"])
                if kind == "reset":
                    coalescer.reset(part)
                elif ready := coalescer.add(part, message["text"], time.monotonic()):
                    await self._publish(job, "delta", ready)
            elif kind == "section":
                if held := coalescer.flush(("content", message["index"]), time.monotonic()):
                    await self._publish(job, "delta", held)
                total = len(job.sections or ())
                completed += 1
                span = _STAGE_PROGRESS[Stage.style] - _STAGE_PROGRESS[Stage.content]
                job.advance(job.stage, _STAGE_PROGRESS[Stage.content] + span * completed // total)
                await self.store.save(job)
                await self._publish(job, "section", {
                    "index": message["index"], "title": message["title"],
                    "content": message["content"], "completed": completed, "total": total,
                    "progress": job.progress,
                })

    async def _finish(self, job: Job, status: JobStatus, error: dict[str, str] | None = None,
                      *, article: str | None = None) -> None:
        if job.terminal:
            return
        job.finish(status, error=error, article=article)
        await self.store.save(job)
        if status is JobStatus.succeeded:
            await self._publish(job, "done", job.public())
        elif status is JobStatus.cancelled:
            await self._publish(job, "cancelled", dict(error or _cancelled_error()))
        else:
            await self._publish(job, "error", dict(error or {}))
        code = (error or {}).get("code", "")
        self.metrics.jobs_finished.labels(status.value, code).inc()
        if job.started_at is not None and job.finished_at is not None:
            self.metrics.job_seconds.labels(status.value).observe(job.finished_at - job.started_at)
        logger.info("job %s%s", status.value, f" ({code})" if code else "",
                    extra={"job_id": job.id})

    async def _publish(self, job: Job, type: str, data: dict[str, Any]) -> Event:
        return await self.store.append(job.id, type, data)

    async def _sweep(self) -> None:
        period = min(60.0, max(1.0, self.settings.job_ttl_s / 4))
        while True:
            await anyio.sleep(period)
            if removed := await self.store.expire(time.time()):
                logger.info("expired %d finished jobs", removed)

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.queued)
        self.metrics.running_jobs.set(self.running)


def classify(exc: BaseException, job: Job) -> JobError:
    """The job error for whatever ended the flow; unexpected ones are logged in full."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, TimeoutError):
        return JobError("The job ran past JOB_TIMEOUT_SECONDS.", code="timeout")
    logger.error("job failed unexpectedly", exc_info=exc, extra={"job_id": job.id})
    return JobError("The job failed with an unexpected internal error.", code="internal_error")


def _cancelled_error() -> dict[str, str]:
    return {"code": "cancelled", "message": "The job was cancelled."}


def _shutdown_error() -> dict[str, str]:
    return {"code": "shutdown", "message": "The service shut down before the job could finish."}
