"""Following jobs' logs on Redis: one follower per job per instance, however many subscribers.

Every appended event is also published on its job's own channel (in the same script as its
`XADD`), and an instance subscribes, on its one subscription connection, to the channels of
the jobs it follows: it parses only the events someone here reads. A follower holds its
job's events in order; it catches up with `XRANGE` once Redis has confirmed its channel, when
an id is skipped, and after the subscription has been lost (Redis restarted), so no event is
lost or repeated. Cancel requests arrive on one more channel and go to `on_cancel`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import redis.asyncio as redis
from anyio.abc import TaskGroup, TaskStatus
from redis.exceptions import RedisError

from . import redis_keys as keys
from . import sse
from .errors import StoreUnavailable
from .job import Event

logger = logging.getLogger(__name__)

#: a follower nobody has read for this long is dropped (its events are still in Redis)
IDLE_FOLLOWER_S = 60.0
#: wait between tries to subscribe again while Redis is away
RECONNECT_S = 0.5
#: how long a new follower waits for Redis to confirm its channel
SUBSCRIBE_TIMEOUT_S = 5.0


def frame(event_id: int, type: str, data: str) -> bytes:
    return sse.encode(data, event=type, id=str(event_id))


@dataclass
class _Follower:
    job_id: str
    events: list[Event] = field(default_factory=list)
    #: set (and replaced) whenever events arrive, so waiting readers wake together
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: set once Redis has confirmed the job's channel on the current subscription
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    #: set once the first catch-up is done
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: heard on the channel before the first catch-up was done
    pending: list[tuple[int, str, bytes]] = field(default_factory=list)
    missing: bool = False
    readers: int = 0
    last_read: float = field(default_factory=time.monotonic)

    @property
    def closed(self) -> bool:
        return bool(self.events) and self.events[-1].terminal

    def add(self, event_id: int, type: str, data: bytes | str) -> bool:
        """Take the next event; False when `event_id` skips ahead (some are missing)."""
        if event_id <= len(self.events):
            return True  # heard twice: once by XRANGE, once on the channel
        if event_id > len(self.events) + 1:
            return False
        text = data.decode() if isinstance(data, bytes) else data
        self.events.append(Event(event_id, type, frame(event_id, type, text)))
        self.changed.set()
        self.changed = asyncio.Event()
        return True


class LogHub:
    """This instance's followers of job logs, fed by one subscription."""

    def __init__(self, client: redis.Redis, pubsub_client: redis.Redis) -> None:
        self.client = client
        self.pubsub_client = pubsub_client
        self.on_cancel: Callable[[str], None] = lambda job_id: None
        self._followers: dict[str, _Follower] = {}
        self._task_group: TaskGroup | None = None
        self._pubsub: redis.client.PubSub | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, subscribing again whenever the connection is lost."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._drop_idle)
            started = False
            while True:
                try:
                    async with self.pubsub_client.pubsub() as pubsub:
                        # Each follower catches up once Redis confirms its channel (_listen):
                        # whatever was appended while away comes then.
                        await pubsub.subscribe(keys.CANCEL_CHANNEL, *(
                            keys.events_channel(job_id) for job_id, follower
                            in self._followers.items() if not follower.closed))
                        self._pubsub = pubsub
                        if not started:
                            task_status.started()
                            started = True
                        await self._listen(pubsub)
                except (RedisError, OSError) as exc:
                    logger.warning("lost the Redis subscription (%s); subscribing again", exc)
                    if not started:
                        task_status.started()
                        started = True
                    await anyio.sleep(RECONNECT_S)
                finally:
                    self._pubsub = None
                    for follower in self._followers.values():
                        follower.subscribed.clear()

    async def _listen(self, pubsub: redis.client.PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=10.0)
            if message is None:
                await pubsub.ping()  # a dead connection shows here, not as endless silence
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "pong" or channel is None or channel == keys.CANCEL_CHANNEL.encode():
                if kind == "message":
                    self.on_cancel(message["data"].decode())
                continue
            follower = self._followers.get(keys.job_of_channel(channel.decode()))
            if follower is None:
                continue
            if kind == "subscribe":
                follower.subscribed.set()
                if follower.ready.is_set():  # subscribed again: catch up on what was missed
                    self._spawn_catch_up(follower)
                continue
            if kind != "message":
                continue
            event_id, type, data = message["data"].split(b"\n", 2)
            if not follower.ready.is_set():
                follower.pending.append((int(event_id), type.decode(), data))
            elif not follower.add(int(event_id), type.decode(), data):
                self._spawn_catch_up(follower)
            elif follower.closed:
                await pubsub.unsubscribe(channel)  # the log is closed: nothing more will come

    async def read(self, job_id: str, after: int, *, timeout_s: float) -> list[Event] | None:
        while (follower := self._followers.get(job_id)) is None or not follower.ready.is_set():
            if follower is not None:
                await follower.ready.wait()
                continue  # ready, or dropped after its first catch-up failed: look again
            follower = self._followers[job_id] = _Follower(job_id)
            try:
                await self._subscribe(follower)
                await self._catch_up(follower)
            except BaseException:
                del self._followers[job_id]
                follower.ready.set()  # readers waiting on it look again, and try themselves
                await self._unsubscribe(job_id)
                raise
        if follower.missing:
            self._followers.pop(job_id, None)
            return None
        follower.readers += 1
        try:
            return await self._wait(follower, after, timeout_s)
        finally:
            follower.readers -= 1
            follower.last_read = time.monotonic()

    async def _subscribe(self, follower: _Follower) -> None:
        """Subscribe to the job's channel and wait until Redis confirms it. While the
        subscription is lost, the next one subscribes every follower (and they catch up)."""
        pubsub = self._pubsub
        if pubsub is None:
            return
        try:
            await pubsub.subscribe(keys.events_channel(follower.job_id))
            with anyio.fail_after(SUBSCRIBE_TIMEOUT_S):
                await follower.subscribed.wait()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable("Redis cannot be reached.") from exc

    async def _unsubscribe(self, job_id: str) -> None:
        if (pubsub := self._pubsub) is not None:
            try:
                await pubsub.unsubscribe(keys.events_channel(job_id))
            except (RedisError, OSError):
                pass  # the subscription is being lost: the next one leaves this job out

    async def _wait(self, follower: _Follower, after: int, timeout_s: float) -> list[Event] | None:
        if len(follower.events) > after:
            return follower.events[after:]
        if follower.closed:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                await follower.changed.wait()
        except TimeoutError:
            return []
        return follower.events[after:]

    async def _catch_up(self, follower: _Follower) -> None:
        """Read what the follower lacks from the job's stream. A reader's first catch-up fails
        at once while Redis is away; a live follower's is tried until it works or is dropped,
        since nothing else may ever bring it the job's last event."""
        while True:
            try:
                entries = await self.client.xrange(keys.log_key(follower.job_id),
                                                   min=f"0-{len(follower.events) + 1}")
                if not entries and not follower.events:
                    follower.missing = not await self.client.exists(keys.job_key(follower.job_id))
                break
            except (RedisError, OSError) as exc:
                if not follower.ready.is_set():
                    raise StoreUnavailable("Redis cannot be reached.") from exc
                if self._followers.get(follower.job_id) is not follower:
                    return
                await anyio.sleep(RECONNECT_S)
        for entry_id, fields in entries:
            follower.add(int(entry_id.split(b"-")[1]), fields[b"t"].decode(), fields[b"d"])
        heard, follower.pending = follower.pending, []
        caught_up = all(follower.add(*event) for event in sorted(heard))
        follower.ready.set()
        if not caught_up:
            self._spawn_catch_up(follower)

    def _spawn_catch_up(self, follower: _Follower) -> None:
        if self._task_group is not None:
            self._task_group.start_soon(self._catch_up, follower)

    async def _drop_idle(self) -> None:
        while True:
            await anyio.sleep(IDLE_FOLLOWER_S / 2)
            cutoff = time.monotonic() - IDLE_FOLLOWER_S
            for job_id, follower in list(self._followers.items()):
                if follower.readers == 0 and follower.last_read < cutoff:
                    del self._followers[job_id]
                    if not follower.closed:
                        await self._unsubscribe(job_id)
