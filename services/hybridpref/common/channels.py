"""Downstream gRPC calls: channels with the service's message limits, the caller's
request id forwarded as ``x-request-id``, and the caller's remaining deadline."""

from __future__ import annotations

import grpc

from hybridpref.common import logs
from hybridpref.common.settings import Settings

# Keep a little of the caller's deadline for our own work after the downstream call.
DEADLINE_MARGIN_S = 0.05


def open_channel(address: str, settings: Settings) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=settings.grpc_options())


def call_metadata() -> tuple[tuple[str, str], ...]:
    rid = logs.current_request_id()
    return ((logs.REQUEST_ID_HEADER, rid),) if rid else ()


def remaining_timeout(context: grpc.aio.ServicerContext | None, default_s: float | None = None) -> float | None:
    """Seconds left of the incoming call's deadline (minus a margin), else ``default_s``."""
    if context is None:
        return default_s
    remaining = context.time_remaining()
    if remaining is None:
        return default_s
    return max(0.001, remaining - DEADLINE_MARGIN_S)
