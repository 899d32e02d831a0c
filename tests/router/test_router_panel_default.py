"""The default path with the panel correction model (issue 19): ``hybrid`` reads P(LM wrong) from the bundle's
``panel_correction.json`` (the ONNX correction model where a bundle has no panel model), the summary names the
model that routed, and the router runs the tagger only where the decision reads tags (a PPM strategy, ``hybrid``
inside the PPM's domain, a cost formula that needs expertise tags), unary and streamed, with the same decisions
as when every row is tagged."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_router_core import OFF_DOMAIN, SAMPLE, enrich_bundle, rehash

from hybridpref.predictor.core import Predictor
from hybridpref.router import strategies
from hybridpref.router.backends import judge_signals
from hybridpref.router.budget import Budget, resolve_budget
from hybridpref.router.core import RouteOptions, RouterCore, _cost_inputs
from hybridpref.router.strategies import strategy_spec
from hybridpref.routing_model.correction import correction_features
from hybridpref.routing_model.panel_correction import panel_features, read_panel_correction
from hybridpref.server.deadline import Deadline
from hybridpref.server.settings import Settings
from hybridpref_client.core.instances import read_jsonl


class CountingTagger:
    """The real fast tagger, counting the rows it was asked to tag."""

    def __init__(self, tagger):
        from tests.support.local_router import LocalTagger

        self.inner = LocalTagger(tagger)
        self.rows = 0
        self.calls = 0

    async def tag(self, instances, deadline):
        self.calls += 1
        self.rows += len(instances)
        return await self.inner.tag(instances, deadline)


@pytest.fixture(scope="module")
def sample():
    return read_jsonl(str(SAMPLE))


@pytest.fixture(scope="module")
def off_domain():
    return read_jsonl(str(OFF_DOMAIN))


@pytest.fixture(scope="module")
def tagger():
    from hybridpref.tagger.core import Tagger

    t = Tagger.for_profile("fast")
    t.load()
    return t


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tagger, sample):
    """The default bundle (with its panel model) whose PPM domain is the sample batch."""
    return enrich_bundle(tmp_path_factory.mktemp("panel") / "bundle", tagger, sample)


@pytest.fixture(scope="module")
def onnx_only(tmp_path_factory, bundle):
    """The same bundle without the panel model: the older ONNX correction model routes."""
    folder = tmp_path_factory.mktemp("onnx") / "bundle"
    shutil.copytree(bundle, folder)
    (folder / "panel_correction.json").unlink()
    rehash(folder)
    return folder


def make_core(tagger, folder) -> tuple[RouterCore, CountingTagger]:
    from hybridpref.judge.core import Judge
    from tests.support.local_router import LocalJudge, LocalModelSource

    counting = CountingTagger(tagger)
    core = RouterCore(
        Settings(), counting, LocalJudge(Judge.from_config("replay", default_judge="gpt4")), LocalModelSource(Predictor(folder))
    )
    return core, counting


def options(strategy: str = "hybrid", budget: Budget | None = None) -> RouteOptions:
    return RouteOptions(budget=budget or Budget.fraction(0.5), strategy=strategy_spec(strategy), seed=3)


def route(loop, core, instances, opts: RouteOptions):
    return loop.run(core.route(instances, opts, Deadline(60.0)))


def route_stream(loop, core, instances, opts: RouteOptions, chunk: int = 3):
    async def chunks():
        for start in range(0, len(instances), chunk):
            yield instances[start : start + chunk]

    return loop.run(core.route_stream(chunks(), opts, Deadline(60.0)))


def replay_signals(instances):
    """The judge signals the router computes from the replay judge (the recorded gpt4 labels)."""
    from hybridpref.judge.core import Judge
    from tests.support.local_router import LocalJudge

    judge = LocalJudge(Judge.from_config("replay", default_judge="gpt4"))
    import asyncio

    from hybridpref_client.core.instances import PositionMode

    judged = asyncio.run(
        judge.judge(instances, mode=PositionMode.UNSPECIFIED, template="", replay_judge="", seed=3, deadline=Deadline(30.0))
    )
    return judge_signals(judged, instances)


def test_default_strategy_routes_with_the_bundles_panel_model(background_loop, tagger, bundle, off_domain):
    core, counting = make_core(tagger, bundle)
    out = route(background_loop, core, off_domain, options())
    served = Predictor(bundle).routing_model()
    assert out.summary.correction_model == "panel-correction/1"
    assert out.summary.correction_version == served.panel_version and served.panel_version.startswith("panel-correction/1@")
    model = read_panel_correction(bundle)
    p = model.probabilities(panel_features(off_domain, replay_signals(off_domain)))
    np.testing.assert_allclose([d.expected_gain for d in out.decisions], p[:, 0] - p[:, 1], atol=1e-12)
    # outside the PPM's domain the default reads no tags: the tagger never ran
    assert counting.calls == 0 and out.stage_seconds["tag"] == 0.0
    assert all(m.score is None for m in out.summary.mixes)


def test_a_bundle_without_the_panel_model_routes_with_the_onnx_model(background_loop, tagger, onnx_only, off_domain):
    from hybridpref.routing_model import bundle as bundle_io
    from hybridpref.routing_model.correction import CorrectionModel

    core, counting = make_core(tagger, onnx_only)
    out = route(background_loop, core, off_domain, options())
    version = Predictor(onnx_only).info().bundle_version
    assert (out.summary.correction_model, out.summary.correction_version) == ("test", f"test@{version}")
    onnx, _ = bundle_io.read_correction(onnx_only)
    p = CorrectionModel.from_onnx(onnx).probabilities(correction_features(off_domain, None, None, replay_signals(off_domain)))
    np.testing.assert_allclose([d.expected_gain for d in out.decisions], p[:, 0] - p[:, 1], atol=1e-6)
    assert counting.calls == 0  # the test model reads no tagger column either


@pytest.mark.parametrize(
    "strategy, in_domain, tagged",
    [
        ("hybrid", True, True),  # the PPM breaks ties inside its domain: it reads tags
        ("hybrid", False, False),
        ("greedy", False, True),  # a PPM strategy always reads tags
        ("judge_aware", False, True),  # it ranks with the PPM when one is loaded
        ("judge_doubt", True, False),
        ("expected_gain", True, False),
        ("random", True, False),
    ],
)
def test_the_tagger_runs_only_where_the_decision_reads_tags(
    background_loop, tagger, bundle, sample, off_domain, strategy, in_domain, tagged
):
    batch = sample if in_domain else off_domain
    for streamed in (False, True):
        core, counting = make_core(tagger, bundle)
        go = route_stream if streamed else route
        out = go(background_loop, core, batch, options(strategy))
        assert (counting.rows == len(batch)) == tagged and (counting.rows == 0) == (not tagged), (strategy, streamed)
        if out.summary.domain is not None:
            assert out.summary.domain.in_domain == in_domain
        if not tagged:
            assert any("estimated from word counts" in w for w in out.summary.warnings)


def test_skipping_the_tagger_changes_no_decision(background_loop, tagger, bundle, off_domain, sample):
    """Untagged ``hybrid`` routes exactly as the strategy does on the full tag matrix (outside the PPM's
    domain the PPM is not read), unary and streamed alike."""
    core, _ = make_core(tagger, bundle)
    model = background_loop.run(core.models.routing_model(Deadline(5.0)))
    for batch in (off_domain, sample[:20] + off_domain):
        out = route(background_loop, core, batch, options())
        streamed = route_stream(background_loop, core, batch, options())
        assert [d.human for d in out.decisions] == [d.human for d in streamed.decisions]
        tags = tagger.tag(batch)
        from hybridpref.router.backends import RouterTags

        budget = resolve_budget(
            Budget.fraction(0.5), len(batch), None, **_cost_inputs(RouterTags(tags.tag_matrix, tags.measures.astype(np.float32)))
        )
        gain = np.array([d.expected_gain for d in out.decisions])
        direct = strategies.route(
            "hybrid", tags.tag_matrix, budget, scorer=model.scorer, seed=3, expected_gain=gain, ppm_in_domain=False
        )
        assert [d.human for d in out.decisions] == direct.human_mask.tolist()


def test_a_cost_budget_without_costs_is_tagged_for_the_expertise_level(background_loop, tagger, bundle, off_domain):
    core, counting = make_core(tagger, bundle)
    route(background_loop, core, off_domain, options(budget=Budget.cost(3.0)))
    assert counting.rows == len(off_domain)  # the formula's expertise multiplier comes from the analyzer's tags
    from dataclasses import replace

    costed = [replace(i, human_cost=1.0 + k % 3) for k, i in enumerate(off_domain)]
    core, counting = make_core(tagger, bundle)
    out = route(background_loop, core, costed, options(budget=Budget.cost(3.0)))
    assert counting.calls == 0 and sum(d.human_cost for d in out.decisions if d.human) <= 3.0
