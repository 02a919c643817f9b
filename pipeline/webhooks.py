"""Webhooks: what happens to a job, delivered to its receiver beside the job, never inside it.

`JobEvents` hands each happening of a job that has a webhook to `notify`, which only puts a
delivery on the queue (memory, or Redis: then any instance delivers it). A worker claims
due deliveries and sends each in a task of its own, signed as Standard Webhooks says; a
failed attempt is tried again after an exponential backoff with jitter, with the same
`webhook-id`, up to WEBHOOK_MAX_ATTEMPTS. So a slow receiver delays nothing but itself.
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from datetime import datetime, timezone

import anyio
from anyio.abc import TaskStatus
from standardwebhooks import Webhook

from . import payloads
from .contract import JobStatus
from .errors import StoreUnavailable
from .job import Job
from .metrics import Metrics
from .settings import Settings
from .webhook_queue import Delivery, DeliveryQueue, MemoryDeliveryQueue
from .webhook_send import AttemptFailed, Sender

logger = logging.getLogger(__name__)

EVENT_TYPES = {"start": "job.started", "progress": "job.progress", "completed": "job.completed"}
#: at most one progress delivery per job this often
PROGRESS_INTERVAL_S = 1.0
#: attempts in flight at once in this process
MAX_IN_FLIGHT = 100
MAX_BACKOFF_S = 300.0
#: what a delivery's kind is, by the event that the job's log got
_KINDS: dict[type[payloads.Event], str] = {
    payloads.ProgressEvent: "progress", payloads.OutlineEvent: "progress",
    payloads.SectionEvent: "progress", payloads.DoneEvent: "completed",
    payloads.ErrorEvent: "completed", payloads.CancelledEvent: "completed",
}


class Webhooks:
    """Turns job happenings into deliveries, and delivers them; `run()` in the lifespan."""

    def __init__(self, queue: DeliveryQueue, settings: Settings, metrics: Metrics) -> None:
        assert settings.webhook_secret is not None, "Webhooks need WEBHOOK_SECRET."
        self.queue = queue
        self.settings = settings
        self.metrics = metrics
        self._signer = Webhook(settings.webhook_secret)
        self._sender = Sender(allow_private=settings.webhook_allow_private,
                              timeout_s=settings.webhook_timeout_s)
        #: when each job's latest progress delivery was made
        self._last_progress: dict[str, float] = {}
        self._in_flight: set[str] = set()
        self._wake = anyio.Event()
        self._lease_s = settings.webhook_timeout_s + 10.0
        self._draining = False

    async def notify(self, job: Job, data: payloads.Event) -> None:
        """Queue the delivery the job's new event calls for, if any; never waits on a receiver."""
        if job.webhook is None:
            return
        kind = _KINDS.get(type(data))
        if isinstance(data, payloads.StatusEvent) and data.status is JobStatus.running:
            kind = "start"
        if kind == "completed":
            self._last_progress.pop(job.id, None)
        if kind is None or kind not in job.webhook.events:
            return
        now = time.time()
        if kind == "progress":
            if now - self._last_progress.get(job.id, 0.0) < PROGRESS_INTERVAL_S:
                return
            self._last_progress[job.id] = now
        timestamp = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds")
        body = {"type": EVENT_TYPES[kind], "timestamp": timestamp.replace("+00:00", "Z"),
                "data": job.public().model_dump(mode="json")}
        delivery = Delivery(id="msg_" + secrets.token_urlsafe(16), job_id=job.id,
                            url=job.webhook.url, type=EVENT_TYPES[kind],
                            body=json.dumps(body, ensure_ascii=False), created=now)
        try:
            await self.queue.push(delivery)
        except StoreUnavailable:
            logger.error("could not queue a %s webhook: the store is away", delivery.type,
                         extra={"job_id": job.id})
            return
        self._wake.set()

    async def status(self, job_id: str) -> payloads.WebhookStatus | None:
        return await self.queue.status(job_id)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Claim due deliveries and send them, until cancelled."""
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    self._wake = anyio.Event()
                    free = MAX_IN_FLIGHT - len(self._in_flight)
                    if self._draining and not await self.queue.pending():
                        free = 0  # stopping: take no new work that others can do
                    try:
                        claimed = await self.queue.claim(time.time(), free, self._lease_s) \
                            if free > 0 else []
                    except StoreUnavailable as exc:
                        logger.warning("cannot look for webhooks to deliver (%s)", exc.__cause__)
                        claimed = []
                    for delivery in claimed:
                        self._in_flight.add(delivery.id)
                        tg.start_soon(self._attempt, delivery)
                    await self._sleep()
        finally:
            with anyio.CancelScope(shield=True):
                await self._sender.aclose()

    async def _sleep(self) -> None:
        """Until something is queued here, an attempt ends, or the next delivery is due."""
        due = await self.queue.next_due()
        with anyio.move_on_after(3600.0 if due is None else max(0.0, due - time.time())):
            await self._wake.wait()

    async def _attempt(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        moment = datetime.now(timezone.utc)
        headers = {"webhook-id": delivery.id,
                   "webhook-timestamp": str(int(moment.timestamp())),
                   "webhook-signature": self._signer.sign(delivery.id, moment, delivery.body)}
        try:
            try:
                await self._sender.send(delivery.url, delivery.body.encode(), headers)
            except AttemptFailed as exc:
                self.metrics.webhook_attempts.labels("failed").inc()
                await self._failed(delivery, str(exc))
            else:
                self.metrics.webhook_attempts.labels("ok").inc()
                self.metrics.webhook_deliveries.labels("delivered").inc()
                self.metrics.webhook_latency.observe(max(0.0, time.time() - delivery.created))
                await self.queue.done(delivery, None)
        except StoreUnavailable as exc:
            # The claim's lease runs out and the delivery is tried again.
            logger.warning("could not record a webhook attempt (%s)", exc.__cause__,
                           extra={"job_id": delivery.job_id})
        finally:
            self._in_flight.discard(delivery.id)
            self._wake.set()

    async def _failed(self, delivery: Delivery, error: str) -> None:
        if delivery.attempts >= self.settings.webhook_max_attempts:
            logger.warning("webhook %s not delivered after %d attempts: %s", delivery.type,
                           delivery.attempts, error, extra={"job_id": delivery.job_id})
            self.metrics.webhook_deliveries.labels("failed").inc()
            await self.queue.done(delivery, error)
            return
        delay = min(MAX_BACKOFF_S, self.settings.webhook_backoff_s * 2 ** (delivery.attempts - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: receivers that failed together spread out
        logger.info("webhook %s attempt %d failed (%s); next in %.1f s", delivery.type,
                    delivery.attempts, error, delay, extra={"job_id": delivery.job_id})
        await self.queue.retry(delivery, time.time() + delay, error)

    async def drain(self, budget_s: float) -> None:
        """Deliver what is pending for up to `budget_s`; in memory, what is left is lost."""
        self._draining = True
        with anyio.move_on_after(budget_s):
            try:
                while await self._pending_here():
                    with anyio.move_on_after(0.1):
                        await self._wake.wait()
            except StoreUnavailable:
                pass  # what Redis holds stays there for another instance
        if isinstance(self.queue, MemoryDeliveryQueue):
            for delivery in self.queue.lost():
                logger.warning("webhook %s lost at shutdown (%d attempts made)", delivery.type,
                               delivery.attempts, extra={"job_id": delivery.job_id})
                self.metrics.webhook_deliveries.labels("lost").inc()
        elif self._in_flight:
            logger.info("%d webhook deliveries left in Redis for another instance",
                        len(self._in_flight))

    async def _pending_here(self) -> int:
        return len(self._in_flight) + await self.queue.pending()
