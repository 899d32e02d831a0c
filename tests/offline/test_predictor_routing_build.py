"""Routing models in a bundle: correction.onnx / correction.json / domain.json, old bundles still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hybridpref.offline.bundle.routing_build import add_routing_models
from hybridpref.predictor.core import Predictor, default_bundle_path
from hybridpref.routing_model import bundle as bundle_io
from hybridpref.routing_model import domain as domain_mod
from hybridpref.routing_model.correction import CorrectionModel, correction_features
from hybridpref_client.core.errors import NotReady


def _write_pool(path: Path, n: int, seed: int, votes: bool, words: int) -> Path:
    """A pool where the judge errs mostly when it ties; ``words`` sets the response lengths (domain)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    with open(path / "pairs.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            gold = "A" if rng.random() < 0.5 else "B"
            other = "B" if gold == "A" else "A"
            judge = "tie" if rng.random() < 0.2 else (other if rng.random() < 0.1 else gold)
            row = {
                "id": f"{path.name}-{i}",
                "prompt": f"question {i} " * int(rng.integers(2, 9)),
                "response_a": "alpha " * int(rng.integers(words, 3 * words)),
                "response_b": "beta " * int(rng.integers(words, 3 * words)),
                "human_label": gold,
                "lm_labels": {"judge": judge},
            }
            if votes:
                row["human_votes"] = [other if rng.random() < 0.1 else gold, gold, gold]
            fh.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def routed_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("routing")
    pools = {
        "p1": _write_pool(root / "p1", 120, 1, True, 5),
        "p2": _write_pool(root / "p2", 120, 2, False, 5),
        "p3": _write_pool(root / "p3", 120, 3, True, 60),
    }
    bundle = root / "bundle"
    shutil.copytree(default_bundle_path(), bundle)
    manifest = add_routing_models(bundle, pools, ["p1"], {"p3": 0.05}, seed=0)
    return bundle, manifest


def test_bundle_gains_routing_models(routed_bundle: tuple[Path, dict]) -> None:
    bundle, manifest = routed_bundle
    old = bundle_io.read_manifest(default_bundle_path())
    assert manifest["bundle_version"] != old["bundle_version"]
    assert {"correction.onnx", "correction.json", "domain.json"} <= set(manifest["files"])
    onnx_bytes, card = bundle_io.read_correction(bundle)
    model = CorrectionModel.from_onnx(onnx_bytes)
    assert card["onnx_parity_max_abs_diff"] < 1e-5 and set(card["leave_one_pool_out"]["pools"]) == {"p1", "p2", "p3"}
    metrics = bundle_io.read_json(bundle, "metrics.json")
    assert metrics["ppm_residual_std"] == pytest.approx(metrics["served"]["cv_rmse"]) and metrics["ppm_residual_std"] > 0
    card_text = (bundle / "MODEL_CARD.md").read_text()
    assert "Leave-one-pool-out" in card_text and "Reliability curve" in card_text and card_text.count("## Routing models") == 1
    assert Predictor(bundle).info().bundle_version == manifest["bundle_version"]  # the predictor serves it
    assert model.expected_gain(np.zeros((2, len(model.feature_names)), dtype=np.float32)).shape == (2,)


def test_bundle_gains_the_panel_correction_model(routed_bundle: tuple[Path, dict]) -> None:
    """add-routing-models fits the recommended panel model on the same pools; the predictor serves it with its
    version, and its own held-out transfer range is recorded for the summary's intervals."""
    from hybridpref.offline.pools import load_pool
    from hybridpref.routing_model.correction import transfer_range
    from hybridpref.routing_model.panel_correction import check_monotone, panel_features, panel_version, read_panel_correction

    bundle, manifest = routed_bundle
    assert "panel_correction.json" in manifest["files"]
    panel = read_panel_correction(bundle)
    assert manifest["panel_correction"] == panel_version(panel) and manifest["panel_correction"].startswith("panel-correction/1@")
    served = Predictor(bundle).routing_model()
    assert served.panel_version == manifest["panel_correction"] and served.panel_correction == bundle_io.read_json(
        bundle, "panel_correction.json"
    )
    assert set(panel.metrics["training"]) == {"p1:usual", "p2:usual", "p3:usual"}  # one judge each: the usual panel
    lo, hi = transfer_range(panel.metrics)
    assert 0 < lo <= hi and set(panel.metrics["leave_one_pool_out"]["transfer"]["pools"]) == {"p1", "p2", "p3"}
    p1 = load_pool(bundle.parent / "p1")
    x = panel_features(p1.instances, p1.signals())
    p = panel.p_lm_wrong(x)
    assert check_monotone(panel, x) and (p[x[:, 0] > 0.5] == 1.0).all()  # no verdict (a tie): wrong for sure
    assert "**Panel correction model**" in (bundle / "MODEL_CARD.md").read_text()


def test_domain_flags_the_far_pool(routed_bundle: tuple[Path, dict]) -> None:
    bundle, _ = routed_bundle
    domain = bundle_io.read_domain(bundle)
    assert domain["ppm_pools"] == ["p1"] and domain["calibration"]["p3"]["flagged"]  # 12x longer responses
    assert domain["threshold"] > domain["in_domain_p95"]
    from hybridpref.offline.pools import load_pool

    p1 = load_pool(bundle.parent / "p1")
    x = correction_features(p1.instances, None, None, p1.signals())
    assert domain_mod.batch_distance(x[:60], domain)[1]  # a batch of the PPM's own pool is in domain


def test_old_bundle_loads_and_tampering_is_caught(routed_bundle: tuple[Path, dict], tmp_path: Path) -> None:
    assert bundle_io.read_correction(default_bundle_path()) is None or (default_bundle_path() / "correction.onnx").is_file()
    old = tmp_path / "old"
    shutil.copytree(default_bundle_path(), old)
    for name in bundle_io.OPTIONAL_FILES:
        (old / name).unlink(missing_ok=True)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k not in bundle_io.OPTIONAL_FILES}
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert bundle_io.read_correction(old) is None and bundle_io.read_domain(old) is None
    Predictor(old)  # loads without the optional files
    bad = tmp_path / "bad"
    shutil.copytree(routed_bundle[0], bad)
    (bad / "domain.json").write_text("{}")
    with pytest.raises(NotReady, match="domain.json"):
        bundle_io.read_manifest(bad)


def test_domain_threshold_rules() -> None:
    from hybridpref.routing_model.correction import FEATURE_NAMES

    rng = np.random.default_rng(0)
    width = len(FEATURE_NAMES)
    home = rng.normal(size=(400, width))
    near = rng.normal(size=(300, width)) + 0.05
    far = rng.normal(size=(300, width)) + 2.0
    feats = {"home": home, "near": near, "far": far}
    dom = domain_mod.build_domain(feats, ["home"], {"far": 0.0, "near": 0.9}, seed=0)
    assert dom["calibration"]["far"]["flagged"] and not dom["calibration"]["near"]["flagged"]
    assert dom["in_domain_p95"] < dom["threshold"] < dom["calibration"]["far"]["distance"]
    # a pool that must be flagged but sits inside the in-domain noise: flagging wins
    dom2 = domain_mod.build_domain(feats, ["home"], {"near": 0.1}, seed=0)
    assert dom2["calibration"]["near"]["flagged"] and dom2["threshold"] < dom2["calibration"]["near"]["distance"]
    # nothing to flag: 1.5x the in-domain 95th percentile
    assert domain_mod.build_domain(feats, ["home"], {}, seed=0)["threshold"] == pytest.approx(1.5 * dom["in_domain_p95"])
    assert domain_mod.batch_distance(far[:50], dom) == (pytest.approx(domain_mod.distance(far[:50], dom["pools"]["home"])), False)
    # a PPM trained on several pools: each is held out in turn at its distance to the others (LOPO Spearman)
    multi = domain_mod.build_domain(feats, ["home", "far"], {"far": 0.1, "home": 0.8, "near": 0.9}, seed=0)
    cal = multi["calibration"]
    assert cal["far"]["held_out"] == "leave-one-pool-out" and cal["near"]["held_out"] == "not trained on"
    assert cal["far"]["distance"] == pytest.approx(domain_mod.distance(far, multi["pools"]["home"]))
    assert cal["far"]["flagged"] and multi["threshold"] < cal["far"]["distance"] and not cal["near"]["flagged"]
    close = domain_mod.build_domain(feats, ["home", "near"], {"home": 0.8, "near": 0.9}, seed=0)
    assert not close["calibration"]["near"]["flagged"] and close["threshold"] == pytest.approx(1.5 * close["in_domain_p95"])
    assert domain_mod.batch_distance(far[:50], multi)[1]  # ... yet a batch like far is in the domain: far is trained on


def test_add_routing_models_with_one_pool_per_bundle_as_the_readme_loop_runs_it(tmp_path: Path) -> None:
    """Issue 18 item 15: in a two-pool study the README's loop gives each leave-one-pool-out bundle the
    other pool alone; the CLI crashed with KeyError 'leave_one_pool_out' (one pool has no such metrics)."""
    import subprocess
    import sys

    pool = _write_pool(tmp_path / "teamB", 120, 4, True, 5)
    bundle = tmp_path / "without-teamA"
    shutil.copytree(default_bundle_path(), bundle)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "predictor",
            "add-routing-models",
            "--bundle",
            str(bundle),
            "--pool",
            f"teamB={pool}",
            "--judge",
            "judge",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "pool teamB: LM judge 'judge' (given" in proc.stderr
    assert "fitted on one pool: no leave-one-pool-out metrics" in proc.stdout
    card = json.loads((bundle / "correction.json").read_text())
    assert "leave_one_pool_out" not in card and card["calibration"] == "none (one pool)"
    assert bundle_io.read_correction(bundle) is not None  # the bundle is complete and loads
