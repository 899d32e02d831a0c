"""Evaluation pools: instances with a bought human label, a held-out reference and recorded LM labels.

A :class:`Pool` is what every evaluation and every model that learns from labelled pools (PPM,
expected-correction model) reads. Arrays are aligned with ``instances`` (n rows); labels are signs:
+1 = A preferred, -1 = B preferred, 0 = tie / none.

Reference rules (issue 9), per row, recorded in ``reference_kind``:

* ``other_votes``: the pair has several human votes; the *bought* human label is one vote and the
  reference is the majority of the other votes (0 = excluded when they tie or are ties), so a noisy
  human can lose to a good judge. PandaLM (3 annotators: vote 0 is bought) and MT-Bench items voted
  by several experts (each row is one vote).
* ``gold``: a curated gold label (LLMBar); the bought human label is the gold label.
* ``same_label``: a single human label; the reference is that label, so the metric counts the LM
  errors that routing fixes and a human label is never wrong.

Rows that cannot be evaluated are counted per reason in ``skipped`` and left out, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.signals import JudgeSignals, judge_keys, label_sign, recorded_signals
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import PreferenceInstance, instance_from_row, iter_json_rows, parse_label

# Pools in ../shared/data with human and LM labels on the same pairs, and the LM judge evaluated by default.
DEFAULT_JUDGES: dict[str, str] = {
    "mtbench_human_gpt4": "gpt-4 (pair-v2, both orders)",
    "pandalm": "gpt-3.5-turbo",
    "llmbar": "GPT-4/Vanilla_NoRules",
}
# LLMBar's re-processed MT-Bench subset repeats mtbench_human_gpt4's judgments: never both in one study.
LLMBAR_MTBENCH_SOURCE = "LLMBar Processed/MT-Bench"
# Per pool name, the ``source`` values of rows that repeat another pool's judgments (dropped on load).
REPEATED_SOURCES: dict[str, tuple[str, ...]] = {"llmbar": (LLMBAR_MTBENCH_SOURCE,)}


# Agreement with the pool's human labels below which the chosen judge is flagged in what build and
# evaluate print (a judge near a coin flip makes every "all LM" number meaningless).
WEAK_JUDGE_AGREEMENT = 0.6


@dataclass(frozen=True)
class JudgeChoice:
    """The LM judge a pool is studied with, and why: the one rule both ``predictor build`` and
    ``evaluate`` (and ``add-routing-models``) follow, and print (``describe``).

    ``rule``: ``given`` (``--lm-judge``), ``shared pool default`` (:data:`DEFAULT_JUDGES`), or
    ``most pairs labelled`` (the recorded judge with a verdict on the most pairs, order-split keys
    counted as one judge; ties: the name first in sort order). ``coverage``: share of the pool's
    pairs it labelled; ``agreement``: share of the pairs where it and the human label both pick a
    side on which they agree (None without such pairs)."""

    pool: str
    judge: str
    rule: str
    coverage: float
    agreement: float | None

    def describe(self) -> str:
        agree = (
            "no decisive pairs to compare"
            if self.agreement is None
            else f"agrees with the human labels on {self.agreement:.1%} of decisive pairs"
        )
        text = f"pool {self.pool}: LM judge {self.judge!r} ({self.rule}; labels {self.coverage:.0%} of pairs, {agree})"
        if self.agreement is not None and self.agreement < WEAK_JUDGE_AGREEMENT:
            text += f"; WEAK: below {WEAK_JUDGE_AGREEMENT:.0%}, choose another with --lm-judge"
        return text


def choose_judge(name: str, instances: Sequence[PreferenceInstance], given: str | None = None) -> JudgeChoice:
    """The pool's LM judge by the one rule (see :class:`JudgeChoice`); ``InvalidInput`` when ``given``
    or the default names no judge recorded in the pool, or the pool records none."""
    from hybridpref_client.core.errors import FieldViolation

    judges = judge_keys(instances)
    if not judges:
        raise InvalidInput(FieldViolation("lm_judge", f"pool {name}: no instance has an LM label (lm_labels)"))
    if given:
        if given not in judges:
            raise InvalidInput(FieldViolation("--lm-judge", f"pool {name} has no judge {given!r}; it has {', '.join(judges)}"))
        judge, rule = given, "given"
    elif DEFAULT_JUDGES.get(name) in judges:
        judge, rule = DEFAULT_JUDGES[name], "shared pool default"
    else:
        counts = {j: int(np.count_nonzero(recorded_signals(instances, j).label != 0)) for j in judges}
        judge = max(sorted(judges), key=counts.__getitem__)  # sorted first: ties go to the first name
        rule = "most pairs labelled"
    sig = recorded_signals(instances, judge)
    lm = np.asarray(sig.label)
    human = np.array([label_sign(i.human_label) for i in instances], dtype=np.int8)
    decisive = (lm != 0) & (human != 0)
    agreement = float(np.mean(lm[decisive] == human[decisive])) if decisive.any() else None
    present = np.array([any(k == judge or k.startswith(judge + "/order_") for k in i.lm_labels) for i in instances])
    return JudgeChoice(name, judge, rule, float(present.mean()) if len(present) else 0.0, agreement)


@dataclass
class Pool:
    name: str
    instances: list[PreferenceInstance]
    human: np.ndarray  # (n,) int8 sign of the bought human label
    reference: np.ndarray  # (n,) int8 sign of the held-out reference; 0 = excluded
    reference_kind: np.ndarray  # (n,) str: other_votes | gold | same_label
    groups: np.ndarray  # (n,) int64 prompt-group id: bootstrap and train/test splits resample whole groups
    default_judge: str
    skipped: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def judges(self) -> list[str]:
        return judge_keys(self.instances)

    def signals(self, judge: str | None = None) -> JudgeSignals:
        return recorded_signals(self.instances, judge or self.default_judge)

    def subset(self, rows: np.ndarray) -> Pool:
        rows = np.asarray(rows)
        return Pool(
            self.name,
            [self.instances[i] for i in rows],
            self.human[rows],
            self.reference[rows],
            self.reference_kind[rows],
            self.groups[rows],
            self.default_judge,
            Counter(self.skipped),
        )


def default_data_dir(repo_root: Path | None = None) -> Path:
    """``../shared/data`` beside the checkout (where CI has it); ``HYBRIDPREF_DATA_DIR`` overrides."""
    import os

    if os.environ.get("HYBRIDPREF_DATA_DIR"):
        return Path(os.environ["HYBRIDPREF_DATA_DIR"])
    root = repo_root or Path(__file__).resolve().parents[3]
    return root.parent / "shared" / "data"


def load_pool(path: str | Path, name: str | None = None, judge: str | None = None) -> Pool:
    """Read a pool from a ``pairs.jsonl`` (shared-data schema) or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "pairs.jsonl"
    name = name or (path.parent.name if path.name == "pairs.jsonl" else path.stem)
    skipped: Counter[str] = Counter()
    rows = list(_valid_rows(iter_json_rows(str(path)), skipped))
    if name in REPEATED_SOURCES:
        kept = [r for r in rows if not repeats_other_pool(name, r[0])]
        skipped["llmbar MT-Bench subset (same judgments as mtbench_human_gpt4)"] += len(rows) - len(kept)
        rows = kept
    pool = _build(name, rows, skipped)
    pool.default_judge = choose_judge(name, pool.instances, judge).judge if pool.judges or judge else ""
    return pool


def repeats_other_pool(name: str, row: Mapping[str, Any]) -> bool:
    """True when a row of pool ``name`` repeats another pool's judgments (:data:`REPEATED_SOURCES`):
    every study that reads several pools (evaluation, PPM build) drops it."""
    return row.get("source") in REPEATED_SOURCES.get(name, ())


def _valid_rows(rows: Iterable[tuple[int, Any]], skipped: Counter[str]) -> Iterable[tuple[dict, PreferenceInstance]]:
    for line, row in rows:
        try:
            inst = instance_from_row(row, where=f"line {line}")
        except InvalidInput as exc:
            skipped[f"invalid row ({exc.violations[0].description})"] += 1
            continue
        if not (visible(inst.response_a) and visible(inst.response_b)):
            skipped["empty or invisible response"] += 1
            continue
        yield row, inst


def visible(text: str) -> bool:
    """True when ``text`` has a character that is neither white space nor a format/control character (U+200B, U+FEFF, NUL)."""
    return any(not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc") for ch in text)


def _build(name: str, rows: Sequence[tuple[dict, PreferenceInstance]], skipped: Counter[str]) -> Pool:
    items: dict[str, list[int]] = defaultdict(list)  # several rows = several votes on one pair (MT-Bench)
    for i, (row, inst) in enumerate(rows):
        items[_item_key(row, inst)].append(i)
    human, reference, kind, groups, keep = [], [], [], [], []
    for i, (row, inst) in enumerate(rows):
        votes = row.get("human_votes")
        if isinstance(votes, list) and len(votes) >= 2:  # one vote bought, the others are the reference
            bought, ref, k = _sign(votes[0]), _majority(_sign(v) for v in votes[1:]), "other_votes"
        elif len(items[_item_key(row, inst)]) >= 2:
            others = [rows[j][1].human_label for j in items[_item_key(row, inst)] if j != i]
            bought, ref, k = label_sign(inst.human_label), _majority(label_sign(v) for v in others), "other_votes"
        else:
            bought = label_sign(inst.human_label)
            ref, k = bought, ("gold" if name == "llmbar" else "same_label")
        if inst.human_label is None and not votes:
            skipped["no human label"] += 1
            continue
        human.append(bought)
        reference.append(ref)
        kind.append(k)
        groups.append(_group_id(row, inst))
        keep.append(inst)
    return Pool(
        name=name,
        instances=keep,
        human=np.array(human, dtype=np.int8),
        reference=np.array(reference, dtype=np.int8),
        reference_kind=np.array(kind, dtype=object),
        groups=np.array(groups, dtype=np.int64),
        default_judge="",
        skipped=skipped,
    )


def _sign(value: Any) -> int:
    try:
        return label_sign(parse_label(value))
    except ValueError:
        return 0


def _majority(signs: Iterable[int]) -> int:
    """Majority sign of the votes; 0 when ties win or A and B are level."""
    counts = Counter(signs)
    a, b, t = counts.get(1, 0), counts.get(-1, 0), counts.get(0, 0)
    if a > b and a > t:
        return 1
    if b > a and b > t:
        return -1
    return 0


def _item_key(row: Mapping[str, Any], inst: PreferenceInstance) -> str:
    if "question_id" in row and "model_a" in row:
        return f"{row['question_id']}|{row.get('turn')}|{row['model_a']}|{row['model_b']}"
    return inst.id


def _group_id(row: Mapping[str, Any], inst: PreferenceInstance) -> int:
    """Prompt group: the question for MT-Bench, else the prompt text (same prompt = same group)."""
    key = f"q{row['question_id']}" if "question_id" in row else inst.prompt
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def summary(pool: Pool) -> dict[str, Any]:
    """Counts a report prints next to results: rows, references by kind, excluded ties, skipped rows by reason."""
    kinds = Counter(pool.reference_kind.tolist())
    return {
        "pool": pool.name,
        "rows": len(pool),
        "judge": pool.default_judge,
        "reference_kinds": dict(kinds),
        "reference_excluded": int(np.sum(pool.reference == 0)),
        "skipped": dict(pool.skipped),
    }


if __name__ == "__main__":  # quick look: python -m hybridpref.offline.pools
    for pool_name in DEFAULT_JUDGES:
        p = load_pool(default_data_dir() / pool_name)
        print(json.dumps(summary(p)), p.judges[:3])
