"""Write an evaluation's CSV, markdown report and PNG plots."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybridpref.offline.evaluation.harness import EvalResult

CSV_FIELDS = (
    "pool",
    "mode",
    "strategy",
    "budget",
    "metric",
    "estimate",
    "ci_low",
    "ci_high",
    "n",
    "human_share",
    "diff_random",
    "diff_random_low",
    "diff_random_high",
    "diff_all_lm",
    "diff_all_lm_low",
    "diff_all_lm_high",
    "diff_judge_doubt",
    "diff_judge_doubt_low",
    "diff_judge_doubt_high",
    "share_oracle",
    "share_oracle_low",
    "share_oracle_high",
)
METRIC_TITLES = {"label_accuracy": "label accuracy vs reference", "rm_accuracy": "reward-model accuracy (held-out folds)"}


def write_all(result: EvalResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "report": out / "REPORT.md", "json": out / "summary.json"}
    write_csv(result.rows, paths["csv"])
    plots = write_plots(result, out)
    paths["report"].write_text(markdown(result, plots, out), encoding="utf-8")
    paths["json"].write_text(
        json.dumps(
            {
                "summaries": result.summaries,
                "notes": result.notes,
                "pooled_rm": result.pooled_rm,
                "power": result.power,
                "prediction": result.prediction,
                "corrections": result.corrections,
                "timings": result.timings,
            },
            indent=1,
            default=_jsonable,
        ),
        encoding="utf-8",
    )
    return paths


def _jsonable(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in CSV_FIELDS})


def pct(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * float(v):.{digits}f}"


def ci(r: dict[str, Any], key: str) -> str:
    lo, hi = r.get(f"{key}_low"), r.get(f"{key}_high")
    if lo is None:
        return ""
    return f"{pct(r.get(key))} [{pct(lo)}, {pct(hi)}]"


def sig(r: dict[str, Any], key: str) -> str:
    lo, hi = r.get(f"{key}_low"), r.get(f"{key}_high")
    if lo is None or not math.isfinite(lo):
        return ""
    return " ↑" if lo > 0 else " ↓" if hi is not None and hi < 0 else ""


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| strategy | budget | human share | estimate [95% CI] | vs random | vs all_lm | vs judge_doubt | share of oracle gain |\n|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        budget = "-" if r["strategy"] in ("all_human", "all_lm") else f"{r['budget']:g}"
        lines.append(
            f"| {r['strategy']} | {budget} | {pct(r.get('human_share'), 0)}% | {pct(r['estimate'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}] "
            f"| {ci(r, 'diff_random')}{sig(r, 'diff_random')} | {ci(r, 'diff_all_lm')}{sig(r, 'diff_all_lm')} "
            f"| {ci(r, 'diff_judge_doubt')}{sig(r, 'diff_judge_doubt')} | {'-' if budget == '-' else ci(r, 'share_oracle')} |"
        )
    return "\n".join(lines)


def ordered(rows: Sequence[dict[str, Any]], budgets: Sequence[float]) -> list[dict[str, Any]]:
    """all_human / all_lm once (budget-free), then per budget every strategy."""
    out = [r for r in rows if r["strategy"] in ("all_human", "all_lm") and r["budget"] == budgets[0]]
    out += [r for b in budgets for r in rows if r["budget"] == b and r["strategy"] not in ("all_human", "all_lm")]
    return out


def verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Sentences the report must say: strategies that do not beat the heuristic, the oracle's separation."""
    out = []
    for r in rows:
        s = r["strategy"]
        if s in ("all_human", "all_lm", "random", "oracle", "judge_doubt") or "diff_judge_doubt_low" not in r:
            continue
        if not r["diff_judge_doubt_low"] > 0:
            out.append(
                f"`{s}` at {r['budget']:g} does not beat the judge-doubt heuristic "
                f"({ci(r, 'diff_judge_doubt')} points): not worth its cost here."
            )
    for r in rows:
        if r["strategy"] == "oracle":
            ok = r.get("diff_random_low", float("nan")) > 0
            out.append(
                f"oracle vs random at {r['budget']:g}: {ci(r, 'diff_random')} points ({'separated' if ok else 'NOT separated'})."
            )
    return out


def markdown(result: EvalResult, plots: dict[tuple[str, str, str], Path], out: Path) -> str:
    cfg = result.config
    budgets = list(cfg.budgets)
    parts = [
        "# hybridpref evaluate: report",
        "",
        f"Pools: {', '.join(s['pool'] for s in result.summaries)}; modes: {', '.join(cfg.modes)}; budgets {budgets}; "
        f"random over {cfg.seeds} seeds (metric 2: {cfg.rm_random_seeds}); {cfg.folds} prompt-group folds (split seed {cfg.split_seed}); "
        f"{cfg.n_boot} paired bootstrap resamples of prompt groups. Differences and shares are in points (x100); "
        "↑/↓: the 95% interval excludes 0.",
        "",
    ]
    if result.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    parts += [
        "## Pools and bad input",
        "",
        "| pool | rows | judge | reference kinds | excluded refs (ties / no majority) | LM no verdict (tie, null, order flip) | order flips | skipped rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result.summaries:
        parts.append(
            f"| {s['pool']} | {s['rows']} | {s['judge']} | {s['reference_kinds']} | {s['reference_excluded']} | {s['lm_no_verdict']} "
            f"| {s['lm_order_flips']} | {'; '.join(f'{k}: {v}' for k, v in s['skipped'].items()) or '-'} |"
        )
    for s in result.summaries:
        for n in s.get("notes", []):
            parts.append(f"\n- {s['pool']}: {n}")
    parts.append("")
    for metric in ("label_accuracy", "rm_accuracy"):
        for mode in cfg.modes:
            for s in result.summaries:
                rows = [r for r in result.rows if r["metric"] == metric and r["mode"] == mode and r["pool"] == s["pool"]]
                if not rows:
                    continue
                rows = ordered(rows, budgets)
                parts += [f"## {METRIC_TITLES[metric]}: {s['pool']}, {mode}", "", table(rows), ""]
                parts += [f"- {v}" for v in verdicts(rows)] + [""]
                if (metric, mode, s["pool"]) in plots:
                    parts += [f"![{metric} {s['pool']} {mode}]({plots[(metric, mode, s['pool'])].relative_to(out)})", ""]
    if result.pooled_rm:
        parts += [
            "## Reward-model accuracy pooled over pools and budgets",
            "",
            "| mode | strategy | estimate [95% CI] | vs random | half-width vs random | vs all_lm | vs judge_doubt | share of oracle gain |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result.pooled_rm:
            parts.append(
                f"| {r['mode']} | {r['strategy']} | {pct(r['estimate'])} [{pct(r['ci_low'])}, {pct(r['ci_high'])}] | {ci(r, 'diff_random')}{sig(r, 'diff_random')} "
                f"| {pct(r.get('half_width_diff_random'), 2)} | {ci(r, 'diff_all_lm')}{sig(r, 'diff_all_lm')} | {ci(r, 'diff_judge_doubt')} | {ci(r, 'share_oracle')} |"
            )
        parts.append("")
    if result.power:
        parts += [
            "## Power of metric 2",
            "",
            "Minimum detectable difference vs random at 80% power, two-sided 5%: paired, `(z.975 + z.8) * sd(d) / sqrt(n)` with `d` "
            "the per-pair difference of reward-model correctness (only discordant pairs contribute); the two-proportion "
            "formula (unpaired) beside it. Pooled over pools and budgets; prompt-group clustering ignored (the bootstrap intervals include it).",
            "",
            "| mode | strategy | gold pairs | per-pair sd | MDD paired | MDD two-proportion | gold pairs for a 1-point MDD |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in result.power:
            parts.append(
                f"| {p['mode']} | {p['strategy']} | {p['n_gold']} | {p['per_pair_sd']:.3f} | {pct(p['mdd_paired'], 2)} | {pct(p['mdd_two_proportion'], 2)} | {p['gold_for_1pt']} |"
            )
        parts.append("")
    if result.prediction:
        parts += [
            "## Prediction check (PPM predicted score vs measured metric 2)",
            "",
            "| pool | mixes | gold pairs | Spearman | partial Spearman given human share | Spearman(share, measured) |",
            "|---|---|---|---|---|---|",
        ]
        for p in result.prediction:
            parts.append(
                f"| {p['pool']} | {p['mixes']} | {p['gold']} | {p['spearman']:.2f} | {p['partial_spearman_given_share']:.2f} | {p['spearman_share_vs_measured']:.2f} |"
            )
        parts.append("")
    if result.corrections:
        parts += [
            "## Expected corrections check (the router's summary vs what happened)",
            "",
            "The router's estimate for the routed mix (sum of P(LM wrong) - P(human wrong) over the routed rows, by the model "
            "that routed each fold) against the realised net corrections (+1 fixed, -1 broken; a tie reference counts 0). "
            "Outcome interval: 90%, outcome randomness only; shown interval: what the summary shows, widened by the "
            "model's measured transfer range.",
            "",
            "| pool | mode | strategy | budget | routed | predicted [outcome 90%] | shown interval | realised | realised / predicted | covered (shown) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in result.corrections:
            parts.append(
                f"| {c['pool']} | {c['mode']} | {c['strategy']} | {c['budget']:g} | {c['routed']} | {c['predicted']:.0f} "
                f"[{c['outcome_low']:.0f}, {c['outcome_high']:.0f}] | [{c['shown_low']:.0f}, {c['shown_high']:.0f}] | "
                f"{c['realised']:.0f} | {c['ratio']:.2f} | {'yes' if c['covered_by_shown_interval'] else 'NO'} |"
            )
        parts.append("")
    t = result.timings
    parts += ["## Timings", "", ", ".join(f"{k} {v:.1f}" for k, v in t.items()), ""]
    return "\n".join(parts)


def write_plots(result: EvalResult, out: Path) -> dict[tuple[str, str, str], Path]:
    """One PNG per metric x mode x pool: metric vs budget, a line per strategy with its CI band,
    all-human / all-LM as horizontal lines, the oracle curve dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    budgets = list(result.config.budgets)
    keys = sorted({(r["metric"], r["mode"], r["pool"]) for r in result.rows})
    for metric, mode, pool in keys:
        rows = [r for r in result.rows if (r["metric"], r["mode"], r["pool"]) == (metric, mode, pool)]
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        strategies = list(dict.fromkeys(r["strategy"] for r in rows))
        for s in strategies:
            pts = sorted((r["budget"], r["estimate"], r["ci_low"], r["ci_high"]) for r in rows if r["strategy"] == s)
            if s in ("all_human", "all_lm"):
                ax.axhline(pts[0][1], color="black" if s == "all_human" else "grey", ls=":", lw=1.2, label=s)
                continue
            x = [p[0] for p in pts]
            style: dict[str, Any] = {"ls": "--", "color": "black"} if s == "oracle" else {}
            (line,) = ax.plot(x, [p[1] for p in pts], marker="o", label=s, **style)
            ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], alpha=0.12, color=line.get_color())
        ax.set_xlabel("human budget (fraction of the pool)")
        ax.set_ylabel(METRIC_TITLES[metric])
        ax.set_xticks(budgets)
        ax.set_title(f"{pool} ({mode})")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / "plots" / f"{metric}_{pool}_{mode}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        paths[(metric, mode, pool)] = path
    return paths
