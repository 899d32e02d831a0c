"""One HTTP client for OpenAI-compatible ``/chat/completions`` endpoints (vLLM, TGI,
llama.cpp server, hosted APIs), shared by the judge and the tagger's analyzer.

Failure behaviour, bounded by the caller's deadline (``remaining()`` seconds, or None):
  - connection refused / reset, 408/409/429/5xx -> retried with exponential backoff
    (``retry-after-ms`` / ``Retry-After`` honoured) up to ``max_retries``, then ``BackendUnavailable(retry_after_s)``;
    a wait that would not fit the deadline is not started;
  - a call still running when the deadline ends -> ``DeadlineExceeded``;
  - other 4xx (bad key, unknown model) -> ``BackendUnavailable`` at once (a configuration error);
  - HTTP 200 whose body is not a chat.completion (not JSON, no ``choices[0].message`` with a
    ``content``, a ``logprobs`` of the wrong shape) -> ``MalformedResponse`` (a ``BackendUnavailable``)
    at once: a proxy's error page or a server that is not OpenAI-compatible. It is an error, never an
    empty answer: callers must not turn it into a label (a well-formed reply whose text names no
    option is different: that is the model's "no verdict").
Every failed exchange is reported to ``on_failure(reason)`` (a metric), ``reason`` one of
``FAILURE_REASONS``.
Error messages are redacted: they leave the service (to the router, its caller and both logs),
so they carry the HTTP status code and a fixed reason only, never the endpoint's URL, response
body or headers (an endpoint may echo the ``Authorization`` header back in its body).
API key: ``api_key``, else the file ``api_key_file`` (a mounted Kubernetes secret), else the
environment variable ``api_key_env``; none -> no ``Authorization`` header.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hybridpref_client.core.errors import BackendUnavailable, DeadlineExceeded, FieldViolation, InvalidInput

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0
# Bounded values of the ``reason`` label of hybridpref_backend_errors_total.
FAILURE_REASONS = ("malformed_response", "http_status", "unreachable", "timeout")

Remaining = Callable[[], float | None]
OnFailure = Callable[[str], None]


class MalformedResponse(BackendUnavailable):
    """HTTP 200 with a body that is not a chat.completion object (see the module docstring)."""


def chat_choice(data: Any, what: str = "endpoint") -> dict[str, Any]:
    """``choices[0]`` of a chat.completion body, checked: an object with ``message.content`` (a
    string, or null for a reply without text) and ``logprobs`` null or ``{"content": [...] | null}``.
    Raises ``MalformedResponse`` naming what is missing (never the body: it may echo secrets)."""
    if not isinstance(data, dict):
        raise MalformedResponse(f"{what} returned a malformed response (not a JSON object)")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponse(f"{what} returned a malformed response (no choices[0])")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict) or "content" not in message or not isinstance(message["content"], (str, type(None))):
        raise MalformedResponse(f"{what} returned a malformed response (no choices[0].message.content)")
    logprobs = choice.get("logprobs")
    if logprobs is not None and not (isinstance(logprobs, dict) and isinstance(logprobs.get("content"), (list, type(None)))):
        raise MalformedResponse(f"{what} returned a malformed response (choices[0].logprobs has the wrong shape)")
    return choice


class ChatCompletionsClient:
    def __init__(
        self,
        base_url: str | None,
        *,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        api_key_file: str | Path | None = None,
        concurrency: int = 4,
        max_retries: int = 3,
        timeout_s: float = 30.0,
        backoff_s: float = 0.25,
        what: str = "endpoint",
        on_failure: OnFailure | None = None,
    ):
        violations = []
        base_url = base_url or ""
        if not base_url.startswith(("http://", "https://")):
            violations.append(FieldViolation("base_url", f"expected http(s)://host[:port]/v1, got {base_url!r}"))
        if concurrency < 1:
            violations.append(FieldViolation("concurrency", "must be >= 1"))
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            violations.append(FieldViolation("max_retries", "max_retries >= 0, timeout_s > 0, backoff_s >= 0"))
        if violations:
            raise InvalidInput(violations)
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.what = what
        self._on_failure = on_failure
        self._key_sources = (api_key, api_key_file, api_key_env)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._client is not None

    def open(self) -> None:
        """Resolve the API key and open the connection pool (no network call); idempotent."""
        import httpx

        with self._lock:
            if self._client is not None:
                return
            headers = {"Content-Type": "application/json"}
            key = resolve_key(*self._key_sources)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._client = httpx.Client(headers=headers, limits=limits)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def post(self, body: dict[str, Any], remaining: Remaining | None = None) -> dict[str, Any]:
        """POST ``body`` to ``/chat/completions`` with retries; returns the chat.completion object
        (``chat_choice`` accepts its first choice)."""
        import httpx

        if self._client is None:
            self.open()
        remaining = remaining or (lambda: None)
        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            left = remaining()
            if left is not None and left <= 0:
                raise DeadlineExceeded(f"deadline exceeded before calling the {self.what}")
            timeout = self.timeout_s if left is None else min(self.timeout_s, left)
            retry_after: float | None = None
            try:
                resp = self._client.post(url, json=body, timeout=timeout)
            except httpx.TimeoutException:
                self._failed("timeout")
                if left is not None and left <= self.timeout_s:
                    raise DeadlineExceeded(f"{self.what} did not answer within the deadline") from None
                problem = f"{self.what} timed out after {self.timeout_s:.1f} s"
            except httpx.TransportError as exc:
                self._failed("unreachable")
                problem = f"{self.what} unreachable ({type(exc).__name__})"
            else:
                if resp.status_code == 200:
                    return self._completion(resp)
                self._failed("http_status")
                problem = f"{self.what} answered HTTP {resp.status_code} ({http_reason(resp.status_code)})"
                if resp.status_code not in RETRY_STATUS:
                    raise BackendUnavailable(problem)
                retry_after = retry_after_header(resp.headers)
            attempt += 1
            wait_s = retry_after if retry_after is not None else min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
            if attempt > self.max_retries:
                raise BackendUnavailable(f"{problem} (after {attempt} attempts)", retry_after_s=wait_s)
            left = remaining()
            if left is not None and left < wait_s:
                raise BackendUnavailable(f"{problem}; retry in {wait_s:.2f} s does not fit the deadline", retry_after_s=wait_s)
            time.sleep(wait_s)

    def _completion(self, resp: Any) -> dict[str, Any]:
        try:
            try:
                data = resp.json()
            except ValueError:
                raise MalformedResponse(f"{self.what} returned a malformed response (a non-JSON body)") from None
            chat_choice(data, self.what)
        except MalformedResponse:
            self._failed("malformed_response")
            raise
        return data

    def _failed(self, reason: str) -> None:
        if self._on_failure is not None:
            self._on_failure(reason)


def http_reason(status: int) -> str:
    """A fixed reason for an HTTP status (never the endpoint's own text)."""
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unexpected status"


def resolve_key(api_key: str | None, api_key_file: str | Path | None, api_key_env: str | None) -> str | None:
    if api_key:
        return api_key
    if api_key_file:
        try:
            return Path(api_key_file).read_text().strip() or None
        except OSError as exc:
            raise InvalidInput(FieldViolation("api_key_file", f"cannot read the key file: {exc.strerror}")) from None
    return os.environ.get(api_key_env) if api_key_env else None


def retry_after_header(headers: Any) -> float | None:
    """Seconds to wait: OpenAI-style ``retry-after-ms`` (sub-second) when sent, else ``Retry-After``."""
    try:
        ms = float(headers.get("retry-after-ms"))
    except (TypeError, ValueError):
        return parse_retry_after(headers.get("retry-after"))
    return max(0.0, ms / 1000.0)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, min(MAX_BACKOFF_S, float(value)))
    except ValueError:
        return None
