"""Downstream gRPC calls: channels with the service's message limits, keepalive, a short
reconnect back-off and TLS when configured; the caller's request id forwarded as
``x-request-id``, and the caller's remaining deadline."""

from __future__ import annotations

import json

import grpc

from hybridpref.server import deadline as deadlines
from hybridpref.server import logs
from hybridpref.server.settings import Settings
from hybridpref.server.tls import channel_credentials

# Keep a little of the caller's deadline for our own work after the downstream call.
DEADLINE_MARGIN_S = deadlines.DOWNSTREAM_MARGIN_S
# Spread calls over every address the target resolves to (a ``dns:///`` name of a headless
# Kubernetes Service lists each ready pod); gRPC's default, pick_first, pins one pod.
ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _options(settings: Settings) -> list[tuple[str, int | str]]:
    return [*settings.channel_options(), ("grpc.service_config", ROUND_ROBIN)]


def open_channel(address: str, settings: Settings) -> grpc.aio.Channel:
    """An asyncio channel to a backend (TLS when ``tls_ca_file`` is set)."""
    creds = channel_credentials(settings)
    if creds is None:
        return grpc.aio.insecure_channel(address, options=_options(settings))
    return grpc.aio.secure_channel(address, creds, options=_options(settings))


def open_sync_channel(address: str, settings: Settings) -> grpc.Channel:
    """A blocking channel to a backend, configured like ``open_channel``."""
    creds = channel_credentials(settings)
    if creds is None:
        return grpc.insecure_channel(address, options=_options(settings))
    return grpc.secure_channel(address, creds, options=_options(settings))


def call_metadata() -> tuple[tuple[str, str], ...]:
    rid = logs.current_request_id()
    return ((logs.REQUEST_ID_HEADER, rid),) if rid else ()


def remaining_timeout(context: grpc.aio.ServicerContext | None, default_s: float | None = None) -> float | None:
    """Seconds left of the incoming call's deadline (minus a margin), else ``default_s``.

    Prefers the call's ``Deadline`` (which includes the server's maximum) when one is bound."""
    current = deadlines.current()
    if current is not None and current.end is not None:
        return current.timeout()
    if context is None:
        return default_s
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return default_s
    return max(0.001, remaining - DEADLINE_MARGIN_S)
