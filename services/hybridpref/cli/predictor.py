"""``hybridpref predictor``: offline tools that make the predictor's model bundle.

    hybridpref predictor build --pool [NAME=]POOL.jsonl [--pool ...] [--gold SPEC ...] --candidates N --seed S \\
        --out DIR [--lopo-out DIR] [--tagger ADDRESS]
    hybridpref predictor add-routing-models --bundle DIR --pool NAME=PATH [--pool ...] \\
        [--ppm-pool NAME ...] [--ppm-spearman NAME=VALUE ...] [--seed S]

``build`` runs :func:`hybridpref.offline.bundle.builder.build_bundle` (its docstring lists the steps);
``add-routing-models`` runs :func:`hybridpref.offline.bundle.routing_build.add_routing_models`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hybridpref.cli import plain
from hybridpref_client.core.errors import FieldViolation, InvalidInput

if TYPE_CHECKING:
    from hybridpref.offline.bundle.builder import BuildResult


def register(subparsers: argparse._SubParsersAction) -> None:
    predictor = subparsers.add_parser(
        "predictor",
        help="build the predictor's model bundle (offline)",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tools = predictor.add_subparsers(dest="predictor_command", required=True, metavar="TOOL")

    p = tools.add_parser(
        "build",
        help="build a model bundle from labelled pools",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--pool",
        action="append",
        required=True,
        help="[NAME=]PATH of a pairs.jsonl (or its folder) with human_label and lm_labels; repeat for several pools",
    )
    p.add_argument(
        "--gold", action="append", default=[], help="diagnostic gold set: [NAME=]PATH[#source~TEXT][#unanimous][#max=N]"
    )
    p.add_argument("--candidates", type=int, default=1000, help="candidate mixes simulated per pool")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of every random choice in the build (same input + seed = same bundle)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train / held-out split of each pool")
    p.add_argument("--out", required=True, help="folder to write the bundle to")
    p.add_argument(
        "--lopo-out",
        default=None,
        metavar="DIR",
        help="also write DIR/without-<pool>/: per pool, a bundle fitted on the other pools only (for cross-pool evaluation)",
    )
    p.add_argument(
        "--holdout-fraction", type=float, default=0.2, help="share of each pool's prompt groups held out to score the PPM"
    )
    p.add_argument("--group-key", default="question_id", help="prompt-group field (rows without it group by prompt text)")
    p.add_argument(
        "--lm-judge",
        "--judge",
        action="append",
        default=[],
        metavar="[POOL=]JUDGE",
        help="key in lm_labels; POOL=JUDGE with several pools (default: the rule evaluate follows too: the "
        "shared pools' default judge, else the judge that labelled the most pairs; printed per pool)",
    )
    p.add_argument(
        "--tagger-profile",
        default="default",
        choices=("default", "fast"),
        help="tagger profile the bundle is built (and must be served) with; fast: lexical features only",
    )
    p.add_argument(
        "--tagger",
        default=None,
        metavar="ADDRESS",
        help="tag through a running tagger service (e.g. dns:///hybridpref-tagger:50051, spread over its "
        "replicas) instead of loading the tagger models here; TLS from HYBRIDPREF_TLS_* settings",
    )
    p.add_argument("--tagger-concurrency", type=int, default=8, help="with --tagger: tag calls in flight at once")
    p.add_argument("--folds", type=int, default=10, help="cross-validation folds for the PPM fit")
    p.add_argument("--proxy-seeds", type=int, default=3, help="proxy reward models trained per simulated mix (averaged)")
    p.add_argument("--proxy-steps", type=int, default=120, help="training steps of each proxy reward model")
    p.add_argument("--proxy-hidden", type=int, default=32, help="hidden units of the proxy reward model")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs and CI)")
    p.set_defaults(func=run_build)

    r = tools.add_parser(
        "add-routing-models",
        help="add the expected-correction model and domain to a bundle",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("--bundle", required=True, type=Path, help="the bundle folder to add the models to (written in place)")
    r.add_argument("--pool", action="append", required=True, help="NAME=PATH of a pool with human and LM labels")
    r.add_argument("--ppm-pool", action="append", default=[], help="pool the PPM was trained on (default: the first --pool)")
    r.add_argument("--ppm-spearman", action="append", default=[], help="NAME=VALUE measured on a held-out pool")
    r.add_argument("--seed", type=int, default=0, help="seed of every random choice in the fits")
    r.add_argument(
        "--lm-judge",
        "--judge",
        action="append",
        default=[],
        metavar="[POOL=]JUDGE",
        help="key in lm_labels; POOL=JUDGE per pool (default: the rule of predictor build and evaluate; printed)",
    )
    r.add_argument(
        "--ppm-spearman-source", default="", help="where the --ppm-spearman values were measured (recorded in domain.json)"
    )
    r.set_defaults(func=run_add_routing_models)


def judges_from_args(pools: Sequence[str], items: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    """``--lm-judge`` values -> (judge for the only pool, {pool: judge}); POOL=JUDGE only names a known pool."""
    from hybridpref.offline.bundle.simulate import pool_name

    names = {pool_name(p) for p in pools}
    single, per_pool = None, {}
    for item in items:
        head, sep, tail = item.partition("=")
        if sep and head in names:
            per_pool[head] = tail
        elif single is None:
            single = item
        else:
            raise InvalidInput(FieldViolation("lm_judge", f"{item!r}: give one JUDGE, or POOL=JUDGE per pool ({sorted(names)})"))
    return single, per_pool


def run_build(a: argparse.Namespace) -> int:
    from hybridpref.offline.bundle import builder
    from hybridpref.server.runtime import configure_torch_threads

    judge, judges = judges_from_args(a.pool, a.lm_judge)
    config = builder.BuildConfig(
        pool=a.pool[0] if len(a.pool) == 1 else list(a.pool),
        out=a.out,
        gold=a.gold,
        candidates=a.candidates,
        seed=a.seed,
        split_seed=a.split_seed,
        holdout_fraction=a.holdout_fraction,
        group_key=a.group_key,
        lm_judge=judge,
        lm_judges=judges,
        tagger_profile=a.tagger_profile,
        folds=a.folds,
        proxy_hidden=a.proxy_hidden,
        proxy_steps=a.proxy_steps,
        proxy_seeds=a.proxy_seeds,
        lopo_out=a.lopo_out,
    )
    configure_torch_threads()
    tag_fn, bins_json = None, None
    if a.tagger:
        from hybridpref.tagger.client import remote_tag_fn

        tag_fn, bins_json = remote_tag_fn(a.tagger, a.tagger_profile, concurrency=a.tagger_concurrency)
    _print_build(builder.build_bundle(config, tag_fn=tag_fn, reference_bins_json=bins_json, progress=not a.no_progress))
    return 0


def _print_build(result: BuildResult) -> None:
    m = result.metrics
    print(f"bundle {result.bundle_version} -> {result.bundle_path}")
    for name, v in m["variants"].items():
        print(f"  {name:10s} CV Spearman {v['cv_spearman']:.3f}  RMSE {v['cv_rmse']:.4f}")
    for name, e in m["leave_one_pool_out"].get("pools", {}).items():
        print(
            f"  without {name:20s} Spearman {e['spearman']:+.3f}  partial (given share) {e['partial_spearman_given_share']:+.3f}"
            f"  RMSE {e['rmse_centred']:.4f}  -> {result.lopo_versions.get(name, '')}"
        )
    cached = ", ".join(f"{k}: {'cached' if v else 'simulated'}" for k, v in result.cache_hits.items())
    print(f"  served: {m['chosen_variant']}; pools {cached}; total {result.timings['total_s']:.0f} s")


def run_add_routing_models(a: argparse.Namespace) -> int:
    from hybridpref.offline.bundle.routing_build import add_routing_models, ppm_domain_args
    from hybridpref.routing_model import bundle as bundle_io

    pools = {}
    for item in a.pool:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InvalidInput(FieldViolation("--pool", f"{item!r}: expected NAME=PATH"))
        pools[name] = path
    ppm_pools, spearman = ppm_domain_args(a.bundle, list(pools), a.ppm_pool, a.ppm_spearman)
    single, per_pool = judges_from_args(a.pool, a.lm_judge)
    judges = {name: per_pool.get(name) or single for name in pools}
    manifest = add_routing_models(
        a.bundle,
        {k: Path(v) for k, v in pools.items()},
        ppm_pools,
        spearman,
        a.seed,
        a.ppm_spearman_source,
        judges={k: v for k, v in judges.items() if v},
    )
    lopo = bundle_io.read_json(a.bundle, "correction.json").get("leave_one_pool_out")
    if lopo:
        print(
            f"bundle {manifest['bundle_version']}: correction LOPO min AUROC {lopo['min_auroc']:.3f}, max ECE {lopo['max_ece']:.3f}"
        )
    else:  # a leave-one-pool-out bundle of a two-pool study gets the other pool alone
        print(
            f"bundle {manifest['bundle_version']}: correction model fitted on one pool: no leave-one-pool-out metrics "
            "(they need two or more --pool), and its probabilities are not calibrated across pools"
        )
    return 0
