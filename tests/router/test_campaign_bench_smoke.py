"""A small run of each ``benchmarks/bench_campaign.py`` command on the shared pools (CI has ../shared/data):
the benchmark scripts stay runnable, and their figures are the ones RESULTS.md reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridpref.offline.pools import default_data_dir

ROOT = Path(__file__).resolve().parents[2]
DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not (DATA / "pandalm" / "pairs.jsonl").exists(), reason="../shared/data not present")


def bench(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_campaign.py"), *args, "--data-dir", str(DATA)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    return json.loads(out[out.index("\n{") + 1 :] if not out.startswith("{") else out)


def test_throughput_smoke_spends_the_campaign_and_splits_its_time():
    result = bench("throughput", "--instances", "400", "--batch", "200")
    assert result["campaign_spent"] == [100.0, 100.0]
    assert 0 < result["database_s"] <= result["store_s"] < result["seconds"]["campaign"]
    assert result["cost_beside_the_database"] < result["persistence_cost"]


def test_floor_smoke_writes_through_the_driver():
    result = bench("floor", "--instances", "400", "--batch", "200")
    assert result["instances"] == 400 and result["database_us_per_row"] > 0
    assert result["database_us_per_row"] == pytest.approx(result["insert_us_per_row"] + result["commit_us_per_row"])
