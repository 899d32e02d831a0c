#!/usr/bin/env python3
"""Run the alerts' promtool unit tests by hand, as the test suite does:

    python scripts/promtool_test.py [--promtool PATH]

``deploy/prometheus/alerts.yaml`` is a PrometheusRule (a Kubernetes object), which promtool cannot read,
and promtool compares annotations, which the unit tests leave out (they are prose, checked by
``promtool check rules``). So the rule groups are written to a scratch folder twice, ``alerts.full.yaml``
(checked) and ``alerts.rules.yaml`` without annotations (tested), beside a copy of
``deploy/prometheus/tests/alerts_test.yaml``; then ``promtool check rules`` and ``promtool test rules``
run there. Exit code: promtool's (0 = every case passed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
TESTS = ROOT / "deploy" / "prometheus" / "tests" / "alerts_test.yaml"


def write_rule_files(folder: Path, edit: Callable[[str], str] | None = None) -> Path:
    """The PrometheusRule's groups as plain rule files in ``folder``, with the unit tests beside them
    (``edit``: a function applied to the alerts file's text first)."""
    text = ALERTS.read_text(encoding="utf-8")
    (rule,) = [d for d in yaml.safe_load_all(edit(text) if edit else text) if d]
    (folder / "alerts.full.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]} for g in rule["spec"]["groups"]
    ]
    (folder / "alerts.rules.yaml").write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    shutil.copy(TESTS, folder / "alerts_test.yaml")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promtool", default=None, help="promtool binary (default: .venv/tools/bin/promtool, else PATH)")
    args = parser.parse_args(argv)
    local = ROOT / ".venv" / "tools" / "bin" / "promtool"
    promtool = args.promtool or (str(local) if local.exists() else shutil.which("promtool"))
    if not promtool:
        print("error: promtool not found (python3 scripts/dev.py setup installs it into .venv/tools/bin)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = write_rule_files(Path(tmp))
        check = subprocess.run([promtool, "check", "rules", "alerts.full.yaml"], cwd=work)
        if check.returncode != 0:
            return check.returncode
        return subprocess.run([promtool, "test", "rules", "alerts_test.yaml"], cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
