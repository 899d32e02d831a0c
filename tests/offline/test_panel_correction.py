"""Panel variants, the panel-invariant correction model and the online-learning core (issue 19).

Small synthetic pools written here (no shared data): three judge models recorded in both orders, a gold
reference, and judges that err more where the others disagree.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hybridpref.offline.bundle import panel_correction_fit as pcf
from hybridpref.offline.panels import panel_judges, panel_variants, restrict_judges
from hybridpref.offline.pools import Pool
from hybridpref.routing_model import online
from hybridpref.routing_model import panel_correction as pc
from hybridpref_client.core.instances import Label, PreferenceInstance

MODELS = ("J1", "J2", "J3")
_LAB = {1: Label.A_BETTER, -1: Label.B_BETTER}


def synthetic_pool(name: str, n: int, seed: int, judges: tuple[str, ...] = MODELS) -> Pool:
    """Gold reference; each judge right with probability 0.8 on easy rows, 0.4 on hard ones (30%), and
    on hard rows it flips with the presentation order 20% of the time; the first model also has a
    second prompt key (``J1/Q``), as LLMBar's GPT-4 does."""
    rng = np.random.default_rng(seed)
    ref = rng.choice([-1, 1], size=n).astype(np.int8)
    hard = rng.random(n) < 0.3
    insts = []
    for i in range(n):
        labels: dict[str, Label] = {}
        for j, model in enumerate(judges):
            for prompt in ("P", "Q") if j == 0 else ("P",):
                right = rng.random() < (0.4 if hard[i] else 0.8)
                v = int(ref[i] if right else -ref[i])
                other = -v if hard[i] and rng.random() < 0.2 else v
                labels[f"{model}/{prompt}/order_ab"] = _LAB[v]
                labels[f"{model}/{prompt}/order_ba"] = _LAB[other]
        insts.append(
            PreferenceInstance(
                f"{name}-{i}",
                "prompt " * int(rng.integers(2, 30)),
                "a " * int(rng.integers(1, 90)),
                "b " * int(rng.integers(1, 90)),
                lm_labels=labels,
            )
        )
    return Pool(
        name, insts, ref.copy(), ref.copy(), np.array(["gold"] * n, dtype=object), np.arange(n) // 2, f"{judges[0]}/P", Counter()
    )


@pytest.fixture(scope="module")
def pools() -> list[Pool]:
    return [synthetic_pool("a", 240, 1), synthetic_pool("b", 240, 2)]


def test_panel_variants_cover_every_primary_and_subset(pools: list[Pool]) -> None:
    pool = pools[0]
    assert panel_judges(pool) == ["J1/P", "J2/P", "J3/P"]  # one prompt per model
    variants = panel_variants(pool)
    # usual + 3 primaries x (1 + 2 + 1) subsets of the 2 others
    assert len(variants) == 1 + 3 * 4
    usual = variants[0]
    assert usual.usual and set(usual.others) == {"J1/Q", "J2/P", "J3/P"} and usual.pool is pool
    names = {v.name for v in variants}
    assert len(names) == len(variants) and "a:J2+1(J3)" in names and "a:J3+2(J1,J2)" in names
    for v in variants[1:]:
        assert v.pool.default_judge == v.primary and set(v.pool.judges) == {v.primary, *v.others}
        sig = v.pool.signals()
        assert np.isnan(sig.agreement).all() == (v.k == 0)
    with pytest.raises(ValueError):
        restrict_judges(pool, ["J2/P"], "J1/P")


def test_restricted_signals_match_a_direct_count(pools: list[Pool]) -> None:
    pool = pools[0]
    v = next(v for v in panel_variants(pool) if v.name == "a:J2+1(J3)")
    sig = v.pool.signals()
    direct = pool.signals("J2/P")  # the full pool: agreement over J1/P, J1/Q and J3/P
    assert np.array_equal(sig.label, direct.label) and np.array_equal(sig.order_flip, direct.order_flip)
    j3 = pool.signals("J3/P").label
    expect = (j3 == sig.label).astype(float)
    assert np.allclose(sig.agreement, expect)


def test_features_are_shares_whatever_the_panel_size(pools: list[Pool]) -> None:
    for v in panel_variants(pools[0]):
        x = pc.panel_features(v.pool.instances, v.pool.signals())
        col = {c: j for j, c in enumerate(pc.PANEL_FEATURES)}
        assert x.shape == (len(v.pool), len(pc.PANEL_FEATURES))
        assert np.all((x[:, col["disagree"]] >= 0) & (x[:, col["disagree"]] <= 1))
        assert np.all(x[:, col["any_other"]] == (1.0 if v.k or v.usual else 0.0))
        assert np.array_equal(x[:, col["no_verdict"]] > 0, v.pool.signals().label == 0)


@pytest.fixture(scope="module")
def model(pools: list[Pool]) -> pc.PanelCorrectionModel:
    return pcf.fit_for_pools(pools)


def test_fit_is_monotone_and_learns_disagreement(model: pc.PanelCorrectionModel, pools: list[Pool]) -> None:
    coef = model.lm.raw_coef()
    assert all(coef[c] >= 0 for c in pc.MONOTONE if c in coef)
    assert coef["disagree"] > 0.5  # the synthetic judges err where the others disagree
    for v in panel_variants(pools[0]):
        x = pc.panel_features(v.pool.instances, v.pool.signals())
        assert pc.check_monotone(model, x)
        p = model.probabilities(x)
        assert np.all(p[x[:, 0] > 0.5, 0] == 1.0)  # no verdict: wrong by rule
        assert np.all((p >= 0) & (p <= 1))


def test_monotone_constraint_binds_when_the_data_say_otherwise() -> None:
    rng = np.random.default_rng(3)
    n = 600
    x = np.zeros((n, len(pc.PANEL_FEATURES)))
    j = pc.PANEL_FEATURES.index("disagree")
    x[:, pc.PANEL_FEATURES.index("any_other")] = 1
    x[:, j] = rng.integers(0, 4, n) / 3
    y = rng.random(n) < 1 / (1 + np.exp(-(0.5 - 2.0 * x[:, j])))  # more disagreement, *fewer* errors
    s = pcf.TrainingSet("t", x, y, np.zeros(n, bool), np.zeros(n, bool))
    free = pcf.fit_panel_model([s], ("any_other", "disagree"), calibrate=False, nonneg=())
    tied = pcf.fit_panel_model([s], ("any_other", "disagree"), calibrate=False)
    assert free.lm.raw_coef()["disagree"] < -0.5
    assert tied.lm.raw_coef()["disagree"] == 0.0 and pc.check_monotone(tied, x)
    assert not pc.check_monotone(free, x)


def test_json_round_trip_predicts_the_same(model: pc.PanelCorrectionModel, pools: list[Pool]) -> None:
    import json

    x = pc.panel_features(pools[1].instances, pools[1].signals())
    again = pc.PanelCorrectionModel.from_json(json.loads(json.dumps(model.to_json())))
    assert np.allclose(again.probabilities(x), model.probabilities(x))
    bad = model.to_json() | {"feature_names": ["x"]}
    with pytest.raises(ValueError):
        pc.PanelCorrectionModel.from_json(bad)


def test_fallback_moves_routing_to_the_judges_doubt(model: pc.PanelCorrectionModel, pools: list[Pool]) -> None:
    from dataclasses import replace

    from hybridpref.router.strategies import signal_doubt

    x = pc.panel_features(pools[0].instances, pools[0].signals())
    far = replace(model, panels=model.panels + 10.0, fallback_distance=1.0)  # every training panel far away
    assert far.shrinkage(x) == 1.0 and model.shrinkage(x) == 0.0
    gain = far.expected_gain(x)
    doubt = signal_doubt(pools[0].signals())
    # same order as the judge's own doubt (strictly increasing in it)
    order = np.argsort(doubt, kind="stable")
    assert np.all(np.diff(gain[order]) >= -1e-12)


# ---------------------------------------------------------------- online learning


def test_refit_with_prior_moves_with_the_labels_and_stays_without(model: pc.PanelCorrectionModel, pools: list[Pool]) -> None:
    x = pc.panel_features(pools[0].instances, pools[0].signals())
    assert online.refit_with_prior(model, x[:0], np.zeros(0, bool)) is model
    rng = np.random.default_rng(5)
    shorter = x[:, pc.PANEL_FEATURES.index("lm_picked_shorter")] > 0
    y = np.where(shorter, rng.random(len(x)) < 0.9, rng.random(len(x)) < 0.1)  # this campaign: shorter = wrong
    weak = online.refit_with_prior(model, x, y, strength=1e6)
    strong = online.refit_with_prior(model, x, y, strength=1.0)
    assert abs(weak.lm.raw_coef()["lm_picked_shorter"]) < 1e-3
    assert strong.lm.raw_coef()["lm_picked_shorter"] > 1.0
    assert all(strong.lm.raw_coef()[c] >= 0 for c in pc.MONOTONE if c in strong.lm.columns)
    verdict = x[:, 0] < 0.5
    assert (
        online.log_loss(strong.p_lm_wrong(x[verdict], 0.0), y[verdict]).mean()
        < online.log_loss(model.p_lm_wrong(x[verdict], 0.0), y[verdict]).mean()
    )


def test_lineage_promotes_only_a_refit_that_held_out_labels_prefer(model: pc.PanelCorrectionModel, pools: list[Pool]) -> None:
    x = pc.panel_features(pools[1].instances, pools[1].signals())
    ids = [i.id for i in pools[1].instances]
    rng = np.random.default_rng(7)
    shorter = x[:, pc.PANEL_FEATURES.index("lm_picked_shorter")] > 0
    y = np.where(shorter, rng.random(len(x)) < 0.9, rng.random(len(x)) < 0.05)
    lineage = online.ModelLineage(model, strength=5.0)
    assert lineage.current.version == "bundle"
    few = lineage.propose(ids[:10], x[:10], y[:10])
    assert not few.promoted and lineage.current.version == "bundle"  # too few labels to check
    v = lineage.propose(ids, x, y)
    assert v.promoted and lineage.current is v and v.heldout_loss < v.bundle_loss
    # labels drawn from the bundle's own probabilities: a refit has nothing to learn, not promoted
    lineage2 = online.ModelLineage(model, strength=5.0)
    y2 = rng.random(len(x)) < model.p_lm_wrong(x, 0.0)
    v2 = lineage2.propose(ids, x, y2)
    assert [d["version"] for d in lineage2.describe()] == ["bundle", v2.version]
    assert (lineage2.current is v2) == v2.promoted


def test_dawid_skene_finds_the_careless_annotator() -> None:
    rng = np.random.default_rng(11)
    truth = rng.choice(["A", "B"], size=300)
    error = {"good1": 0.05, "good2": 0.1, "good3": 0.1, "careless": 0.4}
    votes = [
        (f"t{i}", w, (("B" if t == "A" else "A") if rng.random() < e else t))
        for i, t in enumerate(truth)
        for w, e in error.items()
    ]
    rates = online.annotator_error_rates(votes)
    assert rates["careless"] > 0.3 and max(rates[w] for w in ("good1", "good2", "good3")) < 0.17
    assert online.annotator_error_rates([("t1", "a", "A"), ("t2", "a", "B")]) == {}  # one vote per item


def test_with_human_rate_sets_the_mean(model: pc.PanelCorrectionModel) -> None:
    moved = online.with_human_rate(model, 0.3)
    assert moved.human_rate == 0.3 and moved.human.intercept > model.human.intercept


def test_exploration_mask_spends_the_share_at_random() -> None:
    priority = np.arange(100, dtype=float)
    human, explored = online.exploration_mask(priority, 20, 0.25, seed=1)
    assert human.sum() == 20 and explored.sum() == 5
    assert human[95:].all() and not explored[85:].any()  # the model's top 15, then 5 random among the rest
    again, _ = online.exploration_mask(priority, 20, 0.25, seed=1)
    assert np.array_equal(again, human)
    assert online.exploration_mask(priority, 20, 0.0, seed=1)[1].sum() == 0


def test_corrections_interval_narrows_and_covers_after_labels() -> None:
    rng = np.random.default_rng(13)
    calib = online.CorrectionsCalibrator()
    p = rng.uniform(0.1, 0.6, 60)
    before = calib.interval(p)
    covered = []
    for _batch in range(30):  # the campaign's annotators correct 1.4x what the model promised
        p = rng.uniform(0.1, 0.6, 60)
        nv = rng.random(60) < 0.2
        shown = calib.interval(p, nv)
        realised = rng.random(60) < np.clip(1.4 * p, 0, 1)
        if len(calib.strata[False].predicted) >= 200:
            covered.append(shown.covers(float(realised.sum())))
        calib.observe(p, realised, nv)
    after = calib.interval(p)
    assert (after.high - after.low) < (before.high - before.low) / 2
    assert np.mean(covered) >= 0.8
    r, se = calib.strata[False].fit(30)
    assert abs(r - 1.4) < 0.15 and se < 0.1


def test_bundle_file_round_trip(model: pc.PanelCorrectionModel, pools: list[Pool], tmp_path) -> None:  # noqa: ANN001
    assert pc.read_panel_correction(tmp_path) is None
    pcf.write_panel_correction(tmp_path, model)
    again = pc.read_panel_correction(tmp_path)
    x = pc.panel_features(pools[0].instances, pools[0].signals())
    assert again is not None and np.allclose(again.expected_gain(x), model.expected_gain(x))


def test_returned_labels_from_store_rows_feed_the_lineage(model: pc.PanelCorrectionModel, pools: list[Pool]) -> None:
    """Rows in the campaign store contract's shapes (Candidate, StoredDecision, [HumanLabel]; read by
    attribute) become refit inputs; majority of the votes, LM label names, exploration flags."""
    from types import SimpleNamespace as NS

    pool = pools[0]
    x = pc.panel_features(pool.instances, pool.signals())
    lm = pool.signals().label
    rows = []
    for i, inst in enumerate(pool.instances):
        name = {1: "A_BETTER", -1: "B_MUCH_BETTER", 0: "TIE"}[int(lm[i])]
        cand = NS(instance_id=inst.id, lm_label=name, features=dict(zip(pc.PANEL_FEATURES, x[i].tolist())))
        ref = "A" if pool.reference[i] == 1 else "B"
        other = "B" if ref == "A" else "A"
        votes = [
            NS(annotator="u1", preference=ref),
            NS(annotator="u2", preference=ref if i % 5 else other),
            NS(annotator="u3", preference="tie" if i % 7 == 0 else ref),
        ]
        rows.append((cand, NS(exploration=i % 10 == 0), votes if i % 4 else []))
    got = online.returned_labels(rows)
    labelled = [i for i in range(len(pool)) if i % 4]
    assert got.ids == [pool.instances[i].id for i in labelled]
    assert np.allclose(got.x, x[labelled]) and np.array_equal(got.lm, lm[labelled])
    # the majority is the reference, except where one vote each went to A, B and tie (no majority: 0)
    expect = np.where(np.array(labelled) % 35 == 0, 0, pool.reference[labelled])
    assert np.array_equal(got.human, expect) and (got.human == 0).any()
    assert got.exploration.sum() == sum(1 for i in labelled if i % 10 == 0) and len(got.votes) == 3 * len(labelled)
    lineage = online.ModelLineage(model)
    version = online.adapt(lineage, got)
    assert version.labels == int(((got.human != 0) & (got.x[:, 0] < 0.5)).sum())
    rates = online.annotator_error_rates(got.votes)
    assert set(rates) == {"u1", "u2", "u3"} and rates["u1"] < rates["u2"]
