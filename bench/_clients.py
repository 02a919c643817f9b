"""Bench clients in processes of their own, so they never run on the server's event loop.

`Clients(worker, shards)` forks one process per shard; each runs `await worker(shard, gate)` in
an asyncio loop of its own (uvloop when installed). A worker gets ready first (builds its HTTP
clients, opens its streams), then awaits `gate()`: that tells the harness it is ready and waits
for the start. The harness waits until every process is ready (`ready()`), takes its readings,
and `go()` starts them all at once, then gathers what each worker returned together with the
CPU each used from the start to its end.

Fork, not spawn: a forked client needs no fresh interpreter and imports, so it is ready in
milliseconds. The harness forks before it starts any thread of its own where it can.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

ShardT = TypeVar("ShardT")
ResultT = TypeVar("ResultT")

_CONTEXT = multiprocessing.get_context("fork")
JOIN_TIMEOUT_S = 10.0


class ClientError(RuntimeError):
    """A client process failed, or did not report in time."""


class Gate:
    """What a worker awaits once it is ready: the harness's start signal."""

    def __init__(self, index: int, ready: Any, go: Any) -> None:
        self._index = index
        self._ready = ready
        self._go = go
        #: this process's CPU seconds when the start came
        self.cpu_at_go: float | None = None

    async def __call__(self) -> None:
        if self.cpu_at_go is not None:
            raise ClientError(f"client {self._index} awaited its gate twice")
        self._ready.put((self._index, None))
        await asyncio.to_thread(self._go.wait)
        self.cpu_at_go = time.process_time()


Worker = Callable[[ShardT, Gate], Awaitable[ResultT]]


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _child(worker: Worker[Any, Any], shard: Any, index: int, ready: Any, go: Any,
           results: Any) -> None:
    gate = Gate(index, ready, go)
    try:
        result = _run(worker(shard, gate))  # type: ignore[arg-type]
        if gate.cpu_at_go is None:
            raise ClientError(f"client {index} returned without awaiting its gate")
    except BaseException:
        error = traceback.format_exc()
        if gate.cpu_at_go is None:
            ready.put((index, error))
        results.put((index, None, 0.0, error))
        return
    results.put((index, result, time.process_time() - gate.cpu_at_go, None))


@dataclass
class Outcome(Generic[ResultT]):
    #: what each worker returned, in the order of the shards
    results: list[ResultT]
    #: CPU seconds the client processes used from the start to their end
    cpu_s: float


class Clients(Generic[ShardT, ResultT]):
    """One forked process per shard; a context manager that ends any process still running."""

    def __init__(self, worker: Worker[ShardT, ResultT], shards: Sequence[ShardT], *,
                 timeout_s: float) -> None:
        if not shards:
            raise ValueError("Clients needs at least one shard")
        self.worker = worker
        self.shards = list(shards)
        self.timeout_s = timeout_s
        self._ready: Any = _CONTEXT.Queue()
        self._results: Any = _CONTEXT.Queue()
        self._go: Any = _CONTEXT.Event()
        self._procs: list[BaseProcess] = []
        self.started_at = 0.0
        #: seconds from the fork to the last process's `gate()`
        self.ready_s = 0.0

    def __enter__(self) -> Clients[ShardT, ResultT]:
        self.started_at = time.perf_counter()
        for index, shard in enumerate(self.shards):
            proc = _CONTEXT.Process(target=_child, name=f"bench-client-{index}", daemon=True,
                                    args=(self.worker, shard, index, self._ready, self._go,
                                          self._results))
            proc.start()
            self._procs.append(proc)
        return self

    def ready(self) -> None:
        """Wait until every process has awaited its gate."""
        deadline = time.monotonic() + self.timeout_s
        for _ in self.shards:
            try:
                index, error = self._ready.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ClientError(f"the clients were not ready within {self.timeout_s:.0f} s") from None
            if error is not None:
                raise ClientError(f"client {index} failed before its start:\n{error}")
        self.ready_s = time.perf_counter() - self.started_at

    def go(self) -> Outcome[ResultT]:
        """Start every process at once; wait for what each returns."""
        self._go.set()
        deadline = time.monotonic() + self.timeout_s
        got: dict[int, ResultT] = {}
        cpu_s = 0.0
        while len(got) < len(self.shards):
            try:
                index, result, cpu, error = self._results.get(
                    timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ClientError(f"the clients did not finish within {self.timeout_s:.0f} s") from None
            if error is not None:
                raise ClientError(f"client {index} failed:\n{error}")
            got[index] = result
            cpu_s += cpu
        for proc in self._procs:
            proc.join(JOIN_TIMEOUT_S)
        return Outcome([got[i] for i in range(len(self.shards))], cpu_s)

    def __exit__(self, *exc_info: object) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(JOIN_TIMEOUT_S)


def split(count: int, parts: int) -> list[range]:
    """`range(count)` cut into at most `parts` non-empty runs of near-equal length."""
    parts = max(1, min(parts, count))
    bounds = [count * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]
