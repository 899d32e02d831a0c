"""structlog set-up: JSON lines (or console) with the request id bound per call.

The request id lives in a context variable: the request-id interceptor binds it
for the duration of an RPC, every log line in that task carries it, and
downstream gRPC calls forward it as ``x-request-id`` metadata.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

REQUEST_ID_HEADER = "x-request-id"
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("hybridpref_request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


@dataclass
class CallInfo:
    """Facts about the current call that an inner interceptor learns and an outer one reports: the
    request-id interceptor binds one per call, the access interceptor fills in the vendor, the metrics
    interceptor writes both into the access log and its per-vendor counter when the call ends."""

    vendor: str = ""


_call_info: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("hybridpref_call_info", default=None)


def bind_call_info(info: CallInfo) -> contextvars.Token[CallInfo | None]:
    return _call_info.set(info)


def reset_call_info(token: contextvars.Token[CallInfo | None]) -> None:
    _call_info.reset(token)


def current_call_info() -> CallInfo | None:
    return _call_info.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def _add_request_id(_logger: object, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    rid = _request_id.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def configure_logging(service: str, level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for this process. Idempotent; call at the entry point."""
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name) if name else structlog.get_logger()
    return logger
