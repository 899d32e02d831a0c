"""Mix scorers and the selection primitives the strategies are built on."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref.router.scoring import QuadraticScorer, mix_counts, unique_rows
from hybridpref.router.selection import density_order, fill_in_order, priority_order, top_indices
from hybridpref_client.core.errors import InvalidInput


@pytest.fixture
def case() -> tuple[np.ndarray, QuadraticScorer]:
    rng = np.random.default_rng(0)
    tags = (rng.random((40, 7)) < 0.35).astype(np.uint8)
    return tags, QuadraticScorer.random(7, seed=1, quad_scale=25.0)


def test_quadratic_score_is_the_formula(case) -> None:
    _, scorer = case
    counts = np.array([[3, 0, 1, 0, 0, 2, 5], [0] * 7], dtype=float)
    x = counts / 10
    expected = scorer.bias + x @ scorer.linear + np.einsum("ij,jk,ik->i", x, scorer.quad, x)
    np.testing.assert_allclose(scorer.score(counts, 10), expected)
    assert scorer.score(counts[1], 10)[0] == pytest.approx(scorer.bias)


def test_quad_is_symmetrised_without_changing_f() -> None:
    q = np.array([[0.0, 2.0], [0.0, 0.0]])
    scorer = QuadraticScorer(0.0, np.zeros(2), q)
    np.testing.assert_array_equal(scorer.quad, [[0.0, 1.0], [1.0, 0.0]])
    assert scorer.score(np.array([[1.0, 1.0]]), 1)[0] == pytest.approx(2.0)


def test_gains_are_score_differences_and_contributions_add_up(case) -> None:
    tags, scorer = case
    current = mix_counts(tags, np.arange(40) % 3 == 0)
    gains = scorer.gains(tags, current, 40)
    expected = scorer.score(current[None, :] + tags, 40) - scorer.score(current[None, :], 40)[0]
    np.testing.assert_allclose(gains, expected, atol=1e-12)
    np.testing.assert_allclose(scorer.gains(tags, None, 40), scorer.score(tags.astype(float), 40) - scorer.bias, atol=1e-12)
    contrib = scorer.contributions(tags, current, 40)
    np.testing.assert_allclose(contrib.sum(axis=1), gains, atol=1e-12)
    assert (contrib[tags == 0] == 0).all()


def test_unique_rows_roundtrip() -> None:
    rng = np.random.default_rng(1)
    tags = (rng.random((500, 90)) < 0.05).astype(np.uint8)
    tags[250:] = tags[:250]
    uniq, inverse = unique_rows(tags)
    assert len(uniq) <= 250
    np.testing.assert_array_equal(uniq[inverse], tags)


def test_width_and_pool_size_are_checked(case) -> None:
    tags, scorer = case
    with pytest.raises(InvalidInput):
        scorer.score(np.zeros((1, 6)), 10)
    with pytest.raises(InvalidInput) as exc:
        scorer.gains(tags, None, 0)
    assert exc.value.violations[0].field == "pool_size"


def test_top_indices_breaks_ties_by_lower_index() -> None:
    p = np.array([1.0, 3.0, 2.0, 3.0, np.nan, 2.0])
    assert top_indices(p, 3).tolist() == [1, 3, 2]
    assert top_indices(p, 0).tolist() == []
    assert top_indices(p, 10).tolist() == [1, 3, 2, 5, 0, 4]
    assert priority_order(p).tolist() == [1, 3, 2, 5, 0, 4]


def test_fill_in_order_skips_what_does_not_fit() -> None:
    costs = np.array([3.0, 5.0, 1.0, 1.0, 2.0])
    assert fill_in_order(np.arange(5), costs, 6.0).tolist() == [0, 2, 3]
    assert fill_in_order(np.arange(5), costs, 0.5).tolist() == []
    assert fill_in_order(np.arange(5), costs, 11.5).tolist() == [0, 1, 2, 3]
    # exact fit despite float rounding of the cumulative sum
    assert len(fill_in_order(np.arange(10), np.full(10, 0.1), 1.0)) == 10


def test_density_order_puts_good_value_first_and_harm_last() -> None:
    gains = np.array([1.0, 1.0, -0.5, 0.0, -0.1])
    costs = np.array([2.0, 0.5, 1.0, 1.0, 1.0])
    assert density_order(gains, costs).tolist() == [1, 0, 3, 4, 2]


@pytest.mark.parametrize("num_tags", [1, 8, 13, 90])
def test_packed_tags_products_equal_dense_ones(num_tags: int) -> None:
    from hybridpref.router.packed import PackedTags

    rng = np.random.default_rng(num_tags)
    tags = (rng.random((257, num_tags)) < 0.3).astype(np.uint8)
    v = rng.normal(size=num_tags)
    q = rng.normal(size=(num_tags, num_tags))
    packed = PackedTags(tags)
    assert packed.planes.nbytes == 257 * -(-num_tags // 8)
    t = tags.astype(float)
    np.testing.assert_allclose(packed.dot(v), t @ v, atol=1e-12)
    np.testing.assert_allclose(packed.quad_form(q), np.einsum("ij,jk,ik->i", t, q, t), atol=1e-10)
    np.testing.assert_allclose(PackedTags(tags.astype(bool)).dot(v), t @ v, atol=1e-12)
