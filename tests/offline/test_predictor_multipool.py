"""Predictor build across pools: per-pool simulations (cached), centred union fit, leave-one-pool-out scores,
leave-one-pool-out bundles and the evaluation harness's leakage check on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_predictor_core import FIXTURE, hand_tags

from hybridpref.cli.main import main as cli_main
from hybridpref.offline.bundle.builder import BuildConfig, build_bundle
from hybridpref.offline.evaluation.harness import LeakageError, check_bundle_leakage
from hybridpref.offline.pools import DEFAULT_JUDGES, default_data_dir
from hybridpref.predictor.core import Predictor, default_bundle_path
from hybridpref.routing_model import bundle as bundle_io
from hybridpref_client.core.errors import InvalidInput

LLMBAR = Path(__file__).resolve().parents[1] / "fixtures" / "ppm_pools" / "llmbar" / "pairs.jsonl"
POOLS = [f"fx={FIXTURE}", str(LLMBAR)]


def config(out: Path, lopo: Path | None = None) -> BuildConfig:
    return BuildConfig(
        pool=list(POOLS),
        out=str(out),
        candidates=24,
        seed=3,
        holdout_fraction=0.25,
        folds=3,
        variants=("linear", "quadratic"),
        proxy_hidden=16,
        proxy_steps=30,
        proxy_seeds=1,
        lopo_out=str(lopo) if lopo else None,
    )


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("multipool")
    old = os.environ.get("HYBRIDPREF_CACHE_DIR")
    os.environ["HYBRIDPREF_CACHE_DIR"] = str(root / "cache")
    try:
        first = build_bundle(config(root / "a", root / "lopo"), tag_fn=hand_tags, progress=False)
        again = build_bundle(config(root / "b"), tag_fn=hand_tags, progress=False)
    finally:
        if old is None:
            os.environ.pop("HYBRIDPREF_CACHE_DIR", None)
        else:
            os.environ["HYBRIDPREF_CACHE_DIR"] = old
    return first, again, root / "lopo"


def test_fingerprints_list_every_pool_with_its_judge_and_dropped_rows(builds):
    first = builds[0]
    fp = bundle_io.read_json(first.bundle_path, "fingerprints.json")
    pools = {p["name"]: p for p in fp["pools"]}
    assert set(pools) == {"fx", "llmbar"}
    assert pools["fx"]["sha256"] == bundle_io.sha256_file(FIXTURE) and pools["llmbar"]["sha256"] == bundle_io.sha256_file(LLMBAR)
    # evaluation.pools.DEFAULT_JUDGES, not the first recorded key (ChatGPT sorts first); order-split keys merged.
    assert pools["llmbar"]["judge"] == "GPT-4/Vanilla_NoRules" and pools["fx"]["judge"] == "judge-x"
    # LLMBar's MT-Bench subset (6 rows) is dropped by the same rule the evaluation uses.
    assert pools["llmbar"]["rows"] + pools["llmbar"]["gold_rows"] == 40
    assert pools["llmbar"]["dropped_sources"] == ["LLMBar Processed/MT-Bench"]
    metrics = first.metrics
    assert metrics["pools"]["llmbar"]["dropped_rows"]["repeats_other_pool"] == 6
    assert metrics["served"]["candidates"] == 48 and metrics["candidates"]["all_human"] == 2


def test_union_fit_is_centred_per_pool_and_has_lopo_scores(builds):
    first = builds[0]
    m = first.metrics
    means = m["centring"]["pool_means"]
    assert set(means) == {"fx", "llmbar"} and m["centring"]["offset"] == pytest.approx(np.mean(list(means.values())))
    lopo = m["leave_one_pool_out"]["pools"]
    assert set(lopo) == {"fx", "llmbar"}
    for entry in lopo.values():
        assert entry["candidates"] == 24 and -1 <= entry["spearman"] <= 1 and entry["rmse_centred"] > 0
        assert np.isfinite(entry["partial_spearman_given_share"])
    assert set(m["variants"]["quadratic"]["cv_spearman_by_pool"]) == {"fx", "llmbar"}
    card = (first.bundle_path / "MODEL_CARD.md").read_text()
    assert "Leave-one-pool-out" in card and "llmbar" in card and "per-pool mean" in card
    # The served bias adds back the mean level: predicting the all-LM mix of a pool lands near its accuracy scale.
    pred = Predictor(first.bundle_path)
    assert 0.0 < pred.routing_model().quadratic[0] < 1.0  # f(0) = the bias


def test_second_build_reads_the_cached_simulations(builds):
    first, again, _ = builds
    assert first.cache_hits == {"fx": False, "llmbar": False}
    assert again.cache_hits == {"fx": True, "llmbar": True}
    assert again.bundle_version == first.bundle_version  # same inputs, same bundle, without retraining proxies
    assert "proxy_s" in again.timings and again.timings["proxy_s"] == 0.0


def test_lopo_bundles_are_accepted_for_their_excluded_pool_only(builds):
    first, _, lopo = builds
    assert set(first.lopo_versions) == {"fx", "llmbar"}
    for excluded, other, other_path, path in (("fx", "llmbar", LLMBAR, FIXTURE), ("llmbar", "fx", FIXTURE, LLMBAR)):
        bundle = lopo / f"without-{excluded}"
        assert bundle_io.read_manifest(bundle)["bundle_version"] == first.lopo_versions[excluded]
        assert [p["name"] for p in bundle_io.read_json(bundle, "fingerprints.json")["pools"]] == [other]
        assert bundle_io.read_json(bundle, "metrics.json")["held_out_pool"]["pool"] == excluded
        notes = check_bundle_leakage(bundle, path, excluded, {})
        assert any(f"trained on {other}" in n for n in notes)
        with pytest.raises(LeakageError, match="itself"):
            check_bundle_leakage(bundle, other_path, other, {})
        with pytest.raises(LeakageError, match="itself"):
            check_bundle_leakage(first.bundle_path, path, excluded, {})
    # A bundle whose llmbar pool dropped the MT-Bench subset does not leak into mtbench_human_gpt4.
    assert check_bundle_leakage(lopo / "without-fx", FIXTURE, "mtbench_human_gpt4", {})


def test_bad_pool_values_are_named(tmp_path, capsys):
    for argv, field in (
        (["--pool", "=x.jsonl"], "pool"),
        (["--pool", f"a={tmp_path / 'missing.jsonl'}"], "pool"),
        (["--pool", f"a={FIXTURE}", "--pool", f"a={LLMBAR}"], "pool"),
        (["--pool", str(FIXTURE), "--lopo-out", str(tmp_path / "l")], "lopo_out"),
        (["--pool", str(FIXTURE), "--pool", str(LLMBAR), "--lm-judge", "judge-x"], "lm_judge"),
        (["--pool", str(FIXTURE), "--pool", str(LLMBAR), "--lm-judge", "nope=judge-x"], "lm_judge"),
    ):
        assert cli_main(["predictor", "build", *argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {field}: ") and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_cli_prints_lopo_scores(builds, capsys, monkeypatch, tmp_path):
    import hybridpref.offline.bundle.builder as builder

    monkeypatch.setenv("HYBRIDPREF_CACHE_DIR", str(builds[2].parent / "cache"))  # the fixture's cached simulations
    monkeypatch.setattr(builder, "tag_with_tagger", lambda profile: (hand_tags, None))
    rc = cli_main(
        [
            "predictor",
            "build",
            "--pool",
            POOLS[0],
            "--pool",
            POOLS[1],
            "--candidates",
            "24",
            "--seed",
            "3",
            "--holdout-fraction",
            "0.25",
            "--folds",
            "3",
            "--proxy-hidden",
            "16",
            "--proxy-steps",
            "30",
            "--proxy-seeds",
            "1",
            "--out",
            str(tmp_path / "c"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "without fx" in out and "fx: cached" in out and "llmbar: cached" in out
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["leave_one_pool_out"]["pools"].keys() == {"fx", "llmbar"}


def test_add_routing_models_defaults_to_the_bundles_pools_and_lopo_spearman(builds):
    from hybridpref.offline.bundle.routing_build import ppm_domain_args

    first = builds[0]
    lopo = first.metrics["leave_one_pool_out"]["pools"]
    pools, rho = ppm_domain_args(first.bundle_path, ["fx", "llmbar", "other"], [], [])
    assert pools == ["fx", "llmbar"] and rho == {k: round(v["spearman"], 3) for k, v in lopo.items()}
    pools, rho = ppm_domain_args(first.bundle_path, ["fx", "llmbar"], ["fx"], ["llmbar=0.5"])
    assert pools == ["fx"] and rho["llmbar"] == 0.5 and "fx" in rho
    for ppm_pool, given, field in ((["nope"], [], "ppm_pool"), ([], ["fx=high"], "ppm_spearman")):
        with pytest.raises(InvalidInput) as err:
            ppm_domain_args(first.bundle_path, ["fx", "llmbar"], ppm_pool, given)
        assert err.value.violations[0].field == field


@pytest.mark.skipif(not default_data_dir().is_dir(), reason="shared data (../shared/data) not present")
def test_real_pools_split_and_judges():
    """The three shared pools load as the default bundle's build reads them (no proxies: seconds)."""
    from hybridpref.offline.bundle.simulate import PoolSpec, lm_signs, load_pool_data

    sizes = {}
    for name in ("mtbench_human_gpt4", "pandalm", "llmbar"):
        spec = PoolSpec(name, default_data_dir() / name / "pairs.jsonl")
        data = load_pool_data(spec, "question_id", 0.2, 0, None, {})
        assert data.judge == DEFAULT_JUDGES[name] and np.mean(lm_signs(data.pool, data.judge) != 0) > 0.5
        assert {i.id for i in data.pool}.isdisjoint({i.id for i in data.gold_sets["heldout"]})
        sizes[name] = (len(data.pool), len(data.gold_sets["heldout"]), data.dropped["repeats_other_pool"])
    assert sizes["llmbar"][2] == 200 and sizes["mtbench_human_gpt4"][2] == sizes["pandalm"][2] == 0
    fp = bundle_io.read_json(default_bundle_path(), "fingerprints.json")
    assert {p["name"]: (p["rows"], p["gold_rows"]) for p in fp["pools"]} == {k: v[:2] for k, v in sizes.items()}
