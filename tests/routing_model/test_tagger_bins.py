"""Bin edges and the fixed reference distribution (the binning traps of the paper's first implementation)."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref.common.vocabulary import LENGTH_MEASURES, LEXICAL_MEASURES, NUM_LEXICAL_TAGS, TAG_NAMES
from hybridpref.routing_model.bins import EDGE_HIGH, EDGE_LOW, ReferenceBins, bin_of, percentile_rank
from hybridpref_client.core.errors import InvalidInput


def test_edges_exactly_at_0_third_two_thirds_1():
    assert EDGE_LOW == 1 / 3 and EDGE_HIGH == 2 / 3
    assert bin_of([0.0, 1 / 3, 2 / 3, 1.0]).tolist() == [0, 0, 1, 2]
    # just past each edge moves up one bin
    eps = 1e-12
    assert bin_of([1 / 3 + eps, 2 / 3 + eps]).tolist() == [1, 2]


def test_out_of_range_is_clipped_and_nan_gets_no_bin():
    assert bin_of([-0.5, 1.7, float("nan")]).tolist() == [0, 2, -1]


def test_percentile_rank_linear_ties_and_bounds():
    grid = np.array([0.0, 10.0, 20.0, 30.0, 40.0])  # quantiles at 0, .25, .5, .75, 1
    got = percentile_rank(np.array([-5.0, 0.0, 5.0, 20.0, 35.0, 40.0, 99.0]), grid)
    assert got.tolist() == pytest.approx([0.0, 0.0, 0.125, 0.5, 0.875, 1.0, 1.0])
    tied = np.array([0.0, 0.0, 0.0, 5.0, 10.0])  # three quantiles at 0: rank is their midpoint
    assert percentile_rank(np.array([0.0]), tied)[0] == pytest.approx(0.25)


def test_percentile_rank_is_monotone():
    grid = np.quantile(np.random.default_rng(0).exponential(50, 1000).round(), np.linspace(0, 1, 101))
    xs = np.linspace(-10, 500, 2001)
    assert np.all(np.diff(percentile_rank(xs, grid)) >= 0)


def _measures(**values: float) -> np.ndarray:
    row = np.zeros((1, len(LEXICAL_MEASURES)))
    for k, v in values.items():
        row[0, LEXICAL_MEASURES.index(k)] = v
    return row


def test_similarity_measures_bin_on_their_value():
    bins = ReferenceBins.default()
    for value, expected in [(0.0, "low"), (1 / 3, "low"), (0.5, "mid"), (2 / 3, "mid"), (0.9, "high"), (1.0, "high")]:
        bits = bins.tag_bits(_measures(bertscore=value, cosine_sim=value))[0]
        on = {TAG_NAMES[j] for j in np.flatnonzero(bits)}
        assert f"bertscore:{expected}" in on and f"cosine_sim:{expected}" in on


def test_length_bins_come_from_the_reference_not_the_batch():
    bins = ReferenceBins.default()
    # a batch of identical long prompts: all 'high', never re-ranked into thirds
    batch = np.repeat(_measures(prompt_len=10_000), 9, axis=0)
    bits = bins.tag_bits(batch)
    j = TAG_NAMES.index("prompt_len:high")
    assert bits[:, j].sum() == 9
    # the same value gets the same bin whatever else is in the batch
    mixed = np.vstack([_measures(prompt_len=30), _measures(prompt_len=5), _measures(prompt_len=5000)])
    alone = bins.tag_bits(_measures(prompt_len=30))
    assert np.array_equal(bins.tag_bits(mixed)[0], alone[0])


def test_every_measure_sets_exactly_one_bin():
    rng = np.random.default_rng(1)
    m = rng.uniform(0, 1, (50, len(LEXICAL_MEASURES)))
    for k in LENGTH_MEASURES:
        m[:, LEXICAL_MEASURES.index(k)] = rng.integers(0, 800, 50)
    bits = ReferenceBins.default().tag_bits(m)
    assert bits.shape == (50, NUM_LEXICAL_TAGS)
    assert np.all(bits.reshape(50, len(LEXICAL_MEASURES), 3).sum(-1) == 1)


def test_fit_json_round_trip_and_reference_edges():
    rng = np.random.default_rng(2)
    m = np.zeros((300, len(LEXICAL_MEASURES)))
    for k in LENGTH_MEASURES:
        m[:, LEXICAL_MEASURES.index(k)] = np.arange(300)
    fitted = ReferenceBins.fit(m, source="unit")
    again = ReferenceBins.from_json(fitted.to_json())
    assert again.source == "unit" and again.n_reference == 300
    assert again.fingerprint() == fitted.fingerprint() != ReferenceBins.default().fingerprint()
    for k in LENGTH_MEASURES:
        assert np.allclose(again.grids[k], fitted.grids[k])
    # uniform 0..299: value 99 is at rank 1/3 -> low; 100 -> mid; 200 -> high
    u = again.normalise(_measures(prompt_len=99.0))[0, LEXICAL_MEASURES.index("prompt_len")]
    assert u == pytest.approx(99 / 299)
    assert bin_of(
        again.normalise(np.vstack([_measures(prompt_len=v) for v in (99, 100, 200)]))[:, LEXICAL_MEASURES.index("prompt_len")]
    ).tolist() == [0, 1, 2]
    assert rng is not None


def test_bad_reference_is_invalid_input():
    with pytest.raises(InvalidInput):
        ReferenceBins.from_json("{not json")
    with pytest.raises(InvalidInput):
        ReferenceBins(grids={k: np.array([3.0, 1.0]) for k in LENGTH_MEASURES})
    with pytest.raises(InvalidInput):
        ReferenceBins.fit(np.zeros((1, len(LEXICAL_MEASURES))))


def test_packaged_reference_is_real():
    bins = ReferenceBins.default()
    assert bins.n_reference > 5000 and "shared/data" in bins.source
    assert bins.grids["prompt_len"][0] >= 1 and bins.grids["len_longer"][-1] > 500
