"""Tagger end to end on fixtures: shapes, bins, analyzer tags, bad input, threads, determinism."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hybridpref.common.vocabulary import LEXICAL_MEASURES, NUM_TAGS, TAG_INDEX, TAG_NAMES
from hybridpref.tagger.core import Tagger
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import Message, PreferenceInstance, read_jsonl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tagger_instances.jsonl"
COL = {m: j for j, m in enumerate(LEXICAL_MEASURES)}


@pytest.fixture(scope="module")
def instances() -> list[PreferenceInstance]:
    return read_jsonl(str(FIXTURE))


@pytest.fixture(scope="module")
def default_tagger() -> Tagger:
    t = Tagger.for_profile("default")
    t.load()
    return t


@pytest.fixture(scope="module")
def fast_tagger() -> Tagger:
    t = Tagger.for_profile("fast")
    t.load()
    return t


@pytest.fixture(scope="module")
def batch(default_tagger, instances):
    return default_tagger.tag(instances)


def row(batch, inst_id):
    return batch.ids.index(inst_id)


def on(batch, i):
    return {TAG_NAMES[j] for j in np.flatnonzero(batch.tag_matrix[i])}


def test_shapes_and_one_bin_per_measure(batch, instances):
    n = len(instances)
    assert batch.ids == [x.id for x in instances]
    assert batch.tag_matrix.shape == (n, NUM_TAGS) and batch.tag_matrix.dtype == np.uint8
    assert batch.measures.shape == (n, len(LEXICAL_MEASURES)) and batch.measures.dtype == np.float64
    assert np.all(np.isfinite(batch.measures))
    assert np.all(batch.tag_matrix[:, :27].reshape(n, 9, 3).sum(-1) == 1)


def test_identical_responses_pin_every_similarity(batch):
    i = row(batch, "same-1")
    m = batch.measures_dict(i)
    assert m["bertscore"] == pytest.approx(1.0, abs=1e-3)
    assert m["bertscore_length"] == pytest.approx(1.0, abs=1e-3)
    assert m["cosine_sim"] == pytest.approx(1.0, abs=1e-4)
    assert m["rouge"] == pytest.approx(1.0)
    assert m["entity_sim"] == pytest.approx(1.0)  # {france, paris} both sides
    assert m["len_shorter"] == m["len_longer"] == 7 and m["token_len_diff"] == 0
    assert m["prompt_len"] == 6  # "Name the capital of France."
    assert {"bertscore:high", "cosine_sim:high", "rouge:high", "entity_sim:high", "token_len_diff:low"} <= on(batch, i)


def test_entity_sim_on_real_pair(batch):
    # {polynesian cultural center, laie, diamond head, honolulu, hawaii} vs {hawaii, maui, polynesian cultural center}
    i = row(batch, "travel-1")
    assert 0.1 < batch.measures_dict(i)["entity_sim"] < 0.6


def test_analyzer_tags_follow_answers(batch):
    for i, ans in enumerate(batch.analyzer):
        assert set(ans) == {
            "subject_of_expertise",
            "languages",
            "expertise_level",
            "open_endedness",
            "safety_concern",
            "complexity_of_intents",
            "type_of_in_context_material",
            "format_constraints",
        }
        tagged = {t for t in on(batch, i) if t.split(":")[0] in ans}
        expected = {f"{d}:{o}" for d, a in ans.items() for o in a.split("|") if f"{d}:{o}" in TAG_INDEX}
        assert tagged == expected
        # single-label dimensions set at most one tag
        for d in ("expertise_level", "open_endedness", "safety_concern", "complexity_of_intents"):
            assert sum(t.startswith(d + ":") for t in tagged) == 1


def test_subjects_for_math_and_code(batch):
    assert "Mathematics" in batch.analyzer[row(batch, "math-1")]["subject_of_expertise"].split("|")
    assert "Computer sciences" in batch.analyzer[row(batch, "code-1")]["subject_of_expertise"].split("|")


def test_format_constraint_and_material_rules(batch):
    assert batch.analyzer[row(batch, "math-1")]["format_constraints"] == "absent"
    assert batch.analyzer[row(batch, "ctrl-1")]["type_of_in_context_material"] in ("present", "absent")


def test_non_english_is_noted_and_not_tagged_english(batch):
    i = row(batch, "french-1")
    assert batch.analyzer[i]["languages"] == "non-English"
    assert "languages:English" not in on(batch, i)
    assert any("non-English" in n for n in batch.notes[i])
    assert "languages:English" in on(batch, row(batch, "math-1"))


def test_multi_turn_prompts(batch):
    i = row(batch, "multi-1")
    assert any("multi-turn" in n for n in batch.notes[i])
    # token length counts the whole conversation, longer than the last turn alone
    assert batch.measures_dict(i)["prompt_len"] > 20
    h = row(batch, "hh-1")
    assert any("2 user turns" in n for n in batch.notes[h])


def test_control_characters_removed_and_noted(batch, default_tagger, instances):
    i = row(batch, "ctrl-1")
    assert any("control characters removed" in n for n in batch.notes[i])
    clean = replace(
        instances[i],
        id="clean",
        prompt=instances[i].prompt.replace("\u0000", "").replace("\u0007", ""),
        response_a="A fox jumps over a dog.",
        response_b="A quick fox leaps over a lazy dog.",
    )
    again = default_tagger.tag([clean])
    assert np.allclose(again.measures[0], batch.measures[i])


def test_long_text_truncated_and_reported(default_tagger):
    long = "The quick brown fox jumps over the lazy dog. " * 1000  # 45,000 chars > MAX_TEXT_CHARS
    inst = PreferenceInstance("long", "Summarize.", long, "A fox jumps.")
    b = default_tagger.tag([inst])
    assert b.truncated == [True]
    assert any("cut from 45000 to 20000 characters" in n for n in b.notes[0])
    assert b.measures_dict(0)["len_longer"] == 10_001  # whole text counted: 10 tokens x 1000 + trailing space
    short = default_tagger.tag([PreferenceInstance("s", "Hi", "Hello there.", "Hi!")])
    assert short.truncated == [False] and short.notes == [[]]


def test_bad_input_is_invalid_input_listing_fields(default_tagger):
    good = PreferenceInstance("a", "p", "x", "y")
    with pytest.raises(InvalidInput) as err:
        default_tagger.tag([good, PreferenceInstance("b", "p", "   ", "y"), PreferenceInstance("a", "p", "x", "\n")])
    fields = {v.field for v in err.value.violations}
    assert {"instances[1].response_a", "instances[2].id", "instances[2].response_b"} <= fields
    with pytest.raises(InvalidInput):
        default_tagger.tag([PreferenceInstance("c", "", "x", "y")])
    with pytest.raises(InvalidInput) as err:
        default_tagger.tag([PreferenceInstance("d", "p", "x", "\u0000\u0007\u200b")])
    assert err.value.violations[0].field == "instances[0].response_b"
    with pytest.raises(InvalidInput):
        Tagger("turbo")
    with pytest.raises(InvalidInput):
        Tagger("default", colour="blue")


def test_messages_only_prompt(default_tagger):
    inst = PreferenceInstance("m", "", "Four.", "It is 4.", messages=(Message("user", "Solve the equation 2x + 3 = 7 for x."),))
    b = default_tagger.tag([inst])
    assert b.measures_dict(0)["prompt_len"] > 0 and "Mathematics" in b.analyzer[0]["subject_of_expertise"]


def test_empty_batch(default_tagger):
    b = default_tagger.tag([])
    assert b.tag_matrix.shape == (0, NUM_TAGS) and b.ids == []


def test_deterministic_and_thread_safe(default_tagger, instances, batch):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: default_tagger.tag(instances[k % 3 :]), range(8)))
    for k, r in enumerate(results):
        off = k % 3
        assert np.array_equal(r.tag_matrix, batch.tag_matrix[off:])
        assert np.allclose(r.measures, batch.measures[off:], atol=1e-5)


def test_fast_profile_agrees_on_lengths_and_mostly_on_tags(fast_tagger, batch, instances):
    fb = fast_tagger.tag(instances)
    assert fb.profile == "fast" and fb.tag_matrix.shape == batch.tag_matrix.shape
    for m in ("prompt_len", "len_shorter", "len_longer", "token_len_diff"):
        assert np.array_equal(fb.measures[:, COL[m]], batch.measures[:, COL[m]])
    same = fb.measures_dict(row(fb, "same-1"))
    assert same["bertscore"] == pytest.approx(1.0, abs=1e-3) and same["rouge"] == pytest.approx(1.0)
    assert (fb.tag_matrix == batch.tag_matrix).mean() > 0.85


def test_english_prompt_with_foreign_response(default_tagger):
    inst = PreferenceInstance(
        "fr", "Translate 'good morning' into French.", "Bonjour, comment allez-vous aujourd'hui mon ami ?", "Bonjour."
    )
    b = default_tagger.tag([inst])
    assert b.analyzer[0]["languages"] == "English"
    assert any("non-English text in response_a" in n for n in b.notes[0])


def test_rouge_option_is_validated():
    assert Tagger("default", rouge="rouge1").rouge_kind == "rouge1"
    assert Tagger("fast").rouge_kind == "rouge1" and Tagger("default").rouge_kind == "rougeL"
    with pytest.raises(InvalidInput):
        Tagger("default", rouge="rouge2")
    with pytest.raises(InvalidInput):
        Tagger("default", analyzer="openai")  # no endpoint given
