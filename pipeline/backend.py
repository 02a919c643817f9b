"""Where jobs live and how they are scheduled: in this process, or shared through Redis.

`REDIS_URL` chooses. In memory, one process holds every job. On Redis, every instance
behind one address serves any job, takes work from one queue, and takes over the jobs of
an instance that died.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from .llm import LLM
from .metrics import Metrics
from .runner import JobRunner
from .settings import Settings
from .store import JobStore, MemoryJobStore

if TYPE_CHECKING:  # redis (a tenth of a second to import) only when REDIS_URL is set
    import redis.asyncio as redis

    from .redis_log import LogHub
    from .redis_store import RedisJobStore
    from .webhooks import Webhooks  # and webhooks (httpx2) only when WEBHOOK_SECRET is

#: the subscription waits this long for a message before it pings; its timeout is longer
_PUBSUB_TIMEOUT_S = 15.0


@dataclass
class Backend:
    store: JobStore
    runner: JobRunner
    #: the Redis store, when jobs are shared (for readiness checks)
    shared: RedisJobStore | None = None
    hub: LogHub | None = None
    #: webhook delivery, when WEBHOOK_SECRET is set
    webhooks: Webhooks | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The backend's own tasks, until cancelled."""
        async with anyio.create_task_group() as tg:
            if self.hub is not None:
                await tg.start(self.hub.run)
            if self.webhooks is not None:
                await tg.start(self.webhooks.run)
            await tg.start(self.runner.run)
            task_status.started()


@asynccontextmanager
async def open_backend(settings: Settings, llm: LLM, metrics: Metrics) -> AsyncIterator[Backend]:
    if settings.redis_url is None:
        memory = MemoryJobStore(ttl_s=settings.job_ttl_s, max_jobs=settings.max_stored_jobs)
        runner = JobRunner(memory, llm, settings, metrics)
        yield Backend(memory, runner, webhooks=_webhooks(settings, metrics, runner, None))
        return
    from .redis_log import LogHub
    from .redis_runner import BLOCK_S, RedisJobRunner
    from .redis_store import COMMAND_TIMEOUT_S, RedisJobStore, connect

    name = instance_name(settings)
    client = connect(settings.redis_url, name=name)
    blocking = connect(settings.redis_url, timeout_s=BLOCK_S + COMMAND_TIMEOUT_S, connections=1,
                       name=name)
    subscriber = connect(settings.redis_url, timeout_s=_PUBSUB_TIMEOUT_S, connections=1, name=name)
    try:
        hub = LogHub(client, subscriber)
        store = RedisJobStore(client, hub, ttl_s=settings.job_ttl_s,
                              max_jobs=settings.max_stored_jobs,
                              max_queued=settings.max_queued_jobs,
                              job_timeout_s=settings.job_timeout_s,
                              write_patience_s=settings.job_timeout_s)
        runner = RedisJobRunner(store, blocking, llm, settings, metrics, name=name)
        yield Backend(store, runner, shared=store, hub=hub,
                      webhooks=_webhooks(settings, metrics, runner, client))
    finally:
        for connection in (client, blocking, subscriber):
            await connection.aclose()


def _webhooks(settings: Settings, metrics: Metrics, runner: JobRunner,
              client: redis.Redis | None) -> Webhooks | None:
    """Webhook delivery, told of every job's events, with its queue beside the jobs."""
    if settings.webhook_secret is None:
        return None
    from .webhook_queue import DeliveryQueue, MemoryDeliveryQueue
    from .webhooks import Webhooks

    queue: DeliveryQueue
    if client is None:
        queue = MemoryDeliveryQueue(max_statuses=settings.max_stored_jobs + settings.max_queued_jobs)
    else:
        from .redis_webhooks import RedisDeliveryQueue

        queue = RedisDeliveryQueue(client, status_ttl_s=settings.job_ttl_s + 3600,
                                   push_patience_s=settings.job_timeout_s)
    webhooks = Webhooks(queue, settings, metrics)
    runner.events.webhooks = webhooks
    return webhooks


def instance_name(settings: Settings) -> str:
    """This process's name among the queue's consumers: its machine, and what makes it unique."""
    machine = settings.machine_id or socket.gethostname()
    return f"{machine}-{os.getpid()}-{secrets.token_hex(3)}"
