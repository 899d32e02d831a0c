"""Expected-correction model: how likely a bought human label fixes a wrong LM label.

For each instance the model gives

* ``p_lm_wrong``: P(the LM judge's label differs from the reference), a tie or missing verdict
  counting as wrong (routing would keep it as "no preference");
* ``p_human_wrong``: P(one bought human vote differs from the reference);
* ``expected_gain = p_lm_wrong - p_human_wrong``: the expected number of label corrections a human
  label buys (by linearity: P(LM wrong, human right) - P(LM right, human wrong)). It can be negative.

**Training data** (:meth:`CorrectionModel.fit`): evaluation pools with human and LM labels on the same
pairs (:func:`hybridpref.evaluation.pools.load_pool`). Target A (LM wrong) uses every row whose reference
is not 0. Target B (human wrong) can only be learned where the reference is *other* human votes
(``reference_kind == "other_votes"``: PandaLM, MT-Bench items with several experts); on ``gold`` and
``same_label`` rows the bought human label *is* the reference, so it is never wrong there by
construction and those rows are not used for B. When the training pools hold fewer than
``MIN_HUMAN_ROWS`` such rows, B is the global rate over the rows there are (0 when there are none).

**Features** (:data:`FEATURE_NAMES`, :func:`correction_features`), chosen to transfer across pools
(DESIGN.md section 7: lengths transfer, embeddings and bins do not): the judge's signals (tie/no verdict,
order flip, agreement with other judges with a missing-indicator, confidence ``|2 p_a - 1|`` when the
judge gives a probability), whether the LM picked the longer / the first response, the log length ratio
and raw log lengths (words), word overlap of the two responses (always computed from the texts), the
tagger's raw lexical measures when given (``TagBatch.measures``) and a few analyzer tags when given.
Missing measures / tags get a missing-indicator and neutral values.

**Model**: L2 logistic regression on standardised features (the served form; see
``benchmarks/correction_study.py`` for the gradient-boosting comparison), Platt-calibrated on
leave-one-pool-out predictions so that its probability is honest on a pool it has not seen. The
calibration folds into the weights, so the ONNX graph is ``Sigmoid((x - mean) / scale @ W + b)`` with
output ``p_wrong`` (n, 2) = [p_lm_wrong, p_human_wrong]. Where the judge gave no verdict (tie, order
flip, missing), the LM label is wrong by construction against a non-tie reference: ``p_lm_wrong = 1``
there (a ``Max`` node).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hybridpref.common.instances import PreferenceInstance
from hybridpref.common.signals import JudgeSignals
from hybridpref.common.vocabulary import LEXICAL_MEASURES, TAG_INDEX

if TYPE_CHECKING:
    from hybridpref.evaluation.pools import Pool

MODEL_VERSION = "correction/1"
SIGNAL_FEATURES: tuple[str, ...] = (
    "lm_no_verdict", "order_flip", "agreement", "agreement_missing", "no_other_agrees", "p_confidence", "p_missing",
    "lm_picked_a",
)
TEXT_FEATURES: tuple[str, ...] = (
    "lm_picked_longer", "lm_picked_shorter", "abs_log_len_ratio", "log_len_shorter", "log_len_longer",
    "log_prompt_len", "word_overlap",
)
MEASURE_FEATURES: tuple[str, ...] = ("bertscore", "bertscore_length", "cosine_sim", "entity_sim", "rouge", "measures_missing")
# A few analyzer tags (expertise, safety, complexity); several tags -> one feature = any of them.
TAG_GROUPS: dict[str, tuple[str, ...]] = {
    "tag_expert": ("expertise_level:expert domain knowledge",),
    "tag_safety_concern": ("safety_concern:moderate", "safety_concern:high"),
    "tag_complex": ("complexity_of_intents:complex",),
    "tag_open_ended": ("open_endedness:high",),
    "tag_format_constraints": ("format_constraints:present",),
    "tag_context_material": ("type_of_in_context_material:present",),
}
TAG_FEATURES: tuple[str, ...] = (*TAG_GROUPS, "tags_missing")
FEATURE_NAMES: tuple[str, ...] = SIGNAL_FEATURES + TEXT_FEATURES + MEASURE_FEATURES + TAG_FEATURES
# Agreement with other judges when none is recorded: about the mean seen where judges are recorded.
NEUTRAL_AGREEMENT = 0.75
MIN_HUMAN_ROWS = 50
TRANSFER_BUDGETS = (0.1, 0.25, 0.5)
_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"[a-z0-9]+")
_MEASURE_COLS = [LEXICAL_MEASURES.index(m) for m in MEASURE_FEATURES[:-1]]
# Neutral similarity values when the tagger's measures are absent (mid-range; the indicator carries the rest).
_NEUTRAL_MEASURES = np.array([0.5, 0.3, 0.8, 0.3, 0.4])


def correction_features(
    instances: Sequence[PreferenceInstance],
    measures: np.ndarray | None,
    tags: np.ndarray | None,
    signals: JudgeSignals,
) -> np.ndarray:
    """Feature matrix (n, len(FEATURE_NAMES)) float32, columns in :data:`FEATURE_NAMES` order.

    ``measures``: the tagger's raw lexical measures (n, 9) in ``LEXICAL_MEASURES`` order, or None;
    ``tags``: (n, 90) 0/1 tag matrix, or None; ``signals``: the LM judge's signals on the same rows.
    Lengths are whitespace words of the texts (not the tagger's token lengths), so the features do not
    depend on which tagger (or none) ran.
    """
    n = len(instances)
    if len(signals) != n:
        raise ValueError(f"signals has {len(signals)} rows for {n} instances")
    out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float64)
    col = {name: j for j, name in enumerate(FEATURE_NAMES)}
    label = np.asarray(signals.label, dtype=np.int64)
    agreement = np.asarray(signals.agreement, dtype=np.float64)
    p_a = np.asarray(signals.p_a, dtype=np.float64)
    out[:, col["lm_no_verdict"]] = label == 0
    out[:, col["order_flip"]] = np.asarray(signals.order_flip, dtype=bool)
    out[:, col["agreement"]] = np.where(np.isnan(agreement), NEUTRAL_AGREEMENT, agreement)
    out[:, col["agreement_missing"]] = np.isnan(agreement)
    out[:, col["no_other_agrees"]] = np.nan_to_num(agreement, nan=1.0) == 0.0  # every other judge said otherwise
    out[:, col["p_confidence"]] = np.where(np.isnan(p_a), 0.0, np.abs(2.0 * np.nan_to_num(p_a) - 1.0))
    out[:, col["p_missing"]] = np.isnan(p_a)
    out[:, col["lm_picked_a"]] = label == 1

    len_a = np.array([len(_WORD.findall(i.response_a)) for i in instances], dtype=np.float64)
    len_b = np.array([len(_WORD.findall(i.response_b)) for i in instances], dtype=np.float64)
    len_p = np.array([len(_WORD.findall(i.prompt_text)) for i in instances], dtype=np.float64)
    longer = np.sign(len_a - len_b)  # +1: A is longer
    out[:, col["lm_picked_longer"]] = (label != 0) & (label == longer)
    out[:, col["lm_picked_shorter"]] = (label != 0) & (longer != 0) & (label == -longer)
    out[:, col["abs_log_len_ratio"]] = np.abs(np.log1p(len_a) - np.log1p(len_b))
    out[:, col["log_len_shorter"]] = np.log1p(np.minimum(len_a, len_b))
    out[:, col["log_len_longer"]] = np.log1p(np.maximum(len_a, len_b))
    out[:, col["log_prompt_len"]] = np.log1p(len_p)
    out[:, col["word_overlap"]] = [_word_overlap(i.response_a, i.response_b) for i in instances]

    m0 = col["bertscore"]
    if measures is None:
        out[:, m0:m0 + 5] = _NEUTRAL_MEASURES
        out[:, col["measures_missing"]] = 1.0
    else:
        meas = np.asarray(measures, dtype=np.float64)
        if meas.shape != (n, len(LEXICAL_MEASURES)):
            raise ValueError(f"measures has shape {meas.shape}, expected ({n}, {len(LEXICAL_MEASURES)})")
        out[:, m0:m0 + 5] = np.nan_to_num(meas[:, _MEASURE_COLS], nan=0.0)
    if tags is None:
        out[:, col["tags_missing"]] = 1.0
    else:
        t = np.asarray(tags)
        for name, members in TAG_GROUPS.items():
            out[:, col[name]] = np.asarray(t[:, [TAG_INDEX[m] for m in members]]).max(axis=1) > 0
    return out.astype(np.float32)


def _word_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the lowercase word sets of two responses, in [0, 1]."""
    sa, sb = set(_TOKEN.findall(a.lower())), set(_TOKEN.findall(b.lower()))
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


# ---------------------------------------------------------------- model


@dataclass
class _Logistic:
    """``sigmoid(((x - mean) / scale) @ coef + intercept)``; a zero ``coef`` = a constant rate."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logit(x))

    def calibrated(self, a: float, c: float) -> _Logistic:
        """Platt scaling ``sigmoid(a * logit + c)`` folded into the weights."""
        return _Logistic(self.mean, self.scale, self.coef * a, self.intercept * a + c)

    @classmethod
    def constant(cls, width: int, rate: float) -> _Logistic:
        rate = float(np.clip(rate, 1e-4, 1 - 1e-4))
        return cls(np.zeros(width), np.ones(width), np.zeros(width), math.log(rate / (1 - rate)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, columns: Sequence[int], c: float, seed: int) -> _Logistic:
    """Standardised L2 logistic regression on ``columns`` of ``x`` (other columns get weight 0)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    width = x.shape[1]
    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2 or not len(columns):
        return _Logistic.constant(width, float(y.mean()) if len(y) else 0.0)
    mean, scale = np.zeros(width), np.ones(width)
    cols = np.asarray(columns, dtype=int)
    mean[cols] = x[:, cols].mean(0)
    sd = x[:, cols].std(0)
    scale[cols] = np.where(sd > 1e-9, sd, 1.0)  # a constant column (never seen varying) gets weight ~0
    z = (x[:, cols] - mean[cols]) / scale[cols]
    lr = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, y)
    coef = np.zeros(width)
    coef[cols] = lr.coef_[0]
    return _Logistic(mean, scale, coef, float(lr.intercept_[0]))


def platt(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, c) of ``sigmoid(a * logit + c)`` fitted to ``y`` (near-unregularised 1-D logistic)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=2000).fit(np.asarray(logits, dtype=np.float64)[:, None], np.asarray(y, dtype=int))
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (NaN when ``y`` has one class)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=int)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """(ECE, curve) with ``bins`` equal-width bins of the predicted probability; the curve lists
    per non-empty bin its range, count, mean prediction and observed rate."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece, curve = 0.0, []
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        mp, my = float(p[m].mean()), float(y[m].mean())
        ece += m.mean() * abs(mp - my)
        curve.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(m.sum()), "predicted": mp, "observed": my})
    return float(ece), curve


@dataclass
class CorrectionModel:
    """P(LM label wrong), P(human vote wrong) and their difference; see the module docstring.

    Predictions take the (n, F) matrix of :func:`correction_features` (columns = ``feature_names``) and
    return (n,) float64. A model loaded with :meth:`from_onnx` predicts through onnxruntime.
    """

    lm: _Logistic
    human: _Logistic
    feature_names: tuple[str, ...] = FEATURE_NAMES
    metrics: dict[str, Any] = field(default_factory=dict)
    _session: Any = None

    # ------------------------------------------------------------ prediction

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, 2) float64: [p_lm_wrong, p_human_wrong]."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"features have shape {x.shape}, expected (n, {len(self.feature_names)})")
        if self._session is not None:
            return np.asarray(self._session.run(None, {"features": x})[0], dtype=np.float64)
        return np.stack([lm_probability(self.lm, x), self.human.predict(x)], axis=1)

    def p_lm_wrong(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x)[:, 0]

    def p_human_wrong(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x)[:, 1]

    def expected_gain(self, x: np.ndarray) -> np.ndarray:
        """Expected label corrections per bought human label, in [-1, 1]."""
        p = self.probabilities(x)
        return p[:, 0] - p[:, 1]

    # ------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, pools: Sequence[Pool], features: Sequence[np.ndarray], seed: int, *,
            signals: Sequence[JudgeSignals] | None = None, columns: Sequence[str] | None = None,
            human_columns: Sequence[str] | None = None, c: float = 0.1, evaluate: bool = True) -> CorrectionModel:
        """Fit on ``pools`` (features[i] aligned with pools[i]; ``signals[i]`` defaults to the pool's
        default judge, and must be the signals the features were computed from).

        ``columns`` / ``human_columns``: feature names the LM / human model may use (default
        :data:`DEFAULT_COLUMNS` / :data:`HUMAN_COLUMNS`). With two or more
        pools, the LM model is Platt-calibrated on leave-one-pool-out predictions and, when ``evaluate``,
        leave-one-pool-out metrics (AUROC, ECE, reliability curve) go to ``metrics`` (nested: each
        held-out pool is predicted by a model fitted and calibrated without it).
        """
        data = _training_data(pools, features, signals)
        cols = [FEATURE_NAMES.index(n) for n in (DEFAULT_COLUMNS if columns is None else columns)]
        hcols = [FEATURE_NAMES.index(n) for n in (HUMAN_COLUMNS if human_columns is None else human_columns)]
        lm = _fit_calibrated(data, cols, c, seed)
        human = _fit_human(data, hcols, c, seed)
        metrics: dict[str, Any] = {"model": "logistic", "l2_c": c, "columns": [FEATURE_NAMES[j] for j in cols],
                                   "human_columns": [FEATURE_NAMES[j] for j in hcols],
                                   "calibration": "platt on leave-one-pool-out logits" if len(data) > 1 else "none (one pool)",
                                   "training": {d.name: d.describe() for d in data}}
        if evaluate and len(data) > 1:
            metrics["leave_one_pool_out"] = _lopo_metrics(data, cols, hcols, c, seed)
        return cls(lm, human, FEATURE_NAMES, metrics)

    # ------------------------------------------------------------ serialisation

    def to_onnx(self) -> bytes:
        """ONNX graph: input ``features`` float32 [N, F] -> output ``p_wrong`` float32 [N, 2]."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        width = len(self.feature_names)
        # One shared standardisation: the human model's is re-expressed in the LM model's scale.
        mean, scale = self.lm.mean, self.lm.scale
        w_h = self.human.coef / self.human.scale * scale
        b_h = self.human.intercept + float(((mean - self.human.mean) / self.human.scale) @ self.human.coef)
        weights = np.stack([self.lm.coef, w_h], axis=1)
        inits = [numpy_helper.from_array(np.asarray(a, dtype=np.float32), name) for name, a in (
            ("mean", mean), ("scale", scale), ("weights", weights), ("bias", np.array([self.lm.intercept, b_h])))]
        # p_lm_wrong = 1 where the judge gave no verdict: p = max(sigmoid(logit), [no_verdict, 0])
        inits += [numpy_helper.from_array(np.array([_NO_VERDICT], dtype=np.int64), "no_verdict_col"),
                  numpy_helper.from_array(np.array([[1.0, 0.0]], dtype=np.float32), "first_only")]
        nodes = [helper.make_node("Sub", ["features", "mean"], ["centred"]),
                 helper.make_node("Div", ["centred", "scale"], ["z"]),
                 helper.make_node("MatMul", ["z", "weights"], ["zw"]),
                 helper.make_node("Add", ["zw", "bias"], ["logit"]),
                 helper.make_node("Sigmoid", ["logit"], ["p_fitted"]),
                 helper.make_node("Gather", ["features", "no_verdict_col"], ["no_verdict"], axis=1),
                 helper.make_node("Mul", ["no_verdict", "first_only"], ["floor"]),
                 helper.make_node("Max", ["p_fitted", "floor"], ["p_wrong"])]
        graph = helper.make_graph(nodes, "expected_correction",
                                  [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
                                  [helper.make_tensor_value_info("p_wrong", TensorProto.FLOAT, ["N", 2])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hybridpref")
        model.ir_version = 8
        helper.set_model_props(model, {"version": MODEL_VERSION, "feature_names": json.dumps(list(self.feature_names)),
                                       "metrics": json.dumps(self.metrics, sort_keys=True)})
        onnx.checker.check_model(model)
        return model.SerializeToString()

    @classmethod
    def from_onnx(cls, data: bytes) -> CorrectionModel:
        """Load a model written by :meth:`to_onnx`; predictions run with onnxruntime."""
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        proto = onnx.load_from_string(data)
        props = {p.key: p.value for p in proto.metadata_props}
        names = tuple(json.loads(props.get("feature_names", "[]")))
        arrays = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
        mean, scale, weights, bias = arrays["mean"], arrays["scale"], arrays["weights"], arrays["bias"]  # the rest: constants
        lm = _Logistic(mean, scale, weights[:, 0], float(bias[0]))
        human = _Logistic(mean, scale, weights[:, 1], float(bias[1]))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return cls(lm, human, names or FEATURE_NAMES, json.loads(props.get("metrics", "{}")), session)

    def card(self) -> dict[str, Any]:
        """Metrics and description for ``correction.json`` and the model card."""
        return {"version": MODEL_VERSION, "feature_names": list(self.feature_names),
                "output": "p_wrong[:, 0] = P(LM label wrong), p_wrong[:, 1] = P(human vote wrong); gain = difference",
                **self.metrics}


# The feature set served by default (measured leave-one-pool-out in benchmarks/correction_study.py).
# The raw agreement share and the length-direction features hurt transfer (their effect flips sign
# between pools: LLMBar-Adversarial rewards the shorter response, other judges there are fooled alike).
DEFAULT_COLUMNS: tuple[str, ...] = ("lm_no_verdict", "order_flip", "no_other_agrees", "p_confidence", "p_missing",
                                    "word_overlap", "log_len_shorter")

HUMAN_COLUMNS: tuple[str, ...] = DEFAULT_COLUMNS


@dataclass
class _PoolData:
    name: str
    x: np.ndarray  # (n, F) rows with a non-zero reference
    lm_wrong: np.ndarray  # (n,) bool
    human_wrong: np.ndarray  # (n,) bool
    votes: np.ndarray  # (n,) bool: reference from other human votes (target B defined)
    x_all: np.ndarray  # (N, F) every row, tie references included (a routed batch holds them too)
    net_all: np.ndarray  # (N,) realised corrections if routed: +1 fixed, -1 broken, 0 (also on a tie reference)

    def describe(self) -> dict[str, float]:
        return {"rows": int(len(self.x)), "lm_wrong_rate": float(self.lm_wrong.mean()) if len(self.x) else 0.0,
                "other_votes_rows": int(self.votes.sum()),
                "human_wrong_rate_other_votes": float(self.human_wrong[self.votes].mean()) if self.votes.any() else 0.0}


def _training_data(pools: Sequence[Pool], features: Sequence[np.ndarray], signals: Sequence[JudgeSignals] | None) -> list[_PoolData]:
    if len(pools) != len(features) or (signals is not None and len(signals) != len(pools)):
        raise ValueError("pools, features (and signals) must be aligned lists")
    out = []
    for i, pool in enumerate(pools):
        sig = signals[i] if signals is not None else pool.signals()
        x = np.asarray(features[i], dtype=np.float64)
        if x.shape != (len(pool), len(FEATURE_NAMES)):
            raise ValueError(f"features for pool {pool.name!r} have shape {x.shape}, expected ({len(pool)}, {len(FEATURE_NAMES)})")
        keep = pool.reference != 0
        ref = pool.reference[keep]
        net = realised_corrections(pool.human, np.asarray(sig.label), pool.reference)
        out.append(_PoolData(pool.name, x[keep], np.asarray(sig.label)[keep] != ref, pool.human[keep] != ref,
                             pool.reference_kind[keep] == "other_votes", x, net))
    return out


def realised_corrections(human: np.ndarray, lm: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(n,) what buying the human label did to each row: +1 (LM wrong, human right), -1 (LM right, human
    wrong), 0 otherwise, and 0 where the reference is a tie (neither label is a correction there)."""
    ref = np.asarray(reference)
    right_h = (np.asarray(human) == ref) & (ref != 0)
    right_lm = (np.asarray(lm) == ref) & (ref != 0)
    return right_h.astype(np.int64) - right_lm.astype(np.int64)


_NO_VERDICT = FEATURE_NAMES.index("lm_no_verdict")


def lm_probability(model: _Logistic, x: np.ndarray) -> np.ndarray:
    """P(LM label wrong): 1 where the judge gave no verdict (a tie, flip or missing label is never
    right against a non-tie reference), else the fitted model's probability."""
    x = np.asarray(x)
    return np.where(x[:, _NO_VERDICT] > 0.5, 1.0, model.predict(x))


def _all_xy(data: Sequence[_PoolData]) -> tuple[np.ndarray, np.ndarray]:
    return np.vstack([d.x for d in data]), np.concatenate([d.lm_wrong for d in data])


def _fit_calibrated(data: Sequence[_PoolData], cols: Sequence[int], c: float, seed: int) -> _Logistic:
    """LM-wrong model on all rows of ``data``, Platt-calibrated on leave-one-pool-out logits (>= 2 pools).

    All rows, not only the verdict rows: measured, the verdict-only fit transferred worse (on PandaLM
    the share of the oracle's gain at 25% fell from 0.47 to 0.22), because the no-verdict rows teach
    the agreement signal that the verdict rows of the other pools hardly carry."""
    model = fit_logistic(*_all_xy(data), cols, c, seed)
    if len(data) < 2:
        return model
    oof, ys = [], []
    for k, held in enumerate(data):
        rest = [d for j, d in enumerate(data) if j != k]
        m = fit_logistic(*_all_xy(rest), cols, c, seed)
        hx, hy = _all_xy([held])
        oof.append(m.logit(hx))
        ys.append(hy)
    return model.calibrated(*platt(np.concatenate(oof), np.concatenate(ys)))


def _fit_human(data: Sequence[_PoolData], cols: Sequence[int], c: float, seed: int) -> _Logistic:
    """Human-vote-wrong model on ``other_votes`` rows; a global rate when there are too few."""
    x = np.vstack([d.x[d.votes] for d in data])
    y = np.concatenate([d.human_wrong[d.votes] for d in data])
    width = len(FEATURE_NAMES)
    if len(y) < MIN_HUMAN_ROWS:
        return _Logistic.constant(width, float(y.mean()) if len(y) else 0.0)
    return fit_logistic(x, y, cols, c, seed)


def _lopo_metrics(data: Sequence[_PoolData], cols: Sequence[int], hcols: Sequence[int], c: float, seed: int) -> dict[str, Any]:
    """Per held-out pool, with models fitted and calibrated without it: AUROC / ECE / reliability of P(LM
    wrong), the human-vote model's AUROC, and the transfer of summed expected corrections (:func:`_transfer`)."""
    per_pool, transfer, all_y, all_p = {}, {}, [], []
    for k, held in enumerate(data):
        rest = [d for j, d in enumerate(data) if j != k]
        model, human = _fit_calibrated(rest, cols, c, seed), _fit_human(rest, hcols, c, seed)
        p = lm_probability(model, held.x)
        ece, curve = reliability(held.lm_wrong, p)
        entry: dict[str, Any] = {"rows": int(len(p)), "auroc": auroc(held.lm_wrong, p), "ece": ece,
                                 "mean_predicted": float(p.mean()), "observed_rate": float(held.lm_wrong.mean()),
                                 "reliability": curve}
        if held.votes.sum() >= 20 and any(d.votes.any() for d in rest):
            h = human.predict(held.x[held.votes])
            entry["human_auroc"] = auroc(held.human_wrong[held.votes], h)
            entry["human_mean_predicted"] = float(h.mean())
            entry["human_observed_rate"] = float(held.human_wrong[held.votes].mean())
        per_pool[held.name] = entry
        if len(held.x_all):
            transfer[held.name] = _transfer(held, model, human)
        all_y.append(held.lm_wrong)
        all_p.append(p)
    y, p = np.concatenate(all_y), np.concatenate(all_p)
    ece, curve = reliability(y, p)
    ratios = [e["ratio"] for rows in transfer.values() for e in rows.values() if "ratio" in e]
    return {"pools": per_pool, "pooled": {"auroc": auroc(y, p), "ece": ece, "reliability": curve},
            "min_auroc": float(min(e["auroc"] for e in per_pool.values())),
            "max_ece": float(max(e["ece"] for e in per_pool.values())),
            "transfer": {"budgets": list(TRANSFER_BUDGETS), "pools": transfer,
                         **({"ratio_range": [float(min(ratios)), float(max(ratios))]} if ratios else {})}}


def _transfer(held: _PoolData, lm: _Logistic, human: _Logistic) -> dict[str, dict[str, float]]:
    """How the summed expected corrections of a routed batch compare with the realised ones on a pool the
    model did not see: the pool routed as one batch (top ``budget`` share by expected gain), realised /
    predicted per budget in :data:`TRANSFER_BUDGETS`. Human error and tie rates are properties of the
    annotators, not of the pairs (measured: 0.35x to 1.9x across the shared pools), so the router widens
    its correction intervals by the range of these ratios (:func:`transfer_range`)."""
    gain = lm_probability(lm, held.x_all) - human.predict(held.x_all)
    order = np.argsort(-gain, kind="stable")
    rows: dict[str, dict[str, float]] = {}
    for b in TRANSFER_BUDGETS:
        top = order[: max(1, int(round(b * len(order))))]
        predicted, realised = float(gain[top].sum()), float(held.net_all[top].sum())
        entry = {"routed": int(len(top)), "predicted": predicted, "realised": realised}
        if predicted > 1.0:  # a ratio of tiny sums says nothing
            entry["ratio"] = realised / predicted
        rows[f"{b:g}"] = entry
    return rows


def transfer_range(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """(low, high) realised / predicted correction ratio measured on held-out pools, or None."""
    rr = metrics.get("leave_one_pool_out", {}).get("transfer", {}).get("ratio_range")
    return (float(rr[0]), float(rr[1])) if rr and len(rr) == 2 else None


# ---------------------------------------------------------------- convenience for the harness


def pool_tags(pool: Pool, profile: str = "fast") -> tuple[np.ndarray, np.ndarray]:
    """(measures (n, 9), tags (n, 90)) of a pool's instances from the tagger core, cached on disk by
    (profile, texts) under ``runtime.cache_dir()/correction``."""
    from hybridpref.common.runtime import cache_dir
    from hybridpref.common.vocabulary import VOCABULARY_VERSION

    h = hashlib.sha256(f"{profile}|{VOCABULARY_VERSION}".encode())
    for inst in pool.instances:
        h.update("\x00".join((inst.id, inst.prompt_text, inst.response_a, inst.response_b)).encode())
    path = cache_dir() / "correction" / f"{h.hexdigest()[:32]}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["measures"], z["tags"]
    from hybridpref.tagger.core import Tagger

    tagger = Tagger.for_profile(profile)
    tagger.load()
    batch = tagger.tag(list(pool.instances))
    measures, tags = np.asarray(batch.measures, dtype=np.float64), np.asarray(batch.tag_matrix, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), measures=measures, tags=tags)
    path.with_suffix(".tmp.npz").replace(path)
    return measures, tags


def pool_features(pool: Pool, judge: str | None = None, tagger_profile: str | None = None) -> np.ndarray:
    """Features of a pool with the recorded signals of ``judge`` (default: the pool's); with a
    ``tagger_profile`` the tagger's measures and tags are included (cached), else text-only."""
    measures, tags = pool_tags(pool, tagger_profile) if tagger_profile else (None, None)
    return correction_features(pool.instances, measures, tags, pool.signals(judge))


def uses_tagger(columns: Sequence[str]) -> bool:
    """Whether a feature set reads the tagger's measures or tags (else features come from texts + signals)."""
    return any(c in MEASURE_FEATURES or c in TAG_FEATURES for c in columns)


def fit_for_pools(train: Sequence[Pool], seed: int, tagger_profile: str | None = "fast") -> CorrectionModel:
    """A model fitted on ``train`` pools (their default judges), with leave-one-pool-out metrics.

    The default feature set is text-only (the tagger's measures and tags did not improve cross-pool
    routing; ``benchmarks/correction_study.py``), so ``tagger_profile`` is used only when
    :data:`DEFAULT_COLUMNS` reads measure or tag columns."""
    profile = tagger_profile if uses_tagger(DEFAULT_COLUMNS + HUMAN_COLUMNS) else None
    feats = [pool_features(p, tagger_profile=profile) for p in train]
    return CorrectionModel.fit(train, feats, seed)


def pool_probabilities(model: CorrectionModel, pool: Pool, judge: str | None = None,
                       tagger_profile: str | None = None) -> np.ndarray:
    """(n, 2) [P(LM wrong), P(human wrong)] for every instance of ``pool`` (judge's signals). The tagger
    runs only when the model gives weight to measure or tag columns."""
    used = [n for j, n in enumerate(model.feature_names) if model.lm.coef[j] != 0 or model.human.coef[j] != 0]
    profile = (tagger_profile or "fast") if uses_tagger(used) else None
    return model.probabilities(pool_features(pool, judge, profile))


def expected_gain_for_pool(model: CorrectionModel, pool: Pool, judge: str | None = None,
                           tagger_profile: str | None = None) -> np.ndarray:
    """(n,) expected corrections per human label for every instance of ``pool`` (judge's signals)."""
    p = pool_probabilities(model, pool, judge, tagger_profile)
    return p[:, 0] - p[:, 1]
