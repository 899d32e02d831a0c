"""The settings of a predictor bundle build (``hybridpref predictor build``), recorded in ``fingerprints.json``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BuildConfig:
    """Everything that determines a bundle (recorded in ``fingerprints.json``)."""

    pool: str | list[str]  # one ``[NAME=]PATH`` or several
    out: str
    gold: list[str] = field(default_factory=list)
    candidates: int = 1000
    seed: int = 0
    split_seed: int = 0
    holdout_fraction: float = 0.2
    group_key: str = "question_id"
    lm_judge: str | None = None  # one pool only; else lm_judges
    lm_judges: dict[str, str] = field(default_factory=dict)  # pool name -> judge key
    tagger_profile: str = "default"
    walk_fraction: float = 0.7
    folds: int = 10
    variants: tuple[str, ...] = ("linear", "quadratic", "gbm")
    proxy_hidden: int = 32
    proxy_steps: int = 120
    proxy_seeds: int = 3
    lopo_out: str | None = None  # folder for the leave-one-pool-out bundles

    @property
    def pool_specs(self) -> list[str]:
        return [self.pool] if isinstance(self.pool, str) else list(self.pool)
