"""Judge signals per instance, in one shape for routing, the correction model and evaluation.

A signal set describes what one LM judge said about each of n instances, as arrays:

* ``label`` (n,) int8: +1 = A preferred, -1 = B preferred, 0 = tie, order-inconsistent or no verdict;
* ``p_a`` (n,) float64: the judge's probability that A is better, NaN when the judge gives none
  (recorded labels carry no probability);
* ``order_flip`` (n,) bool: the judge ran in both presentation orders and the two verdicts disagreed;
* ``agreement`` (n,) float64 in [0, 1]: share of the *other* recorded judges whose verdict equals
  ``label`` (NaN when no other judge is recorded).

They come from recorded labels (``recorded_signals``: the data's ``lm_labels``, for evaluation and the
replay judge) or from live judgements (the router builds them from the judge service's answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hybridpref_client.core.instances import LM_LABEL_RAW_PREFIX, Label, PreferenceInstance

# LLMBar-style recorded keys: one verdict per presentation order, ``JUDGE/PROMPT/order_ab`` + ``.../order_ba``.
ORDER_SUFFIXES = ("/order_ab", "/order_ba")


@dataclass(frozen=True)
class JudgeSignals:
    label: np.ndarray
    p_a: np.ndarray
    order_flip: np.ndarray
    agreement: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, rows: np.ndarray) -> JudgeSignals:
        return JudgeSignals(self.label[rows], self.p_a[rows], self.order_flip[rows], self.agreement[rows])


def label_sign(label: Label | None) -> int:
    """+1 (A wins), -1 (B wins), 0 (tie, unspecified or missing)."""
    winner = label.winner if label is not None else None
    return 1 if winner == "A" else -1 if winner == "B" else 0


def judge_keys(instances: Sequence[PreferenceInstance]) -> list[str]:
    """Judge names recorded in the batch; order-split keys are merged (``X/order_ab`` + ``X/order_ba`` -> ``X``)."""
    keys: dict[str, None] = {}
    for inst in instances:
        for key in inst.lm_labels:
            keys[_base_key(key)] = None
    return sorted(keys)


def recorded_verdict(inst: PreferenceInstance, judge: str) -> tuple[int, bool, bool]:
    """(sign, order_flip, present) of one recorded judge on one instance.

    A judge recorded per order counts as one verdict: both orders agree -> that verdict; they
    disagree -> sign 0 and ``order_flip``. A ``tie_inconsistent`` label is a flip too.
    """
    if judge in inst.lm_labels:
        flip = inst.metadata.get(LM_LABEL_RAW_PREFIX + judge) == "tie_inconsistent"
        return label_sign(inst.lm_labels[judge]), flip, True
    ab, ba = (inst.lm_labels.get(judge + s) for s in ORDER_SUFFIXES)
    if ab is None and ba is None:
        return 0, False, False
    if ab is None or ba is None:
        return label_sign(ab if ab is not None else ba), False, True
    s_ab, s_ba = label_sign(ab), label_sign(ba)
    if s_ab == s_ba:
        return s_ab, False, True
    return 0, True, True


def recorded_signals(instances: Sequence[PreferenceInstance], judge: str) -> JudgeSignals:
    """Signals of recorded judge ``judge`` (a key of ``lm_labels`` or an order-split base key)."""
    n = len(instances)
    label = np.zeros(n, dtype=np.int8)
    flip = np.zeros(n, dtype=bool)
    agreement = np.full(n, np.nan)
    others = [k for k in judge_keys(instances) if k != judge]
    for i, inst in enumerate(instances):
        sign, flipped, _ = recorded_verdict(inst, judge)
        label[i], flip[i] = sign, flipped
        votes = [s for s, _, present in (recorded_verdict(inst, k) for k in others) if present]
        if votes:
            agreement[i] = float(np.mean([v == sign for v in votes]))
    return JudgeSignals(label=label, p_a=np.full(n, np.nan), order_flip=flip, agreement=agreement)


def _base_key(key: str) -> str:
    for suffix in ORDER_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key
