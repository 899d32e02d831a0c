"""Analyzer backend for any OpenAI-compatible chat endpoint (vLLM, TGI, llama.cpp server,
hosted APIs).

One request per (prompt, dimension) with a JSON-answer prompt; strict parsing: the reply
must be a JSON object ``{"answer": ...}`` (a code fence around it is tolerated) whose
answer maps onto the dimension's closed option set via ``vocabulary.canonical_option``
(a list of options for multi-label dimensions; ``yes``/``no`` for yes/no dimensions).
Anything else is ``"unparsed"`` for that dimension: it never becomes a made-up tag.
Transport failures (connection refused, HTTP 5xx/429, timeout) are retried with backoff,
then raise ``BackendUnavailable``; they are not "unparsed" (the caller should retry).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from hybridpref.common.openai_http import ChatCompletionsClient
from hybridpref.common.vocabulary import ANALYZER_DIMENSIONS, BINARY_DIMENSIONS, MULTI_LABEL_DIMENSIONS, canonical_option
from hybridpref.tagger.analyzer import ABSENT, NON_ENGLISH, QUESTIONS, UNPARSED

_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def build_messages(text: str, dimension: str) -> list[dict[str, str]]:
    """Chat messages asking for one dimension as ``{"answer": ...}`` JSON."""
    if dimension in BINARY_DIMENSIONS:
        shape = '{"answer": "yes"} or {"answer": "no"}'
    elif dimension in MULTI_LABEL_DIMENSIONS:
        shape = '{"answer": ["<option>", ...]} with one to three options'
    else:
        shape = '{"answer": "<option>"}'
    options = "" if dimension in BINARY_DIMENSIONS else "\nOptions: " + "; ".join(ANALYZER_DIMENSIONS[dimension])
    return [
        {
            "role": "system",
            "content": f"You classify user requests. Reply with JSON only: {shape}. Use options exactly as written.",
        },
        {"role": "user", "content": f'Request:\n"""\n{text}\n"""\n\n{QUESTIONS[dimension]}{options}'},
    ]


def parse_answer(dimension: str, content: str | None) -> str:
    """Strictly parse a model reply for ``dimension``; returns the answer string or ``UNPARSED``."""
    if not isinstance(content, str):
        return UNPARSED
    m = _FENCE_RE.match(content)
    body = m.group(1) if m else content.strip()
    try:
        obj = json.loads(body)
    except ValueError:
        return UNPARSED
    if not isinstance(obj, dict) or "answer" not in obj:
        return UNPARSED
    answer: Any = obj["answer"]
    if dimension in BINARY_DIMENSIONS:
        if not isinstance(answer, str) or answer.strip().casefold() not in ("yes", "no"):
            return UNPARSED
        if answer.strip().casefold() == "no":
            return NON_ENGLISH if dimension == "languages" else ABSENT
        return ANALYZER_DIMENSIONS[dimension][0]
    if dimension in MULTI_LABEL_DIMENSIONS:
        items = answer if isinstance(answer, list) else [answer]
        if not items or len(items) > 3 or not all(isinstance(x, str) for x in items):
            return UNPARSED
        mapped = [canonical_option(dimension, x) for x in items]
        if any(x is None for x in mapped):
            return UNPARSED
        return "|".join(dict.fromkeys(mapped))  # type: ignore[arg-type]
    if not isinstance(answer, str):
        return UNPARSED
    return canonical_option(dimension, answer) or UNPARSED


class OpenAIAnalyzer:
    """OpenAI-compatible ``/v1/chat/completions`` backend (temperature 0), over the shared
    ``ChatCompletionsClient`` (retries with backoff, ``Retry-After``, API key from a value,
    a mounted secret file or the environment).

    ``base_url``: e.g. ``http://localhost:8000/v1``; ``model``: the served model name.
    ``max_prompt_chars`` cuts long prompts. ``concurrency``: parallel requests (one per dimension).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_file: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        max_prompt_chars: int = 6000,
        concurrency: int = 8,
    ) -> None:
        self.http = ChatCompletionsClient(
            base_url,
            api_key=api_key,
            api_key_file=api_key_file,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout_s=timeout_s,
            what="analyzer endpoint",
        )
        self.base_url = self.http.base_url
        self.model = model
        self.max_prompt_chars = max_prompt_chars
        self.concurrency = concurrency

    def load(self) -> None:
        self.http.open()

    def close(self) -> None:
        self.http.close()

    def _ask(self, text: str, dimension: str) -> str:
        payload = {"model": self.model, "messages": build_messages(text, dimension), "temperature": 0, "max_tokens": 64}
        data = self.http.post(payload)
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return UNPARSED
        return parse_answer(dimension, content)

    def analyze(self, texts: Sequence[str], english: Sequence[bool]) -> list[dict[str, str]]:
        from concurrent.futures import ThreadPoolExecutor

        self.http.open()
        dims = list(ANALYZER_DIMENSIONS)
        jobs = [(i, d) for i in range(len(texts)) for d in dims]
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            answers = list(pool.map(lambda job: self._ask(texts[job[0]][: self.max_prompt_chars], job[1]), jobs))
        out: list[dict[str, str]] = [{} for _ in texts]
        for (i, d), a in zip(jobs, answers):
            out[i][d] = a
        return out
