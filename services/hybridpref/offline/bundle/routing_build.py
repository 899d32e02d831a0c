"""Add the routing models to a bundle: expected-correction models, domain stats, PPM residual std.

    hybridpref predictor add-routing-models --bundle DIR --pool NAME=PATH [--pool ...] \
        [--ppm-pool NAME ...] [--ppm-spearman NAME=VALUE ...] [--seed S]

Fits :class:`~hybridpref.routing_model.correction.CorrectionModel` on every ``--pool`` (leave-one-pool-out
metrics in the model card), writes ``correction.onnx`` / ``correction.json`` / ``domain.json``, fits the
panel-invariant correction model with the recommended recipe
(:func:`~hybridpref.offline.bundle.panel_correction_fit.fit_for_pools`: every judge-panel variant of the
``--pool`` pools, monotone, each pool weighted as one) into ``panel_correction.json`` (``hybrid`` routes with
it where the bundle has it; issue 19), adds
``ppm_residual_std`` to ``metrics.json`` (the PPM's cross-validated RMSE: the interval half-width
unit for its predictions), appends a section to ``MODEL_CARD.md`` and re-finalises the manifest
(a new ``bundle_version``). The PPM itself is untouched. ``--ppm-pool`` names the pools the PPM was
trained on (default: the pools in the bundle's ``fingerprints.json``, else the first pool); ``--ppm-spearman``
gives the PPM's measured predicted-vs-measured Spearman on held-out pools, for the domain threshold
(:func:`domain.build_domain`); for a pool the PPM was trained on it is the leave-one-pool-out Spearman,
read from ``metrics.json`` when not given.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.offline.bundle import correction_fit, panel_correction_fit
from hybridpref.routing_model import bundle as bundle_io
from hybridpref.routing_model import correction as corr
from hybridpref.routing_model import domain as domain_mod
from hybridpref.routing_model.panel_correction import panel_version

CARD_MARKER = "\n## Routing models (expected correction, domain)\n"
PANEL_MARKER = "\n**Panel correction model**"


def add_routing_models(
    bundle: Path,
    pools: Mapping[str, Path],
    ppm_pools: Sequence[str],
    ppm_spearman: Mapping[str, float],
    seed: int = 0,
    ppm_spearman_source: str = "",
    judges: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the routing models into ``bundle`` (see the module docstring); returns the new manifest.
    ``judges``: pool name -> LM judge (the others by ``offline.pools.choose_judge``, printed)."""
    import sys

    from hybridpref.offline.pools import choose_judge, load_pool

    bundle = Path(bundle)
    bundle_io.read_manifest(bundle)  # refuse a corrupt bundle before touching it
    loaded = [load_pool(path, name=name, judge=(judges or {}).get(name)) for name, path in pools.items()]
    for pool in loaded:
        print(choose_judge(pool.name, pool.instances, (judges or {}).get(pool.name)).describe(), file=sys.stderr)
    feats = [correction_fit.pool_features(p) for p in loaded]
    model = correction_fit.fit_correction_model(loaded, feats, seed)
    onnx_bytes = model.to_onnx()
    x = np.vstack(feats)
    parity = float(np.max(np.abs(corr.CorrectionModel.from_onnx(onnx_bytes).probabilities(x) - model.probabilities(x))))
    if parity > 1e-4:
        raise AssertionError(f"correction ONNX disagrees with numpy by {parity}")
    card = model.card()
    card["onnx_parity_max_abs_diff"] = parity
    (bundle / "correction.onnx").write_bytes(onnx_bytes)
    bundle_io.write_json(bundle / "correction.json", card)
    domain = domain_mod.build_domain({p.name: f for p, f in zip(loaded, feats)}, ppm_pools, ppm_spearman, seed)
    domain["ppm_spearman_source"] = (
        ppm_spearman_source or "given to add-routing-models (--ppm-spearman); pools without a value are not flagged"
    )
    bundle_io.write_json(bundle / "domain.json", domain)
    panel = panel_correction_fit.fit_for_pools(loaded, transfer=True)
    panel_correction_fit.write_panel_correction(bundle, panel)

    metrics = bundle_io.read_json(bundle, "metrics.json")
    residual = float(metrics.get("served", {}).get("cv_rmse", float("nan")))
    metrics["ppm_residual_std"] = residual
    metrics.setdefault("served", {})["ppm_residual_std"] = residual
    bundle_io.write_json(bundle / "metrics.json", metrics)
    fingerprints = bundle_io.read_json(bundle, "fingerprints.json")
    fingerprints["routing_pools_sha256"] = {p.name: bundle_io.sha256_file(_pairs(Path(pools[p.name]))) for p in loaded}
    bundle_io.write_json(bundle / "fingerprints.json", fingerprints)
    text = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8").split(CARD_MARKER)[0]
    command = " ".join(
        [
            "hybridpref predictor add-routing-models --bundle <bundle dir>",
            *(f"--pool {name}=<data>/{Path(path).name}" for name, path in pools.items()),
            *(f"--ppm-pool {p}" for p in ppm_pools),
            *(f"--ppm-spearman {k}={v}" for k, v in ppm_spearman.items()),
            f"--seed {seed}",
            *([f"--ppm-spearman-source {shlex.quote(ppm_spearman_source)}"] if ppm_spearman_source else []),
        ]
    )
    section = (
        model_card_section(card, domain, residual)
        + panel_card_section(panel)
        + f"\n**Rebuild** (deterministic for the seed):\n\n```\n{command}\n```\n"
    )
    (bundle / "MODEL_CARD.md").write_text(text.rstrip("\n") + "\n" + CARD_MARKER + section, encoding="utf-8")

    manifest = json.loads((bundle / bundle_io.MANIFEST).read_text(encoding="utf-8"))
    extra = {k: v for k, v in manifest.items() if k not in ("format", "bundle_version", "files")}
    extra["routing_models"] = corr.MODEL_VERSION
    extra["panel_correction"] = panel_version(panel)
    bundle_io.finalise(bundle, extra)
    return bundle_io.read_manifest(bundle)


def panel_card_section(model) -> str:
    """Markdown: the panel model's recipe, training variants and coefficients per unit of each feature."""
    coef = model.lm.raw_coef()
    rows = "\n".join(f"| `{c}` | {v:+.3f} |" for c, v in coef.items())
    training = model.metrics.get("training", {})
    pools = sorted({name.split(":", 1)[0] for name in training})
    return f"""{PANEL_MARKER} (`panel_correction.json`, `hybridpref.routing_model.panel_correction`, version
`{panel_version(model)}`): P(LM wrong) that keeps its meaning when the judge panel changes; the default strategy
`hybrid` reads it instead of `correction.onnx` (docs/EVALUATION.md, "Panel shift"). Recipe: every judge-panel variant of
{", ".join(pools)} ({len(training)} variants, each pool weighted as one), L2 logistic (strength {model.metrics.get("l2")}) on
shares that mean the same whatever the panel size, coefficients of the doubt signals constrained >= 0 (P(LM wrong)
never falls when one more judge disagrees), Platt-calibrated on leave-one-pool-out logits; 1 where the judge gave no
verdict. P(human vote wrong): same columns, training rate {model.human_rate:.3f}.{_panel_transfer(model)}

| feature | coefficient per unit (calibrated logit) |
|---|---|
{rows}
"""


def _panel_transfer(model) -> str:
    rr = corr.transfer_range(model.metrics)
    if rr is None:
        return ""
    return (
        f" Expected corrections on a pool it did not see (each pool routed as one batch by a model fitted without "
        f"it): realised / predicted from {rr[0]:.2f}x to {rr[1]:.2f}x; the router widens its intervals by this range "
        "when this model routes."
    )


def _pairs(path: Path) -> Path:
    return path / "pairs.jsonl" if path.is_dir() else path


def model_card_section(card: Mapping[str, Any], domain: Mapping[str, Any], residual: float) -> str:
    """Markdown: training data, leave-one-pool-out scores, reliability curve, domain."""
    lopo = card.get("leave_one_pool_out", {})
    dom = "\n".join(
        f"| {n}{' (left out of the PPM in turn)' if c.get('held_out') == 'leave-one-pool-out' else ''} | {c['distance']:.3f} | "
        f"{c['ppm_spearman'] if c['ppm_spearman'] is not None else 'n/a'} | {c['flagged']} |"
        for n, c in domain.get("calibration", {}).items()
    )
    return f"""{_card_head(card)}{_transfer_table(lopo.get("transfer", {}))}{_card_tail(domain, residual, dom)}"""


def _transfer_table(transfer: Mapping[str, Any]) -> str:
    """Realised vs predicted corrections of a batch routed on a pool the model did not see."""
    if not transfer.get("pools"):
        return ""
    budgets = [f"{b:g}" for b in transfer.get("budgets", [])]
    rows = "\n".join(
        f"| {name} | "
        + " | ".join(
            f"{e[b]['predicted']:.0f} / {e[b]['realised']:.0f} ({e[b].get('ratio', float('nan')):.2f}x)"
            for b in budgets
            if b in e
        )
        + " |"
        for name, e in transfer["pools"].items()
    )
    lo, hi = transfer.get("ratio_range", (float("nan"), float("nan")))
    return f"""
Expected corrections on a pool the model did not see (each pool routed as one batch by expected gain with
a model fitted without it; predicted sum / realised net corrections, ratio):

| held-out pool | {" | ".join(f"{float(b):.0%} routed" for b in budgets)} |
|---|{"---|" * len(budgets)}
{rows}

Realised / predicted ranges from {lo:.2f}x to {hi:.2f}x: the annotators' tie and error rates differ between pools
(MT-Bench experts tie on 28% of pairs, LLMBar's gold never ties), and no feature of the pair predicts them. The
router widens every expected-corrections interval by this range and says so in the summary's warnings.
"""


def _card_head(card: Mapping[str, Any]) -> str:
    lopo = card.get("leave_one_pool_out", {})
    rows = "\n".join(
        f"| {name} | {e['rows']} | {e['auroc']:.3f} | {e['ece']:.3f} | {e['mean_predicted']:.3f} | {e['observed_rate']:.3f} | "
        f"{e.get('human_auroc', float('nan')):.3f} |"
        for name, e in lopo.get("pools", {}).items()
    )
    curve = "\n".join(
        f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['count']} | {b['predicted']:.3f} | {b['observed']:.3f} |"
        for b in lopo.get("pooled", {}).get("reliability", [])
    )
    train = "\n".join(
        f"| {n} | {t['rows']} | {t['lm_wrong_rate']:.3f} | {t['other_votes_rows']} | {t['human_wrong_rate_other_votes']:.3f} |"
        for n, t in card.get("training", {}).items()
    )
    pooled = lopo.get("pooled", {})
    return f"""
**Expected-correction model** (`correction.onnx`, `correction.json`; `hybridpref.routing_model.correction`).
For each instance: P(the LM label is wrong vs the reference; a tie or missing verdict counts wrong),
P(one bought human vote is wrong vs the other votes), and the expected corrections a human label buys
= their difference. Standardised L2 logistic regression (C = {card.get("l2_c")}) on
{", ".join(f"`{c}`" for c in card.get("columns", []))}; Platt-calibrated on leave-one-pool-out
predictions. The human-vote model is learned only on rows whose reference is other human votes; on
gold / single-label pools a human label is the reference, so it is never wrong there by construction.

Training data (rows with a non-zero reference):

| pool | rows | LM wrong | other-votes rows | human vote wrong there |
|---|---|---|---|---|
{train}

Leave-one-pool-out (each pool predicted by a model fitted and calibrated on the others):

| held-out pool | rows | AUROC (LM wrong) | ECE (10 bins) | mean predicted | observed | AUROC (human wrong) |
|---|---|---|---|---|---|---|
{rows}

Pooled held-out: AUROC {pooled.get("auroc", float("nan")):.3f}, ECE {pooled.get("ece", float("nan")):.3f}. Reliability curve:

| predicted bin | rows | mean predicted | observed rate |
|---|---|---|---|
{curve}
"""


def _card_tail(domain: Mapping[str, Any], residual: float, dom: str) -> str:
    return f"""
**Domain** (`domain.json`, `hybridpref.routing_model.domain`): features {", ".join(f"`{f}`" for f in domain.get("features", []))};
distance = {domain.get("distance")} to the nearest pool the PPM was trained on ({", ".join(domain.get("ppm_pools", []))});
threshold {domain.get("threshold", float("nan")):.3f} (in-domain random {domain.get("batch_rows_for_p95")}-row batches: 95th percentile {domain.get("in_domain_p95", float("nan")):.3f}).

| held-out pool | distance | PPM Spearman (predicted vs measured) | flagged out of domain |
|---|---|---|---|
{dom}

PPM Spearman values: {domain.get("ppm_spearman_source", "n/a")}.

PPM residual std (cross-validated RMSE, `metrics.json` `ppm_residual_std`): {residual:.4f}; it holds inside the
PPM's domain only.
"""


def ppm_domain_args(
    bundle: Path, pools: Sequence[str], ppm_pool: Sequence[str], ppm_spearman: Sequence[str]
) -> tuple[list[str], dict[str, float]]:
    """``--ppm-pool`` (default: the pools the bundle lists in ``fingerprints.json``, else the first ``--pool``) and
    ``--ppm-spearman`` (default for a training pool: its leave-one-pool-out Spearman in ``metrics.json``)."""
    from hybridpref_client.core.errors import FieldViolation, InvalidInput

    listed = [str(p["name"]) for p in bundle_io.read_json(bundle, "fingerprints.json").get("pools", [])]
    chosen = list(ppm_pool) or [p for p in listed if p in pools] or [pools[0]]
    missing = sorted(set(chosen) - set(pools))
    if missing:
        raise InvalidInput(FieldViolation("ppm_pool", f"{missing} not among the --pool names {list(pools)}"))
    lopo = bundle_io.read_json(bundle, "metrics.json").get("leave_one_pool_out", {}).get("pools", {})
    spearman = {k: round(float(v["spearman"]), 3) for k, v in lopo.items() if k in chosen}
    for item in ppm_spearman:
        name, sep, value = item.partition("=")
        try:
            spearman[name] = float(value)
        except ValueError:
            raise InvalidInput(FieldViolation("ppm_spearman", f"{item!r}: expected NAME=NUMBER")) from None
    return chosen, spearman
