"""Pending webhook deliveries and each job's delivery status: the interface, and the
in-process backend (the Redis one is `redis_webhooks.py`).

A delivery is due at a time; `claim` hands out the due ones and takes them off the
schedule for a lease, so a delivery whose claimer died comes due again. In memory the
lease never runs out (the process that claimed is the only one there is), and a restart
loses whatever is pending.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

from . import payloads

#: how many delivered entries a job's status keeps (the latest)
MAX_DELIVERED_SHOWN = 20


@dataclass
class Delivery:
    """One event for one receiver; `id` is its `webhook-id`, the same on every retry."""

    id: str
    job_id: str
    url: str
    type: str
    #: the JSON body, signed and sent as it is on every attempt
    body: str
    #: when the event happened (epoch seconds): the delivery's latency runs from here
    created: float
    attempts: int = 0

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str | bytes) -> Delivery:
        return cls(**json.loads(text))


class DeliveryQueue(Protocol):
    async def push(self, delivery: Delivery) -> None:
        """Schedule a new delivery now, and count it pending on its job."""

    async def claim(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        """Up to `limit` deliveries due by `now`, each off the schedule for `lease_s`."""

    async def retry(self, delivery: Delivery, due: float, error: str) -> None:
        """Schedule another attempt at `due`; `error` becomes the job's `last_error`."""

    async def done(self, delivery: Delivery, error: str | None) -> None:
        """Forget the delivery: delivered (`error` None), or failed for good."""

    async def status(self, job_id: str) -> payloads.WebhookStatus | None:
        """What became of the job's deliveries; None if it never had one."""

    async def next_due(self) -> float | None:
        """When to look for due deliveries next; None when nothing is scheduled."""

    async def pending(self) -> int:
        """How many queued deliveries this process should still try before it stops: in memory
        every one (the rest is lost); on Redis none (they wait there for other instances)."""


@dataclass
class _Status:
    url: str
    pending: int = 0
    last_error: str | None = None
    delivered: list[payloads.WebhookDelivery] = field(default_factory=list)


class MemoryDeliveryQueue:
    """Deliveries in a heap by due time; statuses of the latest `max_statuses` jobs."""

    def __init__(self, *, max_statuses: int) -> None:
        self.max_statuses = max_statuses
        self._due: list[tuple[float, int, Delivery]] = []
        self._claimed: dict[str, Delivery] = {}
        self._statuses: dict[str, _Status] = {}
        self._order = 0

    async def push(self, delivery: Delivery) -> None:
        status = self._statuses.get(delivery.job_id)
        if status is None:
            status = self._statuses[delivery.job_id] = _Status(delivery.url)
            while len(self._statuses) > self.max_statuses:
                del self._statuses[next(iter(self._statuses))]
        status.pending += 1
        self._schedule(delivery, time.time())

    def _schedule(self, delivery: Delivery, due: float) -> None:
        self._order += 1
        heapq.heappush(self._due, (due, self._order, delivery))

    async def claim(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        claimed: list[Delivery] = []
        while self._due and self._due[0][0] <= now and len(claimed) < limit:
            delivery = heapq.heappop(self._due)[2]
            self._claimed[delivery.id] = delivery
            claimed.append(delivery)
        return claimed

    async def retry(self, delivery: Delivery, due: float, error: str) -> None:
        self._claimed.pop(delivery.id, None)
        if status := self._statuses.get(delivery.job_id):
            status.last_error = error
        self._schedule(delivery, due)

    async def done(self, delivery: Delivery, error: str | None) -> None:
        self._claimed.pop(delivery.id, None)
        status = self._statuses.get(delivery.job_id)
        if status is None:
            return
        status.pending -= 1
        if error is not None:
            status.last_error = error
            return
        status.delivered.append(payloads.WebhookDelivery(
            type=delivery.type, id=delivery.id, attempts=delivery.attempts))  # type: ignore[arg-type]
        del status.delivered[:-MAX_DELIVERED_SHOWN]

    async def status(self, job_id: str) -> payloads.WebhookStatus | None:
        status = self._statuses.get(job_id)
        if status is None:
            return None
        return payloads.WebhookStatus(url=status.url, delivered=list(status.delivered),
                                      pending=status.pending, last_error=status.last_error)

    async def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    async def pending(self) -> int:
        return len(self._due)  # claimed ones are in flight, and the caller counts those

    def lost(self) -> list[Delivery]:
        """Every delivery still pending: what stopping this process loses."""
        return [entry[2] for entry in self._due] + list(self._claimed.values())
