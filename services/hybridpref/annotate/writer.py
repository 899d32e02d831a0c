"""Group commit of label submissions: the submissions that arrive while one write is on its way are
stored together by the next ``store.submit_labels`` call (one transaction, one fsync on SQLite).

A commit costs about 8 ms on SQLite with ``synchronous=FULL`` and writers take turns, so 20 annotators
submitting one label each in their own transactions queue behind each other; batched, they share one
commit. Each request still waits for the commit that holds its label: an answered submission is on
disk (the store's guarantee), and a failed commit fails every request in it. Runs on the app's event
loop (one writer at a time per process; the store is called in a worker thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool

from hybridpref.store.api import HumanLabel, LabelResult

MAX_BATCH = 256  # labels per transaction; the rest wait for the next one


class LabelWriter:
    """``await writer.submit(vendor, label)`` -> the store's ``LabelResult`` for that label."""

    def __init__(
        self, submit: Callable[[str, str, Sequence[HumanLabel]], list[LabelResult]], campaign: str, max_batch: int = MAX_BATCH
    ) -> None:
        self._submit = submit  # store.submit_labels
        self._campaign = campaign
        self._max_batch = max_batch
        self._queue: list[tuple[str, HumanLabel, asyncio.Future[LabelResult]]] = []
        self._draining = False
        self.commits = 0  # transactions written (for tests and benchmarks)

    async def submit(self, vendor: str, label: HumanLabel) -> LabelResult:
        future: asyncio.Future[LabelResult] = asyncio.get_running_loop().create_future()
        self._queue.append((vendor, label, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                by_vendor: dict[str, list[tuple[HumanLabel, asyncio.Future[LabelResult]]]] = {}
                for vendor, label, future in batch:
                    by_vendor.setdefault(vendor, []).append((label, future))
                for vendor, items in by_vendor.items():
                    await self._write(vendor, items)
        finally:
            self._draining = False

    async def _write(self, vendor: str, items: list[tuple[HumanLabel, asyncio.Future[LabelResult]]]) -> None:
        try:
            results: list[Any] = await run_in_threadpool(self._submit, vendor, self._campaign, [label for label, _ in items])
            self.commits += 1
        except Exception as exc:  # every request of a failed commit gets the error (none was stored)
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(items, results, strict=True):
            if not future.done():
                future.set_result(result)
