"""Tagger throughput and agreement on real data (../shared/data).

Prints, per profile: instances/s over N real instances (seeded sample across the four
datasets, tagged in chunks like the servicer), each stage's share of the time, encoder
cache hits, the encoder's compute floor measured in the same run and the gap to it;
the fast profile's agreement with the default profile's tags; the analyzer backends
separately (embedding on both encoders, the SmolLM2 LM backend on a few prompts);
and subject agreement with MT-Bench ``category``.

    .venv/bin/python benchmarks/bench_tagger.py [--n 1000] [--seed 0] [--chunk 64] [--lm-prompts 4]

Data: ``HYBRIDPREF_DATA_DIR`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from hybridpref.common.vocabulary import ANALYZER_DIMENSIONS, LEXICAL_MEASURES, NUM_LEXICAL_TAGS
from hybridpref.server.runtime import cpu_limit
from hybridpref.tagger.core import Tagger
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import PreferenceInstance, instance_from_row

DATASETS = ("mtbench_human_gpt4", "pandalm", "llmbar", "hh_rlhf")
STEM = {
    "Mathematics",
    "Statistics",
    "Physics",
    "Chemistry",
    "Life sciences",
    "Earth sciences",
    "Space sciences",
    "Computer sciences",
    "Logic",
    "Chemical engineering",
    "Civil engineering",
    "Electrical engineering",
    "Mechanical engineering",
    "Materials science and engineering",
    "Medicine and health",
    "Environmental studies and forestry",
}
HUMANITIES = {
    "Anthropology",
    "Economics",
    "Geography",
    "History",
    "Linguistics and language",
    "Literature",
    "Performing arts",
    "Philosophy",
    "Political science",
    "Psychology",
    "Religion",
    "Sociology",
    "Visual arts",
    "Law",
    "Business",
    "Education",
    "Divinity",
    "Public policy",
    "Public administration",
    "Journalism, media studies and communication",
    "Social work",
    "Library and museum studies",
    "Military sciences",
}
# MT-Bench category -> (primary subject, acceptable set); only categories with a subject meaning.
CATEGORY_MAP = {
    "math": ("Mathematics", {"Mathematics", "Statistics"}),
    "coding": ("Computer sciences", {"Computer sciences"}),
    "stem": (None, STEM),
    "humanities": (None, HUMANITIES),
    "reasoning": (None, {"Logic", "Mathematics"}),
}


def data_dir() -> Path:
    return Path(os.environ.get("HYBRIDPREF_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load(name: str) -> list[PreferenceInstance]:
    out = []
    with open(data_dir() / name / "pairs.jsonl", encoding="utf-8") as fh:
        for k, line in enumerate(fh):
            try:
                out.append(instance_from_row(json.loads(line), where=f"{name}:{k}"))
            except InvalidInput:
                continue  # e.g. the 5 HH rows without a prompt
    return [x for x in out if x.response_a.strip() and x.response_b.strip() and x.prompt_text.strip()]


def sample(n: int, seed: int) -> list[PreferenceInstance]:
    rng = np.random.default_rng(seed)
    per = n // len(DATASETS)
    picked: list[PreferenceInstance] = []
    for k, name in enumerate(DATASETS):
        rows = load(name)
        take = per if k < len(DATASETS) - 1 else n - len(picked)
        picked += [rows[i] for i in rng.choice(len(rows), size=min(take, len(rows)), replace=False)]
    return picked


def run_profile(profile: str, insts: list[PreferenceInstance], chunk: int):
    tagger = Tagger.for_profile(profile)
    t0 = time.perf_counter()
    tagger.load()
    load_s = time.perf_counter() - t0
    # count only the tagging's cache traffic (load embeds the analyzer's option prototypes)
    for cache in (tagger.encoder.cache, *((tagger._prompt_encoder.cache,) if tagger._prompt_encoder else ())):
        cache.hits = cache.misses = 0
    stages: Counter[str] = Counter()
    parts = []
    t0 = time.perf_counter()
    for i in range(0, len(insts), chunk):
        b = tagger.tag(insts[i : i + chunk])
        stages.update(b.timings)
        parts.append(b)
    wall = time.perf_counter() - t0
    tags = np.vstack([p.tag_matrix for p in parts])
    measures = np.vstack([p.measures for p in parts])
    analyzer = [a for p in parts for a in p.analyzer]
    truncated = sum(t for p in parts for t in p.truncated)
    return tagger, dict(
        load_s=load_s, wall=wall, stages=stages, tags=tags, measures=measures, analyzer=analyzer, truncated=truncated
    )


def encoder_floor(tagger: Tagger, insts: list[PreferenceInstance], seed: int, k: int = 64) -> tuple[float, float]:
    """Pure encoder seconds per instance, cold, on ``k`` sampled instances: (responses, prompt).

    Same batching and windows as the tagger (responses at ``window``, the analyzer's prompt
    view at ``analyzer_window`` for MiniLM); no cache, no other stage.
    """
    from hybridpref.tagger.text import prepare

    rng = np.random.default_rng(seed)
    sample_ = [prepare(insts[i]) for i in rng.choice(len(insts), size=min(k, len(insts)), replace=False)]
    enc = type(tagger.encoder)(window=tagger.encoder.window, cache_entries=0)  # type: ignore[call-arg]
    enc.load()
    t0 = time.perf_counter()
    enc.encode([t for p in sample_ for t in (p.response_a, p.response_b)])
    resp_s = (time.perf_counter() - t0) / len(sample_)
    penc = enc.with_window(tagger.analyzer_window) if hasattr(enc, "with_window") else enc
    t0 = time.perf_counter()
    penc.encode([p.analyzer_text for p in sample_])
    return resp_s, (time.perf_counter() - t0) / len(sample_)


def report_profile(profile: str, res: dict, tagger: Tagger, insts: list[PreferenceInstance], seed: int) -> None:
    n = len(insts)
    rate = n / res["wall"]
    total = sum(res["stages"].values())
    print(f"\n## profile {profile}: {rate:.1f} instances/s ({n} instances in {res['wall']:.1f} s; load {res['load_s']:.1f} s)")
    print("stage shares: " + ", ".join(f"{k} {100 * v / total:.0f}% ({v:.1f} s)" for k, v in res["stages"].most_common()))
    c = tagger.encoder.cache  # responses (and prompts when there is no separate prompt encoder)
    pc = tagger._prompt_encoder.cache if tagger._prompt_encoder is not None else None
    if pc is not None:  # share of texts really encoded (the rest were cache hits)
        resp_frac, prompt_frac = c.misses / (2 * n), pc.misses / n
    else:  # one encoder for responses and prompts
        resp_frac = prompt_frac = c.misses / (3 * n)
    print(
        f"encoder cache: {'responses' if pc is not None else 'all texts'} {c.hits} hits / {c.misses} encoded"
        + (f"; prompts {pc.hits} hits / {pc.misses} encoded" if pc is not None else "")
        + f"; truncated instances: {res['truncated']}/{n}"
    )
    resp_s, prompt_s = encoder_floor(tagger, insts, seed)
    floor_s = resp_s * resp_frac + prompt_s * prompt_frac
    ceiling = 1.0 / floor_s
    print(
        f"encoder floor (cold, same windows, 64 sampled instances): {resp_s * 1000:.2f} ms/instance for both responses"
        + f" + {prompt_s * 1000:.2f} ms for the prompt"
        + f" = {2 / resp_s:.1f} response texts/s; with this run's cache hits -> encoder-only ceiling {ceiling:.1f} instances/s; "
        f"achieved {rate:.1f} = {100 * rate / ceiling:.0f}% of it"
    )


def agreement(a: dict, b: dict) -> None:
    ta, tb = a["tags"], b["tags"]
    lex = (ta[:, :NUM_LEXICAL_TAGS] == tb[:, :NUM_LEXICAL_TAGS]).reshape(len(ta), len(LEXICAL_MEASURES), 3).all(-1).mean(0)
    print(
        "\n## fast vs default agreement (same bin, per measure): "
        + ", ".join(f"{m} {100 * v:.0f}%" for m, v in zip(LEXICAL_MEASURES, lex))
    )
    dims = {d: np.mean([x[d] == y[d] for x, y in zip(a["analyzer"], b["analyzer"])]) for d in ANALYZER_DIMENSIONS}
    print("analyzer answers equal: " + ", ".join(f"{d} {100 * v:.0f}%" for d, v in dims.items()))
    print(
        f"all 90 bits equal per instance-tag: {100 * (ta == tb).mean():.1f}%; whole vector equal: {100 * (ta == tb).all(1).mean():.1f}%"
    )
    for j, m in enumerate(LEXICAL_MEASURES[:5]):
        r = np.corrcoef(a["measures"][:, j], b["measures"][:, j])[0, 1]
        print(f"  raw {m}: Pearson r fast~default {r:.2f}")


def mtbench_agreement(seed: int, lm_prompts: int) -> None:
    with open(data_dir() / "mtbench_human_gpt4" / "pairs.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    prompts: dict[str, str] = {}
    for r in rows:
        if r.get("turn") == 1 and r.get("category") in CATEGORY_MAP:
            prompts.setdefault(r["prompt"], r["category"])
    items = list(prompts.items())
    print(f"\n## subject_of_expertise vs MT-Bench category ({len(items)} distinct turn-1 prompts with a subject meaning)")
    backends = {
        "embedding/minilm (default)": Tagger.for_profile("default"),
        "embedding/wordllama (fast)": Tagger.for_profile("fast"),
    }
    for name, tagger in backends.items():
        tagger.load()
        t0 = time.perf_counter()
        answers = tagger.analyzer.analyze([p for p, _ in items], [True] * len(items))
        dt = time.perf_counter() - t0
        print(f"{name}: {len(items) / dt:.0f} prompts/s")
        _score(items, answers)
    if lm_prompts > 0:
        from hybridpref.tagger.analyzer import LMAnalyzer

        rng = np.random.default_rng(seed)
        pick = [items[i] for i in rng.choice(len(items), size=min(lm_prompts, len(items)), replace=False)]
        lm = LMAnalyzer(dimensions=("subject_of_expertise",))
        t0 = time.perf_counter()
        lm.load()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        answers = lm.analyze([p for p, _ in pick], [True] * len(pick))
        dt = time.perf_counter() - t0
        print(
            f"lm/SmolLM2-135M (subject only): {dt / len(pick):.1f} s/prompt for 1 of 8 dimensions (load {load_s:.0f} s); {len(pick)} prompts"
        )
        _score(pick, answers)
        full = LMAnalyzer()
        full._tok, full._model, full._option_ids = lm._tok, lm._model, lm._option_ids
        t0 = time.perf_counter()
        full.analyze([pick[0][0]], [True])
        print(f"lm/SmolLM2-135M all 8 dimensions: {time.perf_counter() - t0:.1f} s/prompt")


def _score(items, answers) -> None:
    per: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for (_, cat), ans in zip(items, answers):
        primary, ok = CATEGORY_MAP[cat]
        got = ans["subject_of_expertise"].split("|")
        top1 = got[0] == primary if primary else got[0] in ok
        anyhit = any(g in ok for g in got)
        per[cat].append((top1, anyhit))
    cells = []
    for cat, v in per.items():
        arr = np.asarray(v)
        cells.append(f"{cat} top1 {100 * arr[:, 0].mean():.0f}% any {100 * arr[:, 1].mean():.0f}% (n={len(v)})")
    allv = np.asarray([x for v in per.values() for x in v])
    print("  " + "; ".join(cells) + f"; overall top1 {100 * allv[:, 0].mean():.0f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description="tagger benchmark")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--lm-prompts", type=int, default=4)
    args = ap.parse_args()
    print(f"# tagger benchmark: {time.strftime('%Y-%m-%d %H:%M:%S')}; cpu_limit={cpu_limit()}; load avg {os.getloadavg()}")
    insts = sample(args.n, args.seed)
    print(
        f"{len(insts)} instances: " + ", ".join(f"{k} {v}" for k, v in Counter(x.id.split("-")[0] for x in insts).most_common(6))
    )
    results = {}
    for profile in ("fast", "default"):
        tagger, res = run_profile(profile, insts, args.chunk)
        report_profile(profile, res, tagger, insts, args.seed)
        results[profile] = res
    agreement(results["fast"], results["default"])
    mtbench_agreement(args.seed, args.lm_prompts)
    print(f"\nload avg at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
