"""Per-vendor quotas: instances per minute (a token bucket) and calls at once.

Both refuse with ``QuotaExceeded`` (-> ``RESOURCE_EXHAUSTED`` with ``google.rpc.RetryInfo``
saying when a retry may succeed). The bucket holds one minute of instances and refills
continuously; a streaming call takes tokens chunk by chunk as its chunks arrive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hybridpref.server.auth import VendorPolicy
from hybridpref_client.core.errors import QuotaExceeded

# Suggested wait when the concurrent-call limit is reached (calls usually last seconds).
CONCURRENCY_RETRY_S = 1.0


@dataclass
class _VendorState:
    tokens: float
    stamp: float
    in_flight: int = 0


# Calls at once for a vendor whose entry sets no ``max_concurrent`` (AuthSettings.vendor_max_concurrent).
DEFAULT_MAX_CONCURRENT = 32


class QuotaBook:
    """``default_max_concurrent``: the limit of calls at once for vendors whose entry sets none (a finite
    default: one vendor's silent streams must not fill the server)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, default_max_concurrent: int = DEFAULT_MAX_CONCURRENT):
        self._clock = clock
        self.default_max_concurrent = default_max_concurrent
        self._lock = threading.Lock()
        self._state: dict[str, _VendorState] = {}

    def _get(self, policy: VendorPolicy) -> _VendorState:
        state = self._state.get(policy.vendor)
        if state is None:
            state = self._state[policy.vendor] = _VendorState(float(policy.instances_per_minute), self._clock())
        return state

    def enter_call(self, policy: VendorPolicy) -> Callable[[], None]:
        """Count one call in flight; returns the function that ends it. Over the limit: refuse."""
        with self._lock:
            state = self._get(policy)
            limit = policy.max_concurrent or self.default_max_concurrent
            if state.in_flight >= limit:
                raise QuotaExceeded(
                    f"vendor {policy.vendor!r} has {state.in_flight} calls in flight (limit {limit})",
                    retry_after_s=CONCURRENCY_RETRY_S,
                )
            state.in_flight += 1
        released = False

        def leave() -> None:
            nonlocal released
            if not released:
                released = True
                with self._lock:
                    state.in_flight -= 1

        return leave

    def take_instances(self, policy: VendorPolicy, count: int) -> None:
        """Spend ``count`` instances of the vendor's per-minute quota, or refuse."""
        rate = policy.instances_per_minute
        if not rate or count <= 0:
            return
        if count > rate:
            raise QuotaExceeded(
                f"{count} instances in one message exceed vendor {policy.vendor!r}'s quota of "
                f"{rate} a minute; send smaller chunks"
            )
        with self._lock:
            state = self._get(policy)
            now = self._clock()
            state.tokens = min(float(rate), state.tokens + (now - state.stamp) * rate / 60.0)
            state.stamp = now
            if state.tokens < count:
                wait = (count - state.tokens) * 60.0 / rate
                raise QuotaExceeded(
                    f"vendor {policy.vendor!r} used its quota of {rate} instances a minute; retry in {wait:.1f} s",
                    retry_after_s=wait,
                )
            state.tokens -= count

    def in_flight(self, vendor: str) -> int:
        state = self._state.get(vendor)
        return 0 if state is None else state.in_flight
