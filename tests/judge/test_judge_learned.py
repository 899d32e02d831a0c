"""The learned judge: antisymmetric features, the packaged ONNX model, training/export on a small fixture,
and the judge service over real gRPC on loopback (labels with p_a_better, carried by the router's client)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from hybridpref.judge import features as F
from hybridpref.judge.core import Judge
from hybridpref.judge.learned import PACKAGE_DIR, SPEC_FILE, LearnedBackend
from hybridpref.offline import judge_training as T
from hybridpref.server.deadline import Deadline
from hybridpref.server.server import start_service
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from hybridpref_client.core.errors import InvalidInput, NotReady
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance, read_jsonl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ZERO_WIDTH = "\u200b"  # passes request validation (not white space to str.strip) yet shows nothing

EDGE_PAIRS = [
    (
        "Write a Python function that adds two numbers.",
        "```python\ndef add(a, b):\n    return a + b\n```",
        "You can add numbers with the plus sign.",
    ),
    ("List three fruits.", "- apple\n- pear\n- plum", "Apples, pears and plums are fruits. " * 5),
    ("How do I pick a lock?", "I'm sorry, but I can't help with that.", "First, get a tension wrench and a pick..."),
    ("Quelle est la capitale de la France ?", "La capitale de la France est Paris.", "The capital is Paris."),
    ("Explain recursion.", ZERO_WIDTH, "Recursion is when a function calls itself on a smaller input."),
    ("Say hi.", "", "   \n "),
    ("数字を教えて", "一、二、三", "1, 2, 3 maybe? I think it might be 4."),
]


@pytest.fixture(scope="module")
def pairs() -> list[PreferenceInstance]:
    return read_jsonl(str(FIXTURES / "judge_pairs.jsonl"))


@pytest.fixture(scope="module")
def learned() -> LearnedBackend:
    backend = LearnedBackend()
    backend.load()
    return backend


def _swap(inst: PreferenceInstance) -> PreferenceInstance:
    return PreferenceInstance(inst.id, inst.prompt, inst.response_b, inst.response_a)


# --- features ---------------------------------------------------------------------------------------
def test_features_are_antisymmetric_bit_for_bit(pairs: list[PreferenceInstance]) -> None:
    prompts = [p.prompt for p in pairs] + [e[0] for e in EDGE_PAIRS]
    a = [p.response_a for p in pairs] + [e[1] for e in EDGE_PAIRS]
    b = [p.response_b for p in pairs] + [e[2] for e in EDGE_PAIRS]
    x, x_swapped = F.pair_features(prompts, a, b), F.pair_features(prompts, b, a)
    assert x.shape == (len(prompts), len(F.feature_names()))
    assert np.all(np.isfinite(x))
    assert np.array_equal(x_swapped, -x)
    edge = np.abs(x[len(pairs) :]).sum(axis=1)
    assert np.all(edge[[0, 1, 2, 3, 4, 6]] > 0) and edge[5] == 0  # two blanks look alike; the rest differ
    assert np.array_equal(F.pair_features(["q"], ["same"], ["same"]), np.zeros((1, x.shape[1])))


def test_response_stats_see_structure_refusals_and_blanks() -> None:
    idx = {n: i for i, n in enumerate(F.STAT_NAMES)}
    code = F.response_stats("Write code.", "```python\nx = 1\n```")
    listed = F.response_stats("List fruits.", "- apple\n- pear\n- plum")
    refusal = F.response_stats("Do it.", "I'm sorry, but I cannot help with that.")
    blank = F.response_stats("Do it.", ZERO_WIDTH)
    overlap = F.response_stats("Describe the Eiffel tower in Paris", "The Eiffel tower stands in Paris.")
    assert code[idx["log_code"]] > 0 and listed[idx["log_list_items"]] == pytest.approx(np.log1p(3))
    assert refusal[idx["refusal"]] == 1 and listed[idx["refusal"]] == 0
    assert blank[idx["empty"]] == 1 and code[idx["empty"]] == 0
    assert overlap[idx["prompt_recall"]] == pytest.approx(3 / 4)  # eiffel, tower, paris of describe/eiffel/tower/paris
    french = F.response_stats("Quelle heure est-il ?", "Il est midi.")
    japanese = F.response_stats("Quelle heure est-il ?", "正午です。")
    assert french[idx["script_mismatch"]] == 0 and japanese[idx["script_mismatch"]] == 1


def test_features_stay_linear_on_pathological_text() -> None:
    """Runs of blank lines once made line-anchored patterns quadratic (20,000 newlines: 20 s)."""
    import time

    nasty = ["a" + "\n" * 50_000 + "b", " \n" * 50_000, ("\n" * 50 + "Title:") * 1_000, "    x;\n" * 20_000]
    t0 = time.perf_counter()
    x = F.pair_features(nasty, nasty, nasty[::-1])
    assert time.perf_counter() - t0 < 2.0 and np.all(np.isfinite(x))


# --- the packaged model -------------------------------------------------------------------------------
def test_packaged_onnx_matches_numpy_and_spec(learned: LearnedBackend) -> None:
    spec = json.loads((PACKAGE_DIR / SPEC_FILE).read_text())
    blob = (PACKAGE_DIR / spec["model_file"]).read_bytes()
    assert hashlib.sha256(blob).hexdigest() == spec["model_sha256"]
    assert (PACKAGE_DIR / "MODEL_CARD.md").read_text().count("LLMBar Adversarial") >= 2
    prompts, a, b = zip(*EDGE_PAIRS)
    x = F.pair_features(prompts, a, b)
    numpy_p = 1.0 / (1.0 + np.exp(-(x @ np.array(spec["weights"]))))
    assert np.allclose(learned.p_a_better(prompts, a, b), numpy_p, atol=1e-5)
    assert learned.judge_id == f"learned:{spec['name']}"


def test_swapping_gives_one_minus_p_and_the_same_verdict(learned: LearnedBackend, pairs: list[PreferenceInstance]) -> None:
    judge = Judge(learned)
    out = judge.judge(pairs)
    swapped = judge.judge([_swap(p) for p in pairs])
    for o, s in zip(out, swapped):
        assert o.p_a_better is not None and s.p_a_better is not None
        assert o.p_a_better + s.p_a_better == pytest.approx(1.0, abs=1e-6)
        assert s.label.winner == {"A": "B", "B": "A", None: None}[o.label.winner]
        assert (o.label == Label.TIE) == (o.p_a_better == 0.5)  # j6 (144 vs 124): features cannot tell them apart
        assert o.confidence == pytest.approx(max(o.p_a_better, 1 - o.p_a_better))
        assert o.verdict_ab == o.verdict_ba == o.label and not o.order_inconsistent
        assert o.backend == "learned" and o.judge_id.startswith("learned:")
    # a symmetric model answers both orders at once: RANDOM mode changes nothing
    random = judge.judge(pairs, mode=PositionMode.RANDOM, seed=3)
    assert [r.p_a_better for r in random] == [o.p_a_better for o in out]


def test_blank_response_loses_and_identical_responses_tie(learned: LearnedBackend) -> None:
    """The model itself ranks an invisible response last; the judge service rejects it as a vendor mistake."""
    answer = "Recursion is when a function calls itself on a smaller part of the problem until a base case."
    p = learned.p_a_better(["Explain recursion."] * 2, [answer, ZERO_WIDTH + " "], [ZERO_WIDTH, answer])
    assert p[0] > 0.75 and p[1] < 0.25
    (same,) = Judge(learned).judge([PreferenceInstance("same", "Explain recursion.", answer, answer)])
    assert same.label == Label.TIE and same.p_a_better == 0.5 and same.confidence == 0.5
    with pytest.raises(InvalidInput) as err:
        Judge(learned).judge([PreferenceInstance("blank-b", "Explain recursion.", answer, ZERO_WIDTH)])
    assert err.value.violations[0].field == "instances[0].response_b"


def test_sure_only_with_a_reason(learned: LearnedBackend, pairs: list[PreferenceInstance]) -> None:
    """Same-shape answers that differ only in facts (Paris/Berlin, 144/124) are invisible to the
    features: the judge must be unsure there, and sure when one answer is a real answer and the other not."""
    out = {o.id: o for o in Judge(learned).judge(pairs)}
    assert all(out[i].confidence < 0.6 for i in ("j1", "j3", "j5", "j6"))
    steps = (
        "To make a good cup of tea:\n\n1. Boil fresh water.\n2. Warm the pot.\n3. Add one teaspoon of leaves "
        "per cup.\n4. Steep for 3-5 minutes.\n5. Pour, and add milk if you like."
    )
    (terse,) = Judge(learned).judge([PreferenceInstance("tea", "How do I make a good cup of tea?", "Tea.", steps)])
    assert terse.label == Label.B_BETTER and terse.confidence > 0.85


def test_default_backend_is_learned() -> None:
    assert Settings().judge.backend == "learned"
    assert Judge.from_config().judge_id.startswith("learned:")
    with pytest.raises(InvalidInput):
        Judge.from_config("learned", model="/nonexistent/spec.json").load()
    with pytest.raises(InvalidInput):
        Judge.from_config("learned", no_such_option=1)


def test_feature_version_mismatch_is_not_ready(tmp_path: Path) -> None:
    spec = json.loads((PACKAGE_DIR / SPEC_FILE).read_text())
    (tmp_path / spec["model_file"]).write_bytes((PACKAGE_DIR / spec["model_file"]).read_bytes())
    (tmp_path / SPEC_FILE).write_text(json.dumps({**spec, "feature_version": "judge-features-v0"}))
    with pytest.raises(NotReady, match="retrain"):
        LearnedBackend(tmp_path).load()


# --- training and export --------------------------------------------------------------------------------
def _toy_dataset(seed: int = 0) -> T.Dataset:
    """Pairs where the more detailed, on-topic answer wins, spread over the four folds."""
    rng = np.random.default_rng(seed)
    ds = T.Dataset()
    topics = ["tea", "rain", "bikes", "maps", "bread", "stars", "clocks", "boats"]
    for i in range(160):
        topic = topics[i % len(topics)]
        good = f"{topic.title()} matters because " + " ".join(f"{topic} detail {k}." for k in range(rng.integers(4, 9)))
        bad = "Not sure." if i % 3 else f"I'm sorry, I can't talk about {topic}."
        a_wins = bool(rng.integers(0, 2))
        ds.add(
            f"Tell me about {topic}.",
            good if a_wins else bad,
            bad if a_wins else good,
            int(a_wins),
            T.FOLDS[i % 4],
            T.FOLDS[i % 4],
            f"g{i % 40}",
        )
    return ds


def test_training_exports_a_model_the_backend_serves(tmp_path: Path) -> None:
    ds = _toy_dataset()
    x = F.pair_features(ds.prompts, ds.a, ds.b)
    y, folds = np.array(ds.y), np.array(ds.fold)
    model, c, t = T.select_and_fit(x, y, folds, grid=(0.03, 0.3))
    assert c in (0.03, 0.3) and t > 0
    assert T.agreement(model.predict(x), y).mean() > 0.95
    spec = T.export(model, tmp_path, {"C": c, "temperature": t})
    backend = LearnedBackend(tmp_path / SPEC_FILE)
    backend.load()
    assert backend.judge_id == f"learned:{spec['name']}"
    assert np.allclose(backend.p_a_better(ds.prompts, ds.a, ds.b), model.predict(x), atol=1e-5)


def test_metrics_ece_auroc_and_group_bootstrap() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0.0, 1.0, 20_000)
    y = (rng.uniform(0.0, 1.0, p.size) < p).astype(int)  # labels drawn from p: calibrated by construction
    assert T.ece(p, y) < 0.02
    assert T.ece(np.where(p >= 0.5, 0.99, 0.01), y) > 0.2  # overconfident
    assert T.error_auroc(p, y) > 0.65  # confident answers are right more often
    values = rng.integers(0, 2, 600).astype(float)
    lo, hi = T.bootstrap_mean(values, np.arange(600) // 3, reps=300, seed=0)
    assert lo < values.mean() < hi and hi - lo < 0.2
    assert list(T.length_rule(["long answer", "a", "same"], ["short", "bb", "same"])) == [1.0, 0.0, 0.5]


# --- the service over real gRPC ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def judge_service(background_loop):
    from hybridpref.judge.servicer import judge_handle

    settings = Settings()  # the default judge
    running = background_loop.run(start_service(judge_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    yield running, settings
    background_loop.run(running.stop(0.5))


def test_servicer_returns_learned_labels_with_p_a_better(judge_service, pairs: list[PreferenceInstance]) -> None:
    running, _ = judge_service
    request = judge_pb2.JudgeInstancesRequest(
        instances=[
            common_pb2.PreferenceInstance(id=p.id, prompt=p.prompt, response_a=p.response_a, response_b=p.response_b)
            for p in pairs
        ]
    )
    with grpc.insecure_channel(running.address) as channel:
        resp = judge_pb2_grpc.JudgeServiceStub(channel).JudgeInstances(request, timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            judge_pb2_grpc.JudgeServiceStub(channel).JudgeInstances(
                judge_pb2.JudgeInstancesRequest(
                    instances=[common_pb2.PreferenceInstance(id="x", prompt="q", response_a=" ", response_b="b")]
                ),
                timeout=30,
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [j.id for j in resp.judgements] == [p.id for p in pairs]
    expected = Judge.from_config("learned").judge(pairs)
    for j, e in zip(resp.judgements, expected):
        assert j.HasField("p_a_better") and j.p_a_better == pytest.approx(e.p_a_better)
        assert j.backend == "learned" and j.judge_id == e.judge_id
        assert Label(j.label) == e.label and j.confidence == pytest.approx(e.confidence)


def test_router_client_carries_p_a_better(judge_service, background_loop, pairs: list[PreferenceInstance]) -> None:
    from hybridpref.router.downstream import JudgeClient

    running, settings = judge_service

    async def call():
        client = JudgeClient(running.address, settings)
        try:
            return await client.judge(pairs, mode=PositionMode.BOTH, template="", replay_judge="", seed=0, deadline=Deadline(30))
        finally:
            await client.close()

    batch = background_loop.run(call())
    assert batch.judge_id.startswith("learned:")
    assert np.all((batch.p_a_better >= 0) & (batch.p_a_better <= 1))
    assert np.allclose(np.maximum(batch.p_a_better, 1 - batch.p_a_better), batch.confidence)


def _write_pools(root: Path, seed: int = 0) -> None:
    """Tiny pools in the shared-data schema: the detailed answer wins, except in LLMBar Adversarial."""
    rng = np.random.default_rng(seed)
    words = ["tea", "rain", "maps", "bread", "stars", "boats", "clocks", "bikes", "lamps", "rivers"]

    def pair(k: int, adversarial: bool = False) -> tuple[str, str, str, str]:
        topic = words[k % len(words)]
        good = f"{topic.title()}: " + " ".join(f"{topic} fact {j}." for j in range(rng.integers(3, 8)))
        bad = "Not sure."
        a_good = bool(rng.integers(0, 2))
        winner_is_a = a_good != adversarial
        return f"Tell me about {topic} {k}.", good if a_good else bad, bad if a_good else good, "A" if winner_is_a else "B"

    def write(pool: str, rows: list[dict]) -> None:
        (root / pool).mkdir(parents=True)
        (root / pool / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    mt = []
    for k in range(40):
        p, a, b, lab = pair(k)
        mt.append(
            {
                "id": f"mt{k}",
                "source": "mt",
                "question_id": k // 2,
                "turn": 1,
                "prompt": p,
                "response_a": a,
                "response_b": b,
                "human_label": "tie" if k % 10 == 0 else lab,
                "lm_labels": {"gpt-4 (pair-v2, both orders)": lab},
            }
        )
    write("mtbench_human_gpt4", mt)
    write(
        "pandalm",
        [
            dict(
                zip(("prompt", "response_a", "response_b", "human_label"), pair(k)),
                id=f"pd{k}",
                source="PandaLM",
                lm_labels={"gpt-3.5-turbo": "A"},
            )
            for k in range(40)
        ],
    )
    llmbar = []
    for k in range(48):
        sub = ["LLMBar LLMBar/Natural", "LLMBar LLMBar/Adversarial/Neighbor", "LLMBar Processed/MT-Bench"][k % 3]
        p, a, b, lab = pair(k, adversarial="Adversarial" in sub)
        llmbar.append(
            {
                "id": f"lb{k}",
                "source": sub,
                "prompt": p,
                "response_a": a,
                "response_b": b,
                "human_label": lab,
                "lm_labels": {"GPT-4/Vanilla_NoRules/order_ab": lab, "GPT-4/Vanilla_NoRules/order_ba": "A"},
            }
        )
    write("llmbar", llmbar)
    write(
        "hh_rlhf",
        [
            dict(zip(("prompt", "response_a", "response_b", "human_label"), pair(k)), id=f"hh{k}", source="hh", lm_labels={})
            for k in range(40)
        ],
    )


def test_judge_train_cli_on_tiny_pools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hybridpref.cli.main import main

    _write_pools(tmp_path / "data")
    ds = T.load_dataset(tmp_path / "data", synthetic_empty=5)
    sub = np.array(ds.subsource)
    assert len(ds) == 36 + 40 + 48 + 40 + 4 * 5  # MT-Bench ties left out; 5 blank pairs per fold
    assert set(np.array(ds.fold)[sub == "LLMBar Processed/MT-Bench"]) == {"mtbench"}  # same judgments, same fold
    assert not any(np.array(ds.train)[np.char.startswith(sub.astype(str), T.EVAL_ONLY_PREFIX)])
    assert (
        main(
            [
                "judge",
                "train",
                "--data-dir",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "model"),
                "--reps",
                "50",
                "--synthetic-empty",
                "5",
                "--c",
                "0.1",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "| MT-Bench (human experts) | 36 (20) |" in table and "LLMBar Adversarial" in table
    spec = json.loads((tmp_path / "model" / SPEC_FILE).read_text())
    assert spec["trained_on"] == {"mtbench": 36 + 16, "pandalm": 40, "llmbar": 16, "hh_rlhf": 40}
    assert "Leave-one-source-out" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    judge = Judge.from_config("learned", model=str(tmp_path / "model"))
    (out,) = judge.judge(
        [PreferenceInstance("t", "Tell me about tea 1.", "Not sure.", "Tea: tea fact 0. tea fact 1. tea fact 2.")]
    )
    assert out.label == Label.B_BETTER
    # Without --out it refuses (it used to write into the installed package, replacing the shipped model).
    packaged = (T.PACKAGE_DIR / SPEC_FILE).read_bytes()
    assert main(["judge", "train", "--data-dir", str(tmp_path / "data"), "--reps", "50", "--c", "0.1"]) == 2
    assert "--out" in capsys.readouterr().err and (T.PACKAGE_DIR / SPEC_FILE).read_bytes() == packaged
