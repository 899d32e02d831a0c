"""The tagger core: instances -> raw lexical measures + 90-bit tag vectors (+ analyzer answers).

gRPC-free; the servicer wraps ``Tagger``. Usage::

    tagger = Tagger.for_profile("default")
    tagger.load()                       # every model, once; tag() never loads
    batch = tagger.tag(instances)       # InvalidInput if any instance is bad
    batch.tag_matrix                    # uint8 (n, 90), columns = vocabulary.TAG_NAMES

Profiles (documented figures: benchmarks/RESULTS.md):

``default``
    all-MiniLM-L6-v2 (one pass per text, window 128 word-pieces incl. [CLS]/[SEP]) for
    BERTScore F1 (last layer, greedy matching, no idf, baseline-rescaled) and the
    sentence cosine; spaCy ``en_core_web_sm`` entities (first 8,000 characters);
    ROUGE-L F (rouge-score); tiktoken ``cl100k_base`` token lengths of the whole texts;
    analyzer = ``EmbeddingAnalyzer`` on the same MiniLM model reading the prompt's first
    64 word-pieces (last user turn for multi-turn prompts). Target >= 10 instances/s.
``fast``
    WordLlama static token embeddings (window 256 tokens) for BERTScore and cosine;
    regex entity proxy; ROUGE-1 F; same tiktoken lengths; ``EmbeddingAnalyzer`` on
    WordLlama. Target >= 200 instances/s.

Either profile takes ``analyzer="lm"`` (SmolLM2 likelihood scoring, ``lm_model=`` for any
local HF model) or ``analyzer="openai"`` (``openai_base_url=``, ``openai_model=``,
``openai_api_key=``), or any object implementing ``analyzer.AnalyzerBackend``.

Thread safety: ``tag`` may be called from several threads at once. Each model sits
behind its own lock (torch already uses every allowed core, so concurrent forwards
would only contend) and the caches are locked; results do not depend on interleaving.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridpref.common.vocabulary import LEXICAL_MEASURES, NUM_LEXICAL_TAGS, NUM_TAGS, VOCABULARY_VERSION
from hybridpref.routing_model.bins import ReferenceBins
from hybridpref.tagger import lexical
from hybridpref.tagger.analyzer import AnalyzerBackend, EmbeddingAnalyzer, LMAnalyzer, answers_to_bits
from hybridpref.tagger.text import MAX_TEXT_CHARS, TokenCounter, prepare
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import PreferenceInstance, validate_instances

PROFILES: tuple[str, ...] = ("default", "fast")
DEFAULT_MAX_BATCH = 4096
_COL = {m: j for j, m in enumerate(LEXICAL_MEASURES)}


def _reject_blank_after_cleaning(instances: Sequence[PreferenceInstance]) -> None:
    from hybridpref.tagger.text import clean

    bad = [
        FieldViolation(f"instances[{i}].{name}", "empty after removing control characters")
        for i, inst in enumerate(instances)
        for name in ("response_a", "response_b")
        if not clean(getattr(inst, name))[0].strip()
    ]
    if bad:
        raise InvalidInput(bad)


@dataclass
class TagBatch:
    """Tags of a batch, rows in request order.

    ``tag_matrix``: uint8 (n, NUM_TAGS), columns in ``vocabulary.TAG_NAMES`` order.
    ``measures``: float64 (n, len(LEXICAL_MEASURES)) raw values, columns in
    ``LEXICAL_MEASURES`` order (similarities in about [0, 1]; bertscore may dip below 0
    after baseline rescaling; lengths in tiktoken tokens).
    ``analyzer``: per instance, dimension -> option ("|"-joined for multi-label),
    ``absent`` / ``non-English`` for a "no", or ``unparsed``.
    ``truncated``: some measure read a cut text (see ``notes`` for which and why).
    """

    ids: list[str]
    tag_matrix: np.ndarray
    measures: np.ndarray
    analyzer: list[dict[str, str]]
    truncated: list[bool]
    notes: list[list[str]]
    profile: str = "default"
    vocabulary_version: str = VOCABULARY_VERSION
    timings: dict[str, float] = field(default_factory=dict)

    def measures_dict(self, i: int) -> dict[str, float]:
        """Raw measures of row ``i`` by name (what ``InstanceTags.measures`` carries)."""
        return {m: float(self.measures[i, j]) for j, m in enumerate(LEXICAL_MEASURES)}


class Tagger:
    """Computes measures and tags; see the module docstring for profiles and options.

    ``backend_options`` (all optional): ``analyzer`` ("embedding" | "lm" | "openai" |
    an ``AnalyzerBackend``), ``rouge`` ("rougeL" | "rouge1"; profile default: default
    rougeL, fast rouge1), ``encoder_path`` (MiniLM dir / hub id), ``window``
    (encoder tokens per response), ``analyzer_window`` (MiniLM word-pieces of the prompt
    the embedding analyzer reads; default 64), ``spacy_model``, ``cache_entries``, ``max_chars``
    (default ``MAX_TEXT_CHARS``), ``max_batch`` (default 4096), ``bertscore_baseline``
    (BERTScore rescaling baseline; default the packaged one for the profile's encoder), ``lm_model``,
    ``openai_base_url``, ``openai_model``, ``openai_api_key`` / ``openai_api_key_file``.
    """

    def __init__(self, profile: str = "default", *, reference_bins: ReferenceBins | None = None, **backend_options: Any) -> None:
        if profile not in PROFILES:
            raise InvalidInput(FieldViolation("profile", f"unknown profile {profile!r}; expected one of {PROFILES}"))
        known = {
            "analyzer",
            "analyzer_window",
            "encoder_path",
            "window",
            "spacy_model",
            "cache_entries",
            "max_chars",
            "max_batch",
            "rouge",
            "bertscore_baseline",
            "lm_model",
            "openai_base_url",
            "openai_model",
            "openai_api_key",
            "openai_api_key_file",
        }
        unknown = sorted(set(backend_options) - known)
        if unknown:
            raise InvalidInput(FieldViolation("backend_options", f"unknown options {unknown}; known: {sorted(known)}"))
        self.profile = profile
        self.options = backend_options
        self.reference_bins = reference_bins
        self.max_chars = int(backend_options.get("max_chars", MAX_TEXT_CHARS))
        self.max_batch = int(backend_options.get("max_batch", DEFAULT_MAX_BATCH))
        cache = int(backend_options.get("cache_entries", 2048))
        self.tokens = TokenCounter()
        if profile == "default":
            self.encoder: lexical.MiniLMEncoder | lexical.StaticEncoder = lexical.MiniLMEncoder(
                backend_options.get("encoder_path"), window=int(backend_options.get("window", 128)), cache_entries=cache
            )
            self.entities: lexical.SpacyEntities | lexical.RegexEntities = lexical.SpacyEntities(
                backend_options.get("spacy_model")
            )
            self.rouge_kind = "rougeL"
        else:
            self.encoder = lexical.StaticEncoder(window=int(backend_options.get("window", 256)), cache_entries=cache)
            self.entities = lexical.RegexEntities()
            self.rouge_kind = "rouge1"
        if "rouge" in backend_options:
            if backend_options["rouge"] not in ("rougeL", "rouge1"):
                raise InvalidInput(FieldViolation("backend_options.rouge", "expected rougeL or rouge1"))
            self.rouge_kind = backend_options["rouge"]
        self.analyzer: AnalyzerBackend = self._make_analyzer(backend_options.get("analyzer", "embedding"))
        self._baseline: float | None = None
        # the analyzer reads the prompt's first ``analyzer_window`` tokens (default profile:
        # 64 word-pieces, half the cost of the response window; fast: the static encoder)
        self.analyzer_window = int(backend_options.get("analyzer_window", 64 if profile == "default" else 256))
        self._prompt_encoder: lexical.MiniLMEncoder | lexical.StaticEncoder | None = None
        self._load_lock = threading.Lock()
        self._ready = False

    @classmethod
    def for_profile(cls, profile: str) -> Tagger:
        """A tagger with the profile's documented defaults (``"default"`` or ``"fast"``)."""
        return cls(profile)

    def _make_analyzer(self, spec: Any) -> AnalyzerBackend:
        if not isinstance(spec, str):
            return spec
        if spec == "embedding":
            return EmbeddingAnalyzer(self._embed_prompts)
        if spec == "lm":
            return LMAnalyzer(self.options.get("lm_model"))
        if spec == "openai":
            from hybridpref.tagger.openai_backend import OpenAIAnalyzer

            url, model = self.options.get("openai_base_url"), self.options.get("openai_model")
            if not url or not model:
                raise InvalidInput(
                    FieldViolation("backend_options.openai_base_url", "analyzer='openai' needs openai_base_url and openai_model")
                )
            return OpenAIAnalyzer(
                url, model, api_key=self.options.get("openai_api_key"), api_key_file=self.options.get("openai_api_key_file")
            )
        raise InvalidInput(
            FieldViolation("backend_options.analyzer", f"unknown analyzer {spec!r}; expected embedding, lm or openai")
        )

    def _embed_prompts(self, texts: list[str]) -> np.ndarray:
        """Pooled embeddings for the embedding analyzer (prompt encoder: see ``load``)."""
        enc = self._prompt_encoder or self.encoder
        return np.stack([e.pooled for e in enc.encode(texts)]) if texts else np.zeros((0, 1), np.float32)

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load every model and reference file (idempotent, thread-safe)."""
        with self._load_lock:
            if self._ready:
                return
            if self.reference_bins is None:
                self.reference_bins = ReferenceBins.default()
            # packaged baselines were computed for the packaged encoders at their default windows;
            # pass bertscore_baseline= for another encoder_path/window (scripts/build_reference_bins.py)
            given = self.options.get("bertscore_baseline")
            self._baseline = float(given) if given is not None else lexical.load_baselines()[self.encoder.name]
            self.tokens.load()
            self.encoder.load()
            if isinstance(self.encoder, lexical.MiniLMEncoder) and self.analyzer_window != self.encoder.window:
                self._prompt_encoder = self.encoder.with_window(self.analyzer_window)
            self.entities.load()
            lexical.rouge("warm up", "warm up", self.rouge_kind)
            self.analyzer.load()
            self._ready = True

    @property
    def ready(self) -> bool:
        """True once ``load`` finished; ``tag`` then never loads anything."""
        return self._ready

    # ------------------------------------------------------------------ tagging
    def tag(self, instances: Sequence[PreferenceInstance]) -> TagBatch:
        """Validate the whole batch (``InvalidInput`` listing every bad field), then tag it.

        A response made only of control characters and whitespace counts as empty.
        Loads models first if ``load`` was not called (the servicer calls it at start-up).
        """

        validate_instances(instances, max_batch=self.max_batch)
        _reject_blank_after_cleaning(instances)
        if not self._ready:
            self.load()
        from threadpoolctl import threadpool_limits

        # numpy's BLAS work here is many small (<= 256 x 256) products: OpenBLAS threads only
        # spin against torch's own threads (measured 40x slower under load), so one thread.
        with threadpool_limits(1, user_api="blas"):
            return self._tag(instances)

    def _tag(self, instances: Sequence[PreferenceInstance]) -> TagBatch:
        import time

        t: dict[str, float] = {}
        t0 = time.perf_counter()
        prep = [prepare(inst, self.max_chars) for inst in instances]
        n = len(prep)
        measures = np.full((n, len(LEXICAL_MEASURES)), np.nan)
        if n == 0:
            return self._empty()
        lens = np.asarray(self.tokens.count([x for p in prep for x in (p.full_prompt, p.full_a, p.full_b)])).reshape(n, 3)
        la, lb = lens[:, 1], lens[:, 2]
        measures[:, _COL["prompt_len"]] = lens[:, 0]
        measures[:, _COL["len_shorter"]] = np.minimum(la, lb)
        measures[:, _COL["len_longer"]] = np.maximum(la, lb)
        measures[:, _COL["token_len_diff"]] = np.abs(la - lb)
        t1 = time.perf_counter()
        t["lengths"] = t1 - t0
        _stop_if_abandoned()

        enc = self.encoder.encode([x for p in prep for x in (p.response_a, p.response_b)])
        t15 = time.perf_counter()
        t["encoder"] = t15 - t1
        for i in range(n):
            ea, eb = enc[2 * i], enc[2 * i + 1]
            bs = lexical.rescale(lexical.bertscore_f1(ea.tokens, eb.tokens, ea.weights, eb.weights), self._baseline or 0.0)
            measures[i, _COL["bertscore"]] = bs
            measures[i, _COL["bertscore_length"]] = lexical.bertscore_length(bs, int(la[i]), int(lb[i]))
            measures[i, _COL["cosine_sim"]] = float(np.dot(ea.pooled, eb.pooled))
            for name, e in (("response_a", ea), ("response_b", eb)):
                if e.dropped:
                    prep[i].truncated = True
                    prep[i].notes.append(
                        f"{name}: encoder ({self.encoder.name}) read the first {self.encoder.window} tokens; {e.dropped} more not embedded"
                    )
        t2 = time.perf_counter()
        t["bertscore+cosine"] = t2 - t15
        _stop_if_abandoned()

        ents = self.entities.entities([x for p in prep for x in (p.response_a, p.response_b)])
        measures[:, _COL["entity_sim"]] = [lexical.entity_iou(ents[2 * i], ents[2 * i + 1]) for i in range(n)]
        t3 = time.perf_counter()
        t["entities"] = t3 - t2

        rouge_fn = lexical.rouge1_fast if self.rouge_kind == "rouge1" else (lambda a, b: lexical.rouge(a, b, "rougeL"))
        measures[:, _COL["rouge"]] = [rouge_fn(p.response_a, p.response_b) for p in prep]
        t4 = time.perf_counter()
        t["rouge"] = t4 - t3
        _stop_if_abandoned()

        answers = self.analyzer.analyze([p.analyzer_text for p in prep], [p.english for p in prep])
        t5 = time.perf_counter()
        t["analyzer"] = t5 - t4

        tags = np.zeros((n, NUM_TAGS), dtype=np.uint8)
        tags[:, :NUM_LEXICAL_TAGS] = self.reference_bins.tag_bits(measures)  # type: ignore[union-attr]
        for i, ans in enumerate(answers):
            tags[i] |= answers_to_bits(ans)
        t["bins"] = time.perf_counter() - t5
        return TagBatch(
            ids=[inst.id for inst in instances],
            tag_matrix=tags,
            measures=measures,
            analyzer=answers,
            truncated=[p.truncated for p in prep],
            notes=[p.notes for p in prep],
            profile=self.profile,
            timings=t,
        )

    def _empty(self) -> TagBatch:
        return TagBatch(
            [], np.zeros((0, NUM_TAGS), np.uint8), np.zeros((0, len(LEXICAL_MEASURES))), [], [], [], profile=self.profile
        )


def _stop_if_abandoned() -> None:
    """Between stages: stop when the RPC this work is for was cancelled or ran out of time
    (its ``Deadline`` travels with the request's context into the worker thread)."""
    from hybridpref.server import deadline as deadlines

    current = deadlines.current()
    if current is not None:
        current.check(what="tagging")
