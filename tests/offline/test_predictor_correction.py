"""Expected-correction model: features, fit on synthetic pools, calibration metrics, ONNX parity."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hybridpref.common.signals import JudgeSignals
from hybridpref.offline.bundle import correction_fit
from hybridpref.offline.pools import Pool
from hybridpref.routing_model import correction as corr
from hybridpref_client.core.instances import PreferenceInstance


def _synthetic_pool(name: str, n: int, seed: int, kind: str) -> tuple[Pool, JudgeSignals]:
    """A pool where the judge is wrong mostly when it gave no verdict or flipped, humans rarely."""
    rng = np.random.default_rng(seed)
    ref = rng.choice([-1, 1], size=n).astype(np.int8)
    doubt = rng.random(n) < 0.3
    lm = np.where(doubt & (rng.random(n) < 0.5), 0, ref)
    lm = np.where(doubt & (lm != 0) & (rng.random(n) < 0.5), -ref, lm).astype(np.int8)
    lm = np.where(~doubt & (rng.random(n) < 0.05), -ref, lm).astype(np.int8)
    flip = doubt & (lm == 0) & (rng.random(n) < 0.7)
    human = np.where(rng.random(n) < 0.1, -ref, ref).astype(np.int8) if kind == "other_votes" else ref.copy()
    insts = [
        PreferenceInstance(
            f"{name}-{i}",
            f"prompt {i} " * int(rng.integers(1, 20)),
            "word " * int(rng.integers(1, 80)),
            "other " * int(rng.integers(1, 80)),
        )
        for i in range(n)
    ]
    pool = Pool(name, insts, human, ref, np.array([kind] * n, dtype=object), np.arange(n), "judge", Counter())
    agreement = np.where(doubt & (rng.random(n) < 0.6), 0.0, 0.2 + 0.8 * rng.random(n))
    return pool, JudgeSignals(lm, np.full(n, np.nan), flip, agreement)


@pytest.fixture(scope="module")
def fitted() -> tuple[corr.CorrectionModel, list[np.ndarray], list[Pool]]:
    made = [
        _synthetic_pool("p1", 300, 1, "other_votes"),
        _synthetic_pool("p2", 300, 2, "gold"),
        _synthetic_pool("p3", 300, 3, "other_votes"),
    ]
    pools = [p for p, _ in made]
    sigs = [s for _, s in made]
    feats = [corr.correction_features(p.instances, None, None, s) for p, s in made]
    return correction_fit.fit_correction_model(pools, feats, seed=0, signals=sigs), feats, pools


def test_features_shape_and_neutral_values() -> None:
    pool, sig = _synthetic_pool("p", 20, 0, "gold")
    sig = JudgeSignals(sig.label, np.full(20, 0.9), sig.order_flip, np.full(20, np.nan))
    x = corr.correction_features(pool.instances, None, None, sig)
    assert x.shape == (20, len(corr.FEATURE_NAMES)) and x.dtype == np.float32
    col = {n: j for j, n in enumerate(corr.FEATURE_NAMES)}
    assert np.all(x[:, col["agreement_missing"]] == 1) and np.allclose(x[:, col["agreement"]], corr.NEUTRAL_AGREEMENT)
    assert np.allclose(x[:, col["p_confidence"]], 0.8) and np.all(x[:, col["p_missing"]] == 0)
    assert np.all(x[:, col["measures_missing"]] == 1) and np.all(x[:, col["tags_missing"]] == 1)
    assert np.array_equal(x[:, col["lm_no_verdict"]], sig.label == 0)
    measures = np.full((20, 9), 0.25)
    tags = np.zeros((20, 90), dtype=np.uint8)
    x2 = corr.correction_features(pool.instances, measures, tags, sig)
    assert np.allclose(x2[:, col["bertscore"]], 0.25) and np.all(x2[:, col["measures_missing"]] == 0)
    with pytest.raises(ValueError):
        corr.correction_features(pool.instances, np.zeros((20, 3)), None, sig)


def test_fit_learns_doubt_and_reports_lopo(fitted: tuple) -> None:
    model, feats, pools = fitted
    lopo = model.metrics["leave_one_pool_out"]
    assert set(lopo["pools"]) == {"p1", "p2", "p3"}
    assert lopo["min_auroc"] > 0.75  # no-verdict / flips / low agreement carry the signal
    assert lopo["max_ece"] < 0.15
    gain = model.expected_gain(feats[0])
    p_lm, p_h = model.p_lm_wrong(feats[0]), model.p_human_wrong(feats[0])
    assert np.allclose(gain, p_lm - p_h) and np.all((p_lm >= 0) & (p_lm <= 1))
    no_verdict = feats[0][:, corr.FEATURE_NAMES.index("lm_no_verdict")] == 1
    assert p_lm[no_verdict].mean() > p_lm[~no_verdict].mean() + 0.3
    assert 0.03 < p_h.mean() < 0.2  # human wrong learned on other_votes rows only (~10% there)


def test_onnx_round_trip_matches_numpy(fitted: tuple) -> None:
    model, feats, _ = fitted
    loaded = corr.CorrectionModel.from_onnx(model.to_onnx())
    assert loaded._session is not None and loaded.feature_names == corr.FEATURE_NAMES
    x = np.vstack(feats)
    assert np.max(np.abs(loaded.probabilities(x) - model.probabilities(x))) < 1e-5
    assert loaded.card()["leave_one_pool_out"]["min_auroc"] == model.metrics["leave_one_pool_out"]["min_auroc"]
    with pytest.raises(ValueError):
        loaded.expected_gain(x[:, :5])


def test_reliability_and_constant_human_rate() -> None:
    ece, curve = correction_fit.reliability(np.array([0, 1, 1, 0]), np.array([0.05, 0.95, 0.95, 0.05]))
    assert ece == pytest.approx(0.05) and [b["count"] for b in curve] == [2, 2]
    pool, sig = _synthetic_pool("g", 200, 5, "gold")  # no other_votes rows: human wrong = 0 by construction
    feats = [corr.correction_features(pool.instances, None, None, sig)]
    model = correction_fit.fit_correction_model([pool], feats, seed=0, signals=[sig])
    assert np.all(model.p_human_wrong(feats[0]) < 1e-3)
    assert "leave_one_pool_out" not in model.metrics


def test_realised_corrections_count_fixes_breaks_and_ignore_tie_references() -> None:
    human = np.array([1, -1, 1, 1, 0, 1])
    lm = np.array([-1, -1, 0, 1, 1, 1])
    ref = np.array([1, 1, 1, -1, 1, 0])
    # fixed, both wrong, fixed (no verdict), both wrong, broken (human tie), tie reference
    assert correction_fit.realised_corrections(human, lm, ref).tolist() == [1, 0, 1, 0, -1, 0]


def test_transfer_ratios_compare_predicted_and_realised_on_held_out_pools(fitted: tuple) -> None:
    model, feats, pools = fitted
    transfer = model.metrics["leave_one_pool_out"]["transfer"]
    assert set(transfer["pools"]) == {"p1", "p2", "p3"}
    ratios = []
    for by_budget in transfer["pools"].values():
        assert set(by_budget) == {f"{b:g}" for b in correction_fit.TRANSFER_BUDGETS}
        for b, e in by_budget.items():
            assert e["routed"] == round(float(b) * 300)
            assert e["ratio"] == pytest.approx(e["realised"] / e["predicted"])
            ratios.append(e["ratio"])
    low, high = corr.transfer_range(model.metrics)
    assert (low, high) == (min(ratios), max(ratios)) and 0 < low <= high
    # the range travels inside the ONNX file the router loads
    assert corr.transfer_range(corr.CorrectionModel.from_onnx(model.to_onnx()).metrics) == (low, high)
    assert corr.transfer_range({}) is None
