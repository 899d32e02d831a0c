"""``MODEL_CARD.md`` of a predictor bundle: what the PPM predicts, its data, fit, leave-one-pool-out scores, rebuild."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES
from hybridpref.offline.bundle.build_config import BuildConfig
from hybridpref.offline.bundle.simulate import TARGET_GOLD
from hybridpref.routing_model import ppm as ppm_mod


def model_card(config: BuildConfig, metrics: dict[str, Any], model: ppm_mod.QuadraticPPM, without: str | None = None) -> str:
    pools = metrics["pools"]
    top = np.argsort(-np.abs(model.linear))[:8]
    return f"""# Predictor bundle: performance prediction model (PPM)
{_lopo_banner(metrics, without)}
**What it predicts.** Pairwise accuracy, on a pool's *{TARGET_GOLD}* gold set (human labels of
{config.holdout_fraction:.0%} of the pool's prompt groups by `{config.group_key}`, else by prompt text; never trained
on), of a proxy reward model trained on a label mix of that pool (human label where routed, the pool's LM judge
elsewhere, ties and order-inconsistent verdicts dropped).

**Input.** `counts` float32 [batch, {NUM_TAGS}]: per tag of `vocabulary.json`, how many human-routed
instances carry it; `pool_size` float32 [1]: the size of the batch the mix was drawn from. The model
computes **x = counts / pool_size** first, so one PPM serves any batch size.
Output `score` float32 [batch]. Form: `{model.kind}`, f(x) = bias + w.x + x^T Q x (coefficients in
`ppm.json`, float64; the ONNX copy is checked against it on load).

**Data (the bundle's domain).** Each pool is simulated on its own (its own gold split, candidate mixes,
proxy reward models); the PPM is fitted on the union of their (mix -> accuracy) rows.
`fingerprints.json` lists every pool file's sha256 (`pools`).

| pool | training rows | gold rows | LM judge | human-LM agreement | all human | all LM | Spearman(human share, acc.) |
|---|---|---|---|---|---|---|---|
{_pool_rows(pools)}

Candidates per pool: {config.candidates} (seed {config.seed}; in all {_kinds(metrics["candidates"])}). Proxy: {metrics["proxy"]}.

**Target centring.** {metrics["centring"]["method"]} (offset {metrics["centring"]["offset"]:.4f}). Accuracy
levels differ by pool (their gold sets differ in difficulty), so an uncentred fit would spend its tag
coefficients telling pools apart; the router uses only differences between mixes (vs random, with intervals),
which centring does not change.

**Fit (in-pool {config.folds}-fold CV over the union of candidates, pooled out-of-fold predictions of the centred
target).** Served: `{metrics["chosen_variant"]}`.

| variant | CV Spearman | CV RMSE | CV Spearman within each pool |
|---|---|---|---|
{_variant_rows(metrics["variants"])}

{_lopo_section(metrics)}
**Diagnostic gold sets** (per pool: accuracy of the all-human / all-LM proxy; Spearman of the set's accuracy with
the pool's target across candidates). Out-of-distribution sets are diagnostics only, never fitted on.

| pool | gold set | all human | all LM | Spearman vs target |
|---|---|---|---|---|
{_gold_rows(pools)}

Largest linear coefficients: {", ".join(f"`{TAG_NAMES[j]}` {model.linear[j]:+.3f}" for j in top)}.

**Limits.** The target is a small proxy (MLP Bradley-Terry on frozen MiniLM embeddings), not a
fine-tuned reward model; its accuracy differences between mixes are a few points and partly noise
(see CV RMSE vs target std). Outside the pools above, trust the leave-one-pool-out figures, not the
in-pool CV; `domain.json` (added by `add-routing-models`) says when a batch is far from them.

**Rebuild** (deterministic for the seed; tags, embeddings and per-pool simulations are cached under
`~/.cache/hybridpref`):

```
{command(config)}
```
"""


def _lopo_banner(metrics: dict[str, Any], without: str | None) -> str:
    if not without:
        return ""
    held = metrics.get("held_out_pool", {})
    return (
        f"\n> **Leave-one-pool-out bundle: fitted without `{without}`** (for evaluating `{without}` cross-pool; written by "
        f"the rebuild command below with `--lopo-out <folder>`, from the same cached simulations). "
        f"On `{without}`'s own mixes: Spearman {held.get('spearman', float('nan')):+.3f}, partial Spearman given the "
        f"human share {held.get('partial_spearman_given_share', float('nan')):+.3f}, centred RMSE "
        f"{held.get('rmse_centred', float('nan')):.4f}.\n"
    )


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k.replace('_', '-')}" for k, n in counts.items())


def _pool_rows(pools: dict[str, Any]) -> str:
    return "\n".join(
        f"| {n} | {p['size']} | {p['gold_rows']} | `{p['lm_judge']}` | {p['human_lm_agreement']:.3f} | "
        f"{p['target']['all_human']:.3f} | {p['target']['all_lm']:.3f} | {p['target']['spearman_vs_human_fraction']:+.2f} |"
        for n, p in pools.items()
    )


def _variant_rows(variants: dict[str, Any]) -> str:
    def by_pool(m: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:+.2f}" for k, v in m.get("cv_spearman_by_pool", {}).items()) or "(one pool)"

    return "\n".join(f"| {name} | {m['cv_spearman']:.3f} | {m['cv_rmse']:.4f} | {by_pool(m)} |" for name, m in variants.items())


def _lopo_section(metrics: dict[str, Any]) -> str:
    lopo = metrics.get("leave_one_pool_out", {})
    if not lopo:
        return "**Leave-one-pool-out.** Not measured (needs at least two pools).\n"
    rows = "\n".join(
        f"| {n} | {e['candidates']} | {e['spearman']:+.3f} | {e['partial_spearman_given_share']:+.3f} | "
        f"{e['spearman_share_vs_measured']:+.3f} | {e['rmse_centred']:.4f} | {e['measured_std']:.4f} |"
        for n, e in lopo["pools"].items()
    )
    return f"""**Leave-one-pool-out** (`{lopo["variant"]}` fitted on the other pools' rows, predicting the held-out pool's mixes;
partial Spearman = given the share routed to humans, i.e. what the PPM knows beyond "more human labels"; RMSE after
removing each side's mean, since the held-out pool's accuracy level is unknown to the fit):

| held-out pool | mixes | Spearman | partial Spearman given share | Spearman(share, measured) | centred RMSE | measured std |
|---|---|---|---|---|---|---|
{rows}
"""


def _gold_rows(pools: dict[str, Any]) -> str:
    return "\n".join(
        f"| {n} | {g} | {d['all_human']:.3f} | {d['all_lm']:.3f} | {d['spearman_vs_target']:.2f} |"
        for n, p in pools.items()
        for g, d in p["gold_sets"].items()
    )


def command(config: BuildConfig) -> str:
    """The CLI line that rebuilds this bundle: defaults omitted, every other argument spelled out."""
    default = BuildConfig(pool="", out="")
    pools = " ".join(f"--pool {_data_path(p)}" for p in config.pool_specs)
    gold = "".join(f" --gold '{_data_path(g)}'" for g in config.gold)
    flags = {
        "split_seed": "--split-seed",
        "holdout_fraction": "--holdout-fraction",
        "group_key": "--group-key",
        "lm_judge": "--lm-judge",
        "tagger_profile": "--tagger-profile",
        "folds": "--folds",
        "proxy_seeds": "--proxy-seeds",
        "proxy_steps": "--proxy-steps",
        "proxy_hidden": "--proxy-hidden",
    }
    extra = "".join(
        f" {flag} {getattr(config, name)}" for name, flag in flags.items() if getattr(config, name) != getattr(default, name)
    )
    extra += "".join(f" --lm-judge '{k}={v}'" for k, v in sorted(config.lm_judges.items()))
    prefix = "D=../shared/data; " if "$D/" in pools + gold else ""
    return f"{prefix}hybridpref predictor build {pools}{gold} --candidates {config.candidates} --seed {config.seed}{extra} --out <bundle dir>"


def _data_path(spec: str) -> str:
    """A ``--pool``/``--gold`` value with the shared data folder written ``$D`` (machine-independent)."""
    from hybridpref.offline.pools import default_data_dir

    root = str(default_data_dir().resolve()).rstrip("/") + "/"
    head, sep, path = spec.partition("=") if "=" in spec.split("#")[0] else ("", "", spec)
    resolved = str(Path(path.split("#")[0]).resolve()) if path else ""
    if resolved.startswith(root):
        path = "$D/" + resolved[len(root) :] + path[len(path.split("#")[0]) :]
    return f"{head}{sep}{path}"
