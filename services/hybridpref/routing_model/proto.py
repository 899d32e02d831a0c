"""The routing model on the wire: ``RoutingModelData`` <-> ``GetRoutingModelResponse``, both directions in one
module (the predictor serves with :func:`routing_model_to_proto`, the router reads with
:func:`routing_model_from_proto`; ``tests/routing_model/test_routing_model_proto.py`` round-trips them)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hybridpref.common.vocabulary import NUM_TAGS, VOCABULARY_VERSION
from hybridpref.routing_model.data import RoutingModelData
from hybridpref.v1 import predictor_pb2
from hybridpref_client.core.errors import NotReady


def routing_model_to_proto(data: RoutingModelData) -> predictor_pb2.GetRoutingModelResponse:
    """``RoutingModelData`` -> the ``GetRoutingModel`` answer; :func:`routing_model_from_proto` is the inverse."""
    out = predictor_pb2.GetRoutingModelResponse(
        bundle_version=data.bundle_version,
        vocabulary_version=data.vocabulary_version,
        reference_bins_id=data.reference_bins_id,
        metrics=data.metrics,
    )
    if data.quadratic is not None:
        bias, linear, quad = data.quadratic
        out.ppm.CopyFrom(
            predictor_pb2.QuadraticForm(
                bias=float(bias),
                linear=np.asarray(linear, np.float64).tolist(),
                quad=np.asarray(quad, np.float64).ravel().tolist(),
            )
        )
    if data.ppm_residual_std is not None:
        out.ppm_residual_std = data.ppm_residual_std
    if data.correction_onnx is not None:
        out.correction.CopyFrom(
            predictor_pb2.CorrectionModelSpec(
                onnx=data.correction_onnx,
                feature_names=list(data.correction_features),
                version=data.correction_version,
                metrics=data.correction_metrics,
            )
        )
    if data.domain is not None:
        out.domain.CopyFrom(domain_to_proto(data.domain))
    if data.panel_correction is not None:
        out.panel_correction.CopyFrom(
            predictor_pb2.PanelCorrectionSpec(
                json=json.dumps(data.panel_correction, sort_keys=True),
                version=data.panel_version,
                feature_names=[str(n) for n in data.panel_correction.get("feature_names", ())],
            )
        )
    return out


def domain_to_proto(domain: dict[str, Any]) -> predictor_pb2.DomainStats:
    """domain.json -> ``DomainStats`` (typed parts plus the file verbatim)."""
    pools = domain.get("pools", {})
    return predictor_pb2.DomainStats(
        distance=str(domain.get("distance", "")),
        threshold=float(domain.get("threshold", 0.0) or 0.0),
        feature_names=[str(n) for n in domain.get("features", domain.get("feature_names", ()))],
        pools=[
            predictor_pb2.DomainPool(
                name=str(name),
                mean=[float(v) for v in p.get("mean", ())],
                sd=[float(v) for v in p.get("sd", ())],
                count=int(p.get("rows", p.get("count", 0))),
            )
            for name, p in sorted(pools.items())
        ],
        ppm_pools=[str(p) for p in domain.get("ppm_pools", ())],
        raw_json=json.dumps(domain, sort_keys=True),
    )


def routing_model_from_proto(resp: predictor_pb2.GetRoutingModelResponse) -> RoutingModelData:
    """The inverse of :func:`routing_model_to_proto`; refuses a bundle of another vocabulary or width."""
    if resp.vocabulary_version != VOCABULARY_VERSION:
        raise NotReady(
            f"predictor bundle {resp.bundle_version} reads vocabulary {resp.vocabulary_version!r}, router {VOCABULARY_VERSION!r}"
        )
    quadratic = None
    if resp.HasField("ppm"):
        v = len(resp.ppm.linear)
        quad = np.asarray(resp.ppm.quad, dtype=np.float64)
        if v != NUM_TAGS or quad.size != v * v:
            raise NotReady(f"predictor bundle {resp.bundle_version}: PPM of width {v}, expected {NUM_TAGS}")
        quadratic = (resp.ppm.bias, np.asarray(resp.ppm.linear, dtype=np.float64), quad.reshape(v, v))
    correction: dict[str, Any] = {}
    if resp.HasField("correction"):
        correction = dict(
            correction_onnx=resp.correction.onnx,
            correction_features=tuple(resp.correction.feature_names),
            correction_version=resp.correction.version,
            correction_metrics=dict(resp.correction.metrics),
        )
    panel = {}
    if resp.HasField("panel_correction"):
        try:
            model = json.loads(resp.panel_correction.json)
        except ValueError as exc:
            raise NotReady(f"predictor bundle {resp.bundle_version}: unreadable panel correction model: {exc}") from None
        panel = dict(panel_correction=model, panel_version=resp.panel_correction.version)
    return RoutingModelData(
        bundle_version=resp.bundle_version,
        vocabulary_version=resp.vocabulary_version,
        reference_bins_id=resp.reference_bins_id,
        quadratic=quadratic,
        ppm_residual_std=resp.ppm_residual_std if resp.HasField("ppm_residual_std") else None,
        domain=json.loads(resp.domain.raw_json) if resp.HasField("domain") and resp.domain.raw_json else None,
        metrics=dict(resp.metrics),
        **correction,
        **panel,
    )
