"""Run blocking core work (model inference) off the event loop.

One single-thread executor per core: the models already use every allowed CPU
through intra-op threads, so running two batches at once would only thrash; calls
queue instead, and the event loop stays free for health checks and metrics."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class CoreExecutor:
    def __init__(self, name: str, workers: int = 1):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-core")

    async def run(self, fn: Callable[..., T], /, *args, **kwargs) -> T:
        """Run ``fn`` in the pool, carrying the caller's context (request id, log fields)."""
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
