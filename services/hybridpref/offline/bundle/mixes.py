"""Candidate label mixes: which pool instances get the human label (the rest get the LM label).

A mix is a boolean row ``routed`` of length n (True = human). Its count vector is
``tags.T @ routed`` (V,), and the PPM reads ``counts / pool_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import PreferenceInstance


def sample_mixes(
    tag_matrix: np.ndarray, n_candidates: int, seed: int, walk_fraction: float = 0.7
) -> tuple[np.ndarray, list[str]]:
    """Sample ``n_candidates`` mixes over a pool with tags ``tag_matrix`` (n, V) in {0, 1}.

    Always includes all-LM (row 0) and all-human (row 1); the rest are ``walk_fraction``
    paper walks (random budget b in 1..n, tags in random order, each tag's instances in random
    order, until b are chosen) and uniform random b-subsets. Returns ((K, n) bool, kinds (K,)).
    """
    n = tag_matrix.shape[0]
    if n_candidates < 2:
        raise InvalidInput(FieldViolation("candidates", f"need at least 2 (all-LM and all-human), got {n_candidates}"))
    rng = np.random.default_rng(seed)
    out = np.zeros((n_candidates, n), dtype=bool)
    out[1] = True
    kinds = ["all_lm", "all_human"]
    members = [np.flatnonzero(tag_matrix[:, j]) for j in range(tag_matrix.shape[1])]
    for k in range(2, n_candidates):
        budget = int(rng.integers(1, n + 1))
        if rng.random() < walk_fraction:
            out[k] = _walk(members, n, budget, rng)
            kinds.append("walk")
        else:
            out[k, rng.choice(n, size=budget, replace=False)] = True
            kinds.append("uniform")
    return out, kinds


def _walk(members: list[np.ndarray], n: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    chosen = np.zeros(n, dtype=bool)
    taken = 0
    for j in rng.permutation(len(members)):
        for i in rng.permutation(members[j]):
            if not chosen[i]:
                chosen[i] = True
                taken += 1
                if taken == budget:
                    return chosen
    rest = rng.permutation(np.flatnonzero(~chosen))[: budget - taken]  # untagged instances last
    chosen[rest] = True
    return chosen


def count_vectors(routed: np.ndarray, tag_matrix: np.ndarray) -> np.ndarray:
    """(K, n) bool x (n, V) -> (K, V) float64 counts of human-routed instances per tag."""
    return routed.astype(np.float64) @ tag_matrix.astype(np.float64)


def label_sources(pool: Sequence[PreferenceInstance], lm_judge: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Per pool instance, the human and the LM label as {-1, 0, +1} (A wins = +1, tie/none = 0).

    ``lm_judge`` names the key in ``lm_labels``; None picks the most common judge in the pool.
    Returns (human (n,), lm (n,), judge name).
    """
    if lm_judge is None:
        names: dict[str, int] = {}
        for inst in pool:
            for key in inst.lm_labels:
                names[key] = names.get(key, 0) + 1
        if not names:
            raise InvalidInput(
                FieldViolation("pool", "no instance has an LM label (lm_labels); the pool needs both label sources")
            )
        lm_judge = max(sorted(names), key=names.__getitem__)
    human = np.array([_sign(inst.human_label) for inst in pool], dtype=np.int8)
    lm = np.array([_sign(inst.lm_labels.get(lm_judge)) for inst in pool], dtype=np.int8)
    return human, lm, lm_judge


def _sign(label) -> int:
    winner = label.winner if label is not None else None
    return 1 if winner == "A" else -1 if winner == "B" else 0


def mix_labels(routed: np.ndarray, human: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """(K, n) labels of each candidate's training pool: human where routed, LM elsewhere (0 = dropped)."""
    return np.where(routed, human[None, :], lm[None, :]).astype(np.int8)
