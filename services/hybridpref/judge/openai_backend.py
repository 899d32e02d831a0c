"""OpenAI-compatible judge backend: any chat-completions endpoint (vLLM, TGI, llama.cpp server, hosted APIs).

Scores the options from the first answer token's ``top_logprobs`` when the server returns them, else
parses the answer text (one-hot). Transport, retries, API keys and deadlines: the shared
``hybridpref.common.openai_http.ChatCompletionsClient`` (its docstring lists the failure behaviour).
A body that is not a chat.completion fails the call (``MalformedResponse``, UNAVAILABLE): it never
becomes a verdict. Only a well-formed reply whose text names no option is "no verdict" (TIE with
confidence 0 and both order verdicts UNSPECIFIED: the router treats it as needing a human).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.openai_http import ChatCompletionsClient, OnFailure, chat_choice
from hybridpref.judge.templates import PromptTemplate
from hybridpref.judge.types import ScoreRequest, ScoringBackend
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import FieldViolation, InvalidInput


class OpenAIBackend(ScoringBackend):
    """Judge through ``POST {base_url}/chat/completions``.

    ``base_url`` e.g. ``http://127.0.0.1:8000/v1``. API key: ``api_key``, else the file
    ``api_key_file`` (a mounted Kubernetes secret), else env var ``api_key_env``; none -> no header.
    ``concurrency``: parallel calls; ``timeout_s``: per-call limit; ``logprobs``: ask for
    ``top_logprobs`` (set False for servers that reject it). ``on_failure(reason)`` is called for
    every failed exchange with the endpoint (the judge service counts them in a metric).
    """

    kind = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key_file: str | Path | None = None,
        concurrency: int = 4,
        max_retries: int = 3,
        timeout_s: float = 30.0,
        backoff_s: float = 0.25,
        logprobs: bool = True,
        top_logprobs: int = 10,
        max_tokens: int = 4,
        on_failure: OnFailure | None = None,
    ):
        if top_logprobs < 0 or max_tokens < 1:
            raise InvalidInput(FieldViolation("top_logprobs", "top_logprobs >= 0 and max_tokens >= 1"))
        self.http = ChatCompletionsClient(
            base_url,
            api_key=api_key,
            api_key_env=api_key_env,
            api_key_file=api_key_file,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            what="judge endpoint",
            on_failure=on_failure,
        )
        self.base_url = self.http.base_url
        self.model = model or "default"
        self.judge_id = f"openai:{self.model}"
        self.concurrency = concurrency
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens

    @property
    def ready(self) -> bool:
        return self.http.ready

    def load(self) -> None:
        """Resolve the API key and open the HTTP connection pool (no network call)."""
        self.http.open()

    def close(self) -> None:
        self.http.close()

    def score(self, requests: Sequence[ScoreRequest], template: PromptTemplate, deadline: Deadline) -> list[np.ndarray | None]:
        self.http.open()
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
        deadline.check(what="calling the judge endpoint")
        return self.http.post(body, deadline.remaining)


def parse_completion(data: dict[str, Any], template: PromptTemplate) -> np.ndarray | None:
    """(5,) distribution in presented order from a chat-completions response, or ``None`` when the
    reply names no option (no verdict).

    Uses the ``top_logprobs`` of the first non-blank answer token when present (probabilities of the
    option tokens, renormalised), else the first option found in the answer text (one-hot). A body
    that is not a chat.completion raises ``MalformedResponse``: it is an error, never "no verdict".
    """
    choice = chat_choice(data, "judge endpoint")
    lookup = {text.strip().lower(): label for text, label in template.options}
    dist = np.zeros(5)
    for tok in (choice.get("logprobs") or {}).get("content") or []:
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
