"""The routing model as the router holds it: live objects built once per bundle version.

The predictor is the authority on bundles; it serves :class:`~hybridpref.routing_model.data.RoutingModelData`
(``GetRoutingModel``). :class:`ModelCache` asks for it on every request with the version it holds, so a
hot-reloaded bundle is picked up on the next request and an unchanged one costs one tiny call.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hybridpref_client.core.errors import NotReady
from hybridpref.routing_model.data import RoutingModelData
from hybridpref.router.scoring import QuadraticScorer
from hybridpref.server.deadline import Deadline


@dataclass(frozen=True)
class DomainModel:
    """The bundle's training domain (``domain.json``, :mod:`hybridpref.routing_model.domain`): per pool the
    mean and sd of a few text features (columns of ``correction_features``), the pools the PPM was
    trained on and a threshold calibrated on held-out pools. A batch's distance to a pool is the largest
    standardised difference of its feature means (an effect size: it does not grow with the batch)."""

    distance_kind: str
    threshold: float
    stats: dict[str, dict[str, Any]]  # PPM training pool -> its domain.json statistics

    @classmethod
    def from_json(cls, domain: dict[str, Any]) -> DomainModel | None:
        """domain.json -> model; None for a distance or features this router does not compute."""
        from hybridpref.routing_model import domain as domain_mod

        if domain.get("distance") != domain_mod.DISTANCE or tuple(domain.get("features", ())) != domain_mod.DOMAIN_FEATURES:
            return None
        pools = domain.get("pools", {})
        stats = {str(p): pools[p] for p in domain.get("ppm_pools", ()) if p in pools}
        if not stats:
            return None
        return cls(domain_mod.DISTANCE, float(domain.get("threshold", math.inf)), stats)

    def check(self, features: np.ndarray) -> tuple[float, str]:
        """(distance to the nearest PPM training pool, its name) for a batch's (n, F) correction features."""
        from hybridpref.routing_model.domain import distance

        return min(((distance(features, s), name) for name, s in self.stats.items()), key=lambda t: t[0])


@dataclass(frozen=True)
class CorrectionRunner:
    """The expected-correction model in process (onnxruntime) with the feature names it reads."""

    model: Any  # hybridpref.routing_model.correction.CorrectionModel
    feature_names: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)

    def probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(LM label wrong), P(one human label wrong)) per row, float64 (one onnxruntime call)."""
        p = np.asarray(self.model.probabilities(np.asarray(features, dtype=np.float32)), dtype=np.float64)
        return p[:, 0], p[:, 1]


@dataclass(frozen=True)
class RoutingModel:
    bundle_version: str
    vocabulary_version: str
    reference_bins_id: str
    scorer: QuadraticScorer | None  # the PPM (None: the bundle's PPM is not quadratic)
    residual_std: float | None  # PPM residual std; None -> predictions are "uncalibrated"
    correction: CorrectionRunner | None
    domain: DomainModel | None
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: RoutingModelData) -> RoutingModel:
        scorer = None if data.quadratic is None else QuadraticScorer(*data.quadratic)
        return cls(
            bundle_version=data.bundle_version, vocabulary_version=data.vocabulary_version,
            reference_bins_id=data.reference_bins_id, scorer=scorer, residual_std=data.ppm_residual_std,
            correction=_correction(data), domain=None if data.domain is None else DomainModel.from_json(data.domain),
            metrics=dict(data.metrics),
        )


def _correction(data: RoutingModelData) -> CorrectionRunner | None:
    if data.correction_onnx is None:
        return None
    from hybridpref.routing_model.correction import FEATURE_NAMES, CorrectionModel

    if tuple(data.correction_features) != tuple(FEATURE_NAMES):
        # The router computes the features itself: a different list means a router/bundle mismatch.
        raise NotReady(f"bundle {data.bundle_version}: its correction model reads {len(data.correction_features)} features "
                       f"that differ from this router's {len(FEATURE_NAMES)}: deploy a matching router and bundle")
    return CorrectionRunner(CorrectionModel.from_onnx(data.correction_onnx), tuple(data.correction_features),
                            dict(data.correction_metrics))


# fetch(known_version, deadline) -> the new data, or None when ``known_version`` is still current
Fetch = Callable[[str, Deadline], Awaitable[RoutingModelData | None]]


class ModelCache:
    """One :class:`RoutingModel` per bundle version; ``get`` checks the version on every call."""

    def __init__(self, fetch: Fetch):
        self._fetch = fetch
        self._model: RoutingModel | None = None
        self.builds = 0  # models built so far (tests read it: once per bundle version)

    async def get(self, deadline: Deadline) -> RoutingModel:
        known = self._model.bundle_version if self._model is not None else ""
        data = await self._fetch(known, deadline)
        if data is not None and data.bundle_version != known:
            self._model = RoutingModel.from_data(data)
            self.builds += 1
        if self._model is None:  # pragma: no cover - a fetch answers "unchanged" only to a holder
            raise NotReady("the predictor served no routing model")
        return self._model
