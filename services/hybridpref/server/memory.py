"""Give freed memory back to the operating system after large requests.

A 60 MB request becomes several hundred MB of bytes, protobuf and Python strings across worker
threads; CPython frees them, but glibc keeps the freed blocks in its per-thread arenas, so the
process' resident memory stays at its peak (measured: 8 x 60 MB requests, 1.6 GB held after they
ended, 0.35 GB after a garbage collection and one ``malloc_trim(0)``). ``MemoryReturner`` counts the request bytes of the
calls that ended and, once they reach ``threshold_bytes`` since the last trim, runs a garbage
collection and ``malloc_trim(0)`` in a timer thread a moment after the last of them. Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import threading
import time
from collections.abc import Callable

import structlog

# Received bytes since the last trim that make the next call end trim (a few ms per GB of heap).
DEFAULT_THRESHOLD_BYTES = 32 << 20
# A trim runs this long after the last large call of a burst ended (its objects are gone by then) ...
TRIM_DELAY_S = 0.5
# ... and is postponed by later large calls for at most this long.
MAX_POSTPONE_S = 5.0

log = structlog.get_logger()


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryReturner:
    def __init__(self, threshold_bytes: int = DEFAULT_THRESHOLD_BYTES, delay_s: float = TRIM_DELAY_S):
        self.threshold_bytes = threshold_bytes
        self.delay_s = delay_s
        self._trim = _malloc_trim()
        self._lock = threading.Lock()
        self._freed = 0  # request bytes of the calls that ended since the last trim
        self._since: float | None = None  # when the first of those calls ended
        self._timer: threading.Timer | None = None
        self.trims = 0  # how many trims ran (tests, logs)

    @property
    def available(self) -> bool:
        return self._trim is not None

    def call_ended(self, received_bytes: int) -> None:
        """A call that received ``received_bytes`` of request messages ended. Once the calls ended
        since the last trim brought ``threshold_bytes``, trim ``delay_s`` after the last of them (a
        burst of large calls is trimmed once, when it is over), and at least every
        ``MAX_POSTPONE_S`` under a steady stream of them."""
        if self._trim is None or received_bytes <= 0:
            return
        with self._lock:
            self._freed += received_bytes
            if self._freed < self.threshold_bytes:
                return
            now = time.monotonic()
            self._since = now if self._since is None else self._since
            if self._timer is not None:
                self._timer.cancel()
            delay = self.delay_s if now - self._since < MAX_POSTPONE_S else 0.0
            self._timer = threading.Timer(delay, self._run)
            self._timer.daemon = True
            self._timer.start()

    def _run(self) -> None:
        with self._lock:
            self._freed, self._since, self._timer = 0, None, None
        try:
            # Failed calls leave reference cycles (exception -> traceback -> frame -> request) that only
            # the cyclic collector frees, and an idle server allocates too little to trigger it.
            gc.collect()
            if self._trim is not None:
                self._trim(0)
            self.trims += 1
        except Exception as exc:  # never let housekeeping hurt a call
            log.warning("malloc_trim_failed", error=repr(exc)[:200])
