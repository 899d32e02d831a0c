"""Streaming simulation of a campaign that learns from its own labels (issue 19, item 4).

    HYBRIDPREF_DATA_DIR=/work/shared/data python benchmarks/stream_sim.py --out docs/evaluation/stream

Each shared pool (held out: the bundle model is fitted on the other two, every panel variant of them)
and each of its panel variants is fed to a campaign in 10 batches (whole prompt groups, seeded). For each
batch, at each budget (share of the batch sent to humans):

* **static**: the bundle model routes the top of its expected gain;
* **adapted**: the campaign's current model, as the router computes it (``router.adaptation.fit_campaign_model``
  over the returned labels in the store's shapes: refitted with a prior centred on the bundle, promoted only when
  the held-out returned labels say it is not worse) routes ``1 - explore`` of the human budget and the rest goes
  to random rows (``online.exploration_mask``);
* the simulated vendor returns the bought human labels (the pool's bought vote) after the batch.

Label accuracy is the harness's metric 1 (``harness.score_table``: paired group bootstrap, share of the
oracle's gain over random, per-batch oracle and 10 random seeds). Reported: per pool x variant x budget,
static vs adapted over batches 6-10 (after 5 batches of labels), and the per-batch curve; the
expected-corrections interval (``online.CorrectionsCalibrator``) against the realised number of changed
labels of each batch (human label non-tie and different from the LM label), counted once 200 labels are
back. The bundle model is the recommended recipe on the other two pools with its held-out transfer range (the
calibrator's prior before labels), as ``add-routing-models`` builds it. The plot goes to ``--out``/stream_share.png.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.offline import stats
from hybridpref.offline.bundle import panel_correction_fit as pcf
from hybridpref.offline.evaluation import harness
from hybridpref.offline.panels import PanelVariant, panel_variants
from hybridpref.offline.pools import DEFAULT_JUDGES, Pool, default_data_dir, load_pool
from hybridpref.routing_model import online
from hybridpref.routing_model import panel_correction as pc
from hybridpref.store.api import Candidate, HumanLabel, StoredDecision

BATCHES = 10
LEARN_BATCHES = 5


def top_mask(priority: np.ndarray, k: int, seed: int) -> np.ndarray:
    tie = np.random.default_rng([seed, 0x71E]).random(len(priority)) * 1e-9
    mask = np.zeros(len(priority), dtype=bool)
    mask[np.argsort(-(priority + tie), kind="stable")[:k]] = True
    return mask


def simulate(
    variant: PanelVariant,
    bundle: pc.PanelCorrectionModel,
    budget: float,
    explore: float,
    strength: float,
    seed: int,
    n_random: int = 10,
) -> dict[str, Any]:
    """One campaign on one variant at one budget: per-row correctness of each strategy, the batch of every
    row, versions and interval checks. The adapted arm is the product's code path: before each batch the
    campaign's model is :func:`hybridpref.router.adaptation.fit_campaign_model` over every returned label so
    far, in the campaign store's shapes (``Candidate`` with the panel features and the P(LM wrong) it was
    routed with, ``StoredDecision``, ``[HumanLabel]``), exactly what the router reads from the store."""
    from hybridpref.router.adaptation import fit_campaign_model
    from hybridpref.router.model import PanelRunner
    from hybridpref.router.strategies import signal_doubt

    pool = variant.pool
    x = pc.panel_features(pool.instances, pool.signals())
    lm = pool.signals().label
    batch_of = harness.assign_folds(pool.groups, BATCHES, seed)
    ids = [i.id for i in pool.instances]
    base = PanelRunner(bundle, pc.panel_version(bundle))
    masks: dict[str, np.ndarray] = {s: np.zeros(len(pool), bool) for s in ("static", "adapted", "oracle", "judge_doubt")}
    random_masks = [np.zeros(len(pool), bool) for _ in range(n_random)]
    returned: list[tuple[Any, Any, list[Any]]] = []
    log = []
    versions = []
    doubt = signal_doubt(pool.signals())
    for b in range(BATCHES):
        rows = np.flatnonzero(batch_of == b)
        k = int(round(budget * len(rows)))
        xb = x[rows]
        masks["static"][rows] = top_mask(bundle.expected_gain(xb), k, seed + b)
        current = fit_campaign_model(base, returned, strength=strength)
        versions.append(current.describe())
        human, explored = online.exploration_mask(
            current.panel.model.expected_gain(xb) + 1e-9 * np.random.default_rng([seed, b]).random(len(rows)),
            k,
            explore,
            seed * 31 + b,
        )
        masks["adapted"][rows] = human
        masks["oracle"][rows] = harness.oracle_mask(pool.human[rows], lm[rows], pool.reference[rows], k, seed + b)
        masks["judge_doubt"][rows] = top_mask(doubt[rows], k, seed + b)
        for j, m in enumerate(random_masks):
            m[rows[np.random.default_rng([seed, b, j]).choice(len(rows), k, replace=False)]] = True
        # expected label changes of the adapted batch, before its labels come back
        routed = rows[human]
        p = current.panel.model.p_lm_wrong(x[routed])
        nv = x[routed, online.NO_VERDICT] > 0.5
        interval = current.expected_changes(p, nv)
        realised = (pool.human[routed] != 0) & (pool.human[routed] != lm[routed])
        log.append(
            {
                "batch": b,
                "version": current.version,
                "adapted": current.adapted,
                "routed": int(len(routed)),
                "explored": int(explored.sum()),
                "labels_before": sum(1 for r in returned if r[1].human),
                "expected": interval.estimate,
                "low": interval.low,
                "high": interval.high,
                "realised": int(realised.sum()),
                "covered": interval.covers(float(realised.sum())),
            }
        )
        # the vendor returns the bought labels (one vote per pair: the pool's bought human label)
        for i, e, pi in zip(routed, explored[human], p):
            cand = Candidate(
                instance_id=ids[i],
                prompt="",
                response_a="",
                response_b="",
                score=0.0,
                lm_label=_LM_NAME.get(int(lm[i])),
                signals={"p_lm_wrong": float(pi)},
                features={c: float(v) for c, v in zip(pc.PANEL_FEATURES, x[i])},
            )
            decision = StoredDecision(ids[i], True, 0.0, 1.0, f"b{b}", bool(e), False)
            returned.append((cand, decision, [HumanLabel(ids[i], "vendor", _PREFERENCE[int(pool.human[i])])]))
    correct = {}
    for s, m in masks.items():
        correct[s] = _correct(pool, lm, m)
    correct["random"] = np.mean([_correct(pool, lm, m) for m in random_masks], axis=0)
    return {"correct": correct, "batch_of": batch_of, "log": log, "versions": versions}


_LM_NAME = {1: "A_BETTER", -1: "B_BETTER"}
_PREFERENCE = {1: "A", -1: "B", 0: "tie"}


def _correct(pool: Pool, lm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    lab = np.where(mask, pool.human, lm)
    return ((lab == pool.reference) & (lab != 0)).astype(np.float64)


def score_after(pool: Pool, sim: dict[str, Any], first_batch: int, budget: float, n_boot: int) -> list[dict[str, Any]]:
    """The harness's metric-1 table on the rows of batches >= ``first_batch``."""
    rows = np.flatnonzero(sim["batch_of"] >= first_batch)
    sub = pool.subset(rows)
    correct = {(s, budget): c[rows] for s, c in sim["correct"].items()}
    boot = stats.GroupBootstrap.create(sub.groups, n_boot, 0)
    out = harness.score_table(correct, sub.reference != 0, boot, [budget])
    # adapted - static, paired on the same draws
    keys = list(correct)
    mat = np.column_stack([correct[k] for k in keys])
    samples = boot.means(mat, sub.reference != 0)
    d = samples[:, keys.index(("adapted", budget))] - samples[:, keys.index(("static", budget))]
    for r in out:
        if r["strategy"] == "adapted":
            r["diff_static_low"], r["diff_static_high"] = stats.interval(d)
    return out


def batch_shares(pool: Pool, sim: dict[str, Any]) -> dict[str, list[float]]:
    """Point share of the oracle's gain per batch, per strategy (NaN where the oracle gains nothing)."""
    out: dict[str, list[float]] = {s: [] for s in ("static", "adapted", "judge_doubt")}
    elig = pool.reference != 0
    for b in range(BATCHES):
        m = (sim["batch_of"] == b) & elig
        acc = {s: float(c[m].mean()) for s, c in sim["correct"].items()}
        gain = acc["oracle"] - acc["random"]
        for s in out:
            out[s].append((acc[s] - acc["random"]) / gain if gain > 0.01 else float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--budgets", default="0.25,0.5")
    ap.add_argument("--explore", default="0", help="exploration shares of the human budget, comma-separated")
    ap.add_argument(
        "--strength", type=float, default=20.0, help="prior strength of the refit (labels' worth; the router's PRIOR_STRENGTH)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--variants", default="nested", help="all | nested (the first k others per primary) | usual")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    budgets = [float(b) for b in a.budgets.split(",")]
    explores = [float(e) for e in a.explore.split(",")]
    names = list(DEFAULT_JUDGES)
    pools = {n: load_pool(a.data_dir / n) for n in names}
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    curves: dict[tuple[str, float, float], list[dict[str, list[float]]]] = {}
    checks: list[dict[str, Any]] = []
    for held in names:
        bundle = pcf.fit_for_pools([pools[n] for n in names if n != held], transfer=True)
        variants = panel_variants(pools[held], all_subsets=a.variants == "all")
        if a.variants == "usual":
            variants = variants[:1]
        for v in variants:
            for budget in budgets:
                for e in explores:
                    sim = simulate(v, bundle, budget, e, a.strength, a.seed)
                    for r in score_after(v.pool, sim, LEARN_BATCHES, budget, a.n_boot):
                        rows.append({"pool": held, "variant": v.name, "usual": v.usual, "explore": e, **r})
                    curves.setdefault((held, budget, e), []).append(batch_shares(v.pool, sim))
                    for entry in sim["log"]:
                        checks.append({"pool": held, "variant": v.name, "budget": budget, "explore": e, **entry})
        print(f"# {held}: {len(variants)} variants, {time.perf_counter() - t0:.0f}s", flush=True)
    print(report(rows, checks, budgets, explores))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        _write(a.out / "results.csv", rows)
        _write(a.out / "batches.csv", checks)
        (a.out / "summary.md").write_text(report(rows, checks, budgets, explores) + "\n")
        plot(curves, checks, a.out / "stream_share.png")


def report(
    rows: Sequence[dict[str, Any]], checks: Sequence[dict[str, Any]], budgets: Sequence[float], explores: Sequence[float]
) -> str:
    lines = [
        "| budget | explore | variants | static share (mean) | adapted share (mean) | adapted - static, share points (mean) | adapted - static, accuracy points (mean) | "
        "adapted sig. below / above static | usual panels: static -> adapted share (MT-Bench / PandaLM / LLMBar) | "
        "interval covers (>= 200 labels back) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in budgets:
        for e in explores:
            rs = [r for r in rows if r["budget"] == b and r["explore"] == e]
            st = {r["variant"]: r for r in rs if r["strategy"] == "static"}
            ad = {r["variant"]: r for r in rs if r["strategy"] == "adapted"}
            diff = [100 * (ad[v]["estimate"] - st[v]["estimate"]) for v in ad]
            dshare = np.nanmean([100 * (ad[v]["share_oracle"] - st[v]["share_oracle"]) for v in ad])
            below = sum(1 for v in ad if ad[v]["diff_static_high"] < 0)
            above = sum(1 for v in ad if ad[v]["diff_static_low"] > 0)
            usual = " / ".join(
                f"{100 * st[v]['share_oracle']:.0f} -> {100 * ad[v]['share_oracle']:.0f}"
                for v in ad
                if ad[v]["variant"].endswith(":usual")
            )
            cs = [c for c in checks if c["budget"] == b and c["explore"] == e and c["labels_before"] >= 200]
            cov = f"{100 * np.mean([c['covered'] for c in cs]):.0f}% of {len(cs)}" if cs else "n/a"
            lines.append(
                f"| {b:g} | {e:g} | {len(ad)} | {100 * np.nanmean([r['share_oracle'] for r in st.values()]):.1f} | "
                f"{100 * np.nanmean([r['share_oracle'] for r in ad.values()]):.1f} | {dshare:+.1f} | {np.mean(diff):+.2f} | {below} / {above} | {usual} | {cov} |"
            )
    return "\n".join(lines)


def _write(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def plot(curves: dict, checks: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per (budget, exploration share): per pool the mean share of the oracle's gain per batch over
    the variants (static, adapted, judge_doubt), and the interval coverage by labels back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({(k[1], k[2]) for k in curves})
    pools = list(dict.fromkeys(k[0] for k in curves))
    fig, axes = plt.subplots(len(settings), len(pools) + 1, figsize=(3.2 * (len(pools) + 1), 2.8 * len(settings)), squeeze=False)
    for i, (budget, explore) in enumerate(settings):
        for j, pool in enumerate(pools):
            ax = axes[i][j]
            for s, style in (("static", "-"), ("adapted", "-"), ("judge_doubt", ":")):
                m = np.nanmean(np.array([c[s] for c in curves[(pool, budget, explore)]], dtype=float), axis=0)
                ax.plot(np.arange(1, BATCHES + 1), 100 * m, style, label=s)
            ax.axvline(LEARN_BATCHES + 0.5, c="grey", lw=0.5)
            ax.set_title(
                f"{pool[:12]} @ {budget:g} (explore {explore:g}), {len(curves[(pool, budget, explore)])} panels", fontsize=8
            )
            ax.set_ylim(-20, 110)
            ax.set_xlabel("batch", fontsize=8)
        axes[i][0].set_ylabel("share of oracle gain (%)", fontsize=8)
        ax = axes[i][-1]
        by_labels: dict[int, list[bool]] = {}
        for c in checks:
            if c["budget"] == budget and c["explore"] == explore:
                by_labels.setdefault(min(c["labels_before"] // 100 * 100, 800), []).append(c["covered"])
        xs = sorted(by_labels)
        ax.plot(xs, [100 * np.mean(by_labels[k]) for k in xs], "o-")
        ax.axhline(80, ls=":", c="grey")
        ax.set_title("corrections interval coverage (90%)", fontsize=8)
        ax.set_xlabel("labels back before the batch (binned)", fontsize=8)
        ax.set_ylim(0, 105)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
