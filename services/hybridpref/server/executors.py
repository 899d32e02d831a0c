"""Run blocking core work (model inference, routing, conversion) off the event loop.

One small, bounded pool per service core, owned by its server: the models already use
every allowed CPU through intra-op threads, so running many batches at once would only
thrash; calls queue instead, and the event loop stays free for health checks and metrics.

The queue is ordered by a virtual start time, ``arrival + size * item_s`` (callers pass
``size``, the instances a job carries): a 10-instance call does not wait behind the queued
chunks of a 100,000-instance stream, only behind the one already running, while a big job is
never starved (it goes first once it has waited ``size * item_s``). Work queued for a call
that was cancelled meanwhile is dropped before it starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class CoreExecutor:
    def __init__(self, name: str, workers: int = 1, item_s: float = 0.005):
        self._name = name
        self._item_s = item_s
        self._heap: list[tuple[float, int, concurrent.futures.Future[Any], Callable[[], object]]] = []
        self._seq = itertools.count()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-core-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], T], priority: float | None = None) -> concurrent.futures.Future[T]:
        """Queue ``fn``; ``priority`` is its virtual start time (default: now)."""
        priority = time.monotonic() if priority is None else priority
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise RuntimeError(f"{self._name} executor is shut down")
            heapq.heappush(self._heap, (priority, next(self._seq), future, fn))
            self._ready.notify()
        return future

    async def run(self, fn: Callable[..., T], /, *args: Any, size: int = 0, **kwargs: Any) -> T:
        """Run ``fn`` in the pool, carrying the caller's context (request id, log fields, deadline).

        ``size``: how many items (instances, rows) the job carries; bigger jobs yield to smaller ones."""
        ctx = contextvars.copy_context()
        priority = time.monotonic() + size * self._item_s
        future = self.submit(functools.partial(ctx.run, fn, *args, **kwargs), priority)
        return await asyncio.wrap_future(future)  # cancelling the awaiting task cancels a queued job

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._heap and not self._closed:
                    self._ready.wait()
                if not self._heap:
                    return
                _, _, future, fn = heapq.heappop(self._heap)
            if future.set_running_or_notify_cancel():  # else its caller left while it waited
                try:
                    future.set_result(fn())
                except BaseException as exc:  # handed to the awaiting caller
                    future.set_exception(exc)
            # An idle worker must not keep its last job (and the job's arguments: a whole batch) alive.
            del future, fn

    @property
    def queued(self) -> int:
        return len(self._heap)

    def shutdown(self) -> None:
        with self._ready:
            self._closed = True
            for _, _, future, _ in self._heap:
                future.cancel()
            self._heap.clear()
            self._ready.notify_all()
