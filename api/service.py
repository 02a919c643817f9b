"""What the routes need, built by the lifespan and handed to each request as `request.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.metrics import Metrics
from pipeline.runner import JobRunner
from pipeline.settings import Settings
from pipeline.store import JobStore
from pipeline.tracing import Tracing

from .ratelimit import Limiter
from .stream import OpenStreams

if TYPE_CHECKING:  # redis is imported only when REDIS_URL is set, webhooks when WEBHOOK_SECRET is
    from pipeline.redis_store import RedisJobStore
    from pipeline.webhooks import Webhooks


@dataclass
class Service:
    settings: Settings
    store: JobStore
    runner: JobRunner
    #: the Redis store, when REDIS_URL is set: /readyz checks it
    shared: RedisJobStore | None
    metrics: Metrics
    limiter: Limiter
    #: the open event streams, ended once the drain is over
    streams: OpenStreams
    tracing: Tracing
    #: webhook delivery, when WEBHOOK_SECRET is set (else a submit with a webhook gets 422)
    webhooks: Webhooks | None = None
