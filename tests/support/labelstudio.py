"""A real Label Studio server for the tests and the benchmark, from its own virtual environment
(``.venv/tools/label-studio``, installed by ``scripts/dev.py``; its Django stack never enters the
product's environment).

The first start on a machine migrates a fresh SQLite database (about 50 s on 2 cores) into a template
folder beside the venv; later starts copy the template and take a few seconds. The server listens on
a loopback port with its data in a temporary folder, and is stopped (its process group) afterwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TOOLS = Path(sys.prefix) / "tools"
LS_VENV = TOOLS / "label-studio"
LS_BIN = LS_VENV / "bin" / "label-studio"
LS_PYTHON = LS_VENV / "bin" / "python"
TEMPLATE = TOOLS / "label-studio-template"
DRIVER = Path(__file__).resolve().parent / "labelstudio_driver.py"
# Test-only credentials of a throwaway server on loopback.
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "throwaway-Test-Pass-1"
TOKEN = "5e1f0c3a9b7d2e4f6a8c0b1d3e5f7a9c2b4d6e8f"  # a legacy API token: 40 hex characters


def skip_reason() -> str | None:
    """Why the Label Studio tests cannot run here, or None when they can."""
    if not LS_BIN.exists() or not LS_PYTHON.exists():
        return (
            f"Label Studio not installed at {LS_VENV}: `python3 scripts/dev.py setup` installs it into its own "
            "venv (pip install label-studio; needs PyPI)"
        )
    probe = subprocess.run([str(LS_PYTHON), "-c", "import label_studio, label_studio_sdk"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"Label Studio's venv at {LS_VENV} is broken: {probe.stderr.strip()[-300:]}"
    return None


@dataclass(frozen=True)
class LabelStudioServer:
    base_url: str
    token: str

    def run_driver(self, plan: dict[str, Any], workdir: Path, timeout: float = 1800) -> dict[str, Any]:
        """Run tests/support/labelstudio_driver.py with ``plan`` in the tools venv; its RESULT."""
        plan_path, result_path = workdir / "ls_plan.json", workdir / "ls_result.json"
        plan_path.write_text(json.dumps({**plan, "base_url": self.base_url, "token": self.token}), encoding="utf-8")
        out = subprocess.run(
            [str(LS_PYTHON), str(DRIVER), str(plan_path), str(result_path)], capture_output=True, text=True, timeout=timeout
        )
        if out.returncode != 0:
            raise RuntimeError(f"Label Studio driver failed:\n{out.stderr[-4000:]}")
        return json.loads(result_path.read_text(encoding="utf-8"))

    def export(self, project: int) -> list[dict[str, Any]]:
        """The project's JSON export, straight from the HTTP API."""
        r = httpx.get(
            f"{self.base_url}/api/projects/{project}/export",
            params={"exportType": "JSON"},
            headers={"Authorization": f"Token {self.token}"},
            timeout=120,
        )
        r.raise_for_status()
        return r.json()

    def label_in_browser(self, page: Any, project: int, rationale: str, shot: Path | None = None) -> str:
        """Label the next task of the admin's queue through Label Studio's own web UI (a Playwright
        ``page``), as a person would: sign in, open the labelling stream, see on which side (left =
        A, right = B) the response marked "(better)" is, click "<side> clearly better", type the
        rationale, Submit. Returns the side picked."""
        page.goto(f"{self.base_url}/user/login/")
        page.fill("input[name=email]", ADMIN_EMAIL)
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{self.base_url}/projects/{project}/data?labeling=1")
        better = page.get_by_text("(better)").first
        better.wait_for(timeout=60_000)
        header_b = page.get_by_text("Response B", exact=True).first.bounding_box()
        side = "B" if better.bounding_box()["x"] >= header_b["x"] - 5 else "A"
        page.click(f"text={side} clearly better")
        page.fill("textarea", rationale)
        if shot is not None:
            page.screenshot(path=str(shot))
        with page.expect_response(lambda r: "/annotations" in r.url and r.request.method == "POST", timeout=60_000):
            page.click("button:has-text('Submit')")
        return side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        DJANGO_DB="sqlite",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        COLLECT_ANALYTICS="false",
        LABEL_STUDIO_COLLECT_ANALYTICS="false",
    )
    cmd = [
        str(LS_BIN),
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "-p",
        str(port),
        "--data-dir",
        str(data_dir),
        "--username",
        ADMIN_EMAIL,
        "--password",
        ADMIN_PASSWORD,
        "--user-token",
        TOKEN,
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir)
    return proc, f"http://127.0.0.1:{port}"


def _wait(proc: subprocess.Popen, base_url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Label Studio exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                r = httpx.get(base_url + "/api/current-user/whoami", headers={"Authorization": f"Token {TOKEN}"}, timeout=5)
                if r.status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"Label Studio not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _ensure_template(workdir: Path) -> None:
    """A migrated data folder with the admin user, built once per machine (under a file lock)."""
    TOOLS.mkdir(parents=True, exist_ok=True)
    with open(TOOLS / "label-studio-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (TEMPLATE / "label_studio.sqlite3").exists():
            return
        building = TOOLS / "label-studio-template.building"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir()
        proc, base_url = _start(building, workdir / "label-studio-migrate.log")
        try:
            _wait(proc, base_url, workdir / "label-studio-migrate.log", timeout=600)
        finally:
            _stop(proc)
        for junk in ("export", "media", "test_data"):
            shutil.rmtree(building / junk, ignore_errors=True)
        os.replace(building, TEMPLATE)


@contextmanager
def label_studio(workdir: Path) -> Iterator[LabelStudioServer]:
    """A running Label Studio with SQLite under ``workdir``; stopped on exit."""
    _ensure_template(workdir)
    data_dir = workdir / "label-studio-data"
    shutil.copytree(TEMPLATE, data_dir)
    log = workdir / "label-studio.log"
    proc, base_url = _start(data_dir, log)
    try:
        _wait(proc, base_url, log, timeout=300)
        yield LabelStudioServer(base_url=base_url, token=TOKEN)
    finally:
        _stop(proc)
