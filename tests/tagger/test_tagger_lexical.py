"""Each lexical measure pinned on hand-checked examples, with the real packaged models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybridpref.tagger import lexical
from hybridpref.tagger.text import TokenCounter


# ----------------------------------------------------------------- pure functions
def test_entity_iou_uses_the_correct_union():
    # |A|=1, |B|=3, |A&B|=1: IoU = 1 / (1 + 3 - 1) = 1/3. (The paper's |B|+|B| bug gives 1/5.)
    assert lexical.entity_iou({"paris"}, {"paris", "obama", "2015"}) == pytest.approx(1 / 3)
    assert lexical.entity_iou({"paris", "obama", "2015"}, {"paris"}) == pytest.approx(1 / 3)
    assert lexical.entity_iou({"a", "b", "c"}, {"b", "c", "d"}) == pytest.approx(0.5)
    assert lexical.entity_iou({"a"}, {"b"}) == 0.0
    assert lexical.entity_iou(set(), set()) == 1.0  # identical (empty) sets


def test_bertscore_f1_greedy_matching_by_hand():
    e = np.eye(3)
    a = e[[0, 1]]  # tokens x, y
    b = e[[0, 2]]  # tokens x, z
    # precision: each a-token's best match: x->1, y->0 => 0.5; recall likewise 0.5; F1 0.5
    assert lexical.bertscore_f1(a, b) == pytest.approx(0.5)
    assert lexical.bertscore_f1(a, a) == pytest.approx(1.0)
    # asymmetric lengths: a = {x}, b = {x, z}: P = 1, R = 0.5, F1 = 2/3
    assert lexical.bertscore_f1(e[[0]], b) == pytest.approx(2 / 3)
    assert math.isnan(lexical.bertscore_f1(np.zeros((0, 3)), b))


def test_rescale_and_bertscore_length():
    assert lexical.rescale(0.15, 0.15) == pytest.approx(0.0)
    assert lexical.rescale(1.0, 0.15) == pytest.approx(1.0)
    assert lexical.rescale(0.575, 0.15) == pytest.approx(0.5)
    # equal lengths: no penalty; 2x longer: times exp(-1)
    assert lexical.bertscore_length(0.8, 50, 50) == pytest.approx(0.8)
    assert lexical.bertscore_length(0.8, 50, 100) == pytest.approx(0.8 * math.exp(-1))
    assert lexical.bertscore_length(0.8, 100, 50) == pytest.approx(0.8 * math.exp(-1))


def test_rouge_by_hand():
    # 5 of 6 tokens in order: P=1, R=5/6, F=10/11 (both ROUGE-1 and ROUGE-L)
    assert lexical.rouge("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    # same bag of words, reversed order: ROUGE-1 = 1, ROUGE-L = LCS 1 of 4 = 0.25
    assert lexical.rouge("a b c d", "d c b a", "rouge1") == pytest.approx(1.0)
    assert lexical.rouge("a b c d", "d c b a") == pytest.approx(0.25)
    with pytest.raises(ValueError):
        lexical.rouge("a", "b", "rouge3")


def test_fast_rouge1_equals_the_library():
    rng = np.random.default_rng(0)
    words = "The cat, the DOG; a bird 42 times... naïve café x-ray".split()
    for _ in range(30):
        a = " ".join(rng.choice(words, rng.integers(1, 15)))
        b = " ".join(rng.choice(words, rng.integers(1, 15)))
        assert lexical.rouge1_fast(a, b) == pytest.approx(lexical.rouge(a, b, "rouge1"))


def test_token_lengths_are_tiktoken_cl100k():
    counter = TokenCounter()
    assert counter.count(["hello world", "The capital of France is Paris.", ""]) == [2, 7, 0]


def test_lru_cache_bounds_and_counts():
    c = lexical.LRUCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.get("a")
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2


# ----------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def minilm() -> lexical.MiniLMEncoder:
    enc = lexical.MiniLMEncoder(window=128)
    enc.load()
    return enc


def test_minilm_pooled_equals_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from hybridpref.server.runtime import packaged_minilm_dir

    texts = ["A man is eating food.", "The weather is lovely today, let's go for a walk in the park."]
    ref = SentenceTransformer(str(packaged_minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    ours = np.stack([e.pooled for e in minilm.encode(texts)])
    assert np.allclose(ours, ref, atol=1e-4)


def test_one_pass_gives_tokens_and_pooled_and_is_cached(minilm):
    text = "Paris is the capital of France."
    before = minilm.cache.misses
    e1 = minilm.encode([text, text])  # duplicate within a call: encoded once
    e2 = minilm.encode([text])
    assert minilm.cache.misses - before <= 2 and e2[0] is e1[0] and e1[0] is e1[1]
    n_pieces = len(minilm._tok(text)["input_ids"]) - 2  # without [CLS]/[SEP]
    assert e1[0].tokens.shape == (n_pieces, 384) and e1[0].pooled.shape == (384,)
    assert np.allclose(np.linalg.norm(e1[0].tokens.astype(np.float32), axis=1), 1, atol=1e-2)
    assert e1[0].dropped == 0


def test_minilm_bertscore_orders_pairs_sensibly(minilm):
    a, b, c = minilm.encode(["The cat sat on the mat.", "A cat was sitting on the mat.", "Quarterly revenue rose by 4 percent."])
    base = lexical.load_baselines()["minilm"]
    same = lexical.rescale(lexical.bertscore_f1(a.tokens, a.tokens), base)
    close = lexical.rescale(lexical.bertscore_f1(a.tokens, b.tokens), base)
    far = lexical.rescale(lexical.bertscore_f1(a.tokens, c.tokens), base)
    assert same == pytest.approx(1.0, abs=1e-3) and 0.4 < close < 1.0 and far < 0.35 and close > far + 0.3
    assert float(a.pooled @ b.pooled) > float(a.pooled @ c.pooled) + 0.3


def test_window_cut_is_reported(minilm):
    long = "word " * 400
    (e,) = minilm.encode([long])
    assert e.dropped > 0 and e.tokens.shape[0] == minilm.window - 2


def test_spacy_entities_and_iou_by_hand():
    ents = lexical.SpacyEntities()
    ents.load()
    a, b = ents.entities(["Barack Obama visited Paris in 2015.", "Barack Obama met Angela Merkel in Paris."])
    assert a == {"barack obama", "paris", "2015"}
    assert b == {"barack obama", "angela merkel", "paris"}
    assert lexical.entity_iou(a, b) == pytest.approx(2 / 4)


def test_static_encoder_is_fast_and_normalised():
    enc = lexical.StaticEncoder()
    enc.load()
    a, b = enc.encode(["The cat sat on the mat.", "Quarterly revenue rose by 4 percent."])
    assert a.pooled.shape == (256,) and abs(float(np.linalg.norm(a.pooled)) - 1) < 1e-4
    assert lexical.bertscore_f1(a.tokens, a.tokens) == pytest.approx(1.0, abs=1e-3)
    assert lexical.bertscore_f1(a.tokens, b.tokens) < 0.9


def test_regex_entities_proxy():
    (e,) = lexical.RegexEntities().entities(["We met Angela Merkel in Berlin in 2015. Then we left."])
    assert {"angela merkel", "berlin", "2015"} <= e and "then" not in e


def test_weighted_bertscore_equals_expanded_tokens():
    rng = np.random.default_rng(3)
    vocab = rng.normal(size=(6, 8))
    vocab /= np.linalg.norm(vocab, axis=1, keepdims=True)
    ids_a, ids_b = np.array([0, 1, 1, 2, 0, 0]), np.array([3, 1, 4, 4, 5])
    ua, ca = np.unique(ids_a, return_counts=True)
    ub, cb = np.unique(ids_b, return_counts=True)
    expanded = lexical.bertscore_f1(vocab[ids_a], vocab[ids_b])
    assert lexical.bertscore_f1(vocab[ua], vocab[ub], ca, cb) == pytest.approx(expanded)
