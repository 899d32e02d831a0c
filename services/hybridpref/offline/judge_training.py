"""Train, evaluate and export the learned judge (:func:`train`; ``hybridpref judge train``).

Data: the human labels of the public pools in ``../shared/data`` (ties and unlabelled rows excluded):
MT-Bench expert votes (``mtbench_human_gpt4``, plus LLMBar's re-processed MT-Bench subset, which repeats
the same judgments: both sit in one fold), PandaLM majorities, LLMBar gold labels (Natural,
Adversarial, LLMEval^2, FairEval) and HH-RLHF harmless-base ``chosen``.

Evaluation is leave-one-source-out: for each fold the model (regularisation chosen and temperature
fitted by an inner leave-one-source-out over the remaining folds) never saw the fold it is scored on.
Agreement with human labels gets a 95% bootstrap interval over prompt groups (MT-Bench question,
otherwise the prompt text), next to the "prefer the longer response" rule and the recorded LM judges;
calibration as ECE (10 bins of confidence) and the AUROC with which confidence separates the judge's
right answers from its errors.

The shipped model is trained on all folds; its temperature is the one that calibrates the
leave-one-source-out predictions. Export: an ONNX graph ``features @ w -> sigmoid`` (no intercept:
symmetric), a JSON spec (feature version, names, metrics) and the model card's table.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.judge import features as F

PACKAGE_DIR = Path(F.__file__).resolve().parent  # the judge package: the model ships with it
MODEL_FILE = "learned_judge.onnx"
SPEC_FILE = "learned_judge.json"
MODEL_NAME = "hybridpref-judge-v1"
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)

# Fold of every training source; LLMBar's MT-Bench subset shares MT-Bench's fold (same human judgments).
FOLDS = ("mtbench", "pandalm", "llmbar", "hh_rlhf")
# Rows of the report table: (name, fold, predicate on the row's subsource).
REPORT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("MT-Bench (human experts)", "mtbench", "mtbench_human_gpt4"),
    ("PandaLM (3-annotator majority)", "pandalm", "pandalm"),
    ("LLMBar Natural", "llmbar", "LLMBar LLMBar/Natural"),
    ("LLMBar Adversarial", "llmbar", "LLMBar LLMBar/Adversarial"),
    ("LLMBar LLMEval^2 + FairEval", "llmbar", "LLMBar Processed/L|LLMBar Processed/F"),
    ("HH-RLHF harmless (chosen)", "hh_rlhf", "hh_rlhf"),
)
RECORDED_LM = {
    "mtbench_human_gpt4": "gpt-4 (pair-v2, both orders)",
    "pandalm": "gpt-3.5-turbo",
    "llmbar": "GPT-4/Vanilla_NoRules",
}


@dataclass
class Dataset:
    """Non-tie human-labelled pairs, aligned arrays; ``y`` = 1 when A is preferred."""

    prompts: list[str] = field(default_factory=list)
    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    y: list[int] = field(default_factory=list)
    fold: list[str] = field(default_factory=list)
    subsource: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    lm: list[int] = field(default_factory=list)  # recorded LM judge's sign (+1 A, -1 B, 0 tie/inconsistent/none)
    has_lm: list[bool] = field(default_factory=list)
    train: list[bool] = field(default_factory=list)  # False: evaluation only (LLMBar Adversarial)
    evaluate: list[bool] = field(default_factory=list)  # False: training only (synthetic empty-response pairs)

    def add(
        self,
        prompt: str,
        a: str,
        b: str,
        y: int,
        fold: str,
        subsource: str,
        group: str,
        lm: int = 0,
        has_lm: bool = False,
        train: bool = True,
        evaluate: bool = True,
    ) -> None:
        for name, value in (
            ("prompts", prompt),
            ("a", a),
            ("b", b),
            ("y", y),
            ("fold", fold),
            ("subsource", subsource),
            ("group", group),
            ("lm", lm),
            ("has_lm", has_lm),
            ("train", train),
            ("evaluate", evaluate),
        ):
            getattr(self, name).append(value)

    def __len__(self) -> int:
        return len(self.y)


def _lm_sign(row: dict[str, Any], key: str) -> tuple[int, bool]:
    labels = row.get("lm_labels") or {}
    sign: dict[str | None, int] = {"A": 1, "B": -1}
    if key in labels:
        return sign.get(labels[key], 0), True
    ab, ba = labels.get(key + "/order_ab"), labels.get(key + "/order_ba")
    if ab is None and ba is None:
        return 0, False
    return (sign.get(ab, 0) if sign.get(ab, 0) == sign.get(ba, 0) else 0), True


# LLMBar Adversarial is built so that the superficially better output loses: a surface-feature model
# trained on it learns "shorter wins", which inverts the signal everywhere else (measured: PandaLM +
# LLMBar -> MT-Bench 44% agreement, PandaLM alone -> 72%). It is an out-of-distribution diagnostic.
EVAL_ONLY_PREFIX = "LLMBar LLMBar/Adversarial"
_BLANKS = ("", " ", "\n", "\u200b", " \n\t")


def load_dataset(data_dir: Path, *, synthetic_empty: int = 60, seed: int = 0) -> Dataset:
    """Read the four pools; rows without a non-tie human label are left out.

    ``synthetic_empty`` training-only pairs per fold pit a real winning response against a blank one
    (the data has almost none, and "an empty response loses" must hold everywhere)."""
    ds = Dataset()
    for pool in ("mtbench_human_gpt4", "pandalm", "llmbar", "hh_rlhf"):
        path = data_dir / pool / "pairs.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; pass --data-dir (the shared data folder)")
        for line in path.open(encoding="utf-8"):
            row = json.loads(line)
            label = row.get("human_label")
            if label not in ("A", "B"):
                continue
            prompt = row.get("prompt") or ""
            sub = pool if pool != "llmbar" else row.get("source", "llmbar")
            fold = "mtbench" if pool == "mtbench_human_gpt4" or sub == "LLMBar Processed/MT-Bench" else pool
            group = f"mtbench-q{row['question_id']}" if "question_id" in row else f"{fold}:{prompt}"
            lm, has = _lm_sign(row, RECORDED_LM.get(pool, ""))
            ds.add(
                str(prompt),
                _text(row.get("response_a")),
                _text(row.get("response_b")),
                int(label == "A"),
                fold,
                sub,
                group,
                lm,
                has,
                train=not sub.startswith(EVAL_ONLY_PREFIX),
            )
    _add_blank_pairs(ds, synthetic_empty, seed)
    return ds


def _text(value: Any) -> str:
    return "" if value is None else str(value)  # 6 PandaLM responses are a JSON boolean


def _add_blank_pairs(ds: Dataset, per_fold: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(ds)
    for fold in FOLDS:
        rows = [i for i in range(n) if ds.fold[i] == fold and ds.train[i]]
        for k, i in enumerate(rng.choice(rows, size=min(per_fold, len(rows)), replace=False)):
            winner = ds.a[i] if ds.y[i] == 1 else ds.b[i]
            blank = _BLANKS[k % len(_BLANKS)]
            a_wins = bool(rng.integers(0, 2))
            ds.add(
                ds.prompts[i],
                winner if a_wins else blank,
                blank if a_wins else winner,
                int(a_wins),
                fold,
                "synthetic blank",
                f"synthetic:{i}",
                evaluate=False,
            )


# --- model -----------------------------------------------------------------------------------------
@dataclass
class LinearJudge:
    """``p(A > B) = sigmoid(x @ w)``; ``w`` already holds feature scaling and temperature."""

    w: np.ndarray

    def logit(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(x)))


def _source_weights(folds: np.ndarray) -> np.ndarray:
    """Each fold weighs the same in total, so HH-RLHF's 2,300 rows do not drown the others."""
    out = np.ones(len(folds))
    names, counts = np.unique(folds, return_counts=True)
    for name, count in zip(names, counts):
        out[folds == name] = len(folds) / (len(names) * count)
    return out


def fit(x: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float) -> LinearJudge:
    """L2 logistic regression without intercept on scaled features (scale only: centring would break symmetry).

    Without an intercept on antisymmetric features, a swapped copy of a pair has the same loss as the
    pair itself, so the fit has no positional prior (MT-Bench's stored B wins 78% of votes)."""
    from sklearn.linear_model import LogisticRegression

    scale = np.sqrt(np.mean(x**2, axis=0))
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, fit_intercept=False, max_iter=2000)
    model.fit(x / scale, y, sample_weight=_source_weights(folds))
    return LinearJudge(model.coef_[0] / scale)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the log loss of ``sigmoid(logit / T)`` (a 1-D search; keeps symmetry)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def out_of_source_logits(x: np.ndarray, y: np.ndarray, folds: np.ndarray, c: float) -> np.ndarray:
    """Logit of every row from a model fitted on the other folds."""
    out = np.zeros(len(y))
    for f in np.unique(folds):
        test = folds == f
        out[test] = fit(x[~test], y[~test], folds[~test], c).logit(x[test])
    return out


def select_and_fit(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, grid: Sequence[float] = C_GRID
) -> tuple[LinearJudge, float, float]:
    """Choose C by leave-one-source-out log loss over ``folds``, fit on all, temper; returns (model, C, T).

    C and the temperature are scored on the out-of-source predictions of the helpfulness folds only:
    HH-RLHF harmless is trained on (its dialogue interactions) but is a different objective, on which the
    judge is known to fail out of source; calibrating on it would turn every label into a coin."""
    best: tuple[float, float, np.ndarray] | None = None
    cal = folds != "hh_rlhf"
    for c in grid:
        z = out_of_source_logits(x, y, folds, c)[cal]
        t = fit_temperature(z, y[cal])
        zt = z / t
        loss = float(np.mean(np.logaddexp(0.0, -zt) * y[cal] + np.logaddexp(0.0, zt) * (1 - y[cal])))
        if best is None or loss < best[0]:
            best = (loss, c, z)
    assert best is not None
    _, c, z = best
    t = fit_temperature(z, y[cal])
    model = fit(x, y, folds, c)
    return LinearJudge(model.w / t), c, t


# --- metrics ---------------------------------------------------------------------------------------
def ece(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the confidence ``max(p, 1-p)`` for the predicted side."""
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (y == 1)).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(p) * abs(conf[m].mean() - correct[m].mean())
    return float(total)


def error_auroc(p: np.ndarray, y: np.ndarray) -> float:
    """AUROC of the confidence for telling right answers from errors (0.5 = confidence says nothing)."""
    from sklearn.metrics import roc_auc_score

    correct = (p >= 0.5) == (y == 1)
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(correct, np.maximum(p, 1 - p)))


def bootstrap_mean(values: np.ndarray, groups: np.ndarray, *, reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``values.mean()`` resampling whole prompt groups."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(float)
    draws = rng.integers(0, len(uniq), size=(reps, len(uniq)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def length_rule(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """P(A) of "prefer the longer response" (1, 0, or 0.5 when equally long)."""
    la = np.array([len(s.strip()) for s in a])
    lb = np.array([len(s.strip()) for s in b])
    return np.where(la > lb, 1.0, np.where(la < lb, 0.0, 0.5))


def agreement(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row agreement: 1 right, 0 wrong, 0.5 for an exact 0.5 (a coin)."""
    return np.where(p == 0.5, 0.5, ((p > 0.5) == (y == 1)).astype(float))


# --- the study -------------------------------------------------------------------------------------
def leave_one_source_out(
    ds: Dataset, x: np.ndarray, *, seed: int = 0, reps: int = 1000, grid: Sequence[float] = C_GRID
) -> dict[str, Any]:
    """Out-of-source predictions for every row and the report table."""
    y = np.array(ds.y)
    folds = np.array(ds.fold)
    train = np.array(ds.train)
    p = np.full(len(y), np.nan)
    chosen: dict[str, dict[str, float]] = {}
    for f in FOLDS:
        test = folds == f
        fit_rows = train & ~test
        model, c, t = select_and_fit(x[fit_rows], y[fit_rows], folds[fit_rows], grid)
        p[test] = model.predict(x[test])
        chosen[f] = {"C": c, "temperature": t}
    return {"p": p, "table": report_table(ds, p, seed=seed, reps=reps), "per_fold": chosen}


def report_table(ds: Dataset, p: np.ndarray, *, seed: int = 0, reps: int = 1000) -> list[dict[str, Any]]:
    y = np.array(ds.y)
    sub = np.array(ds.subsource)
    groups = np.array(ds.group)
    lm = np.array(ds.lm)
    has_lm = np.array(ds.has_lm)
    length = length_rule(ds.a, ds.b)
    rows = []
    for name, _, pattern in REPORT_ROWS:
        m = np.zeros(len(y), bool)
        for prefix in pattern.split("|"):
            m |= np.char.startswith(sub.astype(str), prefix)
        m &= np.array(ds.evaluate)
        if not m.any():
            continue
        agree = agreement(p[m], y[m])
        lo, hi = bootstrap_mean(agree, groups[m], reps=reps, seed=seed)
        l_agree = agreement(length[m], y[m])
        l_lo, l_hi = bootstrap_mean(l_agree, groups[m], reps=reps, seed=seed)
        lm_m = m & has_lm
        rows.append(
            {
                "set": name,
                "n": int(m.sum()),
                "groups": int(len(np.unique(groups[m]))),
                "agreement": float(agree.mean()),
                "ci": [lo, hi],
                "length_rule": float(l_agree.mean()),
                "length_ci": [l_lo, l_hi],
                "recorded_lm": float(np.mean(np.sign(lm[lm_m]) == np.where(y[lm_m] == 1, 1, -1))) if lm_m.any() else None,
                "ece": ece(p[m], y[m]),
                "error_auroc": error_auroc(p[m], y[m]),
                "mean_confidence": float(np.mean(np.maximum(p[m], 1 - p[m]))),
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| held-out set | n (groups) | learned judge | length rule | recorded LM | ECE | error AUROC |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lm = f"{100 * r['recorded_lm']:.1f}%" if r["recorded_lm"] is not None else "-"
        lines.append(
            f"| {r['set']} | {r['n']} ({r['groups']}) | {100 * r['agreement']:.1f}% "
            f"[{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}] | {100 * r['length_rule']:.1f}% "
            f"[{100 * r['length_ci'][0]:.1f}, {100 * r['length_ci'][1]:.1f}] | {lm} | {r['ece']:.3f} | {r['error_auroc']:.3f} |"
        )
    return "\n".join(lines)


# --- export ----------------------------------------------------------------------------------------
def to_onnx(w: np.ndarray) -> bytes:
    """``p_a_better = sigmoid(features @ w)`` as an ONNX graph (opset 13); input ``features`` (n, d) float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = len(w)
    weights = numpy_helper.from_array(w.astype(np.float32).reshape(d, 1), name="w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p"]),
            helper.make_node("Flatten", ["p"], ["p_flat"], axis=0),
            helper.make_node("Squeeze", ["p_flat", "axes0"], ["p_a_better"]),
        ],
        MODEL_NAME,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info("p_a_better", TensorProto.FLOAT, ["n"])],
        initializer=[weights, numpy_helper.from_array(np.array([0], dtype=np.int64), name="axes0")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hybridpref")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export(model: LinearJudge, out_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write the ONNX model and its JSON spec into ``out_dir``; returns the spec."""
    out_dir.mkdir(parents=True, exist_ok=True)
    blob = to_onnx(model.w)
    (out_dir / MODEL_FILE).write_bytes(blob)
    spec = {
        "name": MODEL_NAME,
        "feature_version": F.FEATURE_VERSION,
        "feature_names": F.feature_names(),
        "model_file": MODEL_FILE,
        "model_sha256": hashlib.sha256(blob).hexdigest(),
        "weights": [float(v) for v in model.w],
        **meta,
    }
    (out_dir / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n")
    return spec


CARD_FILE = "MODEL_CARD.md"
_CARD = """# Model card: {name} (the learned judge)

The judge service's default backend (`HYBRIDPREF_JUDGE_BACKEND=learned`): a pairwise preference model
that says which of two responses to a prompt a human would prefer, with a calibrated probability.
Generated by `hybridpref judge train` ({created}); do not edit by hand.

## What it is
- Logistic regression without intercept on {n_features} antisymmetric features of (prompt, A, B)
  (`hybridpref.judge.features`, version `{feature_version}`): differences between the two responses in
  length (characters, words, tokens, lines), structure (list items, code, headings, numbers, paragraphs,
  emphasis), overlap with the prompt's content words, refusal / AI-disclaimer / hedging cues, question
  marks, script mismatch with the prompt, blank responses, repetition, clean endings, prompt copying;
  odd transforms of the main ones and their interaction with a dialogue-formatted prompt.
  `P(A > B) = 1 - P(B > A)` exactly: one pass answers both presentation orders.
- Calibrated by a temperature (T = {temperature:.3f}) fitted on leave-one-source-out predictions;
  L2 strength C = {C} chosen the same way. ONNX graph `MatMul -> Sigmoid` ({model_file}, sha256
  `{sha_short}`), run by onnxruntime; no embeddings, no GPU, ~ms per batch of hundreds.
- Labels: `A_BETTER` / `B_BETTER` by the probability; `TIE` only when the features cannot tell the two
  responses apart (identical texts). Unsure = a confidence near 0.5 (the router sends those to humans).

## Training data (human labels only; ties excluded)
| fold | pairs | source | licence |
|---|---|---|---|
| mtbench | {n_mtbench} | MT-Bench human expert votes (Zheng et al. 2023) + LLMBar's re-processed MT-Bench subset (same judgments, same fold) | CC-BY-4.0 / MIT |
| pandalm | {n_pandalm} | PandaLM test set v1, 3-annotator majority | Apache-2.0 |
| llmbar | {n_llmbar} | LLMBar gold: Natural, LLMEval^2, FairEval (Adversarial: evaluation only, see below) | MIT |
| hh_rlhf | {n_hh} | Anthropic HH-RLHF harmless-base test, crowdworker `chosen` | MIT |

Each fold weighs the same in the loss. {synthetic} synthetic training pairs per fold pit a real winning
response against a blank one (the data has almost none). LLMBar Adversarial is never trained on: it is
built so that the superficially better output loses, and a surface-feature model trained on it learns
"shorter wins", which inverts the signal on every other source.

## Leave-one-source-out agreement with human labels
The model scored on a row never saw that row's fold (C and temperature chosen by an inner
leave-one-source-out on the other folds). 95% bootstrap intervals over prompt groups (MT-Bench
question, otherwise the prompt), {reps} resamples. Length rule: "prefer the longer response".
Recorded LM: GPT-4 pair-v2 (MT-Bench; inconsistent orders count as wrong), gpt-3.5-turbo (PandaLM),
GPT-4 vanilla both orders (LLMBar). ECE over 10 confidence bins; error AUROC: how well the
confidence separates the judge's right answers from its errors (0.5 = not at all).

{table}

## Measured and left out
- **MiniLM embeddings** (cosine of each response with the prompt, all-MiniLM-L6-v2 as packaged, 128
  word-pieces; its difference, a soft step of it and its dialogue interaction): leave-one-source-out
  MT-Bench 74.0% vs 73.1%, PandaLM 69.0% vs 68.6%, inside the intervals, ECE/AUROC no better, at
  over 100x the time per pair (the encoder, not the features, sets the speed; benchmarks/RESULTS.md).
  Not shipped.
- **Other prompt cues** (brevity requests, code, lists, choices, maths, prompt length) interacting with
  every difference: no gain beyond noise, worse calibration. Only the dialogue interaction is kept.
- **Ensemble with the embedded SmolLM2-135M judge**: its order-averaged probability is at chance on
  these sources (45-52%, benchmarks/RESULTS.md, issue 4), so there is nothing for a blend to add; not
  fitted. A strong LM through the `openai` backend is the upgrade path.

## Known failure modes
- **LLMBar Adversarial** (and adversarial data in general): the output that looks better (longer, more
  structured, more on-topic words) is the wrong one by construction; the judge is far below chance
  there and confidently so. Do not use it to label adversarial or instruction-following-precision data.
- **HH-RLHF harmless**: the preferred response is often the shorter or the refusing one; held out, the
  judge is below chance. Safety preferences need an LM judge or humans.
- Content and correctness are invisible to it: a wrong answer that is long and well formatted wins.
  It is a better-than-length default, not a substitute for a strong LM judge (configure the `openai`
  backend for that) or for humans on low-confidence items.
- English-centric cues (refusal/hedging word lists); other languages get the length/structure signal only.
- **Routing with it buys little.** As the LM labeller for routing (each pool judged by a model trained
  without it), routing on its own confidence recovers 16% / 15% / -20% of the oracle's label-accuracy gain
  at 25% budget (MT-Bench / PandaLM / LLMBar), and the router's expected-correction model gives its
  `p_a_better` no weight (no training pool has judge probabilities). Routing pays with an LLM judge that
  gives no verdict or flips on pairs it cannot decide (docs/EVALUATION.md).
"""


def write_model_card(spec: dict[str, Any], out_dir: Path, *, synthetic: int, reps: int) -> None:
    n = spec["trained_on"]
    (out_dir / CARD_FILE).write_text(
        _CARD.format(
            name=spec["name"],
            created=spec["created"],
            n_features=len(spec["feature_names"]),
            feature_version=spec["feature_version"],
            temperature=spec["temperature"],
            C=spec["C"],
            model_file=spec["model_file"],
            sha_short=spec["model_sha256"][:16],
            n_mtbench=n["mtbench"],
            n_pandalm=n["pandalm"],
            n_llmbar=n["llmbar"],
            n_hh=n["hh_rlhf"],
            synthetic=synthetic,
            reps=reps,
            table=format_table(spec["loso"]),
        )
    )


@dataclass
class TrainingRun:
    """What :func:`train` did: the leave-one-source-out study and, unless it only studied, the exported spec."""

    pairs: int
    features: int
    study: dict[str, Any]
    spec: dict[str, Any] | None


def train(
    data_dir: Path,
    out: Path = PACKAGE_DIR,
    *,
    seed: int = 0,
    reps: int = 1000,
    export_model: bool = True,
    synthetic_empty: int = 60,
    grid: Sequence[float] = C_GRID,
    say: Callable[[str], None] = lambda _: None,
) -> TrainingRun:
    """Study (leave one source out, ``reps`` bootstrap resamples, regularisation from ``grid``) and, with
    ``export_model``, train on every fold and write the model, its spec and card to ``out``. ``say`` hears
    progress lines."""
    t0 = time.perf_counter()
    ds = load_dataset(data_dir, synthetic_empty=synthetic_empty, seed=seed)
    x = F.pair_features(ds.prompts, ds.a, ds.b)
    say(f"{len(ds)} non-tie pairs, {x.shape[1]} features ({time.perf_counter() - t0:.1f} s)")
    grid = tuple(grid)
    study = leave_one_source_out(ds, x, seed=seed, reps=reps, grid=grid)
    if not export_model:
        return TrainingRun(len(ds), x.shape[1], study, None)
    train_rows = np.array(ds.train)
    y, folds = np.array(ds.y)[train_rows], np.array(ds.fold)[train_rows]
    model, c, t = select_and_fit(x[train_rows], y, folds, grid)
    real = np.array(ds.evaluate)[train_rows]
    counts = {f: int(np.sum((folds == f) & real)) for f in FOLDS}
    spec = export(
        model,
        out,
        {
            "C": c,
            "temperature": t,
            "trained_on": counts,
            "synthetic_blank_per_fold": synthetic_empty,
            "created": time.strftime("%Y-%m-%d"),
            "loso": study["table"],
            "loso_per_fold": study["per_fold"],
        },
    )
    write_model_card(spec, out, synthetic=synthetic_empty, reps=reps)
    return TrainingRun(len(ds), x.shape[1], study, spec)
