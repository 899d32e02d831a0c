"""Bulk work yields to interactive calls (issue 18 item 10).

A 100,000-instance stream shares the router, the tagger and the CPU with small vendors' calls; the
worker pools already run a small call's jobs first (virtual start time), but a running stream keeps
every service busy: small callers' p99 latency doubled beside it. So a stream asks, before each
slice of its work (a chunk's checks, each tag call, each judge slice), whether an interactive call
(a unary call of at most ``INTERACTIVE_MAX`` instances) is in flight, and if so waits for it to end,
at most ``MAX_PAUSE_S`` per slice so that it is never starved. The counters live on the server's
event loop: no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

# Unary calls up to this many instances are interactive (a vendor waiting on a small batch).
INTERACTIVE_MAX = 2_000
# Longest a bulk slice waits for interactive calls to end: a stream beside a steady stream of small
# calls still advances one slice per MAX_PAUSE_S (plus the slice's own time).
MAX_PAUSE_S = 0.1


class Yielder:
    def __init__(self, max_pause_s: float = MAX_PAUSE_S):
        self.max_pause_s = max_pause_s
        self.active = 0
        self._idle: asyncio.Event | None = None
        self.pauses = 0  # slices that waited (tests, benchmarks)

    def _event(self) -> asyncio.Event:
        if self._idle is None:  # created in the server's event loop, on first use
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    @contextmanager
    def interactive(self, size: int) -> Iterator[None]:
        """Mark a call of ``size`` instances in flight (interactive when small enough)."""
        if size > INTERACTIVE_MAX:
            yield
            return
        self.active += 1
        self._event().clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._event().set()

    async def pause(self) -> None:
        """Before a slice of bulk work: wait while interactive calls are in flight (at most ``max_pause_s``)."""
        if self.active == 0:
            return
        self.pauses += 1
        try:
            await asyncio.wait_for(self._event().wait(), self.max_pause_s)
        except TimeoutError:
            pass
