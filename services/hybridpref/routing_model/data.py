"""The routing model: what the predictor hands the router so that every strategy runs in process.

One bundle version -> one :class:`RoutingModelData` (plain arrays and bytes, no sessions): the
PPM's quadratic form, the expected-correction model's ONNX bytes and feature names, the panel-invariant
correction model (``panel_correction.json``), the domain statistics of the training pools and the PPM's
residual std. The predictor reads it from the
bundle folder at load time (same snapshot as the served ONNX PPM) and serves it through
``GetRoutingModel``; the router turns it into live objects (``hybridpref.router.model``).
Every part but the PPM is optional: a bundle built before the correction model still loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref_client.core.errors import NotReady


@dataclass(frozen=True)
class RoutingModelData:
    bundle_version: str
    vocabulary_version: str
    reference_bins_id: str
    # f(x) = bias + linear . x + x^T quad x on x = counts / pool_size; None for a non-quadratic PPM
    quadratic: tuple[float, np.ndarray, np.ndarray] | None
    ppm_residual_std: float | None = None  # None: the bundle records none -> "uncalibrated"
    correction_onnx: bytes | None = None
    correction_features: tuple[str, ...] = ()
    correction_version: str = ""
    correction_metrics: dict[str, float] = field(default_factory=dict)
    domain: dict[str, Any] | None = None  # domain.json as written by the bundle builder
    metrics: dict[str, float] = field(default_factory=dict)
    panel_correction: dict[str, Any] | None = None  # panel_correction.json (issue 19); None: the bundle has none
    panel_version: str = ""  # "panel-correction/1@<hash>" (panel_correction.panel_version)


def read_routing_parts(folder: Path) -> dict[str, Any]:
    """The optional routing files of a (verified) bundle folder -> keyword arguments of :class:`RoutingModelData`.

    Raises ``NotReady`` when a file is present but unusable (a half-written bundle must not serve).
    """
    from hybridpref.routing_model import bundle as bundle_io

    folder = Path(folder)
    try:
        out: dict[str, Any] = {"ppm_residual_std": _residual_std(bundle_io.read_json(folder, "metrics.json"))}
        correction = bundle_io.read_correction(folder)
        out["domain"] = bundle_io.read_domain(folder)
        panel = folder / "panel_correction.json"
        if panel.is_file():
            from hybridpref.routing_model.panel_correction import PanelCorrectionModel, panel_version

            out["panel_correction"] = bundle_io.read_json(folder, panel.name)
            PanelCorrectionModel.from_json(out["panel_correction"])  # refuse one this code cannot evaluate
            out["panel_version"] = panel_version(out["panel_correction"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NotReady(f"bundle {folder}: unreadable routing files: {exc}") from None
    if correction is not None:
        onnx, meta = correction
        out.update(
            correction_onnx=onnx,
            correction_features=tuple(str(n) for n in meta.get("feature_names", ())),
            correction_version=str(meta.get("version", "")),
            correction_metrics=_flat_numbers({k: v for k, v in meta.items() if k != "feature_names"}),
        )
        if not out["correction_features"]:
            raise NotReady(f"bundle {folder}: correction.json lists no feature_names")
    return out


def _residual_std(metrics: dict[str, Any]) -> float | None:
    """``ppm_residual_std`` at the top of metrics.json or under ``served``; None when absent or not > 0."""
    for where in (metrics, metrics.get("served", {})):
        value = where.get("ppm_residual_std") if isinstance(where, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _flat_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as ``a.b.c`` -> value (lists, e.g. reliability curves, are left out)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(_flat_numbers(value, f"{prefix}{key}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix.rstrip(".")] = float(obj)
    return out
