"""Build the tagger's packaged reference files from ../shared/data (run once; output is committed).

* services/hybridpref/tagger/reference_bins.json: quantile grids of the 4 token-length
  measures over every instance of the 4 shared datasets (tiktoken cl100k_base).
* services/hybridpref/tagger/bertscore_baselines.json: BERTScore rescaling baseline per
  encoder = mean raw F1 of responses to *different* prompts (seeded random pairs), the
  same construction as bert-score's ``rescale_with_baseline``.

    .venv/bin/python scripts/build_reference_bins.py [--pairs 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from hybridpref.common.vocabulary import LEXICAL_MEASURES
from hybridpref.routing_model.bins import REFERENCE_FILE, ReferenceBins
from hybridpref.tagger import lexical
from hybridpref.tagger.text import TokenCounter, clean

DATASETS = ("mtbench_human_gpt4", "pandalm", "llmbar", "hh_rlhf")


def data_dir() -> Path:
    return Path(os.environ.get("HYBRIDPREF_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load_rows() -> list[dict]:
    rows = []
    for name in DATASETS:
        with open(data_dir() / name / "pairs.jsonl", encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    ok = lambda v: isinstance(v, str) and v.strip() != ""  # noqa: E731
    return [r for r in rows if ok(r.get("prompt")) and ok(r.get("response_a")) and ok(r.get("response_b"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = load_rows()
    counter = TokenCounter()
    lens = np.asarray(
        counter.count([clean(x)[0] for r in rows for x in (r["prompt"], r["response_a"], r["response_b"])])
    ).reshape(-1, 3)
    m = np.full((len(rows), len(LEXICAL_MEASURES)), np.nan)
    col = {k: j for j, k in enumerate(LEXICAL_MEASURES)}
    m[:, col["prompt_len"]] = lens[:, 0]
    m[:, col["len_shorter"]] = lens[:, 1:].min(1)
    m[:, col["len_longer"]] = lens[:, 1:].max(1)
    m[:, col["token_len_diff"]] = np.abs(lens[:, 1] - lens[:, 2])
    bins = ReferenceBins.fit(m, source=f"shared/data {'+'.join(DATASETS)} ({len(rows)} instances), tiktoken cl100k_base")
    REFERENCE_FILE.write_text(bins.to_json() + "\n")
    print(f"wrote {REFERENCE_FILE} from {len(rows)} instances")
    for k, g in bins.grids.items():
        print(
            f"  {k}: 1/3 edge ~ {np.quantile(m[:, col[k]], 1 / 3):.0f}, 2/3 edge ~ {np.quantile(m[:, col[k]], 2 / 3):.0f}, max {g[-1]:.0f}"
        )

    rng = np.random.default_rng(args.seed)
    i = rng.integers(0, len(rows), args.pairs)
    j = rng.integers(0, len(rows), args.pairs)
    keep = [(a, b) for a, b in zip(i, j) if rows[a]["prompt"] != rows[b]["prompt"]]
    baselines = {}
    for enc in (lexical.MiniLMEncoder(), lexical.StaticEncoder()):
        enc.load()
        ea = enc.encode([clean(rows[a]["response_a"])[0] for a, _ in keep])
        eb = enc.encode([clean(rows[b]["response_b"])[0] for _, b in keep])
        f = [lexical.bertscore_f1(x.tokens, y.tokens) for x, y in zip(ea, eb)]
        baselines[enc.name] = round(float(np.nanmean(f)), 4)
        print(f"  baseline {enc.name} (window {enc.window}): {baselines[enc.name]} over {len(keep)} cross-prompt pairs")
    lexical.BASELINES_FILE.write_text(
        json.dumps(
            {
                "baselines": baselines,
                "how": f"mean raw BERTScore F1 of {len(keep)} seeded (seed {args.seed}) cross-prompt response pairs from shared/data; "
                "encoder windows: minilm 128 word-pieces, wordllama 256 tokens",
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {lexical.BASELINES_FILE}")


if __name__ == "__main__":
    main()
