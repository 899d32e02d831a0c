"""Panel-shift study (issue 19): does the routing decision hold when the judge panel changes?

    HYBRIDPREF_DATA_DIR=/work/shared/data python benchmarks/panel_study.py --out docs/evaluation/panel

Cross-pool, leave-one-pool-out over the three shared pools (mtbench_human_gpt4, pandalm, llmbar, as the
default bundle reads them): every model is fitted on the other two pools and routes each panel variant of
the held-out pool (:func:`hybridpref.evaluation.panels.panel_variants`: each recorded judge model as the
primary judge with 0-3 other models recorded, plus the pool as usual). Each variant is routed and scored
by the evaluation harness (``harness.Router`` / ``route_case`` / ``score_table``: label accuracy, paired
group bootstrap, share of the oracle's gain over random), so the numbers are the harness's metric 1.

Rows: ``all_lm``, ``random``, ``oracle``, ``judge_doubt`` (the router's), ``hybrid`` (the default as wired: the
bundle's panel correction model, :func:`panel_correction_fit.fit_for_pools` on the other pools; ``--hybrid onnx``:
the previous default, the ONNX correction model's fit) and candidate correction models (``expected_gain``
routing with the candidate's gains; ``previous``: the ONNX model, the default before issue 19's wiring). Writes ``results.csv`` (every variant x strategy x budget) and
``summary.md`` (per candidate: mean share over variants, variants significantly below ``judge_doubt`` /
``hybrid``) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.offline import stats
from hybridpref.offline.bundle import correction_fit as correction
from hybridpref.offline.bundle import panel_correction_fit as pcf
from hybridpref.offline.evaluation import harness
from hybridpref.offline.panels import PanelVariant, panel_variants
from hybridpref.offline.pools import DEFAULT_JUDGES, Pool, default_data_dir, load_pool
from hybridpref.routing_model import correction as served
from hybridpref.routing_model import panel_correction as pc

RECOMMENDED = "share+text/aug"  # the recipe of pcf.fit_for_pools (RECOMMENDED_COLUMNS, all panel variants)
GainModel = Callable[[np.ndarray, Pool], np.ndarray]  # (rows of the variant, variant pool) -> (len(rows),) gains


@dataclass
class Candidate:
    """A correction model to study: ``fit(train_pools, train_variants)`` -> a function of (variant pool,
    feature rows) giving the expected gain per row; ``train`` says which panels it learns from."""

    name: str
    fit: Callable[[Sequence[Pool], Sequence[Sequence[PanelVariant]]], Callable[[Pool, np.ndarray], np.ndarray]]
    doc: str = ""


def _training_sets(
    pools: Sequence[Pool], variants: Sequence[Sequence[PanelVariant]], augment: bool
) -> tuple[list[pcf.TrainingSet], list[str]]:
    sets, groups = [], []
    for pool, vs in zip(pools, variants):
        if augment:
            for v in vs:
                sets.append(pcf.TrainingSet.from_pool(v.pool, v.name, 1.0 / len(vs)))
                groups.append(pool.name)
        else:
            sets.append(pcf.TrainingSet.from_pool(pool))
            groups.append(pool.name)
    return sets, groups


def panel_candidate(
    name: str,
    columns: Sequence[str],
    *,
    augment: bool,
    fallback: float = 0.0,
    l2: float = 10.0,
    nonneg: Sequence[str] = pc.MONOTONE,
    verdict_only: bool = False,
    human_columns: Sequence[str] | None = None,
) -> Candidate:
    def fit(pools: Sequence[Pool], variants: Sequence[Sequence[PanelVariant]]) -> Callable[[Pool, np.ndarray], np.ndarray]:
        sets, groups = _training_sets(pools, variants, augment)
        model = pcf.fit_panel_model(
            sets,
            columns,
            l2=l2,
            groups=groups,
            fallback_distance=fallback,
            nonneg=nonneg,
            verdict_only=verdict_only,
            human_columns=human_columns,
        )

        def gain(pool: Pool, rows: np.ndarray) -> np.ndarray:
            return model.expected_gain(_features(pool)[rows])

        gain.model = model  # type: ignore[attr-defined]
        return gain

    return Candidate(
        name, fit, f"{'+'.join(columns)}; {'all panel variants' if augment else 'usual panels'}; fallback {fallback}"
    )


def floor_candidate() -> Candidate:
    """The issue's 7-feature logistic: no verdict, number and share of other judges that disagree, LM picked
    the shorter, |log length ratio|, any other judge recorded, log prompt length (sklearn, C = 1)."""
    from sklearn.linear_model import LogisticRegression

    cols = ["no_verdict", "disagree", "lm_picked_shorter", "abs_log_len_ratio", "any_other", "log_prompt_len"]
    idx = [pc.PANEL_FEATURES.index(c) for c in cols]

    def mat(pool: Pool) -> np.ndarray:
        x = _features(pool)
        n_dis = x[:, pc.PANEL_FEATURES.index("disagree")] * _n_others(pool)
        return np.column_stack([x[:, idx], n_dis])

    def fit(pools: Sequence[Pool], variants: Sequence[Sequence[PanelVariant]]) -> Callable[[Pool, np.ndarray], np.ndarray]:
        xs, ys = [], []
        for p in pools:
            keep = p.reference != 0
            xs.append(mat(p)[keep])
            ys.append(p.signals().label[keep] != p.reference[keep])
        x, y = np.vstack(xs), np.concatenate(ys)
        mu, sd = x.mean(0), np.where(x.std(0) > 1e-9, x.std(0), 1.0)
        lr = LogisticRegression(C=1.0, max_iter=2000).fit((x - mu) / sd, y)

        def gain(pool: Pool, rows: np.ndarray) -> np.ndarray:
            return lr.predict_proba((mat(pool)[rows] - mu) / sd)[:, 1]

        return gain

    return Candidate("floor7", fit, "issue 19's 7-feature logistic (counts included), usual panels")


def served_candidate(profile: str | None) -> Candidate:
    """The served model's fit with the tagger's measures and tags added to its columns (``profile``: the
    tagger profile, None = text-only columns): what the default strategy loses without the tagger."""
    cols = served.DEFAULT_COLUMNS + ((served.MEASURE_FEATURES + served.TAG_FEATURES) if profile else ())

    def fit(pools: Sequence[Pool], variants: Sequence[Sequence[PanelVariant]]) -> Callable[[Pool, np.ndarray], np.ndarray]:
        feats = [correction.pool_features(p, tagger_profile=profile) for p in pools]
        model = correction.fit_correction_model(pools, feats, 0, columns=cols, human_columns=cols, evaluate=False)

        def gain(pool: Pool, rows: np.ndarray) -> np.ndarray:
            return model.expected_gain(correction.pool_features(pool, tagger_profile=profile)[rows])

        return gain

    return Candidate(f"served+tagger:{profile or 'none'}", fit, "the served correction model's columns plus the tagger's")


_FEATURE_CACHE: dict[int, np.ndarray] = {}
_COUNT_CACHE: dict[int, np.ndarray] = {}


def _features(pool: Pool) -> np.ndarray:
    key = id(pool)
    if key not in _FEATURE_CACHE:
        _FEATURE_CACHE[key] = pc.panel_features(pool.instances, pool.signals())
    return _FEATURE_CACHE[key]


def _n_others(pool: Pool) -> np.ndarray:
    from hybridpref.common.signals import judge_keys, recorded_verdict

    key = id(pool)
    if key not in _COUNT_CACHE:
        others = [k for k in judge_keys(pool.instances) if k != pool.default_judge]
        _COUNT_CACHE[key] = np.array([sum(recorded_verdict(i, k)[2] for k in others) for i in pool.instances], dtype=np.float64)
    return _COUNT_CACHE[key]


def previous_candidate() -> Candidate:
    """The default before the panel model was wired: the ONNX correction model as ``add-routing-models`` fits it
    (``correction_fit.fit_for_pools``, text-only columns)."""

    def fit(pools: Sequence[Pool], variants: Sequence[Sequence[PanelVariant]]) -> Callable[[Pool, np.ndarray], np.ndarray]:
        model = correction.fit_for_pools(pools, seed=0, tagger_profile=None)

        def gain(pool: Pool, rows: np.ndarray) -> np.ndarray:
            return correction.expected_gain_for_pool(model, pool.subset(rows), pool.default_judge)

        return gain

    return Candidate("previous", fit, "the ONNX correction model (the default before the panel model was wired)")


def candidates() -> list[Candidate]:
    tagger = [served_candidate(None), served_candidate("fast"), served_candidate("default")]
    base = ("order_flip", "any_other", "disagree", "p_unsure", "p_missing")
    length = ("lm_picked_shorter", "abs_log_len_ratio")
    out = [previous_candidate(), floor_candidate(), *tagger]
    for aug in (False, True):
        tag = "aug" if aug else "usual"
        out += [
            panel_candidate(f"share/{tag}", base, augment=aug),
            panel_candidate(f"share+all/{tag}", base + ("all_disagree",), augment=aug),
            panel_candidate(f"share+len/{tag}", base + length, augment=aug),
            panel_candidate(f"share+len+prompt/{tag}", base + length + ("log_prompt_len",), augment=aug),
            panel_candidate(f"share+text/{tag}", base + ("word_overlap", "log_len_shorter"), augment=aug),
        ]
    text = ("word_overlap", "log_len_shorter")
    out += [
        panel_candidate("share+text+all/aug", base + text + ("all_disagree",), augment=True),
        panel_candidate("share+text+maj/aug", base + text + ("majority_disagree",), augment=True),
        panel_candidate("share+text/aug/l2=1", base + text, augment=True, l2=1.0),
        panel_candidate("share+text/aug/l2=100", base + text, augment=True, l2=100.0),
        panel_candidate("share+text/aug/verdict", base + text, augment=True, verdict_only=True),
        panel_candidate("share+text+len/aug", base + text + length, augment=True),
        panel_candidate("share+text/aug/hrate", base + text, augment=True, human_columns=()),
        panel_candidate("share+text/aug/htext", base + text, augment=True, human_columns=("order_flip",) + text),
        panel_candidate("share+text/aug/fb1", base + text, augment=True, fallback=1.0),
        panel_candidate("share+text/aug/fb3", base + text, augment=True, fallback=3.0),
        panel_candidate("share+text/aug/fb6", base + text, augment=True, fallback=6.0),
    ]
    return out


# ---------------------------------------------------------------- routing and scoring through the harness


def _config(budgets: Sequence[float], seeds: int, n_boot: int) -> harness.EvalConfig:
    return harness.EvalConfig(
        pools=["-"], budgets=tuple(budgets), seeds=seeds, modes=("cross-pool",), folds=3, split_seed=0, n_boot=n_boot, rm=False
    )


def route_variant(
    variant: PanelVariant, config: harness.EvalConfig, gains: dict[str, Callable[[Pool, np.ndarray], np.ndarray]]
) -> tuple[dict, harness.Case]:
    """Correctness per (strategy, budget) on one variant: reference rows and ``hybrid`` via the harness's
    router, each candidate as ``expected_gain`` with its gains (renamed to the candidate)."""
    pool = variant.pool
    case = harness.Case(pool, Path(pool.name), pool.signals(), harness.assign_folds(pool.groups, config.folds, config.split_seed))
    tick = lambda _d, _n: None  # noqa: E731
    masks: dict[tuple[str, float], list[np.ndarray]] = {}
    for name, fn in gains.items():

        def gain_fn(c: harness.Case, rows: np.ndarray, exclude: frozenset[int], mode: str, fn=fn) -> np.ndarray:
            return np.asarray(fn(c.pool, rows), dtype=np.float64)

        router = harness.Router(config, None, gain_fn)
        if name == "hybrid":
            strategies = ["all_lm", "random", "oracle", "judge_doubt", "hybrid"]
            masks.update(harness.route_case(case, router, strategies, config, "cross-pool", tick).masks)
        else:
            got = harness.route_case(case, router, ["expected_gain"], config, "cross-pool", tick).masks
            masks.update({(name, b): m for (_, b), m in got.items()})
    return harness._correct_by_key(case, masks, config.budgets), case


def score_variant(variant: PanelVariant, correct: dict, case: harness.Case, config: harness.EvalConfig) -> list[dict[str, Any]]:
    boot = stats.GroupBootstrap.create(case.pool.groups, config.n_boot, config.split_seed)
    eligible = case.pool.reference != 0
    rows = harness.score_table(correct, eligible, boot, config.budgets)
    # paired difference vs the current default (same bootstrap draws as score_table's)
    keys = list(correct)
    mat = np.column_stack([np.nan_to_num(correct[k]) for k in keys])
    samples = boot.means(mat, eligible)
    col = {k: j for j, k in enumerate(keys)}
    for r in rows:
        ref = ("hybrid", r["budget"])
        if ref in col:
            d = samples[:, col[(r["strategy"], r["budget"])]] - samples[:, col[ref]]
            r["diff_hybrid"] = float(np.mean(mat[eligible, col[(r["strategy"], r["budget"])]]) - np.mean(mat[eligible, col[ref]]))
            r["diff_hybrid_low"], r["diff_hybrid_high"] = stats.interval(d)
        r.update(
            {
                "pool": variant.pool.name,
                "variant": variant.name,
                "primary": variant.primary,
                "k_others": variant.k,
                "usual": variant.usual,
            }
        )
    return rows


def run(
    data_dir: Path,
    budgets: Sequence[float],
    seeds: int,
    n_boot: int,
    cands: Sequence[Candidate],
    only_usual: bool = False,
    hybrid: str = "panel",
) -> list[dict[str, Any]]:
    names = list(DEFAULT_JUDGES)
    pools = {n: load_pool(data_dir / n) for n in names}
    variants = {n: (panel_variants(p)[:1] if only_usual else panel_variants(p)) for n, p in pools.items()}
    all_variants = {n: panel_variants(p) for n, p in pools.items()}
    config = _config(budgets, seeds, n_boot)
    out: list[dict[str, Any]] = []
    for held in names:
        t = time.perf_counter()
        train = [pools[n] for n in names if n != held]
        train_v = [all_variants[n] for n in names if n != held]
        if hybrid == "panel":  # the wired default: the bundle's recipe fitted on the other pools
            current = pcf.fit_for_pools(train)

            def hybrid_gain(pool: Pool, rows: np.ndarray, current=current) -> np.ndarray:
                return current.expected_gain(_features(pool)[rows])
        else:
            current = correction.fit_for_pools(train, seed=0, tagger_profile=None)

            def hybrid_gain(pool: Pool, rows: np.ndarray, current=current) -> np.ndarray:
                return correction.expected_gain_for_pool(current, pool.subset(rows), pool.default_judge)

        gains: dict[str, Callable[[Pool, np.ndarray], np.ndarray]] = {"hybrid": hybrid_gain}
        for c in cands:
            gains[c.name] = c.fit(train, train_v)
        for v in variants[held]:
            correct, case = route_variant(v, config, gains)
            out += score_variant(v, correct, case, config)
        print(f"# {held}: {len(variants[held])} variants in {time.perf_counter() - t:.1f}s", flush=True)
    return out


# ---------------------------------------------------------------- output


FIELDS = [
    "pool",
    "variant",
    "primary",
    "k_others",
    "usual",
    "strategy",
    "budget",
    "estimate",
    "ci_low",
    "ci_high",
    "n",
    "share_oracle",
    "share_oracle_low",
    "share_oracle_high",
    "diff_random",
    "diff_random_low",
    "diff_random_high",
    "diff_judge_doubt",
    "diff_judge_doubt_low",
    "diff_judge_doubt_high",
    "diff_hybrid",
    "diff_hybrid_low",
    "diff_hybrid_high",
]


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if k in FIELDS})


def summarise(rows: Sequence[dict[str, Any]], budgets: Sequence[float]) -> str:
    """Per strategy and budget: mean share of the oracle's gain over variants (and over the usual
    variants), number of variants significantly below judge_doubt / below hybrid / above hybrid."""
    strategies = list(
        dict.fromkeys(r["strategy"] for r in rows if r["strategy"] not in ("all_lm", "random", "oracle", "all_human"))
    )
    lines = [
        "| strategy | budget | mean share, all variants | mean share, usual panels (MT-Bench / PandaLM / LLMBar) | "
        "min share | below judge_doubt (sig.) | vs hybrid: below / above (sig.) | mean diff vs hybrid (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in strategies:
        for b in budgets:
            rs = [r for r in rows if r["strategy"] == s and r["budget"] == b]
            sh = np.array([r.get("share_oracle", np.nan) for r in rs], dtype=float)
            usual = [r for r in rs if r["usual"]]
            below = sum(1 for r in rs if r.get("diff_judge_doubt_high", 1) < 0)
            bh = sum(1 for r in rs if r.get("diff_hybrid_high", 1) < 0)
            ah = sum(1 for r in rs if r.get("diff_hybrid_low", -1) > 0)
            dh = np.nanmean([r.get("diff_hybrid", np.nan) for r in rs]) * 100
            u = " / ".join(
                f"{100 * r['share_oracle']:.0f} [{100 * r['share_oracle_low']:.0f}, {100 * r['share_oracle_high']:.0f}]"
                for r in usual
            )
            lines.append(
                f"| {s} | {b:g} | {100 * np.nanmean(sh):.1f} | {u} | {100 * np.nanmin(sh):.0f} | {below} of {len(rs)} | "
                f"{bh} / {ah} | {dh:+.1f} |"
            )
    return "\n".join(lines)


def variant_table(rows: Sequence[dict[str, Any]], budgets: Sequence[float], strategies: Sequence[str]) -> str:
    """Per variant: the oracle's gain over random and each strategy's share of it, per budget; ``*`` =
    significantly below ``judge_doubt``, ``+`` / ``-`` = significantly above / below ``hybrid``."""
    head = "| variant | " + " | ".join(f"{b:g}: oracle - random | " + " | ".join(strategies) for b in budgets) + " |"
    lines = [head, "|" + "---|" * (1 + len(budgets) * (1 + len(strategies)))]
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for b in budgets:
            by = {r["strategy"]: r for r in rows if r["variant"] == v and r["budget"] == b}
            cells.append(f"{100 * by['oracle']['diff_random']:+.1f}")
            for s in strategies:
                r = by[s]
                mark = ("*" if r.get("diff_judge_doubt_high", 1) < 0 else "") + (
                    "+"
                    if s != "hybrid" and r.get("diff_hybrid_low", -1) > 0
                    else "-"
                    if s != "hybrid" and r.get("diff_hybrid_high", 1) < 0
                    else ""
                )
                cells.append(f"{100 * r['share_oracle']:.0f}{mark}" if np.isfinite(r.get("share_oracle", np.nan)) else "n/a")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--budgets", default="0.25,0.5")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    ap.add_argument("--only-usual", action="store_true", help="the usual panel of each pool only")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--hybrid",
        default="panel",
        choices=("panel", "onnx"),
        help="what the hybrid row routes with: the panel model as wired (default) or the previous ONNX model",
    )
    a = ap.parse_args()
    budgets = [float(b) for b in a.budgets.split(",")]
    cands = [c for c in candidates() if not a.only or c.name in a.only.split(",")]
    t = time.perf_counter()
    rows = run(a.data_dir, budgets, a.seeds, a.n_boot, cands, a.only_usual, a.hybrid)
    table = summarise(rows, budgets)
    print(table)
    print(f"# {time.perf_counter() - t:.0f}s")
    if a.out:
        write_csv(rows, a.out / "results.csv")
        (a.out / "summary.md").write_text(table + "\n")
        shown = [s for s in ("judge_doubt", "hybrid", "previous", "floor7", RECOMMENDED) if any(r["strategy"] == s for r in rows)]
        (a.out / "variants.md").write_text(variant_table(rows, budgets, shown) + "\n")


if __name__ == "__main__":
    main()
