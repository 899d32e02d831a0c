"""``hybridpref evaluate``: route pools with every strategy at every budget and score the routed labels.

    hybridpref evaluate --pool DIR_OR_pairs.jsonl [--pool ...] [--lm-judge KEY] [--bundle DIR] [--bundle-for POOL=DIR ...]
        --budgets 0.1,0.25,0.5 [--strategies a,b,...] --seeds 10 --mode in-pool|cross-pool|both
        --out DIR [--tagger-profile fast|default] [--data-dir DIR] [--no-rm]

Writes ``results.csv``, ``REPORT.md``, ``summary.json`` and ``plots/*.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hybridpref.cli import plain
from hybridpref_client.core.errors import FieldViolation, InvalidInput

if TYPE_CHECKING:
    from hybridpref.offline.evaluation.harness import EvalConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate routing strategies on labelled pools",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--pool", action="append", required=True, help="pairs.jsonl (or its folder) with human and LM labels; repeat for several"
    )
    p.add_argument(
        "--lm-judge",
        "--judge",
        action="append",
        default=[],
        metavar="[POOL=]JUDGE",
        help="recorded judge key for every pool, or POOL=JUDGE per pool (default: the rule predictor build "
        "follows too: the shared pools' default judge, else the judge that labelled the most pairs; "
        "printed per pool)",
    )
    p.add_argument(
        "--bundle", default=None, help="predictor bundle for the PPM strategies (refused when it has seen a pool's labels)"
    )
    p.add_argument(
        "--bundle-for",
        action="append",
        default=[],
        metavar="POOL=DIR",
        help="use this bundle for that pool instead of --bundle (e.g. a leave-one-pool-out bundle that never saw it); repeatable",
    )
    p.add_argument("--budgets", default="0.1,0.25,0.5", help="human budgets as fractions, comma separated")
    p.add_argument(
        "--strategies",
        default=None,
        help="comma separated (default: every strategy the router serves, and oracle); all_human, all_lm, random, "
        "oracle, judge_doubt always run",
    )
    p.add_argument("--seeds", type=int, default=10, help="random baseline seeds")
    p.add_argument(
        "--mode",
        default="in-pool",
        choices=("in-pool", "cross-pool", "both"),
        help="in-pool: folds within each pool; cross-pool: fit on the other pools (what a new vendor gets)",
    )
    p.add_argument("--folds", type=int, default=3, help="prompt-group folds")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment (by prompt group)")
    p.add_argument("--out", required=True, help="folder for REPORT.md, results.csv, summary.json and plots")
    p.add_argument("--tagger-profile", default=None, choices=("fast", "default"), help="default: the bundle's build profile")
    p.add_argument(
        "--tagger",
        default=None,
        metavar="ADDRESS",
        help="tag through a running tagger service (its replicas share the work) instead of in process",
    )
    p.add_argument("--data-dir", default=None, help="shared data folder (default ../shared/data or HYBRIDPREF_DATA_DIR)")
    p.add_argument("--no-rm", action="store_true", help="skip metric 2 (reward-model accuracy; minutes on CPU)")
    p.add_argument("--rm-random-seeds", type=int, default=3, help="random mixes per budget trained for metric 2 (reward models)")
    p.add_argument("--rm-proxy-seeds", type=int, default=1, help="reward models trained per routed mix for metric 2")
    p.add_argument("--prediction-mixes", type=int, default=100, help="random mixes per pool to score the PPM's predictions on")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples behind every interval")
    p.add_argument(
        "--on-leak",
        default="error",
        choices=("error", "skip"),
        help="skip: drop the bundle's strategies on a leaking pool instead of failing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and CI)")
    p.add_argument(
        "--correction-model",
        default="panel",
        choices=("panel", "onnx"),
        help="what expected_gain / hybrid read: the panel-invariant model (the default bundle's) or correction.onnx",
    )
    p.set_defaults(func=run)


def parse_budgets(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise InvalidInput(FieldViolation("--budgets", f"cannot read {text!r}; use e.g. 0.1,0.25,0.5")) from None


def parse_bundle_for(items: Sequence[str]) -> dict[str, str]:
    """``POOL=DIR`` values -> {pool: dir}; a pool named twice or a value without ``=`` is refused."""
    out: dict[str, str] = {}
    for item in items:
        pool, sep, folder = item.partition("=")
        if not sep or not pool.strip() or not folder.strip():
            raise InvalidInput(FieldViolation("--bundle-for", f"{item!r}: expected POOL=DIR"))
        if pool in out:
            raise InvalidInput(FieldViolation("--bundle-for", f"pool {pool!r} given twice"))
        if not Path(folder).is_dir():
            raise InvalidInput(FieldViolation("--bundle-for", f"{item!r}: no bundle folder at {folder}"))
        out[pool.strip()] = folder
    return out


def _judges(pools: list[str], items: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--lm-judge`` values -> (the judge for every pool, {pool name: judge}); a pool's name is its
    folder's name (or the file's stem), as in the report."""
    names = {
        (Path(p).name if Path(p).suffix != ".jsonl" else (Path(p).parent.name if Path(p).name == "pairs.jsonl" else Path(p).stem))
        for p in pools
    }
    single, per_pool = None, {}
    for item in items:
        head, sep, tail = item.partition("=")
        if sep and head in names:
            per_pool[head] = tail
        elif single is None:
            single = item
        else:
            raise InvalidInput(
                FieldViolation("--lm-judge", f"{item!r}: give one JUDGE, or POOL=JUDGE per pool ({sorted(names)})")
            )
    return single, per_pool


def config_from_args(a: argparse.Namespace) -> EvalConfig:
    from hybridpref.offline.evaluation.harness import DEFAULT_STRATEGIES, EvalConfig

    strategies = DEFAULT_STRATEGIES if a.strategies is None else tuple(s.strip() for s in a.strategies.split(",") if s.strip())
    single, per_pool = _judges(a.pool, a.lm_judge)
    return EvalConfig(
        pools=a.pool,
        out=a.out,
        lm_judge=single,
        lm_judges=per_pool,
        bundle=a.bundle,
        bundle_for=parse_bundle_for(a.bundle_for),
        budgets=parse_budgets(a.budgets),
        strategies=strategies,
        seeds=a.seeds,
        modes=("in-pool", "cross-pool") if a.mode == "both" else (a.mode,),
        folds=a.folds,
        split_seed=a.split_seed,
        tagger_profile=a.tagger_profile,
        n_boot=a.n_boot,
        rm=not a.no_rm,
        rm_random_seeds=a.rm_random_seeds,
        rm_proxy_seeds=a.rm_proxy_seeds,
        prediction_mixes=a.prediction_mixes,
        on_leak=a.on_leak,
        data_dir=a.data_dir,
        tagger_address=a.tagger,
        correction=a.correction_model,
    )


def run(a: argparse.Namespace) -> int:
    """Evaluate and write the report; ``InvalidInput`` (bad flags, leakage) propagates for ``main`` to print."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hybridpref.offline.evaluation.harness import evaluate
    from hybridpref.offline.evaluation.report import write_all
    from hybridpref.server.runtime import configure_torch_threads

    config = config_from_args(a)
    configure_torch_threads()
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f} steps"),
        TimeElapsedColumn(),
        disable=a.no_progress,
        transient=False,
    ) as bar:
        task = bar.add_task("evaluating", total=None)
        result = evaluate(config, progress=lambda desc, n: bar.update(task, description=desc[:70], advance=n))
    paths = write_all(result, Path(a.out))
    print(f"evaluated in {time.perf_counter() - t0:.1f} s -> {paths['report']}")
    for r in result.rows:
        if r["metric"] == "label_accuracy" and r["strategy"] == "oracle" and r["budget"] == 0.25:
            print(
                f"  {r['pool']:20s} {r['mode']:10s} oracle - random @0.25: {100 * r['diff_random']:+.1f} "
                f"[{100 * r['diff_random_low']:+.1f}, {100 * r['diff_random_high']:+.1f}] points"
            )
    for n in result.notes:
        print(f"  note: {n}")
    return 0
