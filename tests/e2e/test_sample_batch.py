"""The shipped sample batch (samples/sample_batch.jsonl) is valid input and stays varied."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from hybridpref_client.core.instances import Label, read_jsonl, validate_instances

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "sample_batch.jsonl"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with SAMPLE.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@pytest.fixture(scope="module")
def batch():
    return read_jsonl(str(SAMPLE))


def test_parses_and_validates(batch) -> None:
    assert 30 <= len(batch) <= 60
    validate_instances(batch)  # raises InvalidInput on any bad field


def test_ids_unique(batch) -> None:
    ids = [inst.id for inst in batch]
    assert len(set(ids)) == len(ids)


def test_every_row_has_labels_and_category(batch) -> None:
    for inst in batch:
        assert inst.human_label is not None, inst.id
        assert "gpt4" in inst.lm_labels, inst.id
        assert inst.metadata.get("category"), inst.id


def test_categories_varied(batch) -> None:
    categories = Counter(inst.metadata["category"] for inst in batch)
    assert len(categories) >= 6, categories
    # no category dominates the batch
    assert max(categories.values()) <= len(batch) // 3, categories
    assert {"coding", "safety", "math"} <= set(categories)


def test_multi_turn_rows(batch, rows) -> None:
    multi = [inst for inst in batch if inst.messages]
    assert len(multi) >= 2
    for inst in multi:
        assert inst.prompt == "", inst.id  # multi-turn rows carry messages instead of a prompt
        assert inst.messages[-1].role == "user", inst.id  # A and B answer the last user turn
        assert {"user", "assistant"} <= {m.role for m in inst.messages}, inst.id
        assert inst.prompt_text  # joined turns feed the tagger
    assert sum("messages" in r for r in rows) == len(multi)


def test_non_english_row(batch) -> None:
    languages = {inst.metadata.get("language", "en") for inst in batch}
    assert languages - {"en"}, "expected at least one non-English prompt"


def test_human_labels_balanced(batch) -> None:
    winners = Counter(inst.human_label.winner for inst in batch)
    # a batch where one position always wins would hide position bias
    assert winners["A"] >= len(batch) // 4 and winners["B"] >= len(batch) // 4, winners
    assert winners[None] >= 1  # at least one tie


def test_label_disagreement_share(batch, rows) -> None:
    disagree = [inst.id for inst in batch if inst.human_label != inst.lm_labels["gpt4"]]
    share = len(disagree) / len(batch)
    assert 0.05 <= share <= 0.30, (share, disagree)
    # tie_inconsistent is parsed as TIE; the raw row keeps the order-flip marker
    raw = Counter(r["lm_labels"]["gpt4"] for r in rows)
    assert set(raw) <= {"A", "B", "tie", "tie_inconsistent"}, raw
    assert all(inst.lm_labels["gpt4"] in (Label.A_BETTER, Label.B_BETTER, Label.TIE) for inst in batch)


def test_responses_realistic(batch) -> None:
    lengths = [len(inst.response_a) + len(inst.response_b) for inst in batch]
    assert min(lengths) >= 20
    assert sum(n > 800 for n in lengths) >= 5, "expected some long responses"
    for inst in batch:
        assert inst.response_a.strip() != inst.response_b.strip(), inst.id
