"""The ``hybridpref`` command line: :mod:`hybridpref.cli.main` assembles the parser and dispatches; one
module per command (``serve``/``up``, ``route``, ``keys``, ``evaluate``, ``predictor``, ``judge``), plus
:mod:`hybridpref.cli.stack` (starting the services, for ``up``, ``route`` and tests).

Adding a command (``campaign``, ``labels``, ``annotate``, ``store``, ...):

1. write ``hybridpref/cli/<command>.py``::

       \"\"\"``hybridpref campaign``: what it does, one line.\"\"\"

       def register(subparsers: argparse._SubParsersAction) -> None:
           parser = subparsers.add_parser("campaign", help="one line for `hybridpref --help`",
                                          description=plain(__doc__))
           parser.add_argument("--name", required=True)
           parser.set_defaults(func=run)        # sub-commands: add_subparsers(), a func on each

       def run(args: argparse.Namespace) -> int:
           from hybridpref.store import ...     # heavy imports here, not at module level
           ...
           return 0                             # the exit code

2. add the module to ``COMMANDS`` in :mod:`hybridpref.cli.main`.

The rules: the argparse definitions live in the command's module (the library it drives, in
``offline/``, ``store/``, ..., exposes plain functions and never parses arguments); nothing heavy is
imported at module level, so ``hybridpref --help`` stays fast; a user mistake raises ``InvalidInput``,
which ``main`` prints as ``error: FIELD: ...`` with exit code 2, never a traceback; and
``hybridpref <command> --help`` works for every command and explains every option (tests/cli/test_cli.py
walks them all). :func:`plain` turns a module docstring's reST markup into the text ``--help`` shows.
"""

import re

_ROLE = re.compile(r":(?:func|mod|class|meth|data|attr):`~?([^`]+)`")


def plain(doc: str | None) -> str:
    """A docstring as ``--help`` text: reST roles and double backticks become plain `code`."""
    return _ROLE.sub(r"`\1`", doc or "").replace("``", "`")
