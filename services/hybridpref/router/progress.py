"""How far a streamed batch has come: the router's stages report here, the stream servicer sends it on.

The core calls :func:`report` from its tag, judge and store loops; it is a no-op unless the call runs inside
:func:`reporting` (the streaming servicer does so when the caller asked for progress). A context variable,
like the call's deadline, so the core's signatures stay about routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

MIN_INTERVAL_S = 0.25  # at most ~4 messages a second per stage; a stage's last one always goes


@dataclass(frozen=True)
class StageProgress:
    stage: str  # "tagged" | "judged" | "stored"
    done: int
    total: int  # 0 = not known yet


class ProgressReporter:
    """Passes on each stage's progress, throttled: at most one message per ``min_interval_s`` per stage,
    and always the one that completes a stage."""

    def __init__(
        self,
        send: Callable[[StageProgress], None],
        min_interval_s: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._send = send
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def report(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        finished = total > 0 and done >= total
        if not finished and now - self._last.get(stage, float("-inf")) < self._min_interval_s:
            return
        self._last[stage] = now
        self._send(StageProgress(stage, done, total))


_current: contextvars.ContextVar[ProgressReporter | None] = contextvars.ContextVar("hybridpref_progress", default=None)


@contextmanager
def reporting(reporter: ProgressReporter) -> Iterator[None]:
    """Route progress reported inside this block (and tasks started from it) to ``reporter``."""
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)


def report(stage: str, done: int, total: int) -> None:
    """``done`` of ``total`` instances through ``stage`` (``total`` 0 = not known yet)."""
    reporter = _current.get()
    if reporter is not None:
        reporter.report(stage, done, total)


async def with_progress(work: Coroutine[Any, Any, T]) -> AsyncIterator[StageProgress | T]:
    """Run ``work`` as a task that reports to this generator: yields each :class:`StageProgress` as it is
    reported, then ``work``'s result (its exception is raised here). Closing the generator (the caller
    went away) cancels the work."""
    queue: asyncio.Queue[StageProgress] = asyncio.Queue()
    with reporting(ProgressReporter(queue.put_nowait)):
        task = asyncio.ensure_future(work)  # the task copies the context now: its reports go to the queue
    getter: asyncio.Future[StageProgress] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                break
            yield getter.result()
        getter.cancel()
        while not queue.empty():
            yield queue.get_nowait()
        yield task.result()
    finally:
        if getter is not None:
            getter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
