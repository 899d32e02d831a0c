"""Admission: how many calls run at once, per server and per connection, and how long a stream may
stay silent. Health checks and reflection are never counted nor refused.

gRPC's own ``maximum_concurrent_rpcs`` is one pool for every call, health checks included, and
refuses without ``RetryInfo``: 256 silent streams from one client made every other caller and the
main-port ``Health/Check`` RESOURCE_EXHAUSTED for as long as they stayed open (the hostile test's F3).
Here instead:

* at most ``max_total`` calls run at once on the server (health and reflection not counted);
* at most ``max_per_connection`` of them from one HTTP/2 connection (the peer address), so one
  client cannot take the whole server;
* per vendor, ``max_concurrent`` from its API-key entry, with a finite default
  (``hybridpref.server.quota``);
* a request stream with no message for ``stream_idle_s`` ends with ``DEADLINE_EXCEEDED``, so a
  silent call frees its slot in seconds instead of at the 30-minute maximum deadline.

A refusal is ``RESOURCE_EXHAUSTED`` with ``google.rpc.RetryInfo`` and happens before a single
request byte is read (``DecodeInterceptor`` serves every method as request-streaming, so the
interceptors run before gRPC reads the message).

Why not a library: ``grpc-interceptor``'s server interceptors run around the behaviour with the
request already read and decoded (too late to refuse cheaply), and ``limits`` counts rates over
time windows, not calls in flight. The counters are plain ints touched only on the server's event
loop, so they need no lock.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from hybridpref_client.core.errors import DeadlineExceeded, QuotaExceeded

# Suggested wait when a concurrency limit is reached (calls usually last seconds).
RETRY_AFTER_S = 1.0


class Admission:
    """Calls in flight, in total and per connection (the caller's peer address)."""

    def __init__(self, max_total: int, max_per_connection: int):
        self.max_total = max_total
        self.max_per_connection = max_per_connection
        self.total = 0
        self.per_connection: Counter[str] = Counter()

    def enter(self, peer: str) -> Callable[[], None]:
        """Count one call from ``peer``; returns the function that ends it. Over a limit: ``QuotaExceeded``."""
        if self.total >= self.max_total:
            raise QuotaExceeded(
                f"the server runs {self.total} calls at once (its limit); retry shortly", retry_after_s=RETRY_AFTER_S
            )
        if self.per_connection[peer] >= self.max_per_connection:
            raise QuotaExceeded(
                f"this connection has {self.per_connection[peer]} calls in flight (limit "
                f"{self.max_per_connection} per connection); wait for one to end",
                retry_after_s=RETRY_AFTER_S,
            )
        self.total += 1
        self.per_connection[peer] += 1
        released = False

        def leave() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.total -= 1
            self.per_connection[peer] -= 1
            if self.per_connection[peer] <= 0:
                del self.per_connection[peer]

        return leave

    @asynccontextmanager
    async def admitted(self, context: Any) -> AsyncIterator[None]:
        leave = self.enter(_peer(context))
        try:
            yield
        finally:
            leave()


def _peer(context: Any) -> str:
    try:
        return str(context.peer() or "unknown")
    except Exception:  # a context without a peer (tests): all one connection
        return "unknown"


async def idle_limited(messages: AsyncIterator[Any], idle_s: float | None) -> AsyncIterator[Any]:
    """``messages`` with at most ``idle_s`` seconds of waiting for each (``None``: no limit).

    Only the time spent waiting for the caller counts: while the server works on a message it is
    not reading, and the clock is not running."""
    iterator = aiter(messages)
    while True:
        try:
            if idle_s is None:
                message = await anext(iterator)
            else:
                message = await asyncio.wait_for(anext(iterator), idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"no request message for {idle_s:g} s: the stream was closed (send chunks without "
                "pauses that long, or raise HYBRIDPREF_STREAM_IDLE_S)"
            ) from None
        yield message
