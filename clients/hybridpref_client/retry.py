"""Retries of failed calls: which failures, how long to wait, when to give up.

Retried: ``UNAVAILABLE`` (the router or a backend is down or restarting) and ``RESOURCE_EXHAUSTED``
when the server said when to come back (a ``google.rpc.RetryInfo``: a quota refusal). Never retried:
everything else, ``INVALID_ARGUMENT`` first, and ``RESOURCE_EXHAUSTED`` without ``RetryInfo`` (a message
or metadata over a size limit, a request larger than a whole quota: the same call cannot succeed), and
a stream the server had started answering (a retry would route its first part twice).

Waits: attempt k (1, 2, ...) failed -> wait ``RetryInfo`` (if sent) + uniform(0, min(max_backoff,
initial_backoff * 2^(k-1))): never before the server's time, and "full jitter" (AWS's name) so that
clients refused together do not come back together. The jitter comes from ``random.Random(seed)``
when ``retry_seed`` is set (reproducible), else from an unseeded generator.

Giving up: after ``max_attempts`` attempts, or when the next wait would push the call's total sleeping
past ``max_retry_wait_s`` or would end after the call's deadline (``timeout_s`` spans every attempt):
the last error is raised at once (with ``retry_after_s``, so the caller can schedule its own retry).

The loop is tenacity's (sync and asyncio alike); gRPC's own retry policy is not used because it cannot
read ``RetryInfo``, retries every ``RESOURCE_EXHAUSTED`` and replays a stream only while it fits a
256 KiB buffer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import tenacity

from hybridpref_client.errors import RoutingError


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` >= 1 (1 = no retry); backoff in seconds; ``max_wait_s``: total sleeping per call."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_wait_s: float = 60.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 20:
            raise ValueError("max_attempts must be in 1..20")
        if not 0 <= self.initial_backoff_s <= self.max_backoff_s or self.max_wait_s < 0:
            raise ValueError("need 0 <= initial_backoff_s <= max_backoff_s and max_retry_wait_s >= 0")


def retryable(error: BaseException) -> bool:
    """Whether a failed attempt may be tried again (see the module docstring)."""
    if not isinstance(error, RoutingError) or error.partial:
        return False
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after_s is not None


class Retrier:
    """A client's retry loop; one per client (its jitter generator is shared by the client's calls)."""

    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self._rng = random.Random(policy.seed)

    def wait_s(self, attempt: int, error: BaseException | None) -> float:
        """Seconds to wait after attempt number ``attempt`` (1-based) failed with ``error``."""
        p = self.policy
        jitter = self._rng.uniform(0.0, min(p.max_backoff_s, p.initial_backoff_s * 2 ** (attempt - 1)))
        server = error.retry_after_s if isinstance(error, RoutingError) else None
        return jitter if server is None else server + jitter

    def _kwargs(self, deadline: float | None, on_retry: Callable[[int, float], None] | None) -> dict:
        p = self.policy

        def wait(state: tenacity.RetryCallState) -> float:
            return self.wait_s(state.attempt_number, state.outcome.exception() if state.outcome else None)

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= p.max_attempts or state.idle_for + state.upcoming_sleep > p.max_wait_s:
                return True
            return deadline is not None and time.monotonic() + state.upcoming_sleep >= deadline

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if on_retry is not None:
                on_retry(state.attempt_number + 1, state.upcoming_sleep)

        return {
            "retry": tenacity.retry_if_exception(retryable),
            "wait": wait,
            "stop": stop,
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def call(self, attempt: Callable[[], object], deadline: float | None, on_retry: Callable[[int, float], None] | None = None):
        """Run ``attempt()`` until it returns or fails for good; raises its last ``RoutingError``
        (with ``attempts`` set). ``on_retry(next_attempt, wait_s)`` is called before each wait."""
        made = 0

        def counted():
            nonlocal made
            made += 1
            try:
                return attempt()
            except RoutingError as error:
                error.attempts = made
                raise

        return tenacity.Retrying(**self._kwargs(deadline, on_retry))(counted)

    async def acall(
        self,
        attempt: Callable[[], Awaitable[object]],
        deadline: float | None,
        on_retry: Callable[[int, float], None] | None = None,
    ):
        """``call`` for a coroutine function ``attempt``."""
        made = 0

        async def counted():
            nonlocal made
            made += 1
            try:
                return await attempt()
            except RoutingError as error:
                error.attempts = made
                raise

        return await tenacity.AsyncRetrying(**self._kwargs(deadline, on_retry))(counted)
