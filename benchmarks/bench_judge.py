"""Judge benchmark on ../shared/data: agreement with human labels, order inconsistency, pairs/s vs the
compute floor, for the embedded LM judge (SmolLM2). The learned judge (the default backend) has its
own: ``benchmarks/bench_judge_learned.py``.

    .venv/bin/python benchmarks/bench_judge.py [--n 100] [--seed 0] [--templates multipref,short]

Per dataset (mtbench_human_gpt4, pandalm, llmbar) it samples ``n`` rows with a non-tie human label
(seeded), judges them with the embedded SmolLM2-135M judge in BOTH orders, and reports:
  - agreement with the human winner: strict (the judge's TIE counts as a miss), the share the judge
    decided (non-TIE), and agreement on those; ``debiased``: the winner of the two orders' averaged
    option probabilities (position preference cancels; never a tie), a diagnostic, not the product label;
  - the share of order-inconsistent verdicts and the share of single-order verdicts naming the first slot;
  - the recorded LM judges (GPT-4 / GPT-3.5 / ...) on the same sample and on the whole dataset;
  - pairs/s at the data's real lengths and the compute floor: 2 x parameters x prompt tokens per
    order / this machine's matmul rate, measured in this run right before and after the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybridpref.judge import aggregate
from hybridpref.judge.core import Deadline, ScoreRequest
from hybridpref.judge.embedded import EmbeddedBackend
from hybridpref.judge.replay import ReplayBackend
from hybridpref.judge.templates import get_template
from hybridpref.server.runtime import cpu_limit
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance, instance_from_row

DATASETS = ("mtbench_human_gpt4", "pandalm", "llmbar")
RECORDED = {
    "mtbench_human_gpt4": ("gpt-4 (pair-v2, both orders)",),
    "pandalm": ("gpt-3.5-turbo", "pandalm-7b"),
    "llmbar": ("GPT-4/Vanilla_NoRules", "ChatGPT/Vanilla_NoRules", "LLaMA2/Vanilla_NoRules"),
}


def data_dir() -> Path:
    env = os.environ.get("HYBRIDPREF_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def load(name: str) -> list[PreferenceInstance]:
    """All rows of a dataset; non-string responses (6 PandaLM rows hold booleans) become strings."""
    out = []
    with open(data_dir() / name / "pairs.jsonl", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            row = json.loads(line)
            for key in ("response_a", "response_b"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    row[key] = json.dumps(row[key])
            if not row.get("prompt"):
                continue
            out.append(instance_from_row(row, where=f"{name}:{lineno}"))
    return out


def sample(rows: list[PreferenceInstance], n: int, seed: int) -> list[PreferenceInstance]:
    pool = [r for r in rows if r.human_label is not None and r.human_label.winner is not None]
    idx = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(idx)]


def matmul_rate(seconds: float = 1.5) -> float:
    """Best FLOP/s of fp32 (512 x 576) @ (576 x 1536) matmuls (SmolLM2's MLP shape) over ~``seconds``."""
    import torch

    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    flops = 2 * 512 * 576 * 1536
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * flops / (time.perf_counter() - t0))
    return best


def micro(backend: EmbeddedBackend, params: int, lengths: Sequence[int] = (256, 512, 1024), reps: int = 3) -> None:
    """Single forward passes (last-position logits only) at fixed lengths next to the floor at the matmul
    rate measured right before and after each length: the per-pass overhead without data effects."""
    import torch

    print("\n| tokens | best forward s | floor s (2 x params x tokens / rate) | ratio | matmul GFLOP/s |")
    print("|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for n in lengths:
        ids = torch.randint(100, 40000, (1, n), generator=gen)
        before = matmul_rate(1.0)
        best = float("inf")
        with torch.inference_mode():
            for _ in range(reps):
                t0 = time.perf_counter()
                backend._model(input_ids=ids, logits_to_keep=1)
                best = min(best, time.perf_counter() - t0)
        rate = (before + matmul_rate(1.0)) / 2
        floor = 2 * params * n / rate
        print(f"| {n} | {best:.3f} | {floor:.3f} | {best / floor:.2f} | {rate / 1e9:.0f} |", flush=True)


def agreement(labels: Sequence[Label | None], human: Sequence[Label]) -> dict[str, float]:
    """strict: judge winner == human winner over all; decided: share non-tie; on_decided: agreement there."""
    pairs = [(lab.winner if lab is not None else None, h.winner) for lab, h in zip(labels, human)]
    decided = [(j, h) for j, h in pairs if j is not None]
    return {
        "n": len(pairs),
        "strict": float(np.mean([j == h for j, h in pairs])) if pairs else float("nan"),
        "decided": len(decided) / len(pairs) if pairs else float("nan"),
        "on_decided": float(np.mean([j == h for j, h in decided])) if decided else float("nan"),
    }


def recorded(rows: list[PreferenceInstance], judge: str) -> tuple[list[Label], list[Label], float]:
    """Replay ``judge`` on the rows that carry its label: (labels, human labels, order-inconsistent share)."""
    backend = ReplayBackend(judge)
    labs, hum, flags = [], [], []
    tpl = get_template("multipref")
    for r in rows:
        try:
            (j,) = backend.judge([r], mode=PositionMode.BOTH, template=tpl, seed=0, replay_judge=None, deadline=Deadline(None))
        except InvalidInput:
            continue
        labs.append(j.label)
        hum.append(r.human_label)
        flags.append(j.order_inconsistent)
    return labs, hum, float(np.mean(flags)) if flags else float("nan")


def bench_dataset(
    backend: EmbeddedBackend, name: str, template: str, n: int, seed: int, params: int, chunk_pairs: int = 5
) -> dict:
    rows = load(name)
    picked = sample(rows, n, seed)
    tpl = get_template(template)
    requests = [ScoreRequest(r, sw) for r in picked for sw in (False, True)]
    ids = [backend.prompt_ids(q, tpl) for q in requests]
    order_tokens = [len(p) + len(s) for p, s in ids]
    computed = sum(len(s) for _, s in ids) + sum(len(p) for p in {tuple(p) for p, _ in ids})
    # Other jobs share this machine: re-measure the matmul rate between chunks of pairs and charge each
    # chunk's floor at the mean of the rates measured right before and after it.
    rates = [matmul_rate(0.5)]
    wall = floor_s = 0.0
    dists: list = []
    step = 2 * chunk_pairs
    for start in range(0, len(requests), step):
        t0 = time.perf_counter()
        dists += backend.score(requests[start : start + step], tpl, Deadline(None))
        wall += time.perf_counter() - t0
        rates.append(matmul_rate(0.5))
        floor_s += 2 * params * sum(order_tokens[start : start + step]) / ((rates[-2] + rates[-1]) / 2)
    outcomes, debiased, first_slot = [], [], []
    for k in range(len(picked)):
        ab = dists[2 * k]
        ba = aggregate.to_stored_order(dists[2 * k + 1], True)
        outcomes.append(aggregate.both(ab, ba))
        mean = (ab + ba) / 2
        a_mass, _, b_mass = aggregate.side_masses(mean)
        debiased.append(Label.A_BETTER if a_mass >= b_mass else Label.B_BETTER)
        first_slot += [aggregate.verdict(dists[2 * k]).winner == "A", aggregate.verdict(dists[2 * k + 1]).winner == "A"]
    human = [r.human_label for r in picked]
    result = {
        "dataset": name,
        "template": tpl.template_version,
        "n": len(picked),
        "embedded": agreement([o.label for o in outcomes], human),
        "embedded_debiased": agreement(debiased, human),
        "embedded_ab_only": agreement([aggregate.verdict(dists[2 * k]) for k in range(len(picked))], human),
        "inconsistent": float(np.mean([o.order_inconsistent for o in outcomes])),
        "first_slot_share": float(np.mean(first_slot)),
        "mean_confidence": float(np.mean([o.confidence for o in outcomes])),
        "tokens_per_order_mean": float(np.mean(order_tokens)),
        "tokens_computed_per_pair": computed / len(picked),
        "wall_s": wall,
        "pairs_per_s": len(picked) / wall,
        "matmul_gflops": [min(rates) / 1e9, float(np.median(rates)) / 1e9, max(rates) / 1e9],
        "floor_s": floor_s,
        "floor_pairs_per_s": len(picked) / floor_s,
        "wall_over_floor": wall / floor_s,
        "recorded": {},
    }
    for judge in RECORDED[name]:
        labs, hum, inc = recorded(picked, judge)
        full_labs, full_hum, full_inc = recorded([r for r in rows if r.human_label is not None and r.human_label.winner], judge)
        result["recorded"][judge] = {
            "sample": agreement(labs, hum),
            "sample_inconsistent": inc,
            "full": agreement(full_labs, full_hum),
            "full_inconsistent": full_inc,
        }
    return result


def report(results: list[dict]) -> None:
    print("\n| dataset | template | judge | n | strict agree | decided | agree on decided | order-inconsistent |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        e, d, ab = r["embedded"], r["embedded_debiased"], r["embedded_ab_only"]
        print(
            f"| {r['dataset']} | {r['template']} | embedded SmolLM2-135M, BOTH | {e['n']} | {e['strict']:.3f} | "
            f"{e['decided']:.2f} | {e['on_decided']:.3f} | {r['inconsistent']:.2f} |"
        )
        print(
            f"| | | embedded, AB order only | {ab['n']} | {ab['strict']:.3f} | {ab['decided']:.2f} | {ab['on_decided']:.3f} | - |"
        )
        print(f"| | | embedded, debiased mean (diagnostic) | {d['n']} | {d['strict']:.3f} | 1.00 | {d['strict']:.3f} | - |")
        for judge, rec in r["recorded"].items():
            s, f = rec["sample"], rec["full"]
            print(
                f"| | | recorded {judge} (sample / full) | {s['n']} / {f['n']} | {s['strict']:.3f} / {f['strict']:.3f} | "
                f"{s['decided']:.2f} / {f['decided']:.2f} | {s['on_decided']:.3f} / {f['on_decided']:.3f} | "
                f"{rec['sample_inconsistent']:.2f} / {rec['full_inconsistent']:.2f} |"
            )
    print(
        "\n| dataset | template | n | tokens/order | tokens computed/pair | pairs/s | floor pairs/s | wall/floor | matmul GFLOP/s (min, median, max) | first-slot share | mean conf |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        g = r["matmul_gflops"]
        print(
            f"| {r['dataset']} | {r['template']} | {r['n']} | {r['tokens_per_order_mean']:.0f} | {r['tokens_computed_per_pair']:.0f} | "
            f"{r['pairs_per_s']:.3f} | {r['floor_pairs_per_s']:.3f} | {r['wall_over_floor']:.2f} | {g[0]:.0f}, {g[1]:.0f}, {g[2]:.0f} | "
            f"{r['first_slot_share']:.2f} | {r['mean_confidence']:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="pairs per dataset (non-tie human label)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--templates", default="multipref")
    parser.add_argument("--max-prompt-tokens", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    parser.add_argument("--micro", action="store_true", help="only time single forward passes vs the floor")
    args = parser.parse_args(argv)
    print(
        f"# bench_judge  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  {platform.processor() or platform.machine()}  "
        f"cpu_limit={cpu_limit()}  n={args.n} seed={args.seed}  load average {os.getloadavg()[0]:.1f}"
    )
    backend = EmbeddedBackend(max_prompt_tokens=args.max_prompt_tokens)
    t0 = time.perf_counter()
    backend.load()
    params = sum(p.numel() for p in backend._model.parameters())
    print(f"model load {time.perf_counter() - t0:.1f} s; parameters {params / 1e6:.1f} M")
    if args.micro:
        micro(backend, params)
        return
    results = []
    for template in args.templates.split(","):
        for name in args.datasets.split(","):
            res = bench_dataset(backend, name, template, args.n, args.seed, params)
            results.append(res)
            print(
                f"{name} {res['template']}: {res['pairs_per_s']:.3f} pairs/s, wall/floor {res['wall_over_floor']:.2f}, "
                f"strict {res['embedded']['strict']:.3f}, inconsistent {res['inconsistent']:.2f}",
                flush=True,
            )
    print(f"finished {time.strftime('%H:%M:%S')}, load average {os.getloadavg()[0]:.1f}")
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
