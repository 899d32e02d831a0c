"""Build a predictor bundle: pool -> tags -> candidate mixes -> proxy reward models -> PPM -> ONNX.

    hybridpref predictor build --pool POOL.jsonl [--gold SPEC ...] --candidates N --seed S --out DIR

Steps (each deterministic for ``--seed``; the gold split has its own ``--split-seed``):

1. read the pool; hold out ``--holdout-fraction`` of its prompt groups (``--group-key``, e.g.
   MT-Bench ``question_id``) as the *target* gold set (human labels, never trained on);
2. tag the remaining pool with the tagger core, or through a tagger service with ``--tagger ADDRESS``
   (its replicas share the work; cached on disk by content hash either way);
3. sample candidate mixes (paper walks, uniform subsets, all-human, all-LM);
4. per candidate: label the pool (human where routed, LM elsewhere, ties dropped), train the proxy
   reward model (``proxy.EmbeddingBTProxy``), score pairwise accuracy on every gold set;
5. fit PPM variants on (counts / pool_size -> held-out accuracy), 10-fold CV Spearman / RMSE each;
6. export the best quadratic-form variant to ONNX, check parity (<= 1e-5), write the bundle.

``--gold`` adds diagnostic gold sets (reported, never the PPM target): ``PATH`` or
``NAME=PATH`` with optional filters after ``#``: ``source~TEXT`` (keep rows whose ``source``
contains TEXT; repeat with ``|`` for "any of"), ``unanimous`` (keep rows whose ``human_votes``
all agree), ``max=N`` (seeded subsample to N rows, to bound encoding time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.errors import FieldViolation, InvalidInput
from hybridpref.common.instances import PreferenceInstance, instance_from_row, iter_json_rows
from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES, VOCABULARY_VERSION
from hybridpref.predictor import bundle as bundle_io
from hybridpref.predictor import mixes as mixes_mod
from hybridpref.predictor import ppm as ppm_mod
from hybridpref.predictor.proxy import EmbeddingBTProxy, ProxyRewardModel

TARGET_GOLD = "heldout"
TagFn = Callable[[Sequence[PreferenceInstance]], np.ndarray]


@dataclass
class BuildConfig:
    """Everything that determines a bundle (recorded in ``fingerprints.json``)."""

    pool: str
    out: str
    gold: list[str] = field(default_factory=list)
    candidates: int = 1000
    seed: int = 0
    split_seed: int = 0
    holdout_fraction: float = 0.2
    group_key: str = "question_id"
    lm_judge: str | None = None
    tagger_profile: str = "default"
    walk_fraction: float = 0.7
    folds: int = 10
    variants: tuple[str, ...] = ("linear", "quadratic", "gbm")
    proxy_hidden: int = 32
    proxy_steps: int = 120
    proxy_seeds: int = 3


@dataclass
class BuildResult:
    bundle_path: Path
    bundle_version: str
    metrics: dict[str, Any]
    timings: dict[str, float]


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
            gs.sources = f[len("source~"):].split("|")
        elif f == "unanimous":
            gs.unanimous = True
        elif f.startswith("max="):
            gs.max_rows = int(f[4:])
        else:
            raise InvalidInput(FieldViolation("gold", f"unknown filter {f!r} in {spec!r}; expected source~TEXT, unanimous or max=N"))
    return gs


def read_rows(path: str, field_name: str = "pool") -> list[dict[str, Any]]:
    """Raw JSONL rows (dicts); errors name the file line."""
    try:
        return [row for _lineno, row in iter_json_rows(str(path))]
    except OSError as exc:
        raise InvalidInput(FieldViolation(field_name, f"cannot read {path}: {exc.strerror}")) from None


def usable_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop rows a tagger or proxy cannot use (empty prompt or response); returns (rows, dropped)."""
    def ok(r: dict[str, Any]) -> bool:
        return all(isinstance(r.get(k), str) and r[k].strip() for k in ("response_a", "response_b")) and (
            (isinstance(r.get("prompt"), str) and r["prompt"].strip()) or bool(r.get("messages")))
    kept = [r for r in rows if ok(r)]
    return kept, len(rows) - len(kept)


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
        raise InvalidInput(FieldViolation("gold", f"gold set {spec.name!r} ({spec.path}) has no row with a human A/B label after filters"))
    return [instance_from_row(r, where=f"{spec.path} row {i}") for i, r in enumerate(rows)]


def split_pool(rows: list[dict[str, Any]], key: str, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of the prompt groups (``row[key]``, else the prompt text): (train idx, gold idx)."""
    groups = [str(r.get(key)) if r.get(key) is not None else str(r.get("prompt")) for r in rows]
    uniq = sorted(set(groups))
    n_hold = int(round(fraction * len(uniq)))
    if fraction > 0 and (n_hold < 1 or n_hold >= len(uniq)):
        raise InvalidInput(FieldViolation("holdout_fraction", f"{fraction} of {len(uniq)} prompt groups leaves no train or no gold group"))
    held = set(np.random.default_rng(seed).permutation(uniq)[:n_hold].tolist())
    train = [i for i, g in enumerate(groups) if g not in held]
    gold = [i for i, g in enumerate(groups) if g in held]
    return train, gold


def tag_with_tagger(profile: str) -> tuple[TagFn, str]:
    """A tag function backed by the tagger core (loaded once) and its reference bins as JSON."""
    from hybridpref.tagger.bins import ReferenceBins
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
    from hybridpref.common.runtime import cache_dir

    h = hashlib.sha256(f"{key}|{VOCABULARY_VERSION}".encode())
    for inst in instances:
        h.update("\x00".join((inst.id, inst.prompt_text, inst.response_a, inst.response_b)).encode())
    path = cache_dir() / "tags" / f"{h.hexdigest()[:32]}.npy"
    if path.exists():
        return np.load(path)
    tags = np.asarray(tag_fn(instances), dtype=np.uint8)
    if tags.shape != (len(instances), NUM_TAGS) or tags.max(initial=0) > 1:
        raise ValueError(f"tag function returned {tags.shape} (max {tags.max(initial=0)}), expected 0/1 ({len(instances)}, {NUM_TAGS})")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), tags)
    path.with_suffix(".tmp.npy").replace(path)
    return tags


def build_bundle(config: BuildConfig, *, tag_fn: TagFn | None = None, reference_bins_json: str | None = None,
                 proxy: ProxyRewardModel | None = None, progress: bool = True) -> BuildResult:
    """Run the whole build and write the bundle to ``config.out``; see the module docstring.

    ``tag_fn`` (instances -> (n, V) 0/1) replaces the tagger core (tests, precomputed tags);
    ``proxy`` replaces the default ``EmbeddingBTProxy``. Deterministic for ``config.seed``.
    """
    _validate(config)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rows, dropped = usable_rows(read_rows(config.pool))
    train_idx, gold_idx = split_pool(rows, config.group_key, config.holdout_fraction, config.split_seed)
    pool = [instance_from_row(rows[i], where=f"{config.pool} row {i}") for i in train_idx]
    gold_sets = {TARGET_GOLD: [instance_from_row(rows[i], where=f"{config.pool} row {i}") for i in gold_idx]}
    for spec in map(parse_gold_spec, config.gold):
        gold_sets[spec.name] = load_gold(spec, config.split_seed)
    human, lm, judge = mixes_mod.label_sources(pool, config.lm_judge)

    if tag_fn is None:
        tag_fn, reference_bins_json = tag_with_tagger(config.tagger_profile)
    tags = cached_tags(pool, tag_fn, key=tag_cache_key(tag_fn, config.tagger_profile))
    timings["tag_s"] = time.perf_counter() - t0

    routed, kinds = mixes_mod.sample_mixes(tags, config.candidates, config.seed, config.walk_fraction)
    labels = mixes_mod.mix_labels(routed, human, lm)
    proxy = proxy or EmbeddingBTProxy(hidden=config.proxy_hidden, steps=config.proxy_steps, seeds=config.proxy_seeds, show_progress=progress)
    t1 = time.perf_counter()
    proxy.prepare(pool, gold_sets)
    timings["encode_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    acc = _score_candidates(proxy, labels, config.seed, progress)
    timings["proxy_s"] = time.perf_counter() - t2
    timings["proxy_candidates_per_s"] = len(labels) / max(timings["proxy_s"], 1e-9)

    x = mixes_mod.count_vectors(routed, tags) / len(pool)
    y = acc[TARGET_GOLD]
    t3 = time.perf_counter()
    variants = {v: ppm_mod.cross_validate(x, y, v, folds=config.folds, seed=config.seed) for v in config.variants}
    chosen = max((v for v in variants if v in ("linear", "quadratic")), key=lambda v: variants[v]["cv_spearman"])
    model, alpha = ppm_mod.fit_ridge(x, y, quadratic=chosen == "quadratic")
    timings["ppm_s"] = time.perf_counter() - t3

    metrics = _metrics(config, variants, chosen, alpha, acc, kinds, routed, human, lm, judge, tags, proxy)
    metrics["pool"]["dropped_empty_rows"] = dropped
    version = _write(config, model, metrics, reference_bins_json, pool, gold_sets)
    timings["total_s"] = time.perf_counter() - t0
    return BuildResult(Path(config.out), version, metrics, timings)


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
    if bad:
        raise InvalidInput(bad)


def _score_candidates(proxy: ProxyRewardModel, labels: np.ndarray, seed: int, progress: bool) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    chunk = 32
    parts: list[dict[str, np.ndarray]] = []
    with tqdm(total=len(labels), desc="proxy reward models", unit="cand", disable=not progress) as bar:
        for start in range(0, len(labels), chunk):
            parts.append(proxy.evaluate(labels[start:start + chunk], seed=seed))  # same inits for all: fair comparison
            bar.update(min(chunk, len(labels) - start))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _metrics(config: BuildConfig, variants: dict, chosen: str, alpha: float, acc: dict[str, np.ndarray], kinds: list[str],
             routed: np.ndarray, human: np.ndarray, lm: np.ndarray, judge: str, tags: np.ndarray, proxy: ProxyRewardModel) -> dict[str, Any]:
    frac = routed.mean(1)
    y = acc[TARGET_GOLD]
    both = (human != 0) & (lm != 0)
    diag = {name: {"all_human": float(a[1]), "all_lm": float(a[0]), "mean": float(a.mean()),
                   "spearman_vs_target": _rho(a, y)}
            for name, a in acc.items()}
    served = {"cv_spearman": variants[chosen]["cv_spearman"], "cv_rmse": variants[chosen]["cv_rmse"],
              "ridge_alpha": alpha, "candidates": float(len(y)), "pool_size": float(routed.shape[1]),
              "target_all_human": float(y[1]), "target_all_lm": float(y[0])}
    return {
        "served": served, "chosen_variant": chosen, "variants": variants,
        "target": {"gold": TARGET_GOLD, "all_human": float(y[1]), "all_lm": float(y[0]), "mean": float(y.mean()),
                   "std": float(y.std()), "spearman_vs_human_fraction": _rho(frac, y)},
        "gold_sets": diag,
        "pool": {"size": int(routed.shape[1]), "lm_judge": judge, "human_lm_agreement": float((human[both] == lm[both]).mean()),
                 "tag_rates": {TAG_NAMES[j]: float(r) for j, r in enumerate(tags.mean(0)) if r > 0}},
        "candidates": {k: int(kinds.count(k)) for k in sorted(set(kinds))},
        "proxy": proxy.describe(),
    }


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation; 0.0 when either side is constant (undefined)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else 0.0


def _write(config: BuildConfig, model: ppm_mod.QuadraticPPM, metrics: dict, reference_bins_json: str | None,
           pool: list[PreferenceInstance], gold_sets: dict[str, list[PreferenceInstance]]) -> str:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ppm_mod.to_onnx(model, out / "model.onnx")
    metrics["served"]["onnx_parity_max_abs_diff"] = ppm_mod.check_parity(model, out / "model.onnx", seed=config.seed)
    bundle_io.write_json(out / "ppm.json", {"form": "quadratic", "kind": model.kind, "bias": model.bias,
                                            "linear": model.linear.tolist(), "quad": model.quad.tolist(),
                                            "input": "x = counts / pool_size"})
    bundle_io.write_json(out / "vocabulary.json", {"version": VOCABULARY_VERSION, "tags": list(TAG_NAMES)})
    bins = json.loads(reference_bins_json) if reference_bins_json else {"note": "tags supplied by a custom tag function"}
    bundle_io.write_json(out / "reference_bins.json", bins)
    bundle_io.write_json(out / "metrics.json", metrics)
    fingerprints = _fingerprints(config, pool, gold_sets)
    bundle_io.write_json(out / "fingerprints.json", fingerprints)
    (out / "MODEL_CARD.md").write_text(_model_card(config, metrics, model), encoding="utf-8")
    return bundle_io.finalise(out, {"model_kind": model.kind, "data_fingerprint": fingerprints["data_fingerprint"],
                                    "vocabulary_version": VOCABULARY_VERSION, "input_normalisation": "counts / pool_size"})


def _fingerprints(config: BuildConfig, pool: list[PreferenceInstance], gold_sets: dict[str, list[PreferenceInstance]]) -> dict[str, Any]:
    def ids_hash(insts: list[PreferenceInstance]) -> str:
        return hashlib.sha256("\n".join(i.id for i in insts).encode()).hexdigest()[:16]

    files = {"pool": bundle_io.sha256_file(Path(config.pool))}
    for spec in map(parse_gold_spec, config.gold):
        files[f"gold:{spec.name}"] = bundle_io.sha256_file(Path(spec.path))
    sets = {"pool": ids_hash(pool), **{f"gold:{k}": ids_hash(v) for k, v in gold_sets.items()}}
    digest = hashlib.sha256(json.dumps([files, sets], sort_keys=True).encode()).hexdigest()[:16]
    args = {k: v for k, v in asdict(config).items() if k not in ("pool", "out", "gold")}
    args["gold"] = [spec.split("=", 1)[0] if "=" in spec else Path(spec.split("#")[0]).name for spec in config.gold]
    return {"data_fingerprint": f"data-{digest}", "file_sha256": files, "instance_id_sha256": sets,
            "sizes": {"pool": len(pool), **{f"gold:{k}": len(v) for k, v in gold_sets.items()}}, "build_args": args}


def _model_card(config: BuildConfig, metrics: dict, model: ppm_mod.QuadraticPPM) -> str:
    v = metrics["variants"]
    rows = "\n".join(f"| {name} | {m['cv_spearman']:.3f} | {m['cv_rmse']:.4f} |" for name, m in v.items())
    t = metrics["target"]
    diag = "\n".join(f"| {name} | {d['all_human']:.3f} | {d['all_lm']:.3f} | {d['spearman_vs_target']:.2f} |" for name, d in metrics["gold_sets"].items())
    top = np.argsort(-np.abs(model.linear))[:8]
    return f"""# Predictor bundle: performance prediction model (PPM)

**What it predicts.** Pairwise accuracy, on the *{TARGET_GOLD}* gold set (human labels of
{config.holdout_fraction:.0%} of the pool's prompt groups by `{config.group_key}`, never trained on), of a
proxy reward model trained on a label mix (human label where routed, LM label `{metrics['pool']['lm_judge']}`
elsewhere, ties dropped).

**Input.** `counts` float32 [batch, {NUM_TAGS}]: per tag of `vocabulary.json`, how many human-routed
instances carry it; `pool_size` float32 [1]: the size of the batch the mix was drawn from. The model
computes **x = counts / pool_size** first, so one PPM serves any batch size.
Output `score` float32 [batch]. Form: `{model.kind}`, f(x) = bias + w.x + x^T Q x (coefficients in
`ppm.json`, float64; the ONNX copy is checked against it on load).

**Data.** Pool: {metrics['pool']['size']} instances of `{Path(config.pool).parent.name}/{Path(config.pool).name}`
(fingerprint in `fingerprints.json`). Candidates: {metrics['candidates']} (seed {config.seed}).
Proxy: {metrics['proxy']}.

**Fit (10-fold CV over candidates, pooled out-of-fold predictions).** Served: `{metrics['chosen_variant']}`.

| variant | CV Spearman | CV RMSE |
|---|---|---|
{rows}

Target spread: mean {t['mean']:.4f}, std {t['std']:.4f}; all-human {t['all_human']:.4f}, all-LM {t['all_lm']:.4f};
Spearman(share routed to humans, accuracy) = {t['spearman_vs_human_fraction']:.2f}.

**Gold sets** (accuracy of the all-human / all-LM proxy; Spearman of each set's accuracy with the target
across candidates). Out-of-distribution sets are diagnostics only: with a proxy like this they can reward
worse labels (their preferred responses are mostly the shorter ones).

| gold set | all human | all LM | Spearman vs target |
|---|---|---|---|
{diag}

Largest linear coefficients: {", ".join(f"`{TAG_NAMES[j]}` {model.linear[j]:+.3f}" for j in top)}.

**Limits.** The target is a small proxy (MLP Bradley-Terry on frozen MiniLM embeddings), not a
fine-tuned reward model; its accuracy differences between mixes are a few points and partly noise
(see CV RMSE vs target std). Human labels in the pool come from several judges per item and
disagree with each other; the gold set is human labels too.

**Rebuild** (deterministic for the seed; tags and embeddings are cached under `~/.cache/hybridpref`):

```
{_command(config)}
```
"""


def _command(config: BuildConfig) -> str:
    """The CLI line that rebuilds this bundle: defaults omitted, every other argument spelled out."""
    gold = " ".join(f"--gold '{g}'" for g in config.gold)
    default = BuildConfig(pool="", out="")
    flags = {"split_seed": "--split-seed", "holdout_fraction": "--holdout-fraction", "group_key": "--group-key",
             "lm_judge": "--lm-judge", "tagger_profile": "--tagger-profile", "folds": "--folds",
             "proxy_seeds": "--proxy-seeds", "proxy_steps": "--proxy-steps", "proxy_hidden": "--proxy-hidden"}
    extra = "".join(f" {flag} {getattr(config, name)}" for name, flag in flags.items() if getattr(config, name) != getattr(default, name))
    return (f"hybridpref predictor build --pool {config.pool} {gold} --candidates {config.candidates} --seed {config.seed}"
            f"{extra} --out <bundle dir>")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridpref predictor build", description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True, help="pairs.jsonl with human_label and lm_labels")
    p.add_argument("--gold", action="append", default=[], help="diagnostic gold set: [NAME=]PATH[#source~TEXT][#unanimous][#max=N]")
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--holdout-fraction", type=float, default=0.2)
    p.add_argument("--group-key", default="question_id")
    p.add_argument("--lm-judge", default=None, help="key in lm_labels (default: the most common)")
    p.add_argument("--tagger-profile", default="default", choices=("default", "fast"))
    p.add_argument("--tagger", default=None, metavar="ADDRESS",
                   help="tag through a running tagger service (e.g. dns:///hybridpref-tagger:50051, spread over its "
                        "replicas) instead of loading the tagger models here; TLS from HYBRIDPREF_TLS_* settings")
    p.add_argument("--tagger-concurrency", type=int, default=8, help="with --tagger: tag calls in flight at once")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--proxy-seeds", type=int, default=3)
    p.add_argument("--proxy-steps", type=int, default=120)
    p.add_argument("--proxy-hidden", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit code. ``InvalidInput`` propagates for the caller to print."""
    a = make_parser().parse_args(argv)
    config = BuildConfig(pool=a.pool, out=a.out, gold=a.gold, candidates=a.candidates, seed=a.seed, split_seed=a.split_seed,
                         holdout_fraction=a.holdout_fraction, group_key=a.group_key, lm_judge=a.lm_judge,
                         tagger_profile=a.tagger_profile, folds=a.folds, proxy_hidden=a.proxy_hidden,
                         proxy_steps=a.proxy_steps, proxy_seeds=a.proxy_seeds)
    from hybridpref.common.runtime import configure_torch_threads

    configure_torch_threads()
    tag_fn, bins_json = None, None
    if a.tagger:
        from hybridpref.tagger.client import remote_tag_fn

        tag_fn, bins_json = remote_tag_fn(a.tagger, a.tagger_profile, concurrency=a.tagger_concurrency)
    result = build_bundle(config, tag_fn=tag_fn, reference_bins_json=bins_json, progress=not a.no_progress)
    m = result.metrics
    print(f"bundle {result.bundle_version} -> {result.bundle_path}")
    for name, v in m["variants"].items():
        print(f"  {name:10s} CV Spearman {v['cv_spearman']:.3f}  RMSE {v['cv_rmse']:.4f}")
    print(f"  served: {m['chosen_variant']}; proxy {result.timings['proxy_candidates_per_s']:.1f} candidates/s; total {result.timings['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
