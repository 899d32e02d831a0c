"""Synthetic, seeded inputs for the campaign store tests and benchmark (no shared data copied)."""

from __future__ import annotations

import random

from hybridpref.store.api import Candidate

LM_LABELS = ("A_BETTER", "B_BETTER", "A_MUCH_BETTER", "B_MUCH_BETTER", "TIE")


def candidates(
    prefix: str, n: int, seed: int, *, start: int = 0, cost_range: tuple[float, float] = (1.0, 1.0), text_len: int = 40
) -> list[Candidate]:
    """``n`` candidates ``{prefix}{start}..``: random scores in [0, 1), LM labels, expected corrections,
    a few judge signals and correction features; texts of about ``text_len`` characters."""
    rng = random.Random(seed)
    out = []
    for k in range(start, start + n):
        words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "omega")) for _ in range(text_len // 6))
        out.append(
            Candidate(
                instance_id=f"{prefix}{k}",
                prompt=f"question {k}: {words}?",
                response_a=f"answer A {k} {words}",
                response_b=f"answer B {k} {words[::-1]}",
                score=rng.random(),
                cost=rng.uniform(*cost_range),
                lm_label=rng.choice(LM_LABELS),
                lm_confidence=round(rng.uniform(0.5, 1.0), 3),
                signals={"order_flip": rng.random() < 0.2, "p_a": round(rng.random(), 3)},
                features={"log_len_ratio": round(rng.gauss(0, 1), 3), "lm_no_verdict": 0.0},
                expected_correction=round(rng.uniform(0.0, 0.6), 3),
                metadata={"source": "synthetic"},
            )
        )
    return out
