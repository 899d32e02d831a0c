"""Features of (prompt, A, B) for the learned judge: cheap, transferable, antisymmetric by construction.

Each response gets a vector of statistics ``s(prompt, r)`` (lengths, structure, prompt overlap,
refusal and hedging cues, language mismatch, emptiness, repetition). A pair's features are built only
from *differences* ``s(A) - s(B)``, odd functions of them (``sign``, ``tanh``), and differences
multiplied by quantities that do not change when A and B swap (prompt cues, the pair's mean length).
So ``features(p, B, A) == -features(p, A, B)`` exactly, and a linear model without intercept gives
``P(A > B) = 1 - P(B > A)``: the judge answers in both orders at once.

Pure regex + numpy (no model): thousands of pairs per second on one core.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

FEATURE_VERSION = "judge-features-v2"

_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_CONTENT = re.compile(r"[^\W\d_]{3,}")
# Line-anchored patterns use [ \t]*, never \s*: \s crosses newlines and makes a run of blank lines quadratic.
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+\S", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+\S|[A-Z][^\n]{0,60}:[ \t]*$)", re.MULTILINE)
_CODE_FENCE = re.compile(r"```")
_CODE_LINE = re.compile(
    r"^(?: {4}|\t)\S|[;{}][ \t]*$|^[ \t]*(?:def|class|import|return|for|while|if)\b[^\n]*[:({][ \t]*$", re.MULTILINE
)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*%?")
_PARAGRAPH = re.compile(r"\n\s*\n")
_EMPHASIS = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
_REFUSAL = re.compile(
    r"\b(?:i(?:'| a)?m sorry|i apologi[sz]e|i can(?:'|no)?t (?:help|assist|provide|do|answer|comply|support|fulfill)|"
    r"i cannot|i won'?t|i(?:'| a)?m (?:not able|unable)|i am not able|i'?m not comfortable|i don'?t feel comfortable|"
    r"not (?:appropriate|ethical)|against my (?:programming|guidelines))\b",
    re.IGNORECASE,
)
_AI_DISCLAIMER = re.compile(r"\bas an? (?:ai|language model|large language model|assistant)\b|\bi am an ai\b", re.IGNORECASE)
_HEDGE = re.compile(
    r"\b(?:may|might|perhaps|possibly|probably|likely|not sure|i think|i believe|it depends|"
    r"could be|unclear|uncertain)\b",
    re.IGNORECASE,
)
_QUESTION = re.compile(r"\?")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_OTHER_SCRIPT = re.compile(r"[\u0590-\u06ff\u0900-\u0dff\u0e00-\u0eff]")  # Hebrew, Arabic, Indic, Thai, Lao
_TERMINAL = frozenset(".!?)]\"'`*:\u3002\uff01\uff1f")
_STOP = frozenset(
    "the and for are but not you all any can had her was one our out his has him how its let may new now old see "
    "two who did get use what when where which while with this that from they them then than there their these "
    "those will would could should about into your have been were also some such only just more most very over "
    "each other make like well does doing done".split()
)

# Prompt cue (symmetric in A/B): a dialogue prefix (HH-RLHF style) changes what a longer answer is worth.
# Interactions with other prompt cues (brevity requests, code, lists, choices, maths, prompt length) were
# measured and dropped: none beat the noise in leave-one-source-out agreement, all cost calibration.
_DIALOGUE = re.compile(r"(?:^|\n)[ \t]*(?:Human|User|Assistant)[ \t]*:", re.IGNORECASE)

STAT_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_tokens",
    "log_lines",
    "log_list_items",
    "log_code",
    "log_headings",
    "log_numbers",
    "log_paragraphs",
    "log_emphasis",
    "prompt_recall",
    "prompt_precision",
    "refusal",
    "ai_disclaimer",
    "hedge_rate",
    "log_questions",
    "script_mismatch",
    "empty",
    "type_token_ratio",
    "repeated_lines",
    "ends_cleanly",
    "copies_prompt",
)
PROMPT_CUES: tuple[str, ...] = ("dialogue",)
# Differences that also enter through odd non-linear transforms (a step and a soft step).
_STEP_STATS: tuple[str, ...] = ("log_chars", "log_list_items", "log_code", "log_numbers", "prompt_recall")


def feature_names() -> list[str]:
    """Column names, in the order :func:`pair_features` returns them."""
    names = [f"d_{s}" for s in STAT_NAMES]
    names += [f"sign_{s}" for s in _STEP_STATS] + [f"tanh_{s}" for s in _STEP_STATS]
    names += [f"d_{s}*{c}" for c in PROMPT_CUES for s in STAT_NAMES]
    names += ["d_log_chars*mean_log_chars", "d_log_chars*|d_log_chars|"]
    return names


def visible(text: str) -> bool:
    """True when ``text`` has a character that is neither white space nor a format/control character."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc") for ch in text)


def _scripts(text: str) -> np.ndarray:
    counts = np.array(
        [len(_LATIN.findall(text)), len(_CJK.findall(text)), len(_CYRILLIC.findall(text)), len(_OTHER_SCRIPT.findall(text))],
        dtype=np.float64,
    )
    total = counts.sum()
    return counts / total if total > 0 else counts


def _content_words(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _CONTENT.findall(text)) if w not in _STOP}


def response_stats(
    prompt: str, response: str, prompt_words: set[str] | None = None, prompt_scripts: np.ndarray | None = None
) -> np.ndarray:
    """The statistics of one response to ``prompt``, in :data:`STAT_NAMES` order."""
    words = _WORD.findall(response)
    n_words = len(words)
    lines = [ln.strip() for ln in response.splitlines() if ln.strip()]
    pw = _content_words(prompt) if prompt_words is None else prompt_words
    rw = _content_words(response)
    recall = len(pw & rw) / len(pw) if pw else 0.0
    precision = len(pw & rw) / len(rw) if rw else 0.0
    ps = _scripts(prompt) if prompt_scripts is None else prompt_scripts
    rs = _scripts(response)
    mismatch = 0.5 * float(np.abs(ps - rs).sum()) if ps.sum() > 0 and rs.sum() > 0 else 0.0
    fences = len(_CODE_FENCE.findall(response)) // 2
    code = fences + 0.25 * len(_CODE_LINE.findall(response))
    lowered = [w.lower() for w in words]
    ttr = len(set(lowered)) / n_words if n_words else 0.0
    repeated = 1.0 - len(set(lines)) / len(lines) if lines else 0.0
    stripped_prompt = prompt.strip()
    copies = float(len(stripped_prompt) >= 20 and stripped_prompt[:200] in response)
    return np.array(
        [
            math.log1p(len(response.strip())),
            math.log1p(n_words),
            math.log1p(len(_TOKEN.findall(response))),
            math.log1p(len(lines)),
            math.log1p(len(_LIST_ITEM.findall(response))),
            math.log1p(code),
            math.log1p(len(_HEADING.findall(response))),
            math.log1p(len(_NUMBER.findall(response))),
            math.log1p(len(_PARAGRAPH.findall(response.strip())) + (1 if lines else 0)),
            math.log1p(len(_EMPHASIS.findall(response))),
            recall,
            precision,
            float(bool(_REFUSAL.search(response[:400]))),
            float(bool(_AI_DISCLAIMER.search(response))),
            min(len(_HEDGE.findall(response)) / max(n_words, 1) * 100.0, 10.0) / 10.0,
            math.log1p(len(_QUESTION.findall(response))),
            mismatch,
            0.0 if visible(response) else 1.0,
            ttr,
            repeated,
            float(response.rstrip()[-1:] in _TERMINAL) if response.strip() else 0.0,
            copies,
        ],
        dtype=np.float64,
    )


def prompt_cues(prompt: str) -> np.ndarray:
    """Prompt-only quantities (unchanged by swapping A and B), in :data:`PROMPT_CUES` order."""
    return np.array([float(bool(_DIALOGUE.search(prompt)))], dtype=np.float64)


def combine(sa: np.ndarray, sb: np.ndarray, cues: np.ndarray) -> np.ndarray:
    """Pair features from the two responses' stats and the prompt cues (vectorised over leading axes).

    ``d = sa - sb`` is computed once and every column is an odd function of ``d`` times something
    symmetric, so swapping ``sa`` and ``sb`` negates the row bit for bit.
    """
    d = sa - sb
    idx = [STAT_NAMES.index(s) for s in _STEP_STATS]
    step = d[..., idx]
    li = STAT_NAMES.index("log_chars")
    mean_len = (sa[..., li] + sb[..., li]) / 2.0 / 8.0
    inter = (d[..., None, :] * cues[..., :, None]).reshape(*d.shape[:-1], -1)
    return np.concatenate(
        [
            d,
            np.sign(step),
            np.tanh(2.0 * step),
            inter,
            (d[..., li] * mean_len)[..., None],
            (d[..., li] * np.abs(d[..., li]))[..., None],
        ],
        axis=-1,
    )


def pair_features(prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
    """(n, d) float64 feature matrix for n pairs; columns named by :func:`feature_names`."""
    if not (len(prompts) == len(responses_a) == len(responses_b)):
        raise ValueError("prompts, responses_a and responses_b must have the same length")
    n = len(prompts)
    width = len(feature_names())
    if n == 0:
        return np.zeros((0, width))
    sa = np.empty((n, len(STAT_NAMES)))
    sb = np.empty_like(sa)
    cues = np.empty((n, len(PROMPT_CUES)))
    cache: dict[str, tuple[set[str], np.ndarray, np.ndarray]] = {}
    for i, (p, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
        if p not in cache:  # many pairs share a prompt (MT-Bench, routing batches)
            cache[p] = (_content_words(p), _scripts(p), prompt_cues(p))
        pw, ps, cues[i] = cache[p]
        sa[i] = response_stats(p, a, pw, ps)
        sb[i] = response_stats(p, b, pw, ps)
    return combine(sa, sb, cues)
