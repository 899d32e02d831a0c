"""One pool's routing simulation for the PPM build, cached on disk by its inputs.

A pool is simulated on its own: its held-out prompt groups are its gold set, its candidate mixes are
drawn over its own tags, and each candidate's proxy reward model is trained on that pool's labels
(human where routed, the pool's LM judge elsewhere). The result, :class:`PoolSimulation`, holds the
mix features ``x = counts / pool_size`` and the accuracy of every candidate on every gold set; it is
stored under ``runtime.cache_dir() / "ppm_simulations"`` keyed by everything that determines it
(pool file sha256, split, candidates, seeds, proxy settings, tagger key, gold sets), so a rebuild or
a leave-one-pool-out refit never retrains proxies.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.common.signals import recorded_signals
from hybridpref.common.vocabulary import NUM_TAGS, VOCABULARY_VERSION
from hybridpref.offline.bundle import mixes as mixes_mod
from hybridpref.offline.bundle.proxy import ProxyRewardModel
from hybridpref.routing_model import bundle as bundle_io
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import PreferenceInstance, instance_from_row, iter_json_rows

TARGET_GOLD = "heldout"
# Bump when the simulation's code changes what it computes for the same inputs (stale caches then miss).
SIMULATION_VERSION = "ppm-sim-1"
TagFn = Callable[[Sequence[PreferenceInstance]], np.ndarray]


@dataclass(frozen=True)
class PoolSpec:
    """A ``--pool`` argument: ``NAME=PATH`` or ``PATH`` (name: the folder of a ``pairs.jsonl``, else the file stem)."""

    name: str
    path: Path


def _split_spec(spec: str) -> tuple[str, Path]:
    name, sep, raw = spec.partition("=") if "=" in spec else ("", "", spec)
    if sep and not name.strip():
        raise InvalidInput(FieldViolation("pool", f"{spec!r}: empty pool name before '='; use NAME=PATH or PATH"))
    if not raw.strip():
        raise InvalidInput(FieldViolation("pool", f"{spec!r}: empty path; use NAME=PATH or PATH"))
    path = Path(raw)
    if path.is_dir():
        path = path / "pairs.jsonl"
    return name.strip() or (path.parent.name if path.name == "pairs.jsonl" else path.stem), path


def pool_name(spec: str) -> str:
    """The name a ``--pool`` value gives its pool (the file need not exist yet)."""
    return _split_spec(spec)[0]


def parse_pool_spec(spec: str) -> PoolSpec:
    """``[NAME=]PATH`` -> spec; a folder means its ``pairs.jsonl``. Errors name the ``pool`` field."""
    name, path = _split_spec(spec)
    if not path.is_file():
        raise InvalidInput(FieldViolation("pool", f"{spec!r}: cannot read {path}: no such file"))
    return PoolSpec(name=name, path=path)


def parse_pool_specs(specs: Sequence[str]) -> list[PoolSpec]:
    """Every ``--pool``; at least one, names unique."""
    if not specs:
        raise InvalidInput(FieldViolation("pool", "give at least one --pool"))
    parsed = [parse_pool_spec(s) for s in specs]
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise InvalidInput(FieldViolation("pool", f"pool names repeat: {names}; name them NAME=PATH"))
    return parsed


@dataclass
class PoolData:
    """A pool split into its training instances and its gold sets (the held-out target first)."""

    spec: PoolSpec
    sha256: str
    pool: list[PreferenceInstance]
    gold_sets: dict[str, list[PreferenceInstance]]
    judge: str
    dropped: dict[str, int]


@dataclass
class PoolSimulation:
    """Candidate mixes of one pool and their measured accuracies (what the PPM is fitted on)."""

    name: str
    x: np.ndarray  # (K, V) counts / pool_size
    share: np.ndarray  # (K,) share of the pool routed to humans
    acc: dict[str, np.ndarray]  # gold name -> (K,) accuracy
    kinds: list[str]
    tag_rates: np.ndarray  # (V,)
    human_lm_agreement: float
    key: str
    cached: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def y(self) -> np.ndarray:
        return self.acc[TARGET_GOLD]


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
            (isinstance(r.get("prompt"), str) and r["prompt"].strip()) or bool(r.get("messages"))
        )

    kept = [r for r in rows if ok(r)]
    return kept, len(rows) - len(kept)


def split_pool(rows: list[dict[str, Any]], key: str, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of the prompt groups (``row[key]``, else the prompt text): (train idx, gold idx)."""
    groups = [str(r.get(key)) if r.get(key) is not None else str(r.get("prompt")) for r in rows]
    uniq = sorted(set(groups))
    n_hold = int(round(fraction * len(uniq)))
    if fraction > 0 and (n_hold < 1 or n_hold >= len(uniq)):
        raise InvalidInput(
            FieldViolation("holdout_fraction", f"{fraction} of {len(uniq)} prompt groups leaves no train or no gold group")
        )
    held = set(np.random.default_rng(seed).permutation(uniq)[:n_hold].tolist())
    train = [i for i, g in enumerate(groups) if g not in held]
    gold = [i for i, g in enumerate(groups) if g in held]
    return train, gold


def load_pool_data(
    spec: PoolSpec,
    group_key: str,
    holdout_fraction: float,
    split_seed: int,
    judge: str | None,
    diagnostics: Mapping[str, list[PreferenceInstance]],
) -> PoolData:
    """Read a pool, drop rows that repeat another pool (``evaluation.pools.repeats_other_pool``) and unusable
    rows, hold out prompt groups as the target gold set; the LM judge by the rule ``evaluate`` follows too
    (``offline.pools.choose_judge``), printed to stderr."""
    import sys

    from hybridpref.offline.pools import choose_judge, repeats_other_pool

    raw = read_rows(str(spec.path))
    kept = [r for r in raw if not repeats_other_pool(spec.name, r)]
    rows, empty = usable_rows(kept)
    train_idx, gold_idx = split_pool(rows, group_key, holdout_fraction, split_seed)
    where = f"{spec.path} row"
    pool = [instance_from_row(rows[i], where=f"{where} {i}") for i in train_idx]
    gold = [instance_from_row(rows[i], where=f"{where} {i}") for i in gold_idx]
    choice = choose_judge(spec.name, pool, judge)
    print(choice.describe(), file=sys.stderr)
    chosen = choice.judge
    dropped = {"repeats_other_pool": len(raw) - len(kept), "empty": empty}
    return PoolData(spec, bundle_io.sha256_file(spec.path), pool, {TARGET_GOLD: gold, **diagnostics}, chosen, dropped)


def lm_signs(pool: Sequence[PreferenceInstance], judge: str) -> np.ndarray:
    """(n,) int8 LM label per instance; an order-split judge counts once (orders disagree -> 0, dropped)."""
    sig = recorded_signals(pool, judge)
    if not np.any(sig.label != 0):
        raise InvalidInput(FieldViolation("lm_judge", f"judge {judge!r} has no A/B verdict in this pool"))
    return sig.label


def simulation_key(data: PoolData, settings: Mapping[str, Any]) -> str:
    """Cache key: pool file, split, judge, gold sets (ids + texts) and every simulation setting."""
    h = hashlib.sha256(
        json.dumps(
            {
                "version": SIMULATION_VERSION,
                "vocabulary": VOCABULARY_VERSION,
                "pool": data.spec.name,
                "sha256": data.sha256,
                "judge": data.judge,
                **settings,
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    for name, insts in [("pool", data.pool), *sorted(data.gold_sets.items())]:
        h.update(f"\x01{name}".encode())
        for inst in insts:
            h.update("\x00".join((inst.id, inst.prompt_text, inst.response_a, inst.response_b)).encode())
    return h.hexdigest()[:32]


def simulate(
    data: PoolData,
    tags: np.ndarray,
    proxy: ProxyRewardModel,
    candidates: int,
    seed: int,
    walk_fraction: float,
    settings: Mapping[str, Any],
    progress: bool,
) -> PoolSimulation:
    """Candidates' accuracies on the pool's gold sets: from the cache when present, else trained and cached."""
    from hybridpref.server.runtime import cache_dir

    key = simulation_key(
        data, {**settings, "candidates": candidates, "seed": seed, "walk_fraction": walk_fraction, "proxy": proxy.describe()}
    )
    path = cache_dir() / "ppm_simulations" / f"{key}.npz"
    if path.exists():
        return _load(path, data.spec.name, key)
    human, _, _ = mixes_mod.label_sources(data.pool, data.judge)
    lm = lm_signs(data.pool, data.judge)
    routed, kinds = mixes_mod.sample_mixes(tags, candidates, seed, walk_fraction)
    labels = mixes_mod.mix_labels(routed, human, lm)
    t0 = time.perf_counter()
    proxy.prepare(data.pool, data.gold_sets)
    t1 = time.perf_counter()
    acc = _score_candidates(proxy, labels, seed, progress)
    both = (human != 0) & (lm != 0)
    sim = PoolSimulation(
        name=data.spec.name,
        x=mixes_mod.count_vectors(routed, tags) / len(data.pool),
        share=routed.mean(1),
        acc=acc,
        kinds=kinds,
        tag_rates=tags.mean(0),
        key=key,
        human_lm_agreement=float((human[both] == lm[both]).mean()) if both.any() else float("nan"),
        timings={"encode_s": t1 - t0, "proxy_s": time.perf_counter() - t1},
    )
    _save(path, sim)
    return sim


def _score_candidates(proxy: ProxyRewardModel, labels: np.ndarray, seed: int, progress: bool) -> dict[str, np.ndarray]:
    from tqdm import tqdm

    chunk = 32
    parts: list[dict[str, np.ndarray]] = []
    with tqdm(total=len(labels), desc="proxy reward models", unit="cand", disable=not progress) as bar:
        for start in range(0, len(labels), chunk):
            parts.append(proxy.evaluate(labels[start : start + chunk], seed=seed))  # same inits for all: fair comparison
            bar.update(min(chunk, len(labels) - start))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _save(path: Path, sim: PoolSimulation) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays: dict[str, Any] = {
        "x": sim.x,
        "share": sim.share,
        "kinds": np.array(sim.kinds),
        "tag_rates": sim.tag_rates,
        "agreement": np.array(sim.human_lm_agreement),
        "gold_names": np.array(sorted(sim.acc)),
        **{f"acc:{name}": a for name, a in sim.acc.items()},
    }
    np.savez(tmp, **arrays)
    tmp.replace(path)  # atomic: a concurrent build never reads half a file


def _load(path: Path, name: str, key: str) -> PoolSimulation:
    with np.load(path, allow_pickle=False) as z:
        acc = {str(g): z[f"acc:{g}"] for g in z["gold_names"]}
        x = z["x"]
        if x.shape[1] != NUM_TAGS:
            raise ValueError(f"cached simulation {path} has {x.shape[1]} tags, expected {NUM_TAGS}")
        return PoolSimulation(
            name=name,
            x=x,
            share=z["share"],
            acc=acc,
            kinds=[str(k) for k in z["kinds"]],
            tag_rates=z["tag_rates"],
            human_lm_agreement=float(z["agreement"]),
            key=key,
            cached=True,
        )
