"""The one deadline type: how long a call may still run, and whether it was cancelled.

A ``Deadline`` is made once per incoming RPC by ``DeadlineInterceptor`` (the caller's
deadline, capped by ``settings.server.max_deadline_s``; the cap also applies when the caller sets
none) and carried everywhere the call's work goes: every downstream chunk call gets
``timeout()`` (what is *left*, not a fixed timeout), and loops in worker threads call
``check()`` so that an expired or cancelled call stops its work instead of running on in
a thread nobody waits for. ``cancel()`` is called when the call ends for any reason.

``current()`` returns the deadline of the RPC being handled (a context variable, copied
into executor threads with the rest of the request's context).
"""

from __future__ import annotations

import contextvars
import threading
import time

from hybridpref_client.core.errors import Cancelled, DeadlineExceeded

# Kept back from each downstream call so that we can still answer after it times out.
DOWNSTREAM_MARGIN_S = 0.05

_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("hybridpref_deadline", default=None)


class Deadline:
    """A monotonic end time (``None`` = unbounded) and a cancellation flag, thread-safe."""

    __slots__ = ("_end", "_cancelled", "reason")

    def __init__(self, seconds: float | None = None):
        self._end = None if seconds is None else time.monotonic() + max(0.0, float(seconds))
        self._cancelled = threading.Event()
        self.reason = ""

    @classmethod
    def of(cls, value: Deadline | float | None) -> Deadline:
        """``value`` itself when it is a ``Deadline``, else a new one of ``value`` seconds."""
        return value if isinstance(value, Deadline) else cls(value)

    @classmethod
    def capped(cls, caller_s: float | None, max_s: float | None) -> Deadline:
        """The caller's deadline, or ``max_s`` when the caller set none or a longer one."""
        if max_s is None or max_s <= 0:
            return cls(caller_s)
        return cls(max_s if caller_s is None else min(caller_s, max_s))

    @property
    def end(self) -> float | None:
        """The ``time.monotonic()`` instant the deadline ends at (``None``: never)."""
        return self._end

    def remaining(self) -> float | None:
        """Seconds left (may be negative); ``None`` when unbounded."""
        return None if self._end is None else self._end - time.monotonic()

    def timeout(self, margin_s: float = DOWNSTREAM_MARGIN_S) -> float | None:
        """The timeout for one downstream call: what is left minus a margin (at least 1 ms)."""
        left = self.remaining()
        return None if left is None else max(0.001, left - margin_s)

    @property
    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self, reason: str = "cancelled") -> None:
        """Mark the call's work as abandoned (the caller left, or the call ended)."""
        if not self._cancelled.is_set():
            self.reason = reason
            self._cancelled.set()

    def check(self, needed_s: float = 0.0, what: str = "working") -> None:
        """Raise ``Cancelled`` / ``DeadlineExceeded`` if the call was abandoned or fewer than
        ``needed_s`` seconds are left: long loops call this between steps."""
        if self._cancelled.is_set():
            raise Cancelled(f"call {self.reason} while {what}")
        left = self.remaining()
        if left is not None and left < needed_s:
            raise DeadlineExceeded(f"deadline reached while {what} ({max(left, 0.0):.2f} s left, ~{needed_s:.2f} s needed)")


def current() -> Deadline | None:
    """The deadline of the RPC this code runs for, if any."""
    return _current.get()


def bind(deadline: Deadline | None) -> contextvars.Token[Deadline | None]:
    return _current.set(deadline)


def reset(token: contextvars.Token[Deadline | None]) -> None:
    _current.reset(token)
