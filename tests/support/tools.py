"""Locate the external check tools (kubectl, promtool, buf) that ``scripts/dev.py`` installs.

Search order: the virtual environment running the tests (its ``bin`` and ``tools`` folders),
then ``PATH``. A test that needs a missing tool skips with the reason from ``skip_reason``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

VENV = Path(sys.prefix)
_PLACES = (VENV / "bin", VENV / "tools" / "bin", VENV / "tools" / "node_modules" / ".bin")


def find_tool(name: str) -> str | None:
    for folder in _PLACES:
        candidate = folder / name
        if candidate.is_file() and candidate.stat().st_mode & 0o111:
            return str(candidate)
    return shutil.which(name)


def skip_reason(name: str) -> str:
    return (
        f"{name} not installed: `python3 scripts/dev.py setup` installs it into .venv/tools "
        f"(needs {'npm' if name == 'buf' else 'apt-get/dpkg' if name == 'promtool' else 'the dev extra'})"
    )
