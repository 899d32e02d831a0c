"""PPM fitting, candidate mixes and labels (no models loaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybridpref.offline.bundle.mixes import count_vectors, mix_labels, sample_mixes
from hybridpref.offline.bundle.ppm_fit import check_parity, cross_validate, fit_ridge, to_onnx
from hybridpref.routing_model.ppm import quadratic_features
from hybridpref_client.core.errors import InvalidInput


def _data(seed: int = 0, n: int = 300, v: int = 12):
    rng = np.random.default_rng(seed)
    tags = (rng.random((100, v)) < 0.3).astype(float)
    x = (rng.random((n, 100)) < rng.random((n, 1))).astype(float) @ tags / 100
    y = 0.6 + 0.05 * x[:, 0] - 1.0 * x[:, 1] * x[:, 2] + 0.5 * x[:, 3] ** 2 + rng.normal(scale=0.002, size=n)
    return x, y


def test_quadratic_ridge_recovers_a_quadratic():
    x, y = _data()
    model, alpha = fit_ridge(x, y, quadratic=True)
    assert np.allclose(model.quad, model.quad.T)
    assert np.sqrt(np.mean((model.predict(x) - y) ** 2)) < 0.004
    assert alpha > 0
    assert quadratic_features(x).shape[1] == 12 + 12 * 13 // 2


def test_cv_prefers_quadratic_on_quadratic_truth():
    x, y = _data(n=200)
    lin = cross_validate(x, y, "linear", folds=5, seed=0)
    quad = cross_validate(x, y, "quadratic", folds=5, seed=0)
    assert quad["cv_rmse"] < lin["cv_rmse"]
    assert quad["cv_spearman"] > 0.9
    assert cross_validate(x, y, "quadratic", folds=5, seed=0) == quad  # deterministic
    with pytest.raises(ValueError):
        cross_validate(x, y, "lightgbm", folds=5)


def test_onnx_export_parity_full_vocabulary(tmp_path: Path):
    rng = np.random.default_rng(3)
    from hybridpref.routing_model.ppm import QuadraticPPM

    q = rng.normal(scale=0.3, size=(90, 90))
    ppm = QuadraticPPM(0.6, rng.normal(scale=0.2, size=90), (q + q.T) / 2)
    to_onnx(ppm, tmp_path / "m.onnx")
    assert check_parity(ppm, tmp_path / "m.onnx", n=3000) <= 1e-5
    bad = QuadraticPPM(0.6, ppm.linear, ppm.quad * 1.01)  # parity check must catch a different model
    with pytest.raises(RuntimeError, match="parity"):
        check_parity(bad, tmp_path / "m.onnx")


def test_sample_mixes_deterministic_and_complete():
    rng = np.random.default_rng(0)
    tags = (rng.random((50, 20)) < 0.2).astype(np.uint8)
    routed, kinds = sample_mixes(tags, 60, seed=11)
    again, _ = sample_mixes(tags, 60, seed=11)
    assert np.array_equal(routed, again)
    assert not np.array_equal(routed, sample_mixes(tags, 60, seed=12)[0])
    assert kinds[:2] == ["all_lm", "all_human"] and not routed[0].any() and routed[1].all()
    assert {"walk", "uniform"} <= set(kinds)
    sizes = routed[2:].sum(1)
    assert sizes.min() >= 1 and sizes.max() <= 50
    counts = count_vectors(routed, tags)
    assert np.array_equal(counts[1], tags.sum(0)) and not counts[0].any()
    with pytest.raises(InvalidInput):
        sample_mixes(tags, 1, seed=0)


def test_walk_follows_tags():
    """A walk that picks b instances takes whole tag groups first: with one tag covering half the
    pool and budget = that half, some walks route exactly that group."""
    tags = np.zeros((40, 2), dtype=np.uint8)
    tags[:20, 0] = 1
    tags[20:, 1] = 1
    routed, kinds = sample_mixes(tags, 300, seed=0, walk_fraction=1.0)
    for row in routed[2:]:
        first = np.flatnonzero(row[:20]).size, np.flatnonzero(row[20:]).size
        assert min(first) == 0 or max(first) == 20  # one group is complete before the other starts


def test_mix_labels():
    human = np.array([1, -1, 0, 1], dtype=np.int8)
    lm = np.array([1, 1, -1, 0], dtype=np.int8)
    routed = np.array([[True, True, False, False], [False, False, True, True]])
    assert mix_labels(routed, human, lm).tolist() == [[1, -1, -1, 0], [1, 1, 0, 1]]
