"""Generated code is reproducible from protos/ and never hand-edited."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_protos", ROOT / "scripts" / "generate_protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_regenerating_changes_nothing(tmp_path):
    written = load_generator().generate(tmp_path)
    committed = ROOT / "generated"
    assert written, "protoc wrote nothing"
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (committed / rel).exists(), f"{rel} is generated but not committed"
        assert filecmp.cmp(path, committed / rel, shallow=False), f"{rel} differs from a fresh generation"
    committed_files = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert committed_files == {p.relative_to(tmp_path) for p in written}


def test_every_proto_element_is_commented():
    """Each message, field, enum value and RPC has a comment line right above it."""
    import re

    for proto in (ROOT / "protos").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            declares = re.match(r"(message|enum|service|rpc)\s", stripped) or re.match(
                r"(optional |repeated )?[\w.<>, ]+\s+\w+\s*=\s*\d+;", stripped
            )
            if not declares or stripped.startswith("//") or stripped.startswith("oneof"):
                continue
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("//"), f"{proto.name}:{i + 1} lacks a comment: {stripped}"


def test_buf_config_lints_the_protos_with_standard_rules():
    import yaml

    config = yaml.safe_load((ROOT / "buf.yaml").read_text(encoding="utf-8"))
    assert config["version"] == "v2"
    assert config["modules"] == [{"path": "protos"}]
    assert config["lint"]["use"] == ["STANDARD"] and not config["lint"].get("except") and not config["lint"].get("ignore")


def test_buf_lint():
    """`buf lint` (STANDARD) over protos/: vendors depend on v1, so it stays lint-clean."""
    import subprocess

    import pytest
    from support.tools import find_tool, skip_reason

    buf = find_tool("buf")
    if buf is None:
        pytest.skip(skip_reason("buf"))
    out = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
