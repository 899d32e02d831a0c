"""The paper-layout features reader (benchmark 2's input, ``benchmarks/paper_features.py``) maps
columns onto the canonical tags."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES
from hybridpref.router.budget import Budget, resolve_budget
from hybridpref.router.scoring import QuadraticScorer
from hybridpref.router.strategies import route
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import Label

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # a benchmark adapter, not installed
from paper_features import paper_rows_to_features, read_paper_features  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "router_paper_features.jsonl"


def tags_of(feats, i: int) -> set[str]:
    return {TAG_NAMES[j] for j in np.flatnonzero(feats.tags[i])}


def test_reads_every_column_onto_the_canonical_vocabulary() -> None:
    feats = read_paper_features(str(FIXTURE))
    assert feats.ids == ["p1", "p2", "3"]
    assert feats.tags.shape == (3, NUM_TAGS) and feats.tags.dtype == np.uint8
    first = tags_of(feats, 0)
    # bin edges: 0 -> low, 1/3 -> low, 2/3 -> mid, 1 -> high (nothing falls out of every bin)
    assert {"bertscore:low", "entity_sim:low", "rouge:mid", "cosine_sim:high"} <= first
    assert {
        "subject_of_expertise:Culinary arts",
        "subject_of_expertise:Chemistry",
        "languages:English",
        "expertise_level:general public",
        "open_endedness:low",
        "safety_concern:safe",
        "complexity_of_intents:simple",
        "format_constraints:present",
    } <= first
    assert "type_of_in_context_material:present" not in first
    second = tags_of(feats, 1)
    # case-insensitive options; the journalism subject is one canonical tag; the unknown one is counted
    assert {
        "subject_of_expertise:Law",
        "subject_of_expertise:Journalism, media studies and communication",
        "expertise_level:expert domain knowledge",
        "type_of_in_context_material:present",
        "prompt_len:high",
    } <= second
    assert feats.unparsed == {"subject_of_expertise": 1}
    # one bin per lexical measure where the value is known, none where it is missing
    assert feats.tags[:2, :27].sum(axis=1).tolist() == [9, 9]
    assert feats.tags[2].sum() == 0
    assert feats.pref_human.tolist() == [Label.A_MUCH_BETTER, Label.TIE, Label.UNSPECIFIED]
    assert feats.pref_gpt4.tolist() == [Label.A_BETTER, Label.B_MUCH_BETTER, Label.B_BETTER]


def test_length_bins_come_from_the_fixed_reference_not_the_batch() -> None:
    feats = read_paper_features(str(FIXTURE))
    alone = paper_rows_to_features([{"id": "x", "prompt_len": 2, "len_shorter": 5, "len_longer": 12, "token_len_diff": 7}])
    # same raw lengths -> same bins whatever else is in the batch (the paper re-ranked per subset)
    np.testing.assert_array_equal(alone.tags[0, 15:27], feats.tags[0, 15:27])


def test_missing_ids_are_reported_by_line() -> None:
    with pytest.raises(InvalidInput) as exc:
        paper_rows_to_features([{"id": "a"}, {"prompt": "no id"}])
    assert exc.value.violations[0].field == "line 2.id"


def test_routes_end_to_end_from_the_file() -> None:
    feats = read_paper_features(str(FIXTURE))
    scorer = QuadraticScorer.random(NUM_TAGS, seed=0)
    result = route(
        "simulated", feats.tags, resolve_budget(Budget.count(1), 3, None), scorer=scorer, seed=0, simulated_candidates=10
    )
    assert result.human_count == 1
