"""Expected-correction model: how likely a bought human label fixes a wrong LM label.

For each instance the model gives

* ``p_lm_wrong``: P(the LM judge's label differs from the reference), a tie or missing verdict
  counting as wrong (routing would keep it as "no preference");
* ``p_human_wrong``: P(one bought human vote differs from the reference);
* ``expected_gain = p_lm_wrong - p_human_wrong``: the expected number of label corrections a human
  label buys (by linearity: P(LM wrong, human right) - P(LM right, human wrong)). It can be negative.

**Training data** (:func:`hybridpref.offline.bundle.correction_fit.fit_correction_model`): evaluation pools with human and LM labels on the same
pairs (:func:`hybridpref.offline.pools.load_pool`). Target A (LM wrong) uses every row whose reference
is not 0. Target B (human wrong) can only be learned where the reference is *other* human votes
(``reference_kind == "other_votes"``: PandaLM, MT-Bench items with several experts); on ``gold`` and
``same_label`` rows the bought human label *is* the reference, so it is never wrong there by
construction and those rows are not used for B. When the training pools hold fewer than
``MIN_HUMAN_ROWS`` such rows, B is the global rate over the rows there are (0 when there are none).

**Features** (:data:`FEATURE_NAMES`, :func:`correction_features`), chosen to transfer across pools
(measured cross-pool, docs/EVALUATION.md: lengths transfer, embeddings and bins do not): the judge's signals (tie/no verdict,
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

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridpref.common.signals import JudgeSignals
from hybridpref.common.vocabulary import LEXICAL_MEASURES, TAG_INDEX
from hybridpref_client.core.instances import PreferenceInstance

MODEL_VERSION = "correction/1"
SIGNAL_FEATURES: tuple[str, ...] = (
    "lm_no_verdict",
    "order_flip",
    "agreement",
    "agreement_missing",
    "no_other_agrees",
    "p_confidence",
    "p_missing",
    "lm_picked_a",
)
TEXT_FEATURES: tuple[str, ...] = (
    "lm_picked_longer",
    "lm_picked_shorter",
    "abs_log_len_ratio",
    "log_len_shorter",
    "log_len_longer",
    "log_prompt_len",
    "word_overlap",
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
_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"[a-z0-9]+")
_MEASURE_COLS = [LEXICAL_MEASURES.index(m) for m in MEASURE_FEATURES[:-1]]
# Neutral similarity values when the tagger's measures are absent (mid-range; the indicator carries the rest).
_NEUTRAL_MEASURES = np.array([0.5, 0.3, 0.8, 0.3, 0.4])


def text_stats(instances: Sequence[PreferenceInstance]) -> np.ndarray:
    """(n, 4) float64 per instance: whitespace words of response A, of response B, of the prompt, and the
    word overlap of the two responses (:func:`_word_overlap`). The text part of both correction models'
    features and of the domain check; computed once per batch, read by every feature builder (the overlap is
    most of the cost)."""
    if not len(instances):
        return np.zeros((0, 4))
    return np.array(
        [
            (
                len(_WORD.findall(i.response_a)),
                len(_WORD.findall(i.response_b)),
                len(_WORD.findall(i.prompt_text)),
                _word_overlap(i.response_a, i.response_b),
            )
            for i in instances
        ],
        dtype=np.float64,
    )


def correction_features(
    instances: Sequence[PreferenceInstance],
    measures: np.ndarray | None,
    tags: np.ndarray | None,
    signals: JudgeSignals,
    text: np.ndarray | None = None,
) -> np.ndarray:
    """Feature matrix (n, len(FEATURE_NAMES)) float32, columns in :data:`FEATURE_NAMES` order.

    ``measures``: the tagger's raw lexical measures (n, 9) in ``LEXICAL_MEASURES`` order, or None;
    ``tags``: (n, 90) 0/1 tag matrix, or None; ``signals``: the LM judge's signals on the same rows.
    Lengths are whitespace words of the texts (not the tagger's token lengths), so the features do not
    depend on which tagger (or none) ran. ``text``: the rows' :func:`text_stats`, when already computed.
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

    stats = text_stats(instances) if text is None else np.asarray(text, dtype=np.float64)
    if stats.shape != (n, 4):
        raise ValueError(f"text stats have shape {stats.shape}, expected ({n}, 4)")
    len_a, len_b, len_p = stats[:, 0], stats[:, 1], stats[:, 2]
    longer = np.sign(len_a - len_b)  # +1: A is longer
    out[:, col["lm_picked_longer"]] = (label != 0) & (label == longer)
    out[:, col["lm_picked_shorter"]] = (label != 0) & (longer != 0) & (label == -longer)
    out[:, col["abs_log_len_ratio"]] = np.abs(np.log1p(len_a) - np.log1p(len_b))
    out[:, col["log_len_shorter"]] = np.log1p(np.minimum(len_a, len_b))
    out[:, col["log_len_longer"]] = np.log1p(np.maximum(len_a, len_b))
    out[:, col["log_prompt_len"]] = np.log1p(len_p)
    out[:, col["word_overlap"]] = stats[:, 3]

    m0 = col["bertscore"]
    if measures is None:
        out[:, m0 : m0 + 5] = _NEUTRAL_MEASURES
        out[:, col["measures_missing"]] = 1.0
    else:
        meas = np.asarray(measures, dtype=np.float64)
        if meas.shape != (n, len(LEXICAL_MEASURES)):
            raise ValueError(f"measures has shape {meas.shape}, expected ({n}, {len(LEXICAL_MEASURES)})")
        out[:, m0 : m0 + 5] = np.nan_to_num(meas[:, _MEASURE_COLS], nan=0.0)
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
        z: np.ndarray = ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept
        return z

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
    p: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
    return p


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
        gain: np.ndarray = p[:, 0] - p[:, 1]
        return gain

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
        inits = [
            numpy_helper.from_array(np.asarray(a, dtype=np.float32), name)
            for name, a in (("mean", mean), ("scale", scale), ("weights", weights), ("bias", np.array([self.lm.intercept, b_h])))
        ]
        # p_lm_wrong = 1 where the judge gave no verdict: p = max(sigmoid(logit), [no_verdict, 0])
        inits += [
            numpy_helper.from_array(np.array([_NO_VERDICT], dtype=np.int64), "no_verdict_col"),
            numpy_helper.from_array(np.array([[1.0, 0.0]], dtype=np.float32), "first_only"),
        ]
        nodes = [
            helper.make_node("Sub", ["features", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "scale"], ["z"]),
            helper.make_node("MatMul", ["z", "weights"], ["zw"]),
            helper.make_node("Add", ["zw", "bias"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p_fitted"]),
            helper.make_node("Gather", ["features", "no_verdict_col"], ["no_verdict"], axis=1),
            helper.make_node("Mul", ["no_verdict", "first_only"], ["floor"]),
            helper.make_node("Max", ["p_fitted", "floor"], ["p_wrong"]),
        ]
        graph = helper.make_graph(
            nodes,
            "expected_correction",
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
            [helper.make_tensor_value_info("p_wrong", TensorProto.FLOAT, ["N", 2])],
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="hybridpref")
        model.ir_version = 8
        helper.set_model_props(
            model,
            {
                "version": MODEL_VERSION,
                "feature_names": json.dumps(list(self.feature_names)),
                "metrics": json.dumps(self.metrics, sort_keys=True),
            },
        )
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
        return {
            "version": MODEL_VERSION,
            "feature_names": list(self.feature_names),
            "output": "p_wrong[:, 0] = P(LM label wrong), p_wrong[:, 1] = P(human vote wrong); gain = difference",
            **self.metrics,
        }


# The feature set served by default (measured leave-one-pool-out in benchmarks/correction_study.py).
# The raw agreement share and the length-direction features hurt transfer (their effect flips sign
# between pools: LLMBar-Adversarial rewards the shorter response, other judges there are fooled alike).
DEFAULT_COLUMNS: tuple[str, ...] = (
    "lm_no_verdict",
    "order_flip",
    "no_other_agrees",
    "p_confidence",
    "p_missing",
    "word_overlap",
    "log_len_shorter",
)

HUMAN_COLUMNS: tuple[str, ...] = DEFAULT_COLUMNS


_NO_VERDICT = FEATURE_NAMES.index("lm_no_verdict")


def lm_probability(model: _Logistic, x: np.ndarray) -> np.ndarray:
    """P(LM label wrong): 1 where the judge gave no verdict (a tie, flip or missing label is never
    right against a non-tie reference), else the fitted model's probability."""
    x = np.asarray(x)
    return np.where(x[:, _NO_VERDICT] > 0.5, 1.0, model.predict(x))


def transfer_range(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """(low, high) realised / predicted correction ratio measured on held-out pools, or None."""
    rr = metrics.get("leave_one_pool_out", {}).get("transfer", {}).get("ratio_range")
    return (float(rr[0]), float(rr[1])) if rr and len(rr) == 2 else None


def uses_tagger(columns: Sequence[str]) -> bool:
    """Whether a feature set reads the tagger's measures or tags (else features come from texts + signals)."""
    return any(c in MEASURE_FEATURES or c in TAG_FEATURES for c in columns)
