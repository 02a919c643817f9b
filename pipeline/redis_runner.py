"""Scheduling on Redis: every instance takes jobs from one work queue, and none is lost.

The queue is a stream read through a consumer group: a submit on any instance runs on
whichever has a free place. An entry stays pending while its job runs; the runner renews
that lease (`XCLAIM`, which resets the entry's idle time) every third of LEASE_SECONDS.
An instance that dies stops renewing, so after LEASE_SECONDS another one takes the entry
(`XAUTOCLAIM`) and resumes the job from its checkpoint, or fails it `worker_lost` once it
has been claimed too often. A cancel is state on the job and a message to every instance.
"""

from __future__ import annotations

import logging

import anyio
import redis.asyncio as redis
from anyio.abc import TaskStatus
from redis.exceptions import RedisError, ResponseError

from . import redis_keys as keys
from .contract import JobStatus
from .errors import LeaseLost, StoreUnavailable
from .job import Job
from .llm import LLM
from .metrics import Metrics
from .payloads import JobErrorBody
from .redis_store import RedisJobStore, redis_errors
from .runner import JobRunner, _only
from .settings import Settings

logger = logging.getLogger(__name__)

WORKER_LOST = JobErrorBody(code="worker_lost",
                           message="The instance running the job stopped, and the job could not "
                                   "be resumed.")
#: how long one read of the queue blocks; its connection's timeout is longer
BLOCK_S = 2.0
#: wait after a failed read of the queue, while Redis is away
RETRY_S = 0.5


class RedisJobRunner(JobRunner):
    """Runs jobs from the shared queue in this instance's task group, as consumer `name`."""

    def __init__(self, store: RedisJobStore, blocking: redis.Redis, llm: LLM, settings: Settings,
                 metrics: Metrics, *, name: str) -> None:
        super().__init__(store, llm, settings, metrics)
        self.store: RedisJobStore = store
        self.blocking = blocking
        self.name = name
        #: the queue entry that is each running job's lease
        self._entries: dict[str, str] = {}
        #: jobs handed back to the queue on shutdown, for another instance to resume
        self._handed_back: set[str] = set()
        self._place = anyio.Event()
        self._queued_now = 0

    @property
    def queued(self) -> int:
        return self._queued_now

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.store.hub.on_cancel = self._cancel_here
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._take_new)
            tg.start_soon(self._take_over)
            tg.start_soon(self._renew)
            tg.start_soon(self._sweep)
            task_status.started()

    # -- what the base runner asks of its queue ----------------------------------------

    def _check_room(self) -> None:
        pass  # the submit script counts the queue across every instance

    def _queued(self, job_id: str) -> None:
        pass  # the submit script put it on the shared queue; a free instance takes it

    def _place_freed(self) -> None:
        self._place.set()

    def _cancel_here(self, job_id: str) -> None:
        if scope := self._running.get(job_id):
            scope.cancel()

    async def _stop_running(self, job_id: str) -> None:
        if job_id in self._running:
            self._cancel_here(job_id)
        else:
            await self.store.request_cancel(job_id)

    # -- taking work -------------------------------------------------------------------

    async def _take_new(self) -> None:
        """Read new entries while this instance has free places."""
        while not self.draining:
            free = self.settings.max_running_jobs - len(self._running)
            if free <= 0:
                self._place = anyio.Event()
                await self._place.wait()
                continue
            try:
                reply = await self.blocking.xreadgroup(keys.GROUP, self.name, {keys.QUEUE: ">"},
                                                       count=free, block=int(BLOCK_S * 1000))
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._create_group()
                    continue
                logger.error("the work queue refused a read (%s); trying again", exc)
                await anyio.sleep(RETRY_S)
                continue
            except (RedisError, OSError) as exc:
                logger.warning("cannot read the work queue (%s); trying again", exc)
                await anyio.sleep(RETRY_S)
                continue
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    self._start(fields[b"job"].decode(), entry_id.decode())

    async def _take_over(self) -> None:
        """Claim entries whose lease ran out: their instance died, or stopped."""
        lease_ms = int(self.settings.lease_s * 1000)
        while not self.draining:
            await anyio.sleep(self.settings.lease_s / 2)
            start = "0-0"
            try:
                while (free := self.settings.max_running_jobs - len(self._running)) > 0:
                    async with redis_errors():
                        start, entries, _ = await self.store.client.xautoclaim(
                            keys.QUEUE, keys.GROUP, self.name, lease_ms, start, count=free)
                    for entry_id, fields in entries:
                        if fields:  # an entry deleted meanwhile comes back empty
                            self._start(fields[b"job"].decode(), entry_id.decode())
                    if start in (b"0-0", "0-0"):
                        break
            except StoreUnavailable as exc:
                logger.warning("cannot look for abandoned jobs (%s)", exc.__cause__)

    async def _renew(self) -> None:
        """Keep the leases of running jobs, and hear cancels whose message was missed."""
        while True:
            await anyio.sleep(self.settings.lease_s / 3)
            running = {job_id: entry for job_id, entry in self._entries.items()
                       if job_id not in self._handed_back}
            try:
                if running:
                    async with redis_errors():
                        await self.store.client.xclaim(keys.QUEUE, keys.GROUP, self.name, 0,
                                                       list(running.values()), justid=True)
                    for job_id in await self.store.cancel_requested(list(running)):
                        self._cancel_here(job_id)
                async with redis_errors():
                    self._queued_now = int(await self.store.client.get(keys.QUEUED) or 0)
                self._update_gauges()
            except StoreUnavailable as exc:
                logger.warning("cannot renew leases (%s)", exc.__cause__)

    def _start(self, job_id: str, entry_id: str) -> None:
        if job_id in self._running:
            return  # already running here (an entry claimed back from ourselves)
        assert self._task_group is not None
        self._entries[job_id] = entry_id
        self._running[job_id] = anyio.CancelScope()
        self._idle.clear()
        self._task_group.start_soon(self._run, job_id, name=f"job {job_id}")
        self._update_gauges()

    async def _execute(self, job_id: str, scope: anyio.CancelScope) -> None:
        taken_over = False
        try:
            verdict, claims = await self.store.claim(job_id, self.name)
            job = await self.store.get(job_id) if verdict in ("start", "resume", "lost") else None
            if job is not None and verdict == "start":
                await self._run_flow(job, scope)
            elif job is not None and verdict == "resume":
                logger.info("resuming the job (claim %d)", claims, extra={"job_id": job_id})
                await self._run_flow(job, scope, resume=True)
            elif job is not None:
                await self.events.finish(job, JobStatus.failed, WORKER_LOST)
        except Exception as exc:
            taken_over = _only(exc, LeaseLost | StoreUnavailable)
            raise
        finally:
            self.store.release(job_id)
            entry = self._entries.pop(job_id)
            # A job taken over keeps its entry: it is the lease of the instance that runs it now
            # (or, with the store away, of the one that takes it over later).
            if job_id not in self._handed_back and not taken_over:
                with anyio.CancelScope(shield=True):
                    await self._done(entry)
            self._handed_back.discard(job_id)

    async def _done(self, entry: str) -> None:
        try:
            async with redis_errors():
                async with self.store.client.pipeline(transaction=True) as pipe:
                    await pipe.xack(keys.QUEUE, keys.GROUP, entry).xdel(keys.QUEUE, entry).execute()
        except StoreUnavailable:
            # The entry stays pending: another instance takes it over and finds the job ended.
            logger.warning("could not remove a finished job's queue entry")

    async def _create_group(self) -> None:
        try:
            async with redis_errors():
                await self.blocking.xgroup_create(keys.QUEUE, keys.GROUP, id="0", mkstream=True)
        except StoreUnavailable as exc:
            if "BUSYGROUP" not in str(exc):  # another instance made it first: fine
                logger.warning("cannot create the work queue's group (%s); trying again", exc)
                await anyio.sleep(RETRY_S)

    # -- shutdown ----------------------------------------------------------------------

    async def drain(self) -> None:
        """Take no new work; give running jobs DRAIN_SECONDS, then hand the rest back to the
        queue at once (not after a lease) for another instance to resume."""
        self.draining = True
        self._place.set()
        logger.info("draining: %d running", self.running)
        with anyio.move_on_after(self.settings.drain_s):
            await self._idle.wait()
        if self._running:
            await self._hand_back()
        with anyio.move_on_after(2.0):
            await self._idle.wait()
        logger.info("drained: %d jobs handed back", len(self._handed_back))

    async def _hand_back(self) -> None:
        entries = dict(self._entries)
        self._handed_back.update(entries)
        try:
            async with redis_errors():
                # Idle as long as a dead instance's: the next look for abandoned jobs takes them.
                await self.store.client.xclaim(
                    keys.QUEUE, keys.GROUP, self.name, 0, list(entries.values()),
                    idle=int(self.settings.lease_s * 1000) * 2, justid=True)
        except StoreUnavailable:
            logger.warning("could not hand jobs back; they are taken over after LEASE_SECONDS")
        for job_id in entries:
            self._cancel_here(job_id)

    async def _stopped(self, job: Job) -> None:
        if job.id not in self._handed_back:
            await super()._stopped(job)
