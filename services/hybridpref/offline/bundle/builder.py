"""Build a predictor bundle: pools -> tags -> candidate mixes -> proxy reward models -> PPM -> ONNX.

:func:`build_bundle` (``hybridpref predictor build``, :mod:`hybridpref.cli.predictor`, maps its flags to
:class:`BuildConfig`; the flags are named below).

Steps (each deterministic for ``--seed``; the gold split has its own ``--split-seed``), per pool
(:mod:`hybridpref.offline.bundle.simulate`; cached on disk by its inputs):

1. read the pool, drop rows that repeat another pool (``evaluation.pools.repeats_other_pool``: LLMBar's
   MT-Bench subset); hold out ``--holdout-fraction`` of its prompt groups (``--group-key``, e.g. MT-Bench
   ``question_id``, else the prompt) as its *target* gold set (human labels, never trained on);
2. tag the remaining pool with the tagger core, or through a tagger service with ``--tagger ADDRESS``
   (its replicas share the work; cached on disk by content hash either way);
3. sample ``--candidates`` mixes (paper walks, uniform subsets, all-human, all-LM);
4. per candidate: label the pool (human where routed, the pool's LM judge elsewhere, ties dropped; judge:
   ``evaluation.pools.DEFAULT_JUDGES``), train the proxy reward model (``proxy.EmbeddingBTProxy``), score
   pairwise accuracy on every gold set;

then over the union of the pools' rows (:mod:`hybridpref.offline.bundle.multipool`):

5. fit PPM variants on (counts / pool_size -> held-out accuracy centred per pool), 10-fold CV Spearman / RMSE
   each, and leave-one-pool-out scores of the chosen variant;
6. export the best quadratic-form variant to ONNX, check parity (<= 1e-5), write the bundle; with
   ``--lopo-out DIR`` also DIR/without-<pool>/ per pool (PPM fits only, from the cached simulations).

``--gold`` adds diagnostic gold sets (reported, never the PPM target): ``PATH`` or
``NAME=PATH`` with optional filters after ``#``: ``source~TEXT`` (keep rows whose ``source``
contains TEXT; repeat with ``|`` for "any of"), ``unanimous`` (keep rows whose ``human_votes``
all agree), ``max=N`` (seeded subsample to N rows, to bound encoding time).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES, VOCABULARY_VERSION
from hybridpref.offline.bundle import model_card as card_mod
from hybridpref.offline.bundle import multipool, ppm_fit
from hybridpref.offline.bundle.build_config import BuildConfig
from hybridpref.offline.bundle.multipool import CENTRING
from hybridpref.offline.bundle.proxy import EmbeddingBTProxy, ProxyRewardModel
from hybridpref.offline.bundle.simulate import (
    TARGET_GOLD,
    PoolData,
    PoolSimulation,
    PoolSpec,
    TagFn,
    load_pool_data,
    parse_pool_specs,
    read_rows,
    simulate,
    split_pool,
    usable_rows,
)
from hybridpref.routing_model import bundle as bundle_io
from hybridpref.routing_model import ppm as ppm_mod
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import PreferenceInstance, instance_from_row

__all__ = [
    "BuildConfig",
    "BuildResult",
    "build_bundle",
    "parse_gold_spec",
    "read_rows",
    "split_pool",
    "usable_rows",
    "TARGET_GOLD",
]


@dataclass
class BuildResult:
    bundle_path: Path
    bundle_version: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    cache_hits: dict[str, bool] = field(default_factory=dict)  # pool -> simulation read from the cache
    lopo_versions: dict[str, str] = field(default_factory=dict)  # pool -> version of the bundle without it


@dataclass
class _GoldSpec:
    name: str
    path: str
    sources: list[str] = field(default_factory=list)
    unanimous: bool = False
    max_rows: int | None = None


def parse_gold_spec(spec: str) -> _GoldSpec:
    """``[NAME=]PATH[#filter[#filter...]]`` -> spec; see the module docstring."""
    head, *filters = spec.split("#")
    name, _, path = head.rpartition("=")
    gs = _GoldSpec(name=name or Path(path).parent.name or Path(path).stem, path=path)
    for f in filters:
        if f.startswith("source~"):
            gs.sources = f[len("source~") :].split("|")
        elif f == "unanimous":
            gs.unanimous = True
        elif f.startswith("max="):
            gs.max_rows = int(f[4:])
        else:
            raise InvalidInput(
                FieldViolation("gold", f"unknown filter {f!r} in {spec!r}; expected source~TEXT, unanimous or max=N")
            )
    return gs


def load_gold(spec: _GoldSpec, seed: int) -> list[PreferenceInstance]:
    rows = usable_rows(read_rows(spec.path, "gold"))[0]
    if spec.sources:
        rows = [r for r in rows if any(s in str(r.get("source", "")) for s in spec.sources)]
    if spec.unanimous:
        rows = [r for r in rows if r.get("human_votes") and len(set(r["human_votes"])) == 1]
    rows = [r for r in rows if str(r.get("human_label", "")).lower() in ("a", "b")] if rows else rows
    if spec.max_rows is not None and len(rows) > spec.max_rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=spec.max_rows, replace=False))
        rows = [rows[i] for i in pick]
    if not rows:
        raise InvalidInput(
            FieldViolation("gold", f"gold set {spec.name!r} ({spec.path}) has no row with a human A/B label after filters")
        )
    return [instance_from_row(r, where=f"{spec.path} row {i}") for i, r in enumerate(rows)]


def tag_with_tagger(profile: str) -> tuple[TagFn, str]:
    """A tag function backed by the tagger core (loaded once) and its reference bins as JSON."""
    from hybridpref.routing_model.bins import ReferenceBins
    from hybridpref.tagger.core import Tagger

    tagger = Tagger.for_profile(profile)
    bins = tagger.reference_bins or ReferenceBins.default()

    def tag(instances: Sequence[PreferenceInstance]) -> np.ndarray:
        tagger.load()
        return np.asarray(tagger.tag(list(instances)).tag_matrix, dtype=np.uint8)

    bins_json = bins.to_json()
    tag.cache_key = f"tagger:{profile}:bins-{hashlib.sha256(bins_json.encode()).hexdigest()[:12]}"  # type: ignore[attr-defined]
    return tag, bins_json


# Bump when tagging code changes what a profile returns for the same texts (stale caches then miss).
TAG_CODE_VERSION = "tags-code-2"


def tag_cache_key(tag_fn: TagFn, profile: str | None = None) -> str:
    """Cache key of a tag function: its ``cache_key`` attribute when it has one (the tagger's: profile +
    reference bins), else its qualified name + a hash of its code, plus the profile and code version.
    Two different custom functions never share cached tags (they used to share the key ``"custom"``)."""
    own = getattr(tag_fn, "cache_key", None)
    if own is None:
        code = getattr(tag_fn, "__code__", None)
        digest = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:12] if code else "nocode"
        own = f"custom:{getattr(tag_fn, '__module__', '?')}.{getattr(tag_fn, '__qualname__', type(tag_fn).__qualname__)}:{digest}"
    return f"{own}|profile={profile or '-'}|{TAG_CODE_VERSION}"


def cached_tags(instances: Sequence[PreferenceInstance], tag_fn: TagFn, key: str) -> np.ndarray:
    """Tag matrix (n, V) uint8, cached under runtime.cache_dir() by (key, instance texts) hash."""
    from hybridpref.server.runtime import cache_dir

    h = hashlib.sha256(f"{key}|{VOCABULARY_VERSION}".encode())
    for inst in instances:
        h.update("\x00".join((inst.id, inst.prompt_text, inst.response_a, inst.response_b)).encode())
    path = cache_dir() / "tags" / f"{h.hexdigest()[:32]}.npy"
    if path.exists():
        return np.load(path)
    tags = np.asarray(tag_fn(instances), dtype=np.uint8)
    if tags.shape != (len(instances), NUM_TAGS) or tags.max(initial=0) > 1:
        raise ValueError(
            f"tag function returned {tags.shape} (max {tags.max(initial=0)}), expected 0/1 ({len(instances)}, {NUM_TAGS})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), tags)
    path.with_suffix(".tmp.npy").replace(path)
    return tags


def build_bundle(
    config: BuildConfig,
    *,
    tag_fn: TagFn | None = None,
    reference_bins_json: str | None = None,
    proxy: ProxyRewardModel | None = None,
    progress: bool = True,
) -> BuildResult:
    """Run the whole build and write the bundle to ``config.out``; see the module docstring.

    ``tag_fn`` (instances -> (n, V) 0/1) replaces the tagger core (tests, precomputed tags);
    ``proxy`` replaces the default ``EmbeddingBTProxy``. Deterministic for ``config.seed``.
    """
    _validate(config)
    specs = parse_pool_specs(config.pool_specs)
    judges = _judges(config, specs)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    diagnostics = {g.name: load_gold(g, config.split_seed) for g in map(parse_gold_spec, config.gold)}
    if TARGET_GOLD in diagnostics:
        raise InvalidInput(FieldViolation("gold", f"the name {TARGET_GOLD!r} is the target gold set's; rename the --gold set"))
    datas = [
        load_pool_data(s, config.group_key, config.holdout_fraction, config.split_seed, judges.get(s.name), diagnostics)
        for s in specs
    ]
    if tag_fn is None:
        tag_fn, reference_bins_json = tag_with_tagger(config.tagger_profile)
    proxy = proxy or EmbeddingBTProxy(
        hidden=config.proxy_hidden, steps=config.proxy_steps, seeds=config.proxy_seeds, show_progress=progress
    )
    sims = _simulate_pools(config, datas, tag_fn, proxy, progress)
    timings["simulate_s"] = time.perf_counter() - t0
    for name in ("encode_s", "proxy_s"):
        timings[name] = sum(s.timings.get(name, 0.0) for s in sims)
    trained = sum(len(s.y) for s in sims if not s.cached)
    timings["proxy_candidates_per_s"] = trained / timings["proxy_s"] if timings["proxy_s"] > 0 else float("nan")

    t1 = time.perf_counter()
    rows = multipool.union(sims)
    variants = {v: multipool.cross_validate(rows, v, config.folds, config.seed) for v in config.variants}
    chosen = max((v for v in variants if v in ("linear", "quadratic")), key=lambda v: variants[v]["cv_spearman"])
    model, alpha = multipool.fit(rows, chosen)
    lopo, lopo_models = multipool.leave_one_pool_out(rows, chosen) if len(sims) > 1 else ({}, {})
    timings["ppm_s"] = time.perf_counter() - t1
    metrics = _metrics(config, sims, datas, rows, variants, chosen, alpha, lopo, proxy)
    version = _write(Path(config.out), config, model, metrics, reference_bins_json, datas)
    lopo_versions = _write_lopo(config, sims, datas, rows, chosen, lopo, lopo_models, reference_bins_json, proxy)
    timings["total_s"] = time.perf_counter() - t0
    return BuildResult(Path(config.out), version, metrics, timings, {s.name: s.cached for s in sims}, lopo_versions)


def _simulate_pools(
    config: BuildConfig, datas: Sequence[PoolData], tag_fn: TagFn, proxy: ProxyRewardModel, progress: bool
) -> list[PoolSimulation]:
    """Each pool's simulation on its own tags, from the cache when its inputs were simulated before."""
    tag_key = tag_cache_key(tag_fn, config.tagger_profile)
    settings = {
        "group_key": config.group_key,
        "holdout_fraction": config.holdout_fraction,
        "split_seed": config.split_seed,
        "tagger": tag_key,
    }
    return [
        simulate(
            data,
            cached_tags(data.pool, tag_fn, key=tag_key),
            proxy,
            config.candidates,
            config.seed,
            config.walk_fraction,
            settings,
            progress,
        )
        for data in datas
    ]


def _judges(config: BuildConfig, specs: Sequence[PoolSpec]) -> dict[str, str]:
    """Per pool, the LM judge given on the command line (the rest default to ``pools.DEFAULT_JUDGES``)."""
    names = {s.name for s in specs}
    out = dict(config.lm_judges)
    unknown = sorted(set(out) - names)
    if unknown:
        raise InvalidInput(FieldViolation("lm_judge", f"POOL=JUDGE names unknown pools {unknown}; pools: {sorted(names)}"))
    if config.lm_judge is not None:
        if len(specs) > 1:
            raise InvalidInput(FieldViolation("lm_judge", "with several --pool, give --lm-judge POOL=JUDGE per pool"))
        out.setdefault(specs[0].name, config.lm_judge)
    return out


def _validate(config: BuildConfig) -> None:
    """Check the cheap things before the expensive steps start."""
    bad: list[FieldViolation] = []
    if config.candidates < max(2, config.folds):
        bad.append(FieldViolation("candidates", f"need at least max(2, folds={config.folds}), got {config.candidates}"))
    if config.folds < 2:
        bad.append(FieldViolation("folds", f"need at least 2, got {config.folds}"))
    if not {"linear", "quadratic"} & set(config.variants):
        bad.append(FieldViolation("variants", "need linear or quadratic: only those export to the served quadratic form"))
    if not 0 < config.holdout_fraction < 1:
        bad.append(FieldViolation("holdout_fraction", f"must be in (0, 1), got {config.holdout_fraction}"))
    if config.proxy_seeds < 1:
        bad.append(FieldViolation("proxy_seeds", f"must be >= 1, got {config.proxy_seeds}"))
    if config.lopo_out and len(config.pool_specs) < 2:
        bad.append(FieldViolation("lopo_out", "leave-one-pool-out bundles need at least two --pool"))
    if bad:
        raise InvalidInput(bad)


def _metrics(
    config: BuildConfig,
    sims: Sequence[PoolSimulation],
    datas: Sequence[PoolData],
    rows: multipool.Rows,
    variants: dict,
    chosen: str,
    alpha: float,
    lopo: dict,
    proxy: ProxyRewardModel,
) -> dict[str, Any]:
    pools = {s.name: _pool_metrics(s, d) for s, d in zip(sims, datas)}
    all_human = float(np.mean([p["target"]["all_human"] for p in pools.values()]))
    all_lm = float(np.mean([p["target"]["all_lm"] for p in pools.values()]))
    served = {
        "cv_spearman": variants[chosen]["cv_spearman"],
        "cv_rmse": variants[chosen]["cv_rmse"],
        "ridge_alpha": alpha,
        "candidates": float(len(rows.y)),
        "pool_size": float(sum(len(d.pool) for d in datas)),
        "target_all_human": all_human,
        "target_all_lm": all_lm,
        "centring_offset": rows.offset,
    }
    if lopo:
        served["lopo_spearman_min"] = min(e["spearman"] for e in lopo.values())
    kinds = [k for s in sims for k in s.kinds]
    return {
        "served": served,
        "chosen_variant": chosen,
        "variants": variants,
        "centring": {"method": CENTRING, "pool_means": rows.means, "offset": rows.offset},
        "target": {
            "gold": TARGET_GOLD,
            "all_human": all_human,
            "all_lm": all_lm,
            "std": float(np.std(rows.y)),
            "spearman_vs_human_fraction": _rho(rows.share, rows.y),
            "note": "mean over pools; std and Spearman on centred rows",
        },
        "pools": pools,
        "leave_one_pool_out": {"variant": chosen, "pools": lopo} if lopo else {},
        "candidates": {k: int(kinds.count(k)) for k in sorted(set(kinds))},
        "proxy": proxy.describe(),
    }


def _pool_metrics(sim: PoolSimulation, data: PoolData) -> dict[str, Any]:
    y = sim.y
    gold = {
        name: {"all_human": float(a[1]), "all_lm": float(a[0]), "mean": float(a.mean()), "spearman_vs_target": _rho(a, y)}
        for name, a in sim.acc.items()
    }
    return {
        "file": data.spec.path.name,
        "sha256": data.sha256,
        "size": len(data.pool),
        "gold_rows": len(data.gold_sets[TARGET_GOLD]),
        "lm_judge": data.judge,
        "dropped_rows": data.dropped,
        "human_lm_agreement": sim.human_lm_agreement,
        "target": {
            "all_human": float(y[1]),
            "all_lm": float(y[0]),
            "mean": float(y.mean()),
            "std": float(y.std()),
            "spearman_vs_human_fraction": _rho(sim.share, y),
        },
        "gold_sets": gold,
        "candidates": {k: int(sim.kinds.count(k)) for k in sorted(set(sim.kinds))},
        "tag_rates": {TAG_NAMES[j]: float(r) for j, r in enumerate(sim.tag_rates) if r > 0},
    }


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; 0.0 when either side is constant (undefined)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else 0.0


def _write_lopo(
    config: BuildConfig,
    sims: Sequence[PoolSimulation],
    datas: Sequence[PoolData],
    rows: multipool.Rows,
    chosen: str,
    lopo: dict,
    models: dict,
    bins_json: str | None,
    proxy: ProxyRewardModel,
) -> dict[str, str]:
    """``--lopo-out``: per pool, a bundle whose PPM never saw it (the leave-one-pool-out fit); returns versions."""
    if not config.lopo_out:
        return {}
    out = {}
    for name, model in models.items():
        keep = [i for i, s in enumerate(sims) if s.name != name]
        sub = rows.only(rows.pool != name)
        variants = {chosen: multipool.cross_validate(sub, chosen, config.folds, config.seed)}
        alpha = lopo[name]["ridge_alpha"]
        metrics = _metrics(config, [sims[i] for i in keep], [datas[i] for i in keep], sub, variants, chosen, alpha, {}, proxy)
        metrics["held_out_pool"] = {"pool": name, **lopo[name]}
        folder = Path(config.lopo_out) / f"without-{name}"
        out[name] = _write(folder, config, model, metrics, bins_json, [datas[i] for i in keep], without=name)
    return out


def _write(
    out: Path,
    config: BuildConfig,
    model: ppm_mod.QuadraticPPM,
    metrics: dict,
    reference_bins_json: str | None,
    datas: Sequence[PoolData],
    without: str | None = None,
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    ppm_fit.to_onnx(model, out / "model.onnx")
    metrics["served"]["onnx_parity_max_abs_diff"] = ppm_fit.check_parity(model, out / "model.onnx", seed=config.seed)
    bundle_io.write_json(
        out / "ppm.json",
        {
            "form": "quadratic",
            "kind": model.kind,
            "bias": model.bias,
            "linear": model.linear.tolist(),
            "quad": model.quad.tolist(),
            "input": "x = counts / pool_size",
        },
    )
    bundle_io.write_json(out / "vocabulary.json", {"version": VOCABULARY_VERSION, "tags": list(TAG_NAMES)})
    bins = json.loads(reference_bins_json) if reference_bins_json else {"note": "tags supplied by a custom tag function"}
    bundle_io.write_json(out / "reference_bins.json", bins)
    bundle_io.write_json(out / "metrics.json", metrics)
    fingerprints = _fingerprints(config, datas)
    bundle_io.write_json(out / "fingerprints.json", fingerprints)
    (out / "MODEL_CARD.md").write_text(card_mod.model_card(config, metrics, model, without), encoding="utf-8")
    return bundle_io.finalise(
        out,
        {
            "model_kind": model.kind,
            "data_fingerprint": fingerprints["data_fingerprint"],
            "vocabulary_version": VOCABULARY_VERSION,
            "input_normalisation": "counts / pool_size",
        },
    )


def _fingerprints(config: BuildConfig, datas: Sequence[PoolData]) -> dict[str, Any]:
    """sha256 of every data file the PPM was fitted on or measured against; ``pools`` lists the training pools
    (name, sha256, rows, judge, dropped sources), which the evaluation harness's leakage check reads."""
    from hybridpref.offline.pools import REPEATED_SOURCES

    def ids_hash(insts: Sequence[PreferenceInstance]) -> str:
        return hashlib.sha256("\n".join(i.id for i in insts).encode()).hexdigest()[:16]

    files = {f"pool:{d.spec.name}": d.sha256 for d in datas}
    for spec in map(parse_gold_spec, config.gold):
        files[f"gold:{spec.name}"] = bundle_io.sha256_file(Path(spec.path))
    sets = {f"pool:{d.spec.name}": ids_hash(d.pool) for d in datas}
    sets.update({f"gold:{d.spec.name}:{k}": ids_hash(v) for d in datas for k, v in d.gold_sets.items() if k == TARGET_GOLD})
    sets.update({f"gold:{k}": ids_hash(v) for k, v in datas[0].gold_sets.items() if k != TARGET_GOLD})
    digest = hashlib.sha256(json.dumps([files, sets], sort_keys=True).encode()).hexdigest()[:16]
    pools = [
        {
            "name": d.spec.name,
            "sha256": d.sha256,
            "rows": len(d.pool),
            "gold_rows": len(d.gold_sets[TARGET_GOLD]),
            "judge": d.judge,
            "dropped_sources": list(REPEATED_SOURCES.get(d.spec.name, ())),
        }
        for d in datas
    ]
    args = {k: v for k, v in asdict(config).items() if k not in ("pool", "out", "gold", "lopo_out")}
    args["gold"] = [spec.split("=", 1)[0] if "=" in spec else Path(spec.split("#")[0]).name for spec in config.gold]
    return {
        "data_fingerprint": f"data-{digest}",
        "file_sha256": files,
        "instance_id_sha256": sets,
        "pools": pools,
        "sizes": {f"pool:{d.spec.name}": len(d.pool) for d in datas},
        "build_args": args,
    }
