"""Evaluation harness: bootstrap, oracle, reference rules, judge-doubt order, leakage refusal, CLI, a real-data smoke."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from hybridpref.offline import stats
from hybridpref.offline.evaluation.harness import (
    EvalConfig,
    LeakageError,
    assign_folds,
    check_bundle_leakage,
    evaluate,
    label_correct,
    oracle_mask,
    prepare_case,
)
from hybridpref.offline.pools import default_data_dir
from hybridpref_client.core.errors import InvalidInput

JUDGE = "judge-x"


def _row(
    i: int, human: str, lm: str | None, votes: list[str] | None = None, prompt: str | None = None, resp_a: str | None = None
) -> dict:
    row = {
        "id": f"r{i}",
        "prompt": prompt or f"question {i // 2}",
        "response_a": resp_a or f"answer a {i}",
        "response_b": f"answer b {i} with more words",
        "human_label": human,
        "lm_labels": {JUDGE: lm, "judge-y": "A"},
    }
    if votes:
        row["human_votes"] = votes
    return row


def write_pool(path: Path, n: int = 120, seed: int = 0) -> Path:
    """A pool where the LM is wrong on ~30% of rows, humans vote 3 times (vote 0 bought, majority of the others = reference)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        truth = "A" if rng.random() < 0.5 else "B"
        other = "B" if truth == "A" else "A"
        lm = other if rng.random() < 0.3 else truth
        votes = [truth if rng.random() < 0.85 else other, truth, truth if rng.random() < 0.9 else other]
        rows.append(_row(i, votes[0], lm, votes))
    rows.append(_row(n, "A", "A", None, resp_a="\u200b"))  # invisible response: skipped, counted
    rows.append(_row(n + 1, "A", None, ["A", "A", "A"]))  # null LM label: kept, counts wrong unless routed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- statistics


def test_group_bootstrap_resamples_whole_groups_per_stratum():
    groups = np.repeat(np.arange(50), 3)
    strata = np.where(groups < 20, "p1", "p2")
    boot = stats.GroupBootstrap.create(groups, 500, seed=1, strata=strata)
    assert boot.weights.shape == (500, 50)
    assert np.all(boot.weights[:, :20].sum(1) == 20) and np.all(boot.weights[:, 20:].sum(1) == 30)
    values = np.tile([1.0, 0.0, 1.0], 50)  # every group has mean 2/3: any resample of whole groups gives 2/3
    assert np.allclose(boot.means(values, np.ones(150, bool)), 2 / 3)
    again = stats.GroupBootstrap.create(groups, 500, seed=1, strata=strata)
    assert np.array_equal(boot.weights, again.weights)


def test_bootstrap_interval_covers_and_is_fast():
    rng = np.random.default_rng(0)
    n, m = 3000, 40
    groups = rng.integers(0, 800, n)
    values = (rng.random((n, m)) < 0.7).astype(float)
    boot = stats.GroupBootstrap.create(groups, 2000, seed=0)
    t = time.perf_counter()
    samples = boot.means(values, np.ones(n, bool))
    assert time.perf_counter() - t < 1.5  # vectorised: 2000 resamples x 40 statistics (~0.05 s; slack for a busy box)
    lo, hi = stats.interval(samples[:, 0])
    assert lo < values[:, 0].mean() < hi and 0.02 < hi - lo < 0.06  # ~ 2 * 1.96 * sqrt(.21 / 3000)


def test_partial_spearman_removes_the_controlled_variable():
    rng = np.random.default_rng(3)
    share = rng.random(300)
    a = share + 0.01 * rng.normal(size=300)
    b = share + 0.01 * rng.normal(size=300)
    assert stats.spearman(a, b) > 0.95
    assert abs(stats.partial_spearman(a, b, share)) < 0.2
    c = rng.normal(size=300)
    assert stats.partial_spearman(c + share, c - share, share) > 0.8


def test_paired_mdd_shrinks_with_agreement_and_size():
    a = np.ones(400)
    b = a.copy()
    b[:40] = 0
    wide = stats.paired_mdd(a, b, np.ones(400, bool))
    b2 = a.copy()
    b2[:4] = 0
    assert stats.paired_mdd(a, b2, np.ones(400, bool)) < wide
    assert stats.gold_size_for_mdd(0.01, 0.3) > stats.gold_size_for_mdd(0.02, 0.3)


# ---------------------------------------------------------------- reference rules, oracle, heuristic


def test_oracle_routes_only_fixable_rows_up_to_budget():
    human = np.array([1, 1, -1, 1, -1, 1], dtype=np.int8)
    lm = np.array([-1, 1, 1, -1, 0, -1], dtype=np.int8)
    ref = np.array([1, 1, 1, -1, -1, 0], dtype=np.int8)
    # row 0: LM wrong, human right -> fixable; row 2: both... human wrong -> no; row 3: human wrong; row 4: LM tie, human right; row 5: no reference
    assert np.flatnonzero(oracle_mask(human, lm, ref, k=10, seed=0)).tolist() == [0, 4]
    one = oracle_mask(human, lm, ref, k=1, seed=0)
    assert one.sum() == 1 and one[[0, 4]].any()


def test_reference_rules_ties_and_bad_rows(tmp_path):
    path = write_pool(tmp_path / "toy" / "pairs.jsonl")
    case = prepare_case(path, EvalConfig(pools=[str(path)], lm_judge=JUDGE))
    pool = case.pool
    assert pool.skipped["empty or invisible response"] == 1
    assert len(pool) == 121 and set(pool.reference_kind) == {"other_votes"}
    # a routed tie / missing LM label counts wrong; an excluded reference never counts
    null_row = [i for i, inst in enumerate(pool.instances) if inst.id == "r121"][0]
    assert case.lm[null_row] == 0
    correct = label_correct(case, np.zeros(len(pool), bool))
    assert correct[null_row] == 0
    routed = np.zeros(len(pool), bool)
    routed[null_row] = True
    assert label_correct(case, routed)[null_row] == 1


def test_folds_keep_prompt_groups_together():
    groups = np.repeat(np.arange(30), 4)
    folds = assign_folds(groups, 3, seed=5)
    for g in range(30):
        assert len(set(folds[groups == g])) == 1
    assert sorted(np.bincount(folds).tolist()) == [40, 40, 40]


# ---------------------------------------------------------------- leakage


def _bundle(tmp_path: Path, pool_file: Path, gold: Path | None = None) -> Path:
    from hybridpref.routing_model import bundle as bundle_io

    b = tmp_path / "bundle"
    b.mkdir(parents=True, exist_ok=True)
    files = {"pool": bundle_io.sha256_file(pool_file)}
    if gold is not None:
        files["gold:other"] = bundle_io.sha256_file(gold)
    (b / "fingerprints.json").write_text(json.dumps({"file_sha256": files, "build_args": {"tagger_profile": "fast"}}))
    v = 90
    (b / "ppm.json").write_text(json.dumps({"bias": 0.6, "linear": [0.01] * v, "quad": [[0.0] * v for _ in range(v)]}))
    return b


def test_leakage_refused_for_the_bundles_own_pool_and_mtbench_vs_llmbar(tmp_path):
    from hybridpref.routing_model import bundle as bundle_io

    own = write_pool(tmp_path / "a" / "pairs.jsonl", seed=1)
    other = write_pool(tmp_path / "b" / "pairs.jsonl", seed=2)
    bundle = _bundle(tmp_path, own, gold=other)
    with pytest.raises(LeakageError, match="trained on toy itself"):
        check_bundle_leakage(bundle, own, "toy", {})
    notes = check_bundle_leakage(bundle, other, "b", {})
    assert any("diagnostic gold set" in n for n in notes)
    with pytest.raises(LeakageError, match="MT-Bench"):
        check_bundle_leakage(bundle, other, "mtbench_human_gpt4", {bundle_io.sha256_file(own): "llmbar"})


def test_cli_refuses_a_leaking_bundle_with_exit_2(tmp_path, capsys):
    from hybridpref.cli.main import main

    pool = write_pool(tmp_path / "toy" / "pairs.jsonl")
    bundle = _bundle(tmp_path, pool)
    rc = main(
        [
            "evaluate",
            "--pool",
            str(pool),
            "--lm-judge",
            JUDGE,
            "--bundle",
            str(bundle),
            "--no-rm",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert rc == 2
    assert "has seen this pool's labels" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end on fixtures


def test_evaluate_end_to_end_on_fixture_pools(tmp_path):
    from hybridpref.offline.evaluation.report import write_all

    a = write_pool(tmp_path / "toy_a" / "pairs.jsonl", n=150, seed=1)
    b = write_pool(tmp_path / "toy_b" / "pairs.jsonl", n=150, seed=2)
    bundle = _bundle(tmp_path, a)
    cfg = EvalConfig(
        pools=[str(a), str(b)],
        lm_judge=JUDGE,
        bundle=str(bundle),
        budgets=(0.1, 0.25),
        seeds=3,
        rm=False,
        modes=("in-pool", "cross-pool"),
        on_leak="skip",
        tagger_profile="fast",
        n_boot=300,
        strategies=("topk", "greedy"),
        data_dir=str(tmp_path),
    )
    result = evaluate(cfg)
    rows = {(r["pool"], r["mode"], r["strategy"], r["budget"]): r for r in result.rows}
    for pool in ("toy_a", "toy_b"):
        o, rnd = rows[(pool, "in-pool", "oracle", 0.25)], rows[(pool, "in-pool", "random", 0.25)]
        assert o["estimate"] > rnd["estimate"] and o["diff_random_low"] > 0
        assert o["share_oracle"] == pytest.approx(1.0) and rnd["share_oracle"] == pytest.approx(0.0)
        assert rows[(pool, "in-pool", "all_human", 0.1)]["human_share"] == 1.0
        assert rows[(pool, "in-pool", "random", 0.1)]["human_share"] == pytest.approx(0.1, abs=0.02)
    assert ("toy_b", "in-pool", "greedy", 0.25) in rows  # the bundle did not see toy_b
    assert ("toy_a", "in-pool", "greedy", 0.25) not in rows  # ... but was trained on toy_a: skipped, said so
    assert any("leakage" in n for s in result.summaries if s["pool"] == "toy_a" for n in s["notes"])
    paths = write_all(result, tmp_path / "out")
    with paths["csv"].open() as fh:
        got = list(csv.DictReader(fh))
    assert {"estimate", "ci_low", "diff_random_low", "share_oracle_high"} <= set(got[0])
    text = paths["report"].read_text()
    assert "oracle vs random at 0.25" in text and (tmp_path / "out" / "plots").glob("*.png")
    assert len(list((tmp_path / "out" / "plots").glob("*.png"))) == 4


def test_bundle_for_uses_a_bundle_that_never_saw_the_pool(tmp_path):
    """``--bundle-for POOL=DIR``: that pool is routed with that bundle's PPM (leakage-checked like --bundle),
    the others with --bundle; a multi-pool bundle's fingerprints list every pool it was trained on."""
    from hybridpref.cli.evaluate import parse_bundle_for
    from hybridpref.routing_model import bundle as bundle_io

    a = write_pool(tmp_path / "toy_a" / "pairs.jsonl", n=90, seed=1)
    b = write_pool(tmp_path / "toy_b" / "pairs.jsonl", n=90, seed=2)
    c = write_pool(tmp_path / "toy_c" / "pairs.jsonl", n=90, seed=3)
    on_a = _bundle(tmp_path / "on_a", a)
    on_bc = _bundle(tmp_path / "on_bc", b)
    fp = json.loads((on_bc / "fingerprints.json").read_text())
    fp["pools"] = [{"name": n, "sha256": bundle_io.sha256_file(p)} for n, p in (("toy_b", b), ("toy_c", c))]
    (on_bc / "fingerprints.json").write_text(json.dumps(fp))
    with pytest.raises(LeakageError, match="toy_c itself"):
        check_bundle_leakage(on_bc, c, "toy_c", {})  # the second listed pool counts too
    cfg = EvalConfig(
        pools=[str(a), str(b)],
        lm_judge=JUDGE,
        bundle=str(on_a),
        bundle_for=parse_bundle_for([f"toy_a={on_bc}"]),
        budgets=(0.25,),
        seeds=2,
        rm=False,
        on_leak="skip",
        tagger_profile="fast",
        n_boot=200,
        strategies=("topk",),
        data_dir=str(tmp_path),
    )
    result = evaluate(cfg)
    routed = {(r["pool"], r["strategy"]) for r in result.rows}
    assert ("toy_a", "topk") in routed and ("toy_b", "topk") in routed  # toy_a via on_bc, toy_b via on_a
    notes = {s["pool"]: s["notes"] for s in result.summaries}
    assert any("trained on toy_b, toy_c" in n for n in notes["toy_a"])
    cfg.bundle_for = {"toy_a": str(on_bc), "toy_b": str(on_bc)}
    with pytest.raises(LeakageError, match="toy_b itself"):
        evaluate(dataclasses.replace(cfg, on_leak="error"))
    for bad in ("toy_a", "=x", f"toy_a={tmp_path / 'none'}"):
        with pytest.raises(InvalidInput) as err:
            parse_bundle_for([bad])
        assert err.value.violations[0].field == "--bundle-for"
    with pytest.raises(InvalidInput, match="no pool named"):
        evaluate(dataclasses.replace(cfg, bundle_for={"nope": str(on_bc)}))


@pytest.mark.parametrize("correction", ["panel", "onnx"])
def test_expected_corrections_check_compares_the_summary_with_what_happened(tmp_path, correction):
    from hybridpref.offline.evaluation.report import write_all

    a = write_pool(tmp_path / "toy_a" / "pairs.jsonl", n=120, seed=1)
    b = write_pool(tmp_path / "toy_b" / "pairs.jsonl", n=120, seed=2)
    c = write_pool(tmp_path / "toy_c" / "pairs.jsonl", n=120, seed=3)
    cfg = EvalConfig(
        pools=[str(a), str(b), str(c)],
        lm_judge=JUDGE,
        budgets=(0.25, 0.5),
        seeds=2,
        rm=False,
        n_boot=100,
        modes=("cross-pool",),
        strategies=("expected_gain",),
        data_dir=str(tmp_path),
        correction=correction,
    )
    result = evaluate(cfg)
    checks = {(r["pool"], r["budget"]): r for r in result.corrections}
    assert set(checks) == {(p, b) for p in ("toy_a", "toy_b", "toy_c") for b in (0.25, 0.5)}
    for r in checks.values():
        assert r["outcome_low"] <= r["predicted"] <= r["outcome_high"]
        assert r["shown_low"] <= r["outcome_low"] and r["shown_high"] >= r["outcome_high"]  # widened by the transfer range
        assert r["covered_by_shown_interval"] == (r["shown_low"] <= r["realised"] <= r["shown_high"])
        assert abs(r["realised"]) <= r["routed"]
    assert checks[("toy_a", 0.5)]["routed"] > checks[("toy_a", 0.25)]["routed"]
    text = write_all(result, tmp_path / "out")["report"].read_text()
    assert "Expected corrections check" in text


def test_tag_cache_key_separates_custom_tag_functions():
    from hybridpref.offline.bundle.builder import tag_cache_key

    def f(instances):
        return np.zeros((len(instances), 90), np.uint8)

    def g(instances):
        return np.ones((len(instances), 90), np.uint8)

    assert tag_cache_key(f) != tag_cache_key(g)
    assert tag_cache_key(f, "fast") != tag_cache_key(f, "default")
    assert tag_cache_key(f) == tag_cache_key(f)


def test_bad_flags_are_invalid_input():
    with pytest.raises(InvalidInput):
        EvalConfig(pools=["x"], budgets=(1.5,)).validate()
    with pytest.raises(InvalidInput):
        EvalConfig(pools=["x"], modes=("sideways",)).validate()


# ---------------------------------------------------------------- real data smoke (CI has ../shared/data)

DATA = default_data_dir()


@pytest.mark.skipif(not (DATA / "llmbar" / "pairs.jsonl").exists(), reason="../shared/data not present")
def test_real_data_smoke_llmbar(tmp_path):
    from hybridpref.cli.main import main

    # the default bundle is trained on llmbar (refused here); the leave-one-pool-out bundle never saw it
    bundle = Path(__file__).resolve().parents[2] / "benchmarks" / "lopo_bundles" / "without-llmbar"
    out = tmp_path / "out"
    rc = main(
        [
            "evaluate",
            "--pool",
            str(DATA / "llmbar"),
            "--bundle",
            str(bundle),
            "--budgets",
            "0.1,0.25",
            "--seeds",
            "2",
            "--tagger-profile",
            "fast",
            "--no-rm",
            "--n-boot",
            "500",
            "--strategies",
            "greedy,topk",
            "--out",
            str(out),
            "--no-progress",
            "--data-dir",
            str(DATA),
        ]
    )
    assert rc == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    oracle = [r for r in rows if r["strategy"] == "oracle" and r["budget"] == "0.25"][0]
    assert float(oracle["diff_random_low"]) > 0  # the instrument sees label quality
    assert {"greedy", "topk", "judge_doubt"} <= {r["strategy"] for r in rows}


def test_correction_models_never_see_the_routed_or_gold_fold(tmp_path, monkeypatch):
    """In-pool: the model routing fold g is fitted without g, and for metric 2 with gold fold f also
    without f; cross-pool: on the other pools only."""
    from hybridpref.offline.evaluation import harness

    seen: list[tuple[set[str], set[str]]] = []  # (ids the model was fitted on, ids it routed)

    def fake_fit(train, config):
        return {inst.id + "@" + p.name for p in train for inst in p.instances}

    def fake_gain(model, pool):
        seen.append((model, {inst.id + "@" + pool.name for inst in pool.instances}))
        return np.linspace(0.0, 0.5, len(pool))

    monkeypatch.setattr(harness, "fit_correction", fake_fit)
    monkeypatch.setattr(harness, "correction_gain", fake_gain)
    a = write_pool(tmp_path / "toy_a" / "pairs.jsonl", n=90, seed=1)
    b = write_pool(tmp_path / "toy_b" / "pairs.jsonl", n=90, seed=2)
    cfg = EvalConfig(
        pools=[str(a), str(b)],
        lm_judge=JUDGE,
        budgets=(0.25,),
        seeds=2,
        rm=False,
        n_boot=100,
        modes=("in-pool", "cross-pool"),
        strategies=("expected_gain",),
        data_dir=str(tmp_path),
    )
    result = evaluate(cfg)
    assert any(r["strategy"] == "expected_gain" for r in result.rows)
    assert seen and all(not (train & routed) for train, routed in seen)
    cross = [
        train for train, routed in seen if all(i.endswith("@toy_a") for i in routed) and any(t.endswith("@toy_b") for t in train)
    ]
    assert cross and all(all(t.endswith("@toy_b") for t in train) for train in cross)


def test_metric2_training_folds_are_routed_without_the_gold_fold(tmp_path, monkeypatch):
    from hybridpref.offline.evaluation import harness
    from hybridpref.offline.evaluation.harness import Router, correction_gain_fn, route_case

    fits: list[set[str]] = []
    monkeypatch.setattr(
        harness, "fit_correction", lambda train, config: fits.append({i.id for p in train for i in p.instances}) or len(fits) - 1
    )
    monkeypatch.setattr(harness, "correction_gain", lambda model, pool: np.linspace(0, 0.5, len(pool)))
    path = write_pool(tmp_path / "toy" / "pairs.jsonl", n=90, seed=3)
    cfg = EvalConfig(pools=[str(path)], lm_judge=JUDGE, budgets=(0.25,), seeds=1, folds=3, rm=True, strategies=("expected_gain",))
    case = prepare_case(path, cfg)
    mixes = route_case(
        case, Router(cfg, None, correction_gain_fn([case], cfg)), ["expected_gain"], cfg, "in-pool", lambda d, n: None
    )
    fold_ids = [{case.pool.instances[i].id for i in case.fold_rows(f)} for f in range(3)]
    assert set(mixes.rm_masks[("expected_gain", 0.25)]) == {0, 1, 2}
    # 3 fits without one fold (metric 1) + 3 fits on a single fold (metric 2: without the gold and the routed fold)
    assert sorted(len([f for f in fold_ids if f <= train]) for train in fits) == [1, 1, 1, 2, 2, 2]
    for f in range(3):  # the gold fold is not routed for metric 2: the reward model never trains on its rows
        assert not mixes.rm_masks[("expected_gain", 0.25)][f][0][case.fold_rows(f)].any()


def test_hybrid_uses_the_ppm_exactly_where_the_routers_domain_check_admits_the_fold(tmp_path):
    """The harness's `hybrid` runs the router's domain check per fold: inside, the PPM breaks ties;
    outside, it is exactly `expected_gain`."""
    import dataclasses as dc

    from hybridpref.offline.bundle import correction_fit
    from hybridpref.offline.evaluation.harness import Router, attach_bundles, correction_gain_fn, prepare_case
    from hybridpref.router.model import DomainModel
    from hybridpref.routing_model import domain as domain_mod

    a = write_pool(tmp_path / "toy_a" / "pairs.jsonl", n=150, seed=1)
    b = write_pool(tmp_path / "toy_b" / "pairs.jsonl", n=150, seed=2)
    bundle = _bundle(tmp_path, a)
    cfg = EvalConfig(
        pools=[str(a), str(b)],
        lm_judge=JUDGE,
        bundle=str(bundle),
        budgets=(0.25,),
        rm=False,
        modes=("cross-pool",),
        tagger_profile="fast",
        data_dir=str(tmp_path),
        on_leak="skip",
    )
    cases = [prepare_case(Path(p), cfg) for p in cfg.pools]
    attach_bundles(cases, cfg, tmp_path, [], lambda *_: None)
    case = cases[1]  # toy_b: the bundle was built on toy_a
    assert case.ppm_ok and case.domain is None  # this bundle records no domain: never in domain
    router = Router(cfg, None, correction_gain_fn(cases, cfg))
    rows = case.fold_rows(0)
    assert not router.ppm_in_domain(case, rows)
    feats = {"toy_b": correction_fit.pool_features(case.pool, JUDGE)}
    wide = domain_mod.build_domain(feats, ["toy_b"], {}, seed=0)
    case.domain = DomainModel.from_json(wide)
    assert router.ppm_in_domain(case, rows)
    inside = router.mask(case, "hybrid", 0.25, rows, 0, frozenset({0}), "cross-pool")
    case.domain = dc.replace(case.domain, threshold=-1.0)  # nothing is that close
    assert not router.ppm_in_domain(case, rows)
    outside = router.mask(case, "hybrid", 0.25, rows, 0, frozenset({0}), "cross-pool")
    plain = router.mask(case, "expected_gain", 0.25, rows, 0, frozenset({0}), "cross-pool")
    assert np.array_equal(outside, plain) and inside.sum() == outside.sum()
    assert case.in_domain_folds == {"in": 2, "out": 2}
