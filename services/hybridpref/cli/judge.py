"""``hybridpref judge``: offline tools for the judge.

    hybridpref judge train [--data-dir D] --out DIR [--reps N] [--c C ...]
    hybridpref judge train [--data-dir D] --no-export          # the study only

``train`` studies the learned judge leave-one-source-out on the shared pools (the table goes to stdout),
then trains it on every fold and writes the model, its spec and its card into ``--out``; the judge
service uses it with ``HYBRIDPREF_JUDGE_MODEL_PATH=DIR/learned_judge.json``. To replace the model that
ships with the package (a release step), name the package folder: ``--out services/hybridpref/judge``.
See :mod:`hybridpref.offline.judge_training`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hybridpref.cli import plain


def register(subparsers: argparse._SubParsersAction) -> None:
    judge = subparsers.add_parser(
        "judge", help="judge tools (offline)", description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    tools = judge.add_subparsers(dest="judge_command", required=True, metavar="TOOL")
    train = tools.add_parser(
        "train",
        help="train, evaluate and export the learned judge",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default ../shared/data)")
    train.add_argument(
        "--out", type=Path, default=None, help="folder for the model, its spec and card (required unless --no-export)"
    )
    train.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    train.add_argument("--reps", type=int, default=1000, help="bootstrap resamples")
    train.add_argument("--no-export", action="store_true", help="only print the leave-one-source-out table")
    train.add_argument("--synthetic-empty", type=int, default=60, help="blank-response training pairs per fold")
    train.add_argument(
        "--c",
        type=float,
        action="append",
        default=None,
        help="L2 strength(s) to choose from (repeatable; default: judge_training.C_GRID)",
    )
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from hybridpref.offline import judge_training as T
    from hybridpref.offline.pools import default_data_dir
    from hybridpref_client.core.errors import FieldViolation, InvalidInput

    if args.out is None and not args.no_export:
        # Until 2026-12-06 it wrote into the installed judge package: a pip install's model silently replaced.
        raise InvalidInput(FieldViolation("--out", "required: the folder to write the model to (or --no-export)"))
    out = args.out or T.PACKAGE_DIR  # --no-export writes nothing
    run = T.train(
        args.data_dir or default_data_dir(),
        out,
        seed=args.seed,
        reps=args.reps,
        export_model=not args.no_export,
        synthetic_empty=args.synthetic_empty,
        grid=tuple(args.c or T.C_GRID),
        say=lambda line: print(line, file=sys.stderr),
    )
    print(T.format_table(run.study["table"]))
    print(json.dumps(run.study["per_fold"]), file=sys.stderr)
    if run.spec is not None:
        spec = run.spec
        print(
            f"wrote {out / T.MODEL_FILE} (C={spec['C']}, T={spec['temperature']:.3f}, sha256 {spec['model_sha256'][:12]}); "
            f"serve it with HYBRIDPREF_JUDGE_MODEL_PATH={out / T.SPEC_FILE}",
            file=sys.stderr,
        )
    return 0
