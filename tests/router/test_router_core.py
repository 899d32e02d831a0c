"""RouterCore with in-process backends (real tagger core, replay judge core, predictor core): every
strategy runs in process on the served routing model; the summary's numbers carry intervals; an
off-domain batch is flagged; the routing model is fetched once per bundle version and refreshed after
the predictor's hot reload (real predictor over gRPC)."""

from __future__ import annotations

import io
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT

from hybridpref.predictor.core import Predictor, default_bundle_path
from hybridpref.router.backends import JudgedBatch, judge_signals
from hybridpref.router.core import RouteOptions, RouterCore
from hybridpref.routing_model import bundle as bundle_io
from hybridpref.server.deadline import Deadline
from hybridpref.server.settings import Settings
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import Label, read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"
OFF_DOMAIN = FIXTURES / "router_off_domain.jsonl"


def rehash(folder: Path, **metrics) -> str:
    """Rewrite metrics.json with ``metrics`` added and the manifest over it -> the new bundle version."""
    data = bundle_io.read_json(folder, "metrics.json")
    data.update(metrics)
    bundle_io.write_json(folder / "metrics.json", data)
    manifest = bundle_io.read_json(folder, "manifest.json")
    return bundle_io.finalise(folder, {k: v for k, v in manifest.items() if k not in ("format", "bundle_version", "files")})


def correction_onnx() -> bytes:
    """A small hand-set correction model: the LM is wrong more often on ties / order flips / low agreement."""
    from hybridpref.routing_model.correction import FEATURE_NAMES, CorrectionModel, _Logistic

    f = len(FEATURE_NAMES)
    coef_lm = np.zeros(f)
    for name, w in (("lm_no_verdict", 1.5), ("order_flip", 1.0), ("agreement", -1.0), ("word_overlap", 0.3)):
        coef_lm[FEATURE_NAMES.index(name)] = w
    lm = _Logistic(np.zeros(f), np.ones(f), coef_lm, -1.2)
    human = _Logistic(np.zeros(f), np.ones(f), np.zeros(f), -2.0)
    return CorrectionModel(lm, human, FEATURE_NAMES, {"leave_one_pool_out": {"auroc": 0.7, "ece": 0.03}}).to_onnx()


@pytest.fixture(scope="module")
def sample():
    return read_jsonl(str(SAMPLE))


@pytest.fixture(scope="module")
def tagger():
    from hybridpref.tagger.core import Tagger

    t = Tagger.for_profile("fast")
    t.load()
    return t


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tagger, sample):
    return enrich_bundle(tmp_path_factory.mktemp("routing") / "bundle", tagger, sample)


def batch_features(tagger, rows) -> np.ndarray:
    from hybridpref.router.backends import RouterTags
    from hybridpref.router.core import text_features

    batch = tagger.tag(rows)
    return text_features(rows, RouterTags(batch.tag_matrix, batch.measures.astype(np.float32)))


def enrich_bundle(folder: Path, tagger, sample) -> Path:
    """The default bundle plus a correction model, a domain.json (hybridpref.routing_model.domain's format)
    with the sample batch as the PPM's one training pool and a threshold of half the off-domain
    fixture's distance, and a residual std."""
    from hybridpref.routing_model import domain as domain_mod
    from hybridpref.routing_model.correction import FEATURE_NAMES

    shutil.copytree(default_bundle_path(), folder)
    for name in ("correction.onnx", "correction.json", "domain.json"):
        (folder / name).unlink(missing_ok=True)
    (folder / "correction.onnx").write_bytes(correction_onnx())
    bundle_io.write_json(folder / "correction.json", {"version": "test", "feature_names": list(FEATURE_NAMES)})
    stats = domain_mod.pool_stats(batch_features(tagger, sample))
    domain = {
        "features": list(domain_mod.DOMAIN_FEATURES),
        "distance": domain_mod.DISTANCE,
        "ppm_pools": ["sample"],
        "pools": {"sample": stats},
        "threshold": 1.0,
    }
    off_distance = domain_mod.distance(batch_features(tagger, read_jsonl(str(OFF_DOMAIN))), stats)
    assert off_distance > 1.0  # the off-domain fixture really differs from the sample batch
    bundle_io.write_json(folder / "domain.json", {**domain, "threshold": off_distance / 2})
    rehash(folder, ppm_residual_std=0.02)
    return folder


def make_core(tagger, bundle: Path) -> RouterCore:
    from hybridpref.judge.core import Judge
    from tests.support.local_router import LocalJudge, LocalModelSource, LocalTagger

    judge = Judge.from_config("replay", default_judge="gpt4")
    return RouterCore(Settings(), LocalTagger(tagger), LocalJudge(judge), LocalModelSource(Predictor(bundle)))


def route(background_loop, core: RouterCore, instances, strategy: str, budget=0.25, **kw):
    """Route through the core as the servicer does: "" = the default strategy."""
    from hybridpref.router.budget import Budget
    from hybridpref.router.strategies import DEFAULT_STRATEGY, strategy_spec

    options = RouteOptions(budget=Budget.fraction(budget), strategy=strategy_spec(strategy or DEFAULT_STRATEGY), seed=3, **kw)
    return background_loop.run(core.route(instances, options, Deadline(60.0)))


def test_core_has_no_grpc():
    """The router core and everything it runs import no grpc (the gRPC clients live in downstream.py,
    the proto conversions in servicer.py; spill.py uses protobuf only as its spill-file format)."""
    import ast

    strategies = tuple(f"strategies/{f.stem}" for f in (ROOT / "services" / "hybridpref" / "router" / "strategies").glob("*.py"))
    core = (
        "core",
        "backends",
        "model",
        "summary",
        "explain",
        *strategies,
        "budget",
        "scoring",
        "selection",
        "packed",
        "spill",
        "limits",
    )
    for name in core:
        tree = ast.parse((ROOT / "services" / "hybridpref" / "router" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            bad = [m for m in modules if m.split(".")[0] in ("grpc", "grpc_health") or m.endswith("_pb2_grpc")]
            # limits.py's one lazy grpc import serves JudgeInfoCache, which only the gRPC judge client uses
            assert not bad or (name == "limits" and bad == ["grpc"]), (name, bad)


def test_default_strategy_judges_first_and_summarises_honestly(background_loop, tagger, bundle, sample):
    from hybridpref.router.strategies import DEFAULT_STRATEGY

    core = make_core(tagger, bundle)
    out = route(background_loop, core, sample, "")
    assert out.strategy == DEFAULT_STRATEGY
    s = out.summary
    gains = np.array([d.expected_gain for d in out.decisions])
    assert np.isfinite(gains).all() and gains.std() > 0  # the correction model ran on every row
    mixes = {m.mix: m for m in s.mixes}
    assert [m.mix for m in s.mixes] == ["chosen", "all_human", "all_lm", "random"]
    for name in ("chosen", "all_human", "random"):
        est = mixes[name].score
        assert est is not None and est.low < est.value < est.high
        assert est.high - est.low == pytest.approx(2 * 1.6449 * 0.02, rel=1e-3)  # 90% interval from the residual std
    assert mixes["all_lm"].score is None and mixes["all_lm"].score_note == "batch_independent"
    chosen = [d for d in out.decisions if d.human]
    assert mixes["chosen"].corrections.value == pytest.approx(sum(d.expected_gain for d in chosen))
    assert mixes["all_human"].corrections.value == pytest.approx(gains.sum())
    assert mixes["all_lm"].corrections.value == 0.0
    assert mixes["random"].corrections.value == pytest.approx(gains.sum() * len(chosen) / len(sample))
    for m in s.mixes[:2]:
        assert m.corrections.low < m.corrections.value < m.corrections.high
    assert s.domain is not None and s.domain.in_domain and s.domain.nearest_pool == "sample"
    assert not any("out of domain" in w or "outside its domain" in w for w in s.warnings)
    # expected_gain routes the largest expected corrections: the routed ones are the top of the list
    routed = sorted((d.expected_gain for d in chosen), reverse=True)
    assert min(routed) >= sorted(gains, reverse=True)[len(chosen) - 1] - 1e-6
    # Its decisions are explained by the correction model's features (issue 18 item 13): the largest log-odds
    # terms of P(LM wrong), largest first, and a reason line with the expected gain and its rank. This bundle
    # routes with its panel correction model (issue 19), so the features are the panel model's.
    from hybridpref.routing_model.panel_correction import PANEL_FEATURES as FEATURE_NAMES

    order = np.argsort(-np.array([d.gain for d in out.decisions]), kind="stable")
    rank = {out.decisions[i].id: r + 1 for r, i in enumerate(order)}
    for d in out.decisions:
        assert 1 <= len(d.top_tags) <= 3 and {t for t, _ in d.top_tags} <= set(FEATURE_NAMES), d.top_tags
        assert all(v != 0 for _, v in d.top_tags)  # only features the model reads
        magnitudes = [abs(v) for _, v in d.top_tags]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert d.reason.startswith(("HUMAN" if d.human else "LM") + ": expected corrections"), d.reason
        assert f"rank {rank[d.id]} of {len(sample)}" in d.reason and "P(LM wrong)" in d.reason
    flipped = [d for d in out.decisions if d.judge_order_inconsistent]
    assert all("flipped" in d.reason for d in flipped)
    assert out.bundle_version == Predictor(bundle).info().bundle_version


def test_ppm_strategies_run_in_process_on_the_served_form(background_loop, tagger, bundle, sample):
    from hybridpref.router import strategies
    from hybridpref.router.budget import Budget, resolve_budget

    core = make_core(tagger, bundle)
    out = route(background_loop, core, sample, "greedy")
    model = background_loop.run(core.models.routing_model(Deadline(5.0)))
    tags = tagger.tag(sample).tag_matrix
    direct = strategies.route(
        "greedy",
        tags,
        resolve_budget(Budget.fraction(0.25), len(sample), None, **_costs(tagger, sample)),
        scorer=model.scorer,
        seed=3,
    )
    assert [d.human for d in out.decisions] == direct.human_mask.tolist()
    # greedy does not judge first: expected gains only where the judge labelled (the LM-routed rows)
    assert all((d.expected_gain is None) == d.human for d in out.decisions)
    assert all(d.reason.startswith(("HUMAN" if d.human else "LM") + ": PPM gain") for d in out.decisions)
    assert all(d.top_tags for d in out.decisions)  # PPM gains explained in process
    assert {m.mix: m.corrections for m in out.summary.mixes}["chosen"] is None


def _costs(tagger, sample):
    from hybridpref.router.backends import RouterTags
    from hybridpref.router.core import _cost_inputs

    batch = tagger.tag(sample)
    return _cost_inputs(RouterTags(batch.tag_matrix, batch.measures.astype(np.float32)))


def test_off_domain_batch_is_flagged(background_loop, tagger, bundle):
    core = make_core(tagger, bundle)
    out = route(background_loop, core, read_jsonl(str(OFF_DOMAIN)), "", budget=0.5)
    s = out.summary
    assert s.domain is not None and not s.domain.in_domain and s.domain.distance > s.domain.threshold
    assert any(w.startswith("out of domain") for w in s.warnings)
    assert any("routed by the expected-correction model alone" in w for w in s.warnings)
    assert all(m.score is None and m.score_note in ("out_of_domain", "batch_independent") for m in s.mixes)
    assert {m.mix: m for m in s.mixes}["chosen"].corrections is not None  # the correction model still answers


def test_uncalibrated_bundle_shows_no_score(background_loop, tagger, sample, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), folder)
    metrics = bundle_io.read_json(folder, "metrics.json")
    metrics.pop("ppm_residual_std", None)
    metrics.get("served", {}).pop("ppm_residual_std", None)
    bundle_io.write_json(folder / "metrics.json", metrics)
    rehash(folder)
    core = make_core(tagger, folder)
    s = route(background_loop, core, sample[:12], "random").summary
    assert all(m.score is None for m in s.mixes) and {m.score_note for m in s.mixes} == {"uncalibrated"}
    assert any(w.startswith("uncalibrated") for w in s.warnings)


def test_default_strategy_needs_a_correction_model(background_loop, tagger, sample, tmp_path):
    from hybridpref_client.core.errors import NotReady

    folder = tmp_path / "old"
    shutil.copytree(default_bundle_path(), folder)
    for name in ("correction.onnx", "correction.json", "panel_correction.json"):
        (folder / name).unlink(missing_ok=True)
    rehash(folder)  # a bundle built before either correction model
    core = make_core(tagger, folder)
    with pytest.raises(NotReady, match="expected-correction model"):
        route(background_loop, core, sample[:8], "expected_gain")
    assert len(route(background_loop, core, sample[:8], "judge_doubt").decisions) == 8  # needs no model


def test_judge_signals_from_answers(sample):
    rows = sample[:4]
    judged = JudgedBatch(
        np.array([Label.A_BETTER, Label.B_MUCH_BETTER, Label.TIE, Label.A_BETTER]),
        np.array([0.9, 0.8, 0.4, 0.3]),
        np.array([False, False, False, True]),
        np.array([np.nan, 0.1, np.nan, np.nan]),
        "learned:test",
    )
    sig = judge_signals(judged, rows)
    assert sig.label.tolist() == [1, -1, 0, 0]  # an order flip is no verdict
    assert sig.p_a[0] == pytest.approx(0.9) and sig.p_a[1] == pytest.approx(0.1) and sig.p_a[2] == pytest.approx(0.5)
    assert sig.order_flip.tolist() == [False, False, False, True]
    # the live judge is not one of the recorded ones: agreement with the recorded gpt4 label
    recorded = [Label(r.lm_labels["gpt4"]).winner for r in rows]
    expect = [float(("A" if s > 0 else "B" if s < 0 else None) == w) for s, w in zip(sig.label, recorded)]
    assert sig.agreement.tolist() == expect
    replay = judge_signals(JudgedBatch(judged.labels, judged.confidence, judged.inconsistent, None, "replay:gpt4"), rows)
    assert np.isnan(replay.p_a).all() and np.isnan(replay.agreement).all()  # no probability; no *other* judge recorded


def test_model_fetched_once_per_version_and_refreshed_on_reload(background_loop, tmp_path):
    """A real predictor over gRPC with a watched bundle folder."""
    from hybridpref.predictor.servicer import predictor_handle
    from hybridpref.router.downstream import PredictorModelClient
    from hybridpref.server.server import start_service

    folder = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), folder)
    settings = Settings(predictor={"bundle_path": str(folder), "bundle_watch_s": 0.1})
    running = background_loop.run(start_service(predictor_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    client = PredictorModelClient(running.address, settings)
    try:
        first = background_loop.run(client.routing_model(Deadline(5.0)))
        again = background_loop.run(client.routing_model(Deadline(5.0)))
        assert again is first and client.cache.builds == 1
        assert first.scorer is not None and first.scorer.quadratic_form()[1].shape == (90,)
        version = rehash(folder, ppm_residual_std=0.031)  # a new bundle version in place: the watcher reloads it
        deadline = time.monotonic() + 20
        while (model := background_loop.run(client.routing_model(Deadline(5.0)))).bundle_version != version:
            assert time.monotonic() < deadline, "the router never saw the reloaded bundle"
            time.sleep(0.1)
        assert client.cache.builds == 2 and model.residual_std == pytest.approx(0.031)
        np.testing.assert_allclose(model.scorer.quadratic_form()[2], first.scorer.quadratic_form()[2])
    finally:
        background_loop.run(client.close())
        background_loop.run(running.stop(0.2))


def test_cli_prints_every_warning():
    from rich.console import Console

    from hybridpref.cli.route import print_summary
    from hybridpref_client.client import RouteResult

    stream = io.StringIO()
    summary = {
        "strategy": "expected_gain",
        "interval_level": 0.9,
        "warnings": ["out of domain: far away", "judge unsure"],
        "correction_model": "panel-correction/1",
        "correction_model_version": "panel-correction/1@abc123",
        "mixes": {
            "chosen": {"human_count": 3, "predicted_score": {"value": 0.7, "low": 0.66, "high": 0.74}},
            "all_lm": {"human_count": 0, "score_note": "batch_independent"},
        },
    }
    print_summary(Console(file=stream, width=200), RouteResult([], summary, "r1"))
    text = stream.getvalue()
    assert "warning: out of domain: far away" in text and "warning: judge unsure" in text
    assert "0.7000 [0.6600, 0.7400] (90%)" in text and "not shown (batch independent)" in text
    assert "panel-correction/1@abc123" in text  # which correction model routed the batch


def test_fast_explanations_match_the_reference_definition():
    """top_tags (float32 chunks, k arg-max passes) = the definition: each row's per-tag split of its gain
    against the chosen mix without it (``QuadraticScorer.contributions``), largest |value| first, ties to
    the lower tag, -1 / 0 padding."""
    from hybridpref.router.explain import top_tags
    from hybridpref.router.scoring import QuadraticScorer, mix_counts

    rng = np.random.default_rng(4)
    tags = (rng.random((300, 90)) < 0.15).astype(np.uint8)
    tags[:5] = 0  # rows without tags: padded
    mask = rng.random(300) < 0.3
    scorer = QuadraticScorer.random(90, seed=2)
    idx, val = top_tags(scorer, tags, mask, 4)
    counts = mix_counts(tags, mask)
    ref_idx, ref_val = np.full((300, 4), -1), np.zeros((300, 4))
    for i, (row, routed) in enumerate(zip(tags, mask)):
        contrib = scorer.contributions(row[None, :], counts - row if routed else counts, 300)[0]
        order = [j for j in np.lexsort((np.arange(90), -np.abs(contrib)))[:4] if contrib[j] != 0]
        ref_idx[i, : len(order)], ref_val[i, : len(order)] = order, contrib[order]
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(val, ref_val, rtol=1e-4, atol=1e-9)
    assert (idx[:5] == -1).all()


def test_replayed_signals_equal_the_recorded_ones_the_model_learned_from(background_loop, tmp_path):
    """Served signals (judge answers + recorded lm_labels) = ``recorded_signals`` (what the correction
    model trains on), for plain and per-order (LLMBar-style) recorded judges. Checked on 400 rows of the
    shared PandaLM and LLMBar pools as well (identical labels, flips and agreement)."""
    from hybridpref.common.signals import recorded_signals
    from hybridpref.judge.core import Judge
    from hybridpref_client.core.instances import PositionMode
    from tests.support.local_router import LocalJudge

    rows = [
        ({"j1": "A", "j2/x/order_ab": "A", "j2/x/order_ba": "B"}),
        ({"j1": "B", "j2/x/order_ab": "B", "j2/x/order_ba": "B"}),
        ({"j1": "tie", "j2/x/order_ab": "A", "j2/x/order_ba": "A"}),
        ({"j1": "tie_inconsistent", "j2/x/order_ab": "B"}),
    ]
    path = tmp_path / "two_judges.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": str(i), "prompt": "p", "response_a": "a", "response_b": "b", "lm_labels": labels}) + "\n"
            for i, labels in enumerate(rows)
        )
    )
    instances = read_jsonl(str(path))
    for key in ("j1", "j2/x"):
        judge = LocalJudge(Judge.from_config("replay", default_judge=key))
        judged = background_loop.run(
            judge.judge(instances, mode=PositionMode.BOTH, template="", replay_judge="", seed=0, deadline=Deadline())
        )
        served, recorded = judge_signals(judged, instances), recorded_signals(instances, key)
        assert served.label.tolist() == recorded.label.tolist() and served.order_flip.tolist() == recorded.order_flip.tolist()
        np.testing.assert_array_equal(served.agreement, recorded.agreement)
        assert np.isfinite(served.agreement).all() and np.isnan(served.p_a).all()


def test_the_servicer_resolves_the_default_once_and_checks_options_together():
    from prometheus_client import CollectorRegistry

    from hybridpref.router.servicer import RouterServicer, options_from_proto
    from hybridpref.router.strategies import strategy_spec
    from hybridpref.server.metrics import Metrics
    from hybridpref.server.settings import LimitsSettings
    from hybridpref.v1 import common_pb2, router_pb2

    limits, greedy = LimitsSettings(), strategy_spec("greedy")
    config = router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.5))
    options = options_from_proto(config, greedy, limits)
    assert options.strategy is greedy and (options.budget.kind, options.budget.value) == ("fraction", 0.5)
    config.strategy = "topk"
    assert options_from_proto(config, greedy, limits).strategy.name == "topk"
    # Every config problem that needs no batch size, in one answer.
    bad = router_pb2.RouteConfig(strategy="clairvoyant", budget=common_pb2.Budget(cost=-1.0))
    with pytest.raises(InvalidInput) as exc:
        options_from_proto(bad, greedy, limits)
    assert {v.field for v in exc.value.violations} == {"config.strategy", "config.budget.cost"}
    with pytest.raises(InvalidInput) as exc:
        options_from_proto(
            router_pb2.RouteConfig(budget=common_pb2.Budget(count=limits.max_stream_instances + 1)), greedy, limits
        )
    assert [v.field for v in exc.value.violations] == ["config.budget.count"]
    # A misconfigured default fails when the router starts, not on every call.
    with pytest.raises(InvalidInput) as exc:
        RouterServicer(Settings(router={"default_strategy": "clairvoyant"}), Metrics(CollectorRegistry()))
    assert exc.value.violations[0].field == "config.strategy"


def test_a_stream_yields_to_small_calls_in_flight(background_loop, tagger, bundle, sample):
    """Issue 18 item 10: a stream pauses before each slice of its work while a small unary call is in
    flight (at most MAX_PAUSE_S a slice); unary calls never pause. benchmarks/bench_load.py mixed measures
    what it buys (small callers' p99 beside a stream)."""
    import asyncio

    from hybridpref.router.budget import Budget
    from hybridpref.router.strategies import strategy_spec
    from hybridpref.router.yielding import INTERACTIVE_MAX, Yielder

    core = make_core(tagger, bundle)
    options = RouteOptions(budget=Budget.fraction(0.25), strategy=strategy_spec("random"), seed=3)
    rows = [replace(inst, id=f"{inst.id}-{k}") for k in range(4) for inst in sample]  # 160 rows: 3 slices of 64

    async def stream(*chunks):
        async def gen():
            for c in chunks:
                yield c

        return await core.route_stream(gen(), options, Deadline(60.0))

    async def alone_then_beside_a_small_call():
        await stream(rows[:100], rows[100:])
        alone = core.yielder.pauses
        with core.yielder.interactive(10):  # a small call in flight throughout
            start = asyncio.get_running_loop().time()
            out = await stream(rows[:100], rows[100:])
            waited = asyncio.get_running_loop().time() - start
        return alone, core.yielder.pauses, waited, out

    alone, beside, waited, out = background_loop.run(alone_then_beside_a_small_call())
    assert alone == 0 and len(out.decisions) == len(rows)
    # One pause per chunk and one per judge slice of the 120 LM-routed rows (64 + 56); `random` reads no tags, so
    # the router does not tag (issue 19) and there are no tag slices.
    slices = 2 + 2
    assert beside >= slices and waited >= slices * core.yielder.max_pause_s * 0.9
    before = core.yielder.pauses
    route(background_loop, core, sample, "random")  # a unary call does not pause for itself
    assert core.yielder.pauses == before
    # A big unary call is bulk too: it does not hold a stream back.
    big = Yielder()
    with big.interactive(INTERACTIVE_MAX + 1):
        assert big.active == 0
