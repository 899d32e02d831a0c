"""Predictor: builder determinism, ONNX parity, bad inputs, hot reload, gains and explanations.

A tiny bundle is built once per session from tests/fixtures/predictor_pool.jsonl with a small
hand-made tag function (the tagger core has its own tests) and the real MiniLM proxy.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from hybridpref.cli.main import main as cli_main
from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES, tag_index
from hybridpref.offline.bundle.builder import BuildConfig, build_bundle, parse_gold_spec, read_rows, split_pool
from hybridpref.offline.bundle.ppm_fit import check_parity
from hybridpref.predictor.core import Predictor
from hybridpref.routing_model import bundle as bundle_io
from hybridpref.routing_model.ppm import QuadraticPPM
from hybridpref_client.core.errors import InvalidInput, NotReady
from hybridpref_client.core.instances import PreferenceInstance

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "predictor_pool.jsonl"


def hand_tags(instances: list[PreferenceInstance]) -> np.ndarray:
    """Honest but crude tags: word-length bins, format constraint, a few keyword subjects."""
    out = np.zeros((len(instances), NUM_TAGS), dtype=np.uint8)
    subjects = {
        "python": "Computer sciences",
        "revolution": "History",
        "photosynthesis": "Life sciences",
        "retirement": "Economics",
        "tax": "Law",
        "holes": "Space sciences",
        "tunnelling": "Physics",
    }
    for i, inst in enumerate(instances):
        la, lb = len(inst.response_a.split()), len(inst.response_b.split())
        shorter, longer = min(la, lb), max(la, lb)
        for measure, value, edges in (
            ("len_shorter", shorter, (12, 30)),
            ("len_longer", longer, (12, 40)),
            ("token_len_diff", longer - shorter, (5, 30)),
        ):
            out[i, tag_index(f"{measure}:{'low' if value <= edges[0] else 'mid' if value <= edges[1] else 'high'}")] = 1
        if "bullet" in inst.prompt:
            out[i, tag_index("format_constraints:present")] = 1
        for word, subject in subjects.items():
            if word in inst.prompt.lower():
                out[i, tag_index(f"subject_of_expertise:{subject}")] = 1
        out[i, tag_index("languages:English")] = 1
    return out


def small_config(out: Path, seed: int = 7) -> BuildConfig:
    return BuildConfig(
        pool=str(FIXTURE),
        out=str(out),
        candidates=40,
        seed=seed,
        holdout_fraction=0.25,
        folds=4,
        variants=("linear", "quadratic"),
        proxy_hidden=16,
        proxy_steps=30,
        proxy_seeds=1,
    )


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("HYBRIDPREF_CACHE_DIR")
    os.environ["HYBRIDPREF_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HYBRIDPREF_CACHE_DIR", None)
    else:
        os.environ["HYBRIDPREF_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def built(tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("bundles")
    first = build_bundle(small_config(root / "a"), tag_fn=hand_tags, progress=False)
    again = build_bundle(small_config(root / "b"), tag_fn=hand_tags, progress=False)
    other = build_bundle(small_config(root / "c", seed=8), tag_fn=hand_tags, progress=False)
    return first, again, other


def test_build_is_deterministic_for_a_seed(built):
    first, again, other = built
    assert first.bundle_version == again.bundle_version
    for name in bundle_io.REQUIRED_FILES:
        assert (first.bundle_path / name).read_bytes() == (again.bundle_path / name).read_bytes(), name
    assert other.bundle_version != first.bundle_version  # the seed changes the candidates


def test_bundle_contents(built):
    result = built[0]
    manifest = bundle_io.read_manifest(result.bundle_path)
    assert manifest["bundle_version"] == result.bundle_version
    vocab = bundle_io.read_json(result.bundle_path, "vocabulary.json")
    assert vocab["tags"] == list(TAG_NAMES)
    metrics = result.metrics
    assert set(metrics["variants"]) == {"linear", "quadratic"}
    assert metrics["served"]["onnx_parity_max_abs_diff"] <= 1e-5
    assert metrics["candidates"]["all_human"] == 1 and metrics["candidates"]["all_lm"] == 1
    fp = bundle_io.read_json(result.bundle_path, "fingerprints.json")
    (pool,) = fp["pools"]
    assert pool["rows"] + pool["gold_rows"] == 48 and pool["name"] == "predictor_pool" and pool["judge"] == "judge-x"
    assert pool["sha256"] == bundle_io.sha256_file(FIXTURE) == fp["file_sha256"]["pool:predictor_pool"]
    assert "counts / pool_size" in (result.bundle_path / "MODEL_CARD.md").read_text()


def test_heldout_groups_never_trained_on():
    rows = read_rows(str(FIXTURE))
    train, gold = split_pool(rows, "question_id", 0.25, seed=0)
    assert {rows[i]["question_id"] for i in train}.isdisjoint({rows[i]["question_id"] for i in gold})
    assert len({rows[i]["question_id"] for i in gold}) == 3


def test_onnx_parity_and_served_form_matches_ppm_json(built):
    path = built[0].bundle_path
    raw = bundle_io.read_json(path, "ppm.json")
    ppm = QuadraticPPM(raw["bias"], np.array(raw["linear"]), np.array(raw["quad"]))
    assert np.allclose(ppm.quad, ppm.quad.T)
    assert check_parity(ppm, path / "model.onnx", seed=3, n=500) <= 1e-5
    bias, linear, quad = Predictor(path).routing_model().quadratic  # what GetRoutingModel serves
    assert bias == ppm.bias and np.array_equal(linear, ppm.linear) and np.array_equal(quad, ppm.quad)


def test_unloaded_predictor_is_not_ready():
    pred = Predictor()
    assert not pred.ready and not pred.info().loaded and pred.info().status_message
    with pytest.raises(NotReady):
        pred.routing_model()
    with pytest.raises(NotReady):
        pred.load("/nonexistent/bundle")
    assert "manifest.json missing" in pred.info().status_message


def _refinalise(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    extra = {k: v for k, v in manifest.items() if k not in ("format", "bundle_version", "files")}
    bundle_io.finalise(folder, extra)


def test_vocabulary_mismatch_and_corruption_refused(built, tmp_path):
    src = built[0].bundle_path
    bad_vocab = tmp_path / "vocab"
    shutil.copytree(src, bad_vocab)
    vocab = json.loads((bad_vocab / "vocabulary.json").read_text())
    vocab["tags"][40] = "subject_of_expertise:Journalism"  # the paper's split-name trap
    bundle_io.write_json(bad_vocab / "vocabulary.json", vocab)
    _refinalise(bad_vocab)
    pred = Predictor(src)
    with pytest.raises(NotReady, match="vocabulary"):
        pred.load(bad_vocab)
    assert pred.info().bundle_version == built[0].bundle_version  # the old bundle keeps serving
    tampered = tmp_path / "tampered"
    shutil.copytree(src, tampered)
    raw = json.loads((tampered / "ppm.json").read_text())
    raw["bias"] += 1.0
    bundle_io.write_json(tampered / "ppm.json", raw)
    with pytest.raises(NotReady, match="manifest hash"):
        Predictor(tampered)
    raw["linear"][3] = float("inf")  # even with a matching manifest, the served form must be finite
    (tampered / "ppm.json").write_text(json.dumps(raw))
    _refinalise(tampered)
    with pytest.raises(NotReady, match="non-finite"):
        Predictor(tampered)


def test_hot_reload_does_not_drop_in_flight_calls(built):
    a, _, c = built
    pred = Predictor(a.bundle_path)
    expected = {a.bundle_version: pred.routing_model().quadratic[1]}
    expected[c.bundle_version] = Predictor(c.bundle_path).routing_model().quadratic[1]
    assert not np.allclose(*expected.values())
    errors: list[BaseException] = []
    seen: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        try:
            while not stop.is_set():
                model = pred.routing_model()  # one snapshot: version and form always from the same bundle
                assert np.array_equal(model.quadratic[1], expected[model.bundle_version]), "a snapshot mixed two bundles"
                seen.add(list(expected).index(model.bundle_version))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(12):
        pred.load(c.bundle_path if i % 2 == 0 else a.bundle_path)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert pred.info().bundle_version == a.bundle_version


def test_cli_main_builds(tmp_path, cache, capsys, monkeypatch):
    import hybridpref.offline.bundle.builder as builder

    monkeypatch.setattr(builder, "tag_with_tagger", lambda profile: (hand_tags, None))
    out = tmp_path / "cli"
    rc = cli_main(
        [
            "predictor",
            "build",
            "--pool",
            str(FIXTURE),
            "--candidates",
            "12",
            "--seed",
            "1",
            "--out",
            str(out),
            "--folds",
            "3",
            "--proxy-seeds",
            "1",
            "--proxy-steps",
            "10",
            "--holdout-fraction",
            "0.25",
            "--no-progress",
            "--gold",
            f"extra={FIXTURE}#source~fixture#max=10",
        ]
    )
    assert rc == 0
    assert "CV Spearman" in capsys.readouterr().out
    assert Predictor(out).info().loaded
    metrics = bundle_io.read_json(out, "metrics.json")
    assert set(metrics["pools"]["predictor_pool"]["gold_sets"]) == {"heldout", "extra"}


def test_gold_spec_parsing():
    spec = parse_gold_spec("adv=/d/llmbar/pairs.jsonl#source~Natural|Adversarial#max=5")
    assert (spec.name, spec.path, spec.sources, spec.max_rows) == ("adv", "/d/llmbar/pairs.jsonl", ["Natural", "Adversarial"], 5)
    assert parse_gold_spec("/d/pandalm/pairs.jsonl#unanimous").name == "pandalm"
    with pytest.raises(InvalidInput):
        parse_gold_spec("x.jsonl#weird")


def test_default_bundle_loads_and_scores_sanely():
    from hybridpref.predictor.core import default_bundle_path

    pred = Predictor(default_bundle_path())
    info = pred.info()
    assert info.loaded and info.bundle_version.startswith("ppm-") and info.vocabulary == list(TAG_NAMES)
    assert info.data_fingerprint.startswith("data-") and "cv_spearman" in info.metrics
    assert info.metrics["onnx_parity_max_abs_diff"] <= 1e-5
    metrics = bundle_io.read_json(default_bundle_path(), "metrics.json")
    assert {p["name"] for p in bundle_io.read_json(default_bundle_path(), "fingerprints.json")["pools"]} == set(metrics["pools"])
    assert len(metrics["pools"]) >= 2 and set(metrics["leave_one_pool_out"]["pools"]) == set(metrics["pools"])
    for pool in metrics["pools"].values():
        # A batch like the pool: nothing routed ~ its all-LM fit, everything routed ~ its all-human fit, on the
        # served scale (the target is centred per pool; the bias adds back the mean of the pool means).
        rates = np.array([pool["tag_rates"].get(t, 0.0) for t in TAG_NAMES])
        shift = metrics["centring"]["offset"] - pool["target"]["mean"]
        bias, linear, quad = pred.routing_model().quadratic
        scores = QuadraticPPM(bias, linear, quad).predict(np.vstack([np.zeros(NUM_TAGS), rates, rates / 2]))
        assert abs(scores[0] - pool["target"]["all_lm"] - shift) < 0.03
        assert abs(scores[1] - pool["target"]["all_human"] - shift) < 0.03
        assert np.all((scores > 0.4) & (scores < 0.7))


def test_builder_bad_inputs(tmp_path, capsys):
    assert cli_main(["predictor", "build", "--pool", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: pool: ")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\nnot json\n')
    assert cli_main(["predictor", "build", "--pool", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(InvalidInput) as err:
        build_bundle(BuildConfig(pool=str(FIXTURE), out=str(tmp_path / "o"), holdout_fraction=0.99), tag_fn=hand_tags)
    assert err.value.violations[0].field == "holdout_fraction"


def test_builder_config_checked_before_work(tmp_path):
    with pytest.raises(InvalidInput) as err:
        build_bundle(
            BuildConfig(pool=str(FIXTURE), out=str(tmp_path), candidates=1, variants=("gbm",), proxy_seeds=0), tag_fn=hand_tags
        )
    assert {v.field for v in err.value.violations} == {"candidates", "variants", "proxy_seeds"}
