"""The evaluation harness: route pools with each strategy at each budget, score the routed labels.

Routing goes through :func:`hybridpref.router.strategies.route`, the function the router's decision
(``hybridpref.router.core.decide``) calls, with the inputs each strategy's :class:`~hybridpref.router.strategies.StrategySpec`
asks for: the PPM, the recorded judge signals, the expected gains of a correction model fitted without the
routed labels, the router's domain check. The routed label set is the bought human label where a strategy routes to humans and the recorded LM
label elsewhere. Two metrics (see docs/EVALUATION.md):

1. label accuracy against the held-out reference (``Pool.reference``; 0 = excluded, a routed tie or
   missing LM label counts wrong);
2. reward-model accuracy: the predictor's proxy reward model (``EmbeddingBTProxy``) trained on the
   routed labels of the other folds, pairwise accuracy against the reference on the held-out fold.

Folds: the pool's prompt groups are split into ``folds`` parts (seeded). Each fold is routed as one
batch; models a strategy needs are fitted without that fold's labels (in-pool: on the other folds;
cross-pool: on the other pools). For metric 2 with fold ``f`` held out, the training folds are routed
by models fitted without ``f`` either, so no reference label of the gold fold reaches the reward model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.signals import JudgeSignals
from hybridpref.offline import stats
from hybridpref.offline.pools import LLMBAR_MTBENCH_SOURCE, Pool, load_pool
from hybridpref.router.strategies import STRATEGIES, StrategySpec
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import Label, PreferenceInstance

HARNESS_ONLY = ("oracle",)  # needs the reference: an upper bound, never a servable strategy
# Always evaluated: the points the others are compared with (score_table's differences and oracle share).
REFERENCE_STRATEGIES = ("all_human", "all_lm", "random", "oracle", "judge_doubt")
# Every strategy the router serves, after the references, in the registry's order.
DEFAULT_STRATEGIES = REFERENCE_STRATEGIES + tuple(s for s in STRATEGIES if s not in REFERENCE_STRATEGIES)
MODES = ("in-pool", "cross-pool")
ProgressFn = Callable[[str, float], None]


def _spec(strategy: str) -> StrategySpec | None:
    """The router's spec of ``strategy``; None for a harness-only one (``oracle``)."""
    return STRATEGIES.get(strategy)


def _needs_correction(strategy: str) -> bool:
    """Routes by the expected-correction model (fitted per fold or pool here)."""
    spec = _spec(strategy)
    return spec is not None and spec.needs_expected_gain


def _evaluated_with_ppm(strategy: str) -> bool:
    """Ranks by the PPM (required, or whenever one is given): evaluated only on pools with a usable PPM."""
    spec = _spec(strategy)
    return spec is not None and spec.predictor in ("required", "optional")


class LeakageError(InvalidInput):
    """A configuration in which a model a strategy uses has seen the evaluated pool's labels."""


@dataclass
class EvalConfig:
    pools: list[str]
    out: str | None = None
    lm_judge: str | None = None  # every pool's judge (a key each pool records); else the rule of pools.choose_judge
    lm_judges: dict[str, str] = field(default_factory=dict)  # pool name -> judge, over lm_judge
    bundle: str | None = None
    bundle_for: dict[str, str] = field(default_factory=dict)  # pool name -> bundle used for that pool instead of ``bundle``
    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: int = 10
    modes: tuple[str, ...] = ("in-pool",)
    folds: int = 3
    split_seed: int = 0
    tagger_profile: str | None = None  # None: the bundle's build profile, else "fast"
    tagger_address: str | None = None  # tag through this tagger service (hybridpref.tagger.client) instead of in process
    n_boot: int = 2000
    rm: bool = True
    rm_random_seeds: int = 3  # random mixes per budget trained for metric 2 (reward models are slow)
    rm_proxy_seeds: int = 1
    rm_steps: int = 120
    prediction_mixes: int = 100
    on_leak: str = "error"  # error | skip (skip the bundle's strategies on that pool)
    data_dir: str | None = None
    simulated_candidates: int = 500
    # which correction model expected_gain / hybrid read, as the router with a bundle that has it: "panel" (the
    # panel-invariant model of panel_correction.json, the default bundle's) or "onnx" (correction.onnx)
    correction: str = "panel"

    def validate(self) -> None:
        bad = []
        if not self.pools:
            bad.append(FieldViolation("--pool", "give at least one pool"))
        if any(not 0 < b <= 1 for b in self.budgets) or not self.budgets:
            bad.append(FieldViolation("--budgets", f"fractions in (0, 1], got {self.budgets}"))
        if self.seeds < 1:
            bad.append(FieldViolation("--seeds", f"must be >= 1, got {self.seeds}"))
        if self.folds < (3 if "in-pool" in self.modes and self.rm else 2):
            bad.append(
                FieldViolation(
                    "--folds",
                    "need >= 2 folds (>= 3 for in-pool reward-model accuracy: its training folds are routed by models fitted without the gold fold)",
                )
            )
        for m in self.modes:
            if m not in MODES:
                bad.append(FieldViolation("--mode", f"unknown mode {m!r}; use in-pool or cross-pool"))
        if "cross-pool" in self.modes and len(self.pools) < 2 and any(_needs_correction(s) for s in self.strategies):
            bad.append(FieldViolation("--mode", "cross-pool fits models on the other pools: give at least two --pool"))
        if self.on_leak not in ("error", "skip"):
            bad.append(FieldViolation("--on-leak", "error or skip"))
        if self.correction not in ("panel", "onnx"):
            bad.append(FieldViolation("--correction-model", f"panel or onnx, got {self.correction!r}"))
        if bad:
            raise InvalidInput(bad)


@dataclass
class Case:
    """One pool prepared for evaluation: labels, judge signals, folds, optional tags."""

    pool: Pool
    path: Path
    signals: JudgeSignals
    folds: np.ndarray  # (n,) fold id per row
    tags: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    ppm_ok: bool = False
    scorer: Any | None = None  # the PPM of the bundle used for this pool (``--bundle-for`` or ``--bundle``)
    domain: Any | None = None  # that bundle's domain (hybridpref.router.model.DomainModel), as the router checks it
    in_domain_folds: Counter[str] = field(default_factory=Counter)  # hybrid: routed folds in / out of the PPM's domain

    @property
    def lm(self) -> np.ndarray:
        return self.signals.label

    def fold_rows(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.folds == g)


@dataclass
class MixSet:
    """Routing of one pool in one mode: ``masks[(strategy, budget)]`` = list over seeds of (n,) bool
    (metric 1; each fold routed without its own labels) and ``rm_masks[(strategy, budget)][f]`` = list over
    seeds of (n,) bool used when fold ``f`` is the gold fold (metric 2)."""

    masks: dict[tuple[str, float], list[np.ndarray]] = field(default_factory=dict)
    rm_masks: dict[tuple[str, float], dict[int, list[np.ndarray]]] = field(default_factory=dict)


@dataclass
class EvalResult:
    config: EvalConfig
    rows: list[dict[str, Any]]
    notes: list[str]
    summaries: list[dict[str, Any]]
    pooled_rm: list[dict[str, Any]]
    prediction: list[dict[str, Any]]
    power: list[dict[str, Any]]
    timings: dict[str, float]
    corrections: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- leakage


def trained_pools(fingerprints: dict[str, Any]) -> list[dict[str, Any]]:
    """The pools a bundle's PPM was fitted on: ``pools`` (name, sha256, dropped_sources) of multi-pool builds,
    else the single ``file_sha256.pool`` of older bundles."""
    if "pools" in fingerprints:
        return list(fingerprints["pools"])
    sha = fingerprints.get("file_sha256", {}).get("pool")
    return [{"sha256": sha}] if sha else []


def check_bundle_leakage(bundle: Path, pool_path: Path, pool_name: str, known: dict[str, str]) -> list[str]:
    """Raise :class:`LeakageError` when the bundle's PPM was trained on the evaluated pool (same file) or
    on data that repeats its judgments (LLMBar's MT-Bench subset vs mtbench_human_gpt4, unless the build
    dropped it); return notes for the report otherwise. ``known`` maps the sha256 of data files to pool names."""
    from hybridpref.routing_model import bundle as bundle_io

    fp = bundle_io.read_json(bundle, "fingerprints.json")
    files: dict[str, str] = fp.get("file_sha256", {})
    this = bundle_io.sha256_file(pool_path)
    names = []
    for trained in trained_pools(fp):
        name = known.get(trained.get("sha256") or "") or trained.get("name") or "an unknown pool"
        names.append(name)
        if trained.get("sha256") == this:
            raise LeakageError(
                FieldViolation(
                    "--bundle",
                    f"bundle {bundle} was trained on {pool_name} itself ({pool_path}, sha256 {this[:12]}): its PPM has seen this pool's labels. Evaluate {pool_name} with a bundle built without it (cross-pool, --bundle-for), or without --bundle",
                )
            )
        if (
            pool_name.startswith("mtbench")
            and name == "llmbar"
            and LLMBAR_MTBENCH_SOURCE not in trained.get("dropped_sources", [])
        ):
            raise LeakageError(
                FieldViolation(
                    "--bundle",
                    f"bundle {bundle} was trained on llmbar, whose '{LLMBAR_MTBENCH_SOURCE}' subset repeats mtbench_human_gpt4's judgments",
                )
            )
    notes = [f"PPM from bundle {bundle.name} (trained on {', '.join(names) or 'an unknown pool'}); not refitted per fold"]
    for key, sha in files.items():
        if key.startswith("gold:") and sha == this:
            notes.append(f"the bundle used {pool_name} as a diagnostic gold set ({key}: reported in its card, not fitted on)")
    return notes


def known_data_files(data_dir: Path | None) -> dict[str, str]:
    from hybridpref.routing_model import bundle as bundle_io

    out: dict[str, str] = {}
    if data_dir is not None and data_dir.is_dir():
        for f in sorted(data_dir.glob("*/pairs.jsonl")):
            out[bundle_io.sha256_file(f)] = f.parent.name
    return out


# ---------------------------------------------------------------- preparation


def assign_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id per row: whole prompt groups, shuffled with ``seed``, dealt round-robin."""
    uniq = np.unique(groups)
    perm = np.random.default_rng([int(seed), 0xF01D]).permutation(len(uniq))
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    fold_of_group[perm] = np.arange(len(uniq)) % k
    return fold_of_group[np.searchsorted(uniq, groups)]


def prepare_case(path: Path, config: EvalConfig) -> Case:
    if path.is_dir():
        path = path / "pairs.jsonl"
    if not path.is_file():
        raise InvalidInput(FieldViolation("--pool", f"no pool file at {path}"))
    import sys

    from hybridpref.offline.pools import choose_judge

    name = path.parent.name if path.name == "pairs.jsonl" else path.stem
    given = config.lm_judges.get(name) or config.lm_judge
    pool = load_pool(path, judge=given)  # its judge by the rule predictor build follows too
    print(choose_judge(pool.name, pool.instances, given).describe(), file=sys.stderr)
    signals = pool.signals()
    return Case(pool, path, signals, assign_folds(pool.groups, config.folds, config.split_seed))


def tag_case(case: Case, profile: str, tagger_address: str | None = None) -> None:
    """Tag the pool (cached), in process or through the tagger service at ``tagger_address``; rows
    the tagger rejects are dropped and counted (the tagger rejects a whole batch for one bad row, so
    they are found from its field violations and removed)."""
    from hybridpref.common.fields import instance_index
    from hybridpref.offline.bundle.builder import cached_tags, tag_cache_key, tag_with_tagger
    from hybridpref.tagger.client import remote_tag_fn

    fn, _ = remote_tag_fn(tagger_address, profile) if tagger_address else tag_with_tagger(profile)
    for _attempt in range(3):
        try:
            case.tags = cached_tags(case.pool.instances, fn, tag_cache_key(fn, profile))
            return
        except InvalidInput as exc:
            bad = {i for v in exc.violations if (i := instance_index(v.field)) is not None}
            if not bad:
                raise
            keep = np.array([i for i in range(len(case.pool)) if i not in bad])
            case.pool.skipped["rejected by the tagger"] += len(bad)
            case.pool = case.pool.subset(keep)
            case.signals = case.signals.subset(keep)
            case.folds = case.folds[keep]
    raise InvalidInput(FieldViolation("--pool", f"tagger kept rejecting rows of {case.pool.name}"))


def load_scorer(bundle: Path):
    from hybridpref.router.scoring import QuadraticScorer
    from hybridpref.routing_model import bundle as bundle_io

    ppm = bundle_io.read_json(bundle, "ppm.json")
    return QuadraticScorer(ppm["bias"], np.asarray(ppm["linear"]), np.asarray(ppm["quad"]))


def bundle_profile(bundle: Path) -> str | None:
    from hybridpref.routing_model import bundle as bundle_io

    try:
        return bundle_io.read_json(bundle, "fingerprints.json").get("build_args", {}).get("tagger_profile")
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- strategies


def oracle_mask(human: np.ndarray, lm: np.ndarray, reference: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Humans exactly where the LM label is wrong and the human label right (vs the reference), at most
    ``k`` of them (seeded choice when there are more): the most metric 1 any router can gain."""
    fixable = np.flatnonzero((reference != 0) & (lm != reference) & (human == reference))
    if len(fixable) > k:
        fixable = np.random.default_rng([int(seed), 0x0AC1]).choice(fixable, k, replace=False)
    mask = np.zeros(len(human), dtype=bool)
    mask[fixable] = True
    return mask


class Router:
    """Routes one fold of one pool with one strategy through ``strategies.route`` (as the router does)."""

    def __init__(
        self,
        config: EvalConfig,
        scorer: Any | None,
        gain_fn: Callable[[Case, np.ndarray, frozenset[int], str], np.ndarray] | None,
    ):
        self.config = config
        self.scorer = scorer
        self.gain_fn = gain_fn
        self._distances: dict[tuple[str, bytes], float] = {}  # (pool, fold rows) -> distance to the PPM's domain

    def mask(
        self, case: Case, strategy: str, budget: float, rows: np.ndarray, seed: int, exclude: frozenset[int], mode: str
    ) -> np.ndarray:
        from hybridpref.router.budget import Budget, resolve_budget
        from hybridpref.router.strategies import route

        n = len(rows)
        resolved = resolve_budget(Budget.fraction(float(budget)), n, None)
        sig = case.signals.subset(rows)
        spec = _spec(strategy)
        if spec is None:  # oracle
            p = case.pool
            return oracle_mask(p.human[rows], sig.label, p.reference[rows], resolved.exact_count, seed)
        scorer = (case.scorer or self.scorer) if case.ppm_ok else None
        expected_gain = None
        if spec.needs_expected_gain:
            assert self.gain_fn is not None
            expected_gain = self.gain_fn(case, rows, exclude, mode)
        # As the router: the PPM breaks hybrid's ties only inside its domain (checked only where read).
        in_domain = spec.predictor == "in_domain" and self.ppm_in_domain(case, rows)
        tags = case.tags[rows] if case.tags is not None and scorer is not None else np.zeros((n, 0), dtype=np.uint8)
        return route(
            strategy,
            tags,
            resolved,
            scorer=scorer if tags.shape[1] else None,
            seed=int(seed),
            signals=sig if spec.needs_judge_first else None,
            expected_gain=expected_gain,
            ppm_in_domain=in_domain,
            simulated_candidates=self.config.simulated_candidates,
        ).human_mask

    def ppm_in_domain(self, case: Case, rows: np.ndarray) -> bool:
        """The router's check (``router.summary.domain_check``) on this fold: its text features' distance to
        the bundle's PPM training pools within the calibrated threshold. Counted per pool for the report;
        the distance is computed once per fold (every budget and seed routes the same rows)."""
        if not case.ppm_ok or case.domain is None or case.scorer is None:
            return False
        key = (case.pool.name, hashlib.blake2b(np.asarray(rows).tobytes(), digest_size=16).digest())
        if key not in self._distances:
            from hybridpref.offline.bundle import correction_fit

            self._distances[key] = case.domain.check(
                correction_fit.pool_features(case.pool.subset(rows), case.pool.default_judge)
            )[0]
        ok = bool(self._distances[key] <= case.domain.threshold)
        case.in_domain_folds["in" if ok else "out"] += 1
        return ok


def fit_correction(train: Sequence[Pool], config: EvalConfig) -> Any:
    """The correction model the router's expected-correction strategies read, fitted on ``train`` only:
    ``config.correction == "panel"`` the bundle's panel model (the recommended recipe,
    :func:`~hybridpref.offline.bundle.panel_correction_fit.fit_for_pools`, with its held-out transfer range),
    ``"onnx"`` the older ONNX model (text-only columns: the tagger's did not transfer)."""
    if config.correction == "panel":
        from hybridpref.offline.bundle import panel_correction_fit

        return panel_correction_fit.fit_for_pools(train, transfer=True)
    from hybridpref.offline.bundle import correction_fit

    return correction_fit.fit_for_pools(train, seed=config.split_seed, tagger_profile=None)


def correction_probabilities(model: Any, pool: Pool) -> np.ndarray:
    """(n, 2) [P(LM wrong), P(human vote wrong)] of ``pool``'s rows (its default judge's signals) by either model."""
    from hybridpref.routing_model.panel_correction import PanelCorrectionModel, panel_features

    if isinstance(model, PanelCorrectionModel):
        return model.probabilities(panel_features(pool.instances, pool.signals()))
    from hybridpref.offline.bundle import correction_fit

    return np.asarray(correction_fit.pool_probabilities(model, pool, pool.default_judge), dtype=np.float64)


def correction_gain(model: Any, pool: Pool) -> np.ndarray:
    """Expected corrections per bought label of ``pool``'s rows, (n,) float64."""
    p = correction_probabilities(model, pool)
    return p[:, 0] - p[:, 1]


def correction_gain_fn(
    cases: Sequence[Case], config: EvalConfig
) -> Callable[[Case, np.ndarray, frozenset[int], str], np.ndarray]:
    """Expected gain of a human label per row from the correction model (:func:`fit_correction`), fitted without
    the routed rows' labels: in-pool on the pool's folds outside ``exclude``; cross-pool on the other pools. Cached."""
    models: dict[tuple[str, str, frozenset[int]], Any] = {}
    fits = [0]

    def model_for(case: Case, exclude: frozenset[int], mode: str) -> Any:
        key = (case.pool.name, mode, exclude if mode == "in-pool" else frozenset())
        if key not in models:
            if mode == "in-pool":
                train = [case.pool.subset(np.flatnonzero(~np.isin(case.folds, list(exclude))))]
            else:
                train = [c.pool for c in cases if c.pool.name != case.pool.name]
            models[key] = fit_correction(train, config)
            fits[0] += 1
        return models[key]

    def gain(case: Case, rows: np.ndarray, exclude: frozenset[int], mode: str) -> np.ndarray:
        model = model_for(case, exclude, mode)
        return np.asarray(correction_gain(model, case.pool.subset(rows)), dtype=np.float64)

    gain.fits = fits  # type: ignore[attr-defined]
    gain.model_for = model_for  # type: ignore[attr-defined]
    return gain


def strategy_seeds(strategy: str, seeds: int) -> list[int]:
    return list(range(seeds)) if strategy == "random" else [0]


def route_case(case: Case, router: Router, strategies: Sequence[str], config: EvalConfig, mode: str, tick: ProgressFn) -> MixSet:
    """Masks for metric 1 (each fold routed without its own labels) and, where they differ, for metric 2."""
    out = MixSet()
    n, k = len(case.pool), config.folds
    fitted = {s for s in strategies if _needs_correction(s)} if mode == "in-pool" else set()
    if mode == "in-pool" and fitted:
        tick(f"{case.pool.name} {mode}: fitting correction models", 0)
    for strategy in strategies:
        for budget in config.budgets:
            seeds = strategy_seeds(strategy, config.seeds)
            if strategy in ("all_human", "all_lm"):
                out.masks[(strategy, budget)] = [np.full(n, strategy == "all_human")]
                continue
            per_seed = []
            for seed in seeds:
                mask = np.zeros(n, dtype=bool)
                for g in range(k):
                    rows = case.fold_rows(g)
                    mask[rows] = router.mask(case, strategy, budget, rows, seed * 1009 + g, frozenset({g}), mode)
                per_seed.append(mask)
            out.masks[(strategy, budget)] = per_seed
            if strategy in fitted and config.rm:  # training folds routed without the gold fold too
                out.rm_masks[(strategy, budget)] = {}
                for f in range(k):
                    mask = np.zeros(n, dtype=bool)
                    for g in range(k):
                        if g != f:
                            rows = case.fold_rows(g)
                            mask[rows] = router.mask(case, strategy, budget, rows, g, frozenset({f, g}), mode)
                    out.rm_masks[(strategy, budget)][f] = [mask]
            tick(f"{case.pool.name} {mode}: routing {strategy} @ {budget:g}", 1)
    return out


# ---------------------------------------------------------------- metrics


def routed_labels(human: np.ndarray, lm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, human, lm).astype(np.int8)


def label_correct(case: Case, mask: np.ndarray) -> np.ndarray:
    """(n,) 1.0 where the routed label equals the reference (a tie or missing label is wrong)."""
    lab = routed_labels(case.pool.human, case.lm, mask)
    return ((lab == case.pool.reference) & (lab != 0)).astype(np.float64)


def with_reference_labels(instances: Sequence[PreferenceInstance], reference: np.ndarray) -> list[PreferenceInstance]:
    """Copies whose ``human_label`` is the reference (the reward model's gold target; 0 -> excluded)."""
    lab = {1: Label.A_BETTER, -1: Label.B_BETTER}
    return [dataclasses.replace(inst, human_label=lab.get(int(r))) for inst, r in zip(instances, reference)]


class RewardModelScorer:
    """Metric 2 per pool: one prepared proxy per gold fold; label sets deduplicated across strategies,
    seeds and modes (identical training labels give identical reward models: common random numbers)."""

    def __init__(self, case: Case, config: EvalConfig):
        from hybridpref.offline.bundle.proxy import EmbeddingBTProxy
        from hybridpref.offline.evaluation.embeddings import CachedTextEncoder

        self.case, self.config = case, config
        self.encoder = CachedTextEncoder()
        self.proxies: dict[int, Any] = {}
        self.cache: dict[tuple[int, bytes], np.ndarray] = {}
        self._make = lambda: EmbeddingBTProxy(encoder=self.encoder, hidden=32, steps=config.rm_steps, seeds=config.rm_proxy_seeds)

    def proxy(self, f: int) -> Any:
        if f not in self.proxies:
            pool, folds = self.case.pool, self.case.folds
            train = [pool.instances[i] for i in np.flatnonzero(folds != f)]
            gold_rows = np.flatnonzero(folds == f)
            gold = with_reference_labels([pool.instances[i] for i in gold_rows], pool.reference[gold_rows])
            p = self._make()
            p.prepare(train, {"heldout": gold})
            self.proxies[f] = p
        return self.proxies[f]

    def correctness(self, masks_by_fold: Sequence[dict[int, np.ndarray]], tick: ProgressFn) -> list[np.ndarray]:
        """For each mix (a mask per gold fold), (n,) per-pair reward-model correctness (NaN: excluded)."""
        case, k = self.case, self.config.folds
        out = [np.full(len(case.pool), np.nan) for _ in masks_by_fold]
        for f in range(k):
            train = np.flatnonzero(case.folds != f)
            gold = np.flatnonzero(case.folds == f)
            labels = [routed_labels(case.pool.human[train], case.lm[train], m[f][train]) for m in masks_by_fold]
            keys = [hashlib.blake2b(lab.tobytes(), digest_size=16).digest() for lab in labels]
            todo = {key: lab for key, lab in zip(keys, labels) if (f, key) not in self.cache}
            if todo:
                res = self.proxy(f).evaluate_pairs(np.stack(list(todo.values())), seed=self.config.split_seed)["heldout"]
                for key, row in zip(todo, res):
                    self.cache[(f, key)] = row
                tick(f"{case.pool.name}: reward models (fold {f})", len(todo))
            for i, key in enumerate(keys):
                out[i][gold] = self.cache[(f, key)]
        return out


def score_table(
    correct: dict[tuple[str, float], np.ndarray], eligible: np.ndarray, boot: stats.GroupBootstrap, budgets: Sequence[float]
) -> list[dict[str, Any]]:
    """Estimate + interval per (strategy, budget); paired differences vs random (same budget), all_lm and
    judge_doubt; share of the oracle's gain over random. ``correct`` values are (n,) correctness, random
    already averaged over its seeds."""
    keys = list(correct)
    mat = np.column_stack([np.nan_to_num(correct[k]) for k in keys])
    elig = eligible & np.all(np.isfinite(np.column_stack([correct[k] for k in keys])), axis=1)
    samples = boot.means(mat, elig)  # (B, m)
    point = np.array([stats.mean_over_eligible(mat[:, j], elig) for j in range(len(keys))])
    col = {k: j for j, k in enumerate(keys)}
    rows = []
    for (strategy, budget), j in col.items():
        r: dict[str, Any] = {"strategy": strategy, "budget": budget, "estimate": point[j], "n": int(elig.sum())}
        r["ci_low"], r["ci_high"] = stats.interval(samples[:, j])
        for ref, name in (("random", "random"), ("all_lm", "all_lm"), ("judge_doubt", "judge_doubt")):
            ref_key = (ref, budget)
            if ref_key in col:
                d = samples[:, j] - samples[:, col[ref_key]]
                r[f"diff_{name}"] = point[j] - point[col[ref_key]]
                r[f"diff_{name}_low"], r[f"diff_{name}_high"] = stats.interval(d)
        ok, rk = ("oracle", budget) in col, ("random", budget) in col
        if ok and rk:
            gain = samples[:, col[("oracle", budget)]] - samples[:, col[("random", budget)]]
            with np.errstate(invalid="ignore", divide="ignore"):
                share = (samples[:, j] - samples[:, col[("random", budget)]]) / np.where(gain > 0, gain, np.nan)
            denom = point[col[("oracle", budget)]] - point[col[("random", budget)]]
            if stats.interval(gain)[0] > 0:  # a share of a gain indistinguishable from 0 means nothing
                r["share_oracle"] = (point[j] - point[col[("random", budget)]]) / denom
                r["share_oracle_low"], r["share_oracle_high"] = stats.interval(share)
            else:
                r["share_oracle"] = r["share_oracle_low"] = r["share_oracle_high"] = float("nan")
        rows.append(r)
    return rows


def _correct_by_key(
    case: Case, masks: dict[tuple[str, float], list[np.ndarray]], budgets: Sequence[float]
) -> dict[tuple[str, float], np.ndarray]:
    out = {}
    for (strategy, budget), ms in masks.items():
        out[(strategy, budget)] = np.mean([label_correct(case, m) for m in ms], axis=0)
    return out


# ---------------------------------------------------------------- the run


def evaluate(config: EvalConfig, progress: ProgressFn | None = None) -> EvalResult:
    """Run the whole evaluation (see the module docstring); gRPC-free."""
    config.validate()
    tick = progress or (lambda _d, _n: None)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    from hybridpref.offline.pools import default_data_dir, summary

    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    cases = [prepare_case(Path(p), config) for p in config.pools]
    names = [c.pool.name for c in cases]
    if len(set(names)) != len(names):
        raise InvalidInput(FieldViolation("--pool", f"pool names repeat: {names}"))
    if {"llmbar", "mtbench_human_gpt4"} <= set(names):
        notes.append(
            "llmbar is evaluated without its MT-Bench subset (same judgments as mtbench_human_gpt4), so cross-pool fits never see one pool's judgments through the other"
        )
    strategies = list(dict.fromkeys(config.strategies))
    for s in REFERENCE_STRATEGIES:
        if s not in strategies:
            strategies.insert(REFERENCE_STRATEGIES.index(s), s)
    unknown = [s for s in strategies if s not in STRATEGIES and s not in HARNESS_ONLY]
    notes.append(
        "judge_doubt: the router's strategy (no verdict / order flip first, then disagreement between judges, then low confidence) on recorded judge signals"
    )
    if unknown:
        raise InvalidInput(
            FieldViolation("--strategies", f"unknown strategies {unknown}; the router has {', '.join(STRATEGIES)}")
        )

    needs_ppm = [s for s in strategies if _evaluated_with_ppm(s)]
    if needs_ppm and not (config.bundle or config.bundle_for):
        notes.append(f"skipped {', '.join(needs_ppm)}: they need a PPM (--bundle)")
        strategies = [s for s in strategies if s not in needs_ppm]
    timings["tag_s"] = attach_bundles(cases, config, data_dir, notes, tick)

    gain_fn = correction_gain_fn(cases, config) if any(_needs_correction(s) for s in strategies) else None

    router = Router(config, None, gain_fn)
    rows: list[dict[str, Any]] = []
    summaries = [
        summary(c.pool)
        | {"lm_no_verdict": int(np.sum(c.lm == 0)), "lm_order_flips": int(np.sum(c.signals.order_flip)), "notes": c.notes}
        for c in cases
    ]
    rm_scorers = {c.pool.name: RewardModelScorer(c, config) for c in cases} if config.rm else {}
    pooled_inputs: dict[str, list[tuple[Case, dict]]] = {m: [] for m in config.modes}
    t_route = t_rm = 0.0
    corrections: list[dict[str, Any]] = []
    for mode in config.modes:
        for case in cases:
            t = time.perf_counter()
            run = [s for s in strategies if case.ppm_ok or not _evaluated_with_ppm(s)]
            mixes = route_case(case, router, run, config, mode, tick)
            t_route += time.perf_counter() - t
            boot = stats.GroupBootstrap.create(case.pool.groups, config.n_boot, config.split_seed)
            eligible = case.pool.reference != 0
            c1 = _correct_by_key(case, mixes.masks, config.budgets)
            shares = {key: float(np.mean([m.mean() for m in ms])) for key, ms in mixes.masks.items()}
            for r in score_table(c1, eligible, boot, config.budgets):
                rows.append(
                    {
                        "pool": case.pool.name,
                        "mode": mode,
                        "metric": "label_accuracy",
                        **r,
                        "human_share": shares[(r["strategy"], r["budget"])],
                    }
                )
            if gain_fn is not None:
                corrections += corrections_check(case, mixes, gain_fn, config, mode)
            if config.rm:
                t = time.perf_counter()
                c2 = rm_correct(case, mixes, config, rm_scorers[case.pool.name], tick)
                t_rm += time.perf_counter() - t
                for r in score_table(c2, eligible, boot, config.budgets):
                    rows.append(
                        {
                            "pool": case.pool.name,
                            "mode": mode,
                            "metric": "rm_accuracy",
                            **r,
                            "human_share": shares[(r["strategy"], r["budget"])],
                        }
                    )
                pooled_inputs[mode].append((case, c2))
    timings["route_s"], timings["rm_s"] = t_route, t_rm
    for case in cases:
        if case.in_domain_folds:
            case.notes.append(
                f"hybrid: the batch was inside the PPM's domain (PPM breaks ties) in {case.in_domain_folds['in']} of "
                f"{sum(case.in_domain_folds.values())} routed folds (the router's domain check on each fold)"
            )
    pooled: list[dict[str, Any]] = []
    power: list[dict[str, Any]] = []
    if config.rm:
        pooled, power = pooled_rm(pooled_inputs, config)
    t = time.perf_counter()
    has_ppm = any(c.scorer is not None for c in cases)
    prediction = (
        prediction_check(cases, None, rm_scorers, config, tick) if (config.rm and has_ppm and config.prediction_mixes) else []
    )
    timings["prediction_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return EvalResult(config, rows, notes, summaries, pooled, prediction, power, timings, corrections)


def corrections_check(case: Case, mixes: MixSet, gain_fn: Any, config: EvalConfig, mode: str) -> list[dict[str, Any]]:
    """Is the summary's "expected corrections" honest? Per correction strategy and budget: the router's
    estimate for the routed mix (summed over the folds, each predicted by the model that routed it, with
    the summary's interval: outcome randomness widened by the model's measured transfer range) against the
    realised net corrections (+1 fixed, -1 broken, ties in the reference count 0)."""
    from statistics import NormalDist

    from hybridpref.offline.bundle import correction_fit
    from hybridpref.router.summary import Estimate, shown_corrections
    from hybridpref.routing_model import correction
    from hybridpref.routing_model.panel_correction import PanelCorrectionModel

    z = NormalDist().inv_cdf(0.5 + 0.9 / 2)
    realised = correction_fit.realised_corrections(case.pool.human, case.lm, case.pool.reference)
    out = []
    for (strategy, budget), masks in mixes.masks.items():
        if not _needs_correction(strategy):
            continue
        mask = masks[0]
        mean = var = 0.0
        ranges = []
        for g in range(config.folds):
            rows = case.fold_rows(g)
            model = gain_fn.model_for(case, frozenset({g}), mode)
            if not isinstance(model, (correction.CorrectionModel, PanelCorrectionModel)):  # a stand-in (tests): nothing to check
                return []
            p = correction_probabilities(model, case.pool.subset(rows))[mask[rows]]
            a, b = p[:, 0] * (1 - p[:, 1]), (1 - p[:, 0]) * p[:, 1]
            mean += float(np.sum(a - b))
            var += float(np.sum(a + b - (a - b) ** 2))
            if (r := correction.transfer_range(model.metrics)) is not None:
                ranges.append(r)
        plain = Estimate(mean, mean - z * var**0.5, mean + z * var**0.5)
        transfer = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None
        shown = shown_corrections(plain, transfer)  # exactly the interval the summary shows
        got = float(realised[mask].sum())
        out.append(
            {
                "pool": case.pool.name,
                "mode": mode,
                "strategy": strategy,
                "budget": budget,
                "routed": int(mask.sum()),
                "predicted": mean,
                "outcome_low": plain.low,
                "outcome_high": plain.high,
                "shown_low": shown.low,
                "shown_high": shown.high,
                "realised": got,
                "ratio": got / mean if mean > 1.0 else float("nan"),
                "covered_by_outcome_interval": bool(plain.low <= got <= plain.high),
                "covered_by_shown_interval": bool(shown.low <= got <= shown.high),
            }
        )
    return out


def load_domain(bundle: Path) -> Any | None:
    """The bundle's PPM domain as the router loads it, or None when the bundle records none."""
    from hybridpref.router.model import DomainModel
    from hybridpref.routing_model import bundle as bundle_io

    if not (bundle / "domain.json").is_file():
        return None
    return DomainModel.from_json(bundle_io.read_json(bundle, "domain.json"))


def attach_bundles(cases: Sequence[Case], config: EvalConfig, data_dir: Path, notes: list[str], tick: ProgressFn) -> float:
    """Per pool, the bundle ``--bundle-for`` names (else ``--bundle``): leakage-checked, its PPM loaded and the pool
    tagged with its profile. Returns the tagging time."""
    names = {c.pool.name for c in cases}
    unknown = sorted(set(config.bundle_for) - names)
    if unknown:
        raise InvalidInput(FieldViolation("--bundle-for", f"no pool named {unknown}; pools: {sorted(names)}"))
    known = known_data_files(data_dir) if (config.bundle or config.bundle_for) else {}
    t = time.perf_counter()
    for case in cases:
        path = config.bundle_for.get(case.pool.name) or config.bundle
        if not path:
            continue
        bundle = Path(path)
        try:
            case.notes += check_bundle_leakage(bundle, case.path, case.pool.name, known)
            case.scorer, case.ppm_ok = load_scorer(bundle), True
            case.domain = load_domain(bundle)
        except LeakageError as exc:
            if config.on_leak == "error":
                raise
            case.notes.append(f"PPM strategies skipped (leakage): {exc.violations[0].description}")
            continue
        profile = config.tagger_profile or bundle_profile(bundle) or "fast"
        tick(f"{case.pool.name}: tagging ({profile})", 0)
        tag_case(case, profile, config.tagger_address)
        if profile != (bundle_profile(bundle) or profile):
            note = f"tags from the {profile} profile, but the bundle was built on {bundle_profile(bundle)} tags"
            notes.extend([note] if note not in notes else [])
    return time.perf_counter() - t


def rm_correct(
    case: Case, mixes: MixSet, config: EvalConfig, scorer: RewardModelScorer, tick: ProgressFn
) -> dict[tuple[str, float], np.ndarray]:
    """Metric 2 correctness per (strategy, budget); random averaged over ``rm_random_seeds`` seeds."""
    keys, plans = [], []
    for key, ms in mixes.masks.items():
        use = ms[: config.rm_random_seeds] if key[0] == "random" else ms
        for m in use:
            by_fold = mixes.rm_masks.get(key)
            plans.append({f: (by_fold[f][0] if by_fold else m) for f in range(config.folds)})
            keys.append(key)
    res = scorer.correctness(plans, tick)
    out: dict[tuple[str, float], list[np.ndarray]] = {}
    for key, r in zip(keys, res):
        out.setdefault(key, []).append(r)
    return {k: np.mean(v, axis=0) for k, v in out.items()}


def pooled_rm(inputs: dict[str, list[tuple[Case, dict]]], config: EvalConfig) -> tuple[list[dict], list[dict]]:
    """Metric 2 pooled over pools and budgets: per row, the mean over budgets of each strategy's correctness;
    bootstrap stratified by pool. Also the minimum detectable difference (paired, per-pair discordance)."""
    pooled, power = [], []
    for mode, items in inputs.items():
        if not items:
            continue
        strategies = sorted(
            {s for _, c in items for s, _ in c}, key=lambda s: DEFAULT_STRATEGIES.index(s) if s in DEFAULT_STRATEGIES else 99
        )
        common = [s for s in strategies if all(any(k[0] == s for k in c) for _, c in items)]
        vecs: dict[tuple[str, float], list[np.ndarray]] = {(s, -1.0): [] for s in common}
        groups, strata, elig = [], [], []
        for case, c in items:
            for s in common:
                vecs[(s, -1.0)].append(np.mean([c[(s, b)] for b in config.budgets], axis=0))
            groups.append(case.pool.groups)
            strata.append(np.full(len(case.pool), case.pool.name, dtype=object))
            elig.append(case.pool.reference != 0)
        g = np.concatenate(groups)
        boot = stats.GroupBootstrap.create(g, config.n_boot, config.split_seed + 1, strata=np.concatenate(strata))
        correct = {k: np.concatenate(v) for k, v in vecs.items()}
        e = np.concatenate(elig)
        for r in score_table(correct, e, boot, [-1.0]):
            r["half_width_diff_random"] = (r.get("diff_random_high", np.nan) - r.get("diff_random_low", np.nan)) / 2
            pooled.append({"mode": mode, "pools": "+".join(c.pool.name for c, _ in items), **r})
        for s in common:
            if s == "random":
                continue
            a, b = correct[(s, -1.0)], correct[("random", -1.0)]
            ok = e & np.isfinite(a) & np.isfinite(b)
            sd = float(np.std((a - b)[ok], ddof=1)) if ok.sum() > 1 else float("nan")
            power.append(
                {
                    "mode": mode,
                    "strategy": s,
                    "n_gold": int(ok.sum()),
                    "per_pair_sd": sd,
                    "mdd_paired": stats.paired_mdd(a, b, ok),
                    "mdd_two_proportion": stats.two_proportion_mdd(float(np.nanmean(b[ok])), int(ok.sum())),
                    "gold_for_1pt": stats.gold_size_for_mdd(0.01, sd) if np.isfinite(sd) and sd > 0 else None,
                }
            )
    return pooled, power


def prediction_check(
    cases: Sequence[Case], scorer: Any, rm_scorers: dict[str, RewardModelScorer], config: EvalConfig, tick: ProgressFn
) -> list[dict]:
    """Per pool with a usable PPM: ``prediction_mixes`` random mixes (human share uniform in [0, 1]) of the
    training folds for gold fold 0; Spearman of the PPM's predicted score and measured metric 2, and the
    partial Spearman given the human share."""
    from hybridpref.router.scoring import mix_counts

    out = []
    for case in cases:
        if not case.ppm_ok or case.tags is None:
            continue
        rng = np.random.default_rng([config.split_seed, 0x9E0])
        train = np.flatnonzero(case.folds != 0)
        shares = rng.random(config.prediction_mixes)
        plans, predicted = [], []
        for share in shares:
            mask = np.zeros(len(case.pool), dtype=bool)
            mask[rng.choice(train, int(round(share * len(train))), replace=False)] = True
            plans.append({f: mask for f in range(config.folds)})
            predicted.append(
                float((case.scorer or scorer).score(mix_counts(case.tags[train], mask[train])[None, :], len(train))[0])
            )
        scorer_rm = rm_scorers[case.pool.name]
        gold = np.flatnonzero(case.folds == 0)
        measured = []
        for i in range(0, len(plans), 32):
            chunk = plans[i : i + 32]
            only0 = [{0: p[0]} for p in chunk]
            res = _fold0(scorer_rm, only0, tick)
            measured += [float(np.nanmean(r[gold])) for r in res]
        predicted_a, measured_a = np.array(predicted), np.array(measured)
        out.append(
            {
                "pool": case.pool.name,
                "mixes": len(shares),
                "gold": int(np.sum(case.pool.reference[gold] != 0)),
                "spearman": stats.spearman(predicted_a, measured_a),
                "partial_spearman_given_share": stats.partial_spearman(predicted_a, measured_a, shares),
                "spearman_share_vs_measured": stats.spearman(shares, measured_a),
            }
        )
    return out


def _fold0(scorer: RewardModelScorer, plans: list[dict[int, np.ndarray]], tick: ProgressFn) -> list[np.ndarray]:
    """Metric 2 on gold fold 0 only (the prediction check trains one reward model per mix)."""
    case = scorer.case
    train = np.flatnonzero(case.folds != 0)
    labels = np.stack([routed_labels(case.pool.human[train], case.lm[train], p[0][train]) for p in plans])
    res = scorer.proxy(0).evaluate_pairs(labels, seed=scorer.config.split_seed)["heldout"]
    tick(f"{case.pool.name}: prediction check", len(plans))
    out = []
    gold = np.flatnonzero(case.folds == 0)
    for row in res:
        v = np.full(len(case.pool), np.nan)
        v[gold] = row
        out.append(v)
    return out
