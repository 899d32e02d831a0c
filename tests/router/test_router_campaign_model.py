"""Routing a campaign with its own correction model, through the router core (real fast tagger core, replay judge
core, the default bundle's predictor core) and the real campaign store (a SQLite file): every stored decision
records the version of the model that scored it, the bundle's panel model routes until the campaign's returned
labels promote a refit, then the refit routes (and its version is recorded and shown), and the summary carries the
campaign's expected label changes and model."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref.predictor.core import Predictor, default_bundle_path
from hybridpref.router.campaign import CampaignRoute, StoreProvider
from hybridpref.router.core import RouteOptions, RouterCore
from hybridpref.router.strategies import strategy_spec
from hybridpref.server.deadline import Deadline
from hybridpref.server.settings import Settings
from hybridpref.store.api import CampaignSpec, HumanLabel
from hybridpref.store.sql import SqlCampaignStore
from hybridpref_client.core.instances import Label, PreferenceInstance

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def instances(prefix: str, n: int, rng: np.random.Generator) -> tuple[list[PreferenceInstance], dict[str, str]]:
    """Pairs whose recorded judge ("gpt4") is wrong mostly where it picked the shorter response: a campaign's
    own signal, which the bundle's panel model does not read. Returns the pairs and the humans' votes."""
    out, votes = [], {}
    for i in range(n):
        la, lb = int(rng.integers(5, 60)), int(rng.integers(5, 60))
        text = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
        lm = "A" if rng.random() < 0.5 else "B"
        picked_shorter = (lm == "A") == (la < lb) and la != lb
        wrong = rng.random() < (0.8 if picked_shorter else 0.08)
        votes[f"{prefix}{i}"] = ("B" if lm == "A" else "A") if wrong else lm
        out.append(
            PreferenceInstance(
                id=f"{prefix}{i}",
                prompt=f"question {prefix}{i}: " + text(8),
                response_a=text(la),
                response_b=text(lb),
                lm_labels={"gpt4": Label.A_BETTER if lm == "A" else Label.B_BETTER},
            )
        )
    return out, votes


@pytest.fixture(scope="module")
def tagger():
    from hybridpref.tagger.core import Tagger

    t = Tagger.for_profile("fast")
    t.load()
    return t


@pytest.fixture
def core(tmp_path, tagger):
    from hybridpref.judge.core import Judge
    from tests.support.local_router import LocalJudge, LocalModelSource, LocalTagger

    store = SqlCampaignStore.open(f"sqlite:///{tmp_path / 'campaigns.db'}", upgrade=True)
    core = RouterCore(
        Settings(),
        LocalTagger(tagger),
        LocalJudge(Judge.from_config("replay", default_judge="gpt4")),
        LocalModelSource(Predictor(default_bundle_path())),
        campaigns=StoreProvider(store=store),
    )
    yield core, store
    store.close()


def route(loop, core: RouterCore, batch, name: str, batch_id: str):
    options = RouteOptions(
        budget=None, strategy=strategy_spec("hybrid"), seed=1, campaign=CampaignRoute("acme", name, batch_id, "count")
    )
    return loop.run(core.route(batch, options, Deadline(60.0)))


def test_a_campaign_routes_with_its_adapted_model_once_its_labels_say_so(background_loop, core):
    core, store = core
    rng = np.random.default_rng(3)
    store.create_campaign(CampaignSpec(vendor="acme", name="c", budget_kind="count", budget_total=400))
    bundle_version = Predictor(default_bundle_path()).routing_model().panel_version
    versions = []
    for b in range(3):
        batch, votes = instances(f"b{b}-", 70, rng)
        out = route(background_loop, core, batch, "c", f"b{b}")
        versions.append(out.summary.correction_version)
        assert out.summary.correction_model == "panel-correction/1"
        assert out.campaign is not None and out.campaign.model["version"] == out.summary.correction_version
        assert (
            out.campaign.expected_changes is not None and out.campaign.expected_changes.low <= out.campaign.expected_changes.high
        )
        assert out.stage_seconds["tag"] == 0.0  # out of the PPM's domain: the campaign path does not tag either
        humans = [d.id for d in out.decisions if d.human]
        assert humans  # the budget covers the first batches
        store.submit_labels("acme", "c", [HumanLabel(i, "ann", votes[i]) for i in humans])
    # the first batch was routed before any label: the bundle's model; once the labels promoted a refit, it routes
    assert versions[0] == bundle_version
    assert versions[-1].startswith(bundle_version + "+adapted-") and versions[-1] != versions[1]
    recorded = {(d.batch_id, d.model_version) for _, d, _ in store.returned_labels("acme", "c")}
    assert recorded == {(f"b{b}", v) for b, v in enumerate(versions)}  # each decision row names its model
    current = core.adaptation.current("acme", "c")
    assert current is not None and current.adapted and current.version == versions[-1]
    note = [w for w in out.summary.warnings if w.startswith("campaign: routed by adapted model")]
    assert note and versions[-1] in note[0]
    # without the campaign the bundle's model routes: a campaign's labels never leak into other routing
    from hybridpref.router.budget import Budget

    plain = RouteOptions(budget=Budget.fraction(0.25), strategy=strategy_spec("hybrid"), seed=1)
    assert background_loop.run(core.route(batch, plain, Deadline(60.0))).summary.correction_version == bundle_version
