"""Learned judge benchmark on ../shared/data: speed (pairs/s, with and without MiniLM embeddings against
the MiniLM encoding floor in the same run) and leave-one-source-out agreement with human labels.

    .venv/bin/python benchmarks/bench_judge_learned.py --data-dir ../shared/data [--n 2000] [--skip-loso]

Speed: ``n`` real pairs (seeded sample over MT-Bench, PandaLM, LLMBar, HH-RLHF) judged by the packaged
learned judge through ``Judge.judge`` (features + onnxruntime), in batches of ``--batch``. "With
embeddings" adds what a MiniLM feature would cost: encoding the prompt and both responses with the
packaged all-MiniLM-L6-v2 (128 word-pieces, the tagger's window) plus the two cosines, next to the
encoding alone (the floor) timed right before, on the same texts.

Agreement: ``hybridpref judge train --no-export`` (the table in MODEL_CARD.md), i.e. leave one source
out with 95% group-bootstrap intervals, next to the length rule and the recorded LM judges.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from hybridpref.judge import features as F
from hybridpref.judge.core import Judge
from hybridpref.offline import judge_training as T
from hybridpref.server.runtime import cpu_limit
from hybridpref_client.core.instances import PreferenceInstance


def sample_pairs(ds: T.Dataset, n: int, seed: int) -> list[PreferenceInstance]:
    real = [i for i in range(len(ds)) if ds.evaluate[i] and ds.a[i].strip() and ds.b[i].strip()]
    rows = np.random.default_rng(seed).choice(real, size=min(n, len(real)), replace=False)
    return [PreferenceInstance(f"r{i}", ds.prompts[i] or "(no prompt)", ds.a[i], ds.b[i]) for i in rows]


def time_learned(pairs: list[PreferenceInstance], batch: int, reps: int) -> dict[str, float]:
    judge = Judge.from_config("learned")
    judge.load()
    judge.judge(pairs[:batch])  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for k in range(0, len(pairs), batch):
            judge.judge(pairs[k : k + batch])
        best = min(best, time.perf_counter() - t0)
    t0 = time.perf_counter()
    x = F.pair_features([p.prompt for p in pairs], [p.response_a for p in pairs], [p.response_b for p in pairs])
    feat_s = time.perf_counter() - t0
    backend = judge.backend
    t0 = time.perf_counter()
    backend._session.run(["p_a_better"], {"features": x.astype(np.float32)})  # noqa: SLF001 - model-only timing
    model_s = time.perf_counter() - t0
    return {"pairs_per_s": len(pairs) / best, "features_s": feat_s, "onnx_s": model_s, "total_s": best}


def time_with_embeddings(pairs: list[PreferenceInstance], batch: int, reps: int) -> dict[str, float]:
    """Floor: MiniLM encoding of every prompt and response. Full: the same encoding + two cosines per pair +
    the learned judge. Same texts and batches; floor and full alternate ``reps`` times, best of each (the
    shared machine's load moves between runs)."""
    from sentence_transformers import SentenceTransformer

    from hybridpref.server.runtime import configure_torch_threads, packaged_minilm_dir

    configure_torch_threads()
    model = SentenceTransformer(str(packaged_minilm_dir()), device="cpu")
    model.max_seq_length = 128
    judge = Judge.from_config("learned")
    judge.load()
    chunks = [pairs[k : k + batch] for k in range(0, len(pairs), batch)]

    def encode(chunk: list[PreferenceInstance]) -> np.ndarray:
        texts = [t for p in chunk for t in (p.prompt, p.response_a, p.response_b)]
        return model.encode(texts, batch_size=64, normalize_embeddings=True).reshape(len(chunk), 3, -1)

    def full(chunk: list[PreferenceInstance]) -> None:
        emb = encode(chunk)
        _ = np.einsum("nd,nd->n", emb[:, 0], emb[:, 1]) - np.einsum("nd,nd->n", emb[:, 0], emb[:, 2])
        judge.judge(chunk)

    encode(pairs[:20])  # warm-up
    floor_s = full_s = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for chunk in chunks:
            encode(chunk)
        floor_s = min(floor_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for chunk in chunks:
            full(chunk)
        full_s = min(full_s, time.perf_counter() - t0)
    return {"floor_pairs_per_s": len(pairs) / floor_s, "pairs_per_s": len(pairs) / full_s, "ratio": full_s / floor_s}


def main(argv: list[str] | None = None) -> None:
    from hybridpref.offline.pools import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=2000, help="pairs timed without embeddings")
    parser.add_argument("--n-embed", type=int, default=128, help="pairs timed with embeddings")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-embeddings", action="store_true")
    parser.add_argument("--skip-loso", action="store_true")
    args = parser.parse_args(argv)
    ds = T.load_dataset(args.data_dir or default_data_dir())
    pairs = sample_pairs(ds, args.n, args.seed)
    mean_chars = np.mean([len(p.prompt) + len(p.response_a) + len(p.response_b) for p in pairs])
    print(
        f"machine: {platform.node()} cpu_limit={cpu_limit()} load={os.getloadavg()[0]:.1f}; "
        f"{len(pairs)} pairs, mean {mean_chars:.0f} chars per pair, batch {args.batch}"
    )
    r = time_learned(pairs, args.batch, args.reps)
    print(
        f"learned judge, no embeddings: {r['pairs_per_s']:.0f} pairs/s (best of {args.reps}; "
        f"features {1000 * r['features_s'] / len(pairs):.2f} ms/pair, onnx {1000 * r['onnx_s']:.1f} ms for all)"
    )
    if not args.skip_embeddings:
        e = time_with_embeddings(pairs[: args.n_embed], args.batch, args.reps)
        print(
            f"with MiniLM embeddings: {e['pairs_per_s']:.1f} pairs/s; MiniLM encoding floor "
            f"{e['floor_pairs_per_s']:.1f} pairs/s (3 texts/pair); ratio {e['ratio']:.2f}x (target <= 1.2x)"
        )
    if not args.skip_loso:
        x = F.pair_features(ds.prompts, ds.a, ds.b)
        study = T.leave_one_source_out(ds, x, seed=args.seed)
        print(T.format_table(study["table"]))


if __name__ == "__main__":
    main()
