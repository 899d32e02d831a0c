"""A campaign's own correction model (hybridpref.router.adaptation) over the real campaign store (a SQLite file):
refit on the returned labels, promoted only when held-out returned labels say it is not worse, versioned, cached
until enough new votes arrive (or refitted in the background when labels arrive), Dawid-Skene where pairs have
several votes, and the expected-changes interval recalibrated on the campaign's realised changes.

The campaigns are synthetic and seeded: the judge errs where the campaign's own signal says (the LM picked the
shorter response, a column the bundle's model does not read), so a refit on the campaign's labels can learn what
the bundle cannot, and a campaign whose labels carry nothing learnable keeps the bundle's model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hybridpref.predictor.core import Predictor, default_bundle_path
from hybridpref.router.adaptation import CampaignModels
from hybridpref.router.model import RoutingModel
from hybridpref.routing_model.panel_correction import PANEL_FEATURES
from hybridpref.store.api import CampaignSpec, Candidate, HumanLabel
from hybridpref.store.sql import SqlCampaignStore

COL = {c: j for j, c in enumerate(PANEL_FEATURES)}


@pytest.fixture(scope="module")
def bundle() -> RoutingModel:
    return RoutingModel.from_data(Predictor(default_bundle_path()).routing_model())


@pytest.fixture
def store(tmp_path):
    s = SqlCampaignStore.open(f"sqlite:///{tmp_path / 'campaigns.db'}", upgrade=True)
    yield s
    s.close()


def synthetic_batch(prefix: str, n: int, rng: np.random.Generator, bundle: RoutingModel, signal: bool):
    """``n`` candidates with panel features and the truth: the LM label is A_BETTER; it is wrong (the truth is
    B) with P = sigmoid(-2.2 + 3.5 * lm_picked_shorter) when ``signal``, else 0.25 everywhere."""
    x = np.zeros((n, len(PANEL_FEATURES)))
    x[:, COL["any_other"]] = 1.0
    x[:, COL["disagree"]] = rng.choice([0.0, 1 / 3, 2 / 3], n, p=[0.6, 0.25, 0.15])
    x[:, COL["p_missing"]] = 1.0
    x[:, COL["lm_picked_shorter"]] = rng.random(n) < 0.4
    x[:, COL["abs_log_len_ratio"]] = np.abs(rng.normal(0.3, 0.3, n))
    x[:, COL["log_prompt_len"]] = rng.normal(3.0, 0.5, n)
    x[:, COL["word_overlap"]] = rng.uniform(0.2, 0.6, n)
    x[:, COL["log_len_shorter"]] = rng.normal(4.5, 0.6, n)
    logit = -2.2 + 3.5 * x[:, COL["lm_picked_shorter"]] if signal else np.full(n, np.log(0.25 / 0.75))
    wrong = rng.random(n) < 1 / (1 + np.exp(-logit))
    p = bundle.panel.model.p_lm_wrong(x)
    cands = [
        Candidate(
            instance_id=f"{prefix}{i}",
            prompt="p",
            response_a="a",
            response_b="b",
            score=float(p[i]),
            lm_label="A_BETTER",
            signals={"p_lm_wrong": float(p[i])},
            features={c: float(v) for c, v in zip(PANEL_FEATURES, x[i])},
        )
        for i in range(n)
    ]
    truth = np.where(wrong, "B", "A")
    return cands, truth


def run_campaign(
    store,
    bundle,
    name: str,
    *,
    batches: int,
    n: int,
    signal: bool,
    seed: int,
    annotators=("ann",),
    bad_annotator: str | None = None,
):
    """Route ``batches`` batches (every pair to humans) and return the votes of every pair."""
    rng = np.random.default_rng(seed)
    store.create_campaign(
        CampaignSpec(vendor="acme", name=name, budget_kind="count", budget_total=batches * n, votes_per_pair=len(annotators))
    )
    for b in range(batches):
        cands, truth = synthetic_batch(f"{name}-b{b}-", n, rng, bundle, signal)
        decided = store.decide_batch("acme", name, f"b{b}", cands, model_version=bundle.panel.version)
        assert all(d.human for d in decided)
        labels = []
        for cand, t in zip(cands, truth):
            for a in annotators:
                vote = t
                if a == bad_annotator and rng.random() < 0.45:
                    vote = "A" if t == "B" else "B"
                labels.append(HumanLabel(cand.instance_id, a, vote))
        store.submit_labels("acme", name, labels)


def test_a_campaign_with_a_learnable_signal_gets_a_promoted_versioned_model(store, bundle):
    models = CampaignModels(store, refit_every=10)
    store.create_campaign(CampaignSpec(vendor="acme", name="empty-first", budget_kind="count", budget_total=5))
    first = models.model_for("acme", "empty-first", bundle)
    assert first.version == bundle.panel.version and not first.adapted and first.labels == 0  # nothing back yet

    run_campaign(store, bundle, "learn", batches=4, n=60, signal=True, seed=1)
    model = models.model_for("acme", "learn", bundle)
    assert model.adapted and model.labels == 240
    assert model.version.startswith(bundle.panel.version + "+adapted-240@")
    assert model.proposal["promoted"] and model.proposal["heldout_loss"] <= model.proposal["bundle_loss"]
    # it learned the campaign's signal: the LM picking the shorter response now raises P(LM wrong) a lot
    x = np.zeros((2, len(PANEL_FEATURES)))
    x[:, COL["p_missing"]] = 1.0
    x[1, COL["lm_picked_shorter"]] = 1.0
    adapted, base = model.panel.model.p_lm_wrong(x), bundle.panel.model.p_lm_wrong(x)
    assert adapted[1] - adapted[0] > 0.3 and abs(base[1] - base[0]) < 0.05
    # the same labels give the same version (a restarted router records the same model)
    assert CampaignModels(store).model_for("acme", "learn", bundle).version == model.version


def test_labels_without_a_learnable_signal_keep_the_bundle_model(store, bundle):
    run_campaign(store, bundle, "noise", batches=3, n=60, signal=False, seed=2)
    model = CampaignModels(store).model_for("acme", "noise", bundle)
    assert model.labels == 180 and model.proposal["heldout_loss"] is not None
    assert model.adapted == model.proposal["promoted"]
    if not model.adapted:  # the refit was not better on held-out labels: the bundle's model keeps routing
        assert model.version == bundle.panel.version and model.panel.model is bundle.panel.model


def test_the_model_is_cached_until_enough_new_votes_arrive(store, bundle):
    models = CampaignModels(store, refit_every=25)
    run_campaign(store, bundle, "cache", batches=2, n=40, signal=True, seed=3)
    first = models.model_for("acme", "cache", bundle)
    assert models.refits == 1 and models.model_for("acme", "cache", bundle) is first and models.refits == 1
    rng = np.random.default_rng(9)
    cands, truth = synthetic_batch("cache-more-", 30, rng, bundle, True)
    store.submit_labels("acme", "cache", [])  # nothing
    store.decide_batch("acme", "cache", "b9", cands)  # budget spent: these are LM-routed (audit labels)
    store.submit_labels("acme", "cache", [HumanLabel(c.instance_id, "ann", t) for c, t in zip(cands[:20], truth[:20])])
    assert models.model_for("acme", "cache", bundle) is first  # 20 new votes < 25
    store.submit_labels("acme", "cache", [HumanLabel(c.instance_id, "ann", t) for c, t in zip(cands[20:], truth[20:])])
    second = models.model_for("acme", "cache", bundle)
    assert second is not first and models.refits == 2 and second.votes == first.votes + 30
    assert second.labels == first.labels + 30  # audit labels are labels too: the refit reads them


def test_labels_arriving_refit_in_the_background(store, bundle):
    models = CampaignModels(store, refit_every=1)
    run_campaign(store, bundle, "bg", batches=1, n=40, signal=True, seed=4)
    before = models.model_for("acme", "bg", bundle)
    rng = np.random.default_rng(5)
    cands, truth = synthetic_batch("bg-more-", 20, rng, bundle, True)
    store.decide_batch("acme", "bg", "b1", cands)
    store.submit_labels("acme", "bg", [HumanLabel(c.instance_id, "ann", t) for c, t in zip(cands, truth)])
    models.labels_arrived("acme", "bg")
    deadline = time.monotonic() + 30
    while models.current("acme", "bg") is before and time.monotonic() < deadline:
        time.sleep(0.05)
    after = models.current("acme", "bg")
    assert models.refits == 2 and after is not None and after.votes == before.votes + 20
    assert models.model_for("acme", "bg", bundle) is after and models.refits == 2  # routing found it fresh
    models.labels_arrived("acme", "nobody-routed-it")  # unknown here: nothing to do, no error
    models.close()


def test_dawid_skene_moves_p_human_wrong_to_the_campaigns_annotators(store, bundle):
    run_campaign(store, bundle, "votes", batches=2, n=60, signal=True, seed=6, annotators=("a1", "a2", "a3"), bad_annotator="a3")
    model = CampaignModels(store).model_for("acme", "votes", bundle)
    err = model.annotator_error
    assert set(err) == {"a1", "a2", "a3"} and err["a3"] > 0.3 > max(err["a1"], err["a2"])
    assert model.human_rate == pytest.approx((err["a1"] + err["a2"] + err["a3"]) / 3, abs=1e-9)
    x = np.zeros((1, len(PANEL_FEATURES)))
    x[:, COL["p_missing"]] = 1.0
    # P(human vote wrong) keeps its feature effects and moves on the logit scale from the bundle's training rate
    # to the campaign's rate
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    shift = logit(model.panel.model.p_human_wrong(x)[0]) - logit(bundle.panel.model.p_human_wrong(x)[0])
    assert shift == pytest.approx(logit(model.human_rate) - logit(bundle.panel.model.human_rate), abs=1e-6)
    assert "+" in model.version  # the routing model differs from the bundle's, so its version does


def test_expected_changes_interval_is_recalibrated_and_covers(store, bundle):
    run_campaign(store, bundle, "calib", batches=5, n=60, signal=True, seed=7)
    model = CampaignModels(store).model_for("acme", "calib", bundle)
    rng = np.random.default_rng(8)
    cands, truth = synthetic_batch("calib-next-", 120, rng, bundle, True)
    x = np.array([[c.features[f] for f in PANEL_FEATURES] for c in cands])
    p = model.panel.model.p_lm_wrong(x)
    nv = x[:, COL["no_verdict"]] > 0.5
    interval = model.expected_changes(p, nv)
    realised = float((truth == "B").sum())
    assert interval.low <= realised <= interval.high
    # the prior range (before labels) is far wider than the recalibrated interval
    from hybridpref.routing_model.online import CorrectionsCalibrator

    prior = CorrectionsCalibrator(prior_range=model.calibrator.prior_range).interval(p, nv)
    assert (interval.high - interval.low) < 0.6 * (prior.high - prior.low)
    assert "recalibrated on the campaign's own realised corrections" in model.interval_note(nv)
    assert "partly recalibrated" in model.interval_note()  # rows without a verdict: none came back yet
