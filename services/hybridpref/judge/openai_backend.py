"""OpenAI-compatible judge backend: any chat-completions endpoint (vLLM, TGI, llama.cpp server, hosted APIs).

Scores the options from the first answer token's ``top_logprobs`` when the server returns them, else
parses the answer text (one-hot). Failure behaviour, all bounded by the caller's deadline:
  - connection refused / reset, 429, 5xx -> retried with exponential backoff (``Retry-After`` honoured)
    up to ``max_retries``, then ``BackendUnavailable(retry_after_s=...)``; a wait that would not fit in
    the deadline is not started (``BackendUnavailable`` at once, with the wait as ``retry_after_s``);
  - a call still running when the deadline ends -> ``DeadlineExceeded``;
  - other 4xx (bad key, unknown model) -> ``BackendUnavailable`` without retries (configuration error).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.errors import BackendUnavailable, DeadlineExceeded, FieldViolation, InvalidInput
from hybridpref.judge.core import Deadline, ScoreRequest, ScoringBackend
from hybridpref.judge.templates import PromptTemplate

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_MAX_BACKOFF_S = 30.0


class OpenAIBackend(ScoringBackend):
    """Judge through ``POST {base_url}/chat/completions``.

    ``base_url`` e.g. ``http://127.0.0.1:8000/v1``. API key: ``api_key``, else the file
    ``api_key_file`` (a mounted Kubernetes secret), else env var ``api_key_env``; none -> no header.
    ``concurrency``: parallel calls; ``timeout_s``: per-call limit; ``logprobs``: ask for
    ``top_logprobs`` (set False for servers that reject it).
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, *, api_key: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", api_key_file: str | Path | None = None, concurrency: int = 4,
                 max_retries: int = 3, timeout_s: float = 30.0, backoff_s: float = 0.25, logprobs: bool = True,
                 top_logprobs: int = 10, max_tokens: int = 4):
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
        self.model = model or "default"
        self.judge_id = f"openai:{self.model}"
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self._key_sources = (api_key, api_key_file, api_key_env)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._client is not None

    def load(self) -> None:
        """Resolve the API key and open the HTTP connection pool (no network call)."""
        import httpx

        with self._lock:
            if self._client is not None:
                return
            headers = {"Content-Type": "application/json"}
            key = _resolve_key(*self._key_sources)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            self._client = httpx.Client(headers=headers, limits=limits)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def score(self, requests: Sequence[ScoreRequest], template: PromptTemplate,
              deadline: Deadline) -> list[np.ndarray | None]:
        if self._client is None:
            self.load()
        if self.concurrency == 1 or len(requests) == 1:
            return [self._score_one(r, template, deadline) for r in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self._score_one, r, template, deadline) for r in requests]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:  # re-raises the first failure, in request order
                if f in done and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            return [f.result() for f in futures]

    def request_body(self, request: ScoreRequest, template: PromptTemplate) -> dict[str, Any]:
        """The chat-completions JSON body for one order."""
        options = ", ".join(text for text, _ in template.options)
        user = template.user_message(request.instance.prompt_text, request.first, request.second)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": template.system},
                {"role": "user", "content": f"{user}\n\nReply with only one of: {options}."},
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body

    def _score_one(self, request: ScoreRequest, template: PromptTemplate, deadline: Deadline) -> np.ndarray | None:
        data = self._post(self.request_body(request, template), deadline)
        return parse_completion(data, template)

    def _post(self, body: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}/chat/completions"
        attempt = 0
        while True:
            deadline.check(what="calling the judge endpoint")
            left = deadline.remaining()
            timeout = self.timeout_s if left is None else min(self.timeout_s, left)
            retry_after: float | None = None
            try:
                resp = self._client.post(url, json=body, timeout=timeout)
            except httpx.TimeoutException:
                if left is not None and left <= self.timeout_s:
                    raise DeadlineExceeded(f"judge endpoint {self.base_url} did not answer within the deadline") from None
                problem = f"judge endpoint {self.base_url} timed out after {self.timeout_s:.1f} s"
            except httpx.TransportError as exc:
                problem = f"judge endpoint {self.base_url} unreachable: {type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return _json(resp, self.base_url)
                problem = f"judge endpoint {self.base_url} answered HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in _RETRY_STATUS:
                    raise BackendUnavailable(problem)
                retry_after = _retry_after(resp.headers.get("retry-after"))
            attempt += 1
            wait_s = retry_after if retry_after is not None else min(_MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
            if attempt > self.max_retries:
                raise BackendUnavailable(f"{problem} (after {attempt} attempts)", retry_after_s=wait_s)
            left = deadline.remaining()
            if left is not None and left < wait_s:
                raise BackendUnavailable(f"{problem}; retry in {wait_s:.2f} s does not fit the deadline", retry_after_s=wait_s)
            time.sleep(wait_s)


def parse_completion(data: dict[str, Any], template: PromptTemplate) -> np.ndarray | None:
    """(5,) distribution in presented order from a chat-completions response, or ``None``.

    Uses the ``top_logprobs`` of the first non-blank answer token when present (probabilities of the
    option tokens, renormalised), else the first option found in the answer text (one-hot).
    """
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None
    lookup = {text.strip().lower(): label for text, label in template.options}
    dist = np.zeros(5)
    for tok in ((choice.get("logprobs") or {}).get("content") or []):
        if not str(tok.get("token", "")).strip():
            continue
        for alt in tok.get("top_logprobs") or []:
            label = lookup.get(str(alt.get("token", "")).strip().lower())
            if label is not None:
                dist[int(label) - 1] += float(np.exp(float(alt.get("logprob", -np.inf))))
        break
    if dist.sum() > 0:
        return dist / dist.sum()
    content = str((choice.get("message") or {}).get("content") or "")
    pattern = r"(?<![A-Za-z0-9])(" + "|".join(re.escape(t) for t, _ in template.options) + r")(?![A-Za-z0-9])"
    match = re.search(pattern, content, flags=re.IGNORECASE)
    if match is None:
        return None
    dist[int(lookup[match.group(1).lower()]) - 1] = 1.0
    return dist


def _resolve_key(api_key: str | None, api_key_file: str | Path | None, api_key_env: str | None) -> str | None:
    if api_key:
        return api_key
    if api_key_file:
        try:
            return Path(api_key_file).read_text().strip() or None
        except OSError as exc:
            raise InvalidInput(FieldViolation("api_key_file", f"cannot read {api_key_file}: {exc.strerror}")) from None
    return os.environ.get(api_key_env) if api_key_env else None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, min(_MAX_BACKOFF_S, float(value)))
    except ValueError:
        return None


def _json(resp: Any, base_url: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        raise BackendUnavailable(f"judge endpoint {base_url} returned non-JSON: {resp.text[:200]}") from None
    if not isinstance(data, dict):
        raise BackendUnavailable(f"judge endpoint {base_url} returned unexpected JSON")
    return data
