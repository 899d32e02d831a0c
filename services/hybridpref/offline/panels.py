"""Judge-panel variants of an evaluation pool: the same pairs seen by a different panel of recorded judges.

Vendors' panels differ: one LM judge, or a primary judge with a few others beside it. A pool that
records several judge *models* (LLMBar: GPT-4, ChatGPT, LLaMA2, PaLM2, each in both presentation
orders; PandaLM: gpt-3.5-turbo and pandalm-7b) yields a variant per (primary judge, subset of the
other models): the variant's instances keep only those judges' recorded labels, and its
``default_judge`` is the primary. Everything that reads a pool (``Pool.signals``, the correction
features, the harness's strategies) then sees that panel, so a study can ask whether a routing
decision still holds when the panel changes (issue 19).

A judge *model* may be recorded with several prompts (LLMBar: ``GPT-4/Vanilla_NoRules`` and
``GPT-4/Metrics_Reference``); a variant uses one prompt per model (``prompt``, default the primary
judge's prompt of the pool's usual judge), so "k others" means k other models, not a second prompt
of the same model. The ``usual`` variant is the pool exactly as the default bundle reads it (its
default judge and every other recorded key).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hybridpref.common.signals import ORDER_SUFFIXES
from hybridpref.offline.pools import Pool
from hybridpref_client.core.instances import LM_LABEL_RAW_PREFIX, PreferenceInstance


@dataclass(frozen=True)
class PanelVariant:
    """One panel of a pool: ``pool`` records only ``primary`` and ``others`` (judge keys as
    :func:`hybridpref.common.signals.judge_keys` names them); ``pool.default_judge == primary``."""

    pool: Pool
    primary: str
    others: tuple[str, ...]
    usual: bool = False  # the pool as the default bundle reads it (every recorded judge)

    @property
    def name(self) -> str:
        """``pool:primary+k`` (``+others`` listed by model when k is 1 or 2), or ``pool:usual``."""
        if self.usual:
            return f"{self.pool.name}:usual"
        head = f"{self.pool.name}:{judge_model(self.primary)}+{len(self.others)}"
        if 0 < len(self.others) < 3:
            head += "(" + ",".join(judge_model(o) for o in self.others) + ")"
        return head

    @property
    def k(self) -> int:
        return len(self.others)


def judge_model(key: str) -> str:
    """The model part of a judge key: ``GPT-4/Vanilla_NoRules`` -> ``GPT-4``; a key without ``/`` is itself."""
    return key.split("/", 1)[0]


def judge_prompt(key: str) -> str:
    """The prompt part of a judge key (``""`` when the key has none)."""
    return key.split("/", 1)[1] if "/" in key else ""


def panel_judges(pool: Pool, prompt: str | None = None) -> list[str]:
    """One judge key per recorded model, in the pool's key order: the key with ``prompt`` (default: the
    prompt of the pool's default judge) when the model has it, else the model's first key."""
    prompt = judge_prompt(pool.default_judge) if prompt is None else prompt
    by_model: dict[str, list[str]] = {}
    for key in pool.judges:
        by_model.setdefault(judge_model(key), []).append(key)
    out = []
    for keys in by_model.values():
        match = [k for k in keys if judge_prompt(k) == prompt]
        out.append(match[0] if match else keys[0])
    return out


def restrict_judges(pool: Pool, keep: Sequence[str], primary: str) -> Pool:
    """A copy of ``pool`` whose instances record only the judge keys in ``keep`` (order-split keys
    ``X/order_ab`` / ``X/order_ba`` follow their base key ``X``), with ``primary`` as default judge.
    Labels, references, groups and skipped counts are shared with ``pool`` (arrays are not copied)."""
    wanted = set(keep)
    if primary not in wanted:
        raise ValueError(f"primary judge {primary!r} is not among the kept judges {sorted(wanted)}")
    missing = wanted - set(pool.judges)
    if missing:
        raise ValueError(f"pool {pool.name} records no judge {sorted(missing)}; it has {pool.judges}")

    def base(key: str) -> str:
        for suffix in ORDER_SUFFIXES:
            if key.endswith(suffix):
                return key[: -len(suffix)]
        return key

    def one(inst: PreferenceInstance) -> PreferenceInstance:
        labels = {k: v for k, v in inst.lm_labels.items() if base(k) in wanted}
        meta = {
            k: v
            for k, v in inst.metadata.items()
            if not k.startswith(LM_LABEL_RAW_PREFIX) or base(k[len(LM_LABEL_RAW_PREFIX) :]) in wanted
        }
        return dataclasses.replace(inst, lm_labels=labels, metadata=meta)

    return Pool(
        pool.name,
        [one(i) for i in pool.instances],
        pool.human,
        pool.reference,
        pool.reference_kind,
        pool.groups,
        primary,
        Counter(pool.skipped),
    )


def panel_variants(
    pool: Pool, *, max_others: int = 3, prompt: str | None = None, all_subsets: bool = True, include_usual: bool = True
) -> list[PanelVariant]:
    """Every panel of ``pool``: each recorded model (:func:`panel_judges`) as the primary judge with
    0 .. ``max_others`` of the other models recorded (every subset when ``all_subsets``, else the first
    k others in key order), plus the ``usual`` variant (the pool as the default bundle reads it) when
    ``include_usual``. A pool with one judge gives its usual variant (or primary+0) only."""
    judges = panel_judges(pool, prompt)
    out: list[PanelVariant] = []
    if include_usual:
        others = tuple(k for k in pool.judges if k != pool.default_judge)
        out.append(PanelVariant(pool, pool.default_judge, others, usual=True))
    for primary in judges:
        rest = [j for j in judges if j != primary]
        for k in range(0, min(max_others, len(rest)) + 1):
            subsets = itertools.combinations(rest, k) if all_subsets else [tuple(rest[:k])]
            for others in subsets:
                if include_usual and primary == pool.default_judge and set(others) == set(out[0].others):
                    continue  # the same panel as the usual variant
                out.append(PanelVariant(restrict_judges(pool, (primary, *others), primary), primary, tuple(others)))
    return out
