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

from hybridpref.router.scoring import QuadraticScorer
from hybridpref.routing_model.data import RoutingModelData
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import NotReady


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
    version: str = "correction/1"  # correction.json's version

    @property
    def reads_tags(self) -> bool:
        """Whether a prediction depends on the tagger's measures or tags (a non-zero weight on one of their
        columns); the served models read texts and judge signals only."""
        from hybridpref.routing_model.correction import MEASURE_FEATURES, TAG_FEATURES

        cols = [j for j, name in enumerate(self.feature_names) if name in MEASURE_FEATURES or name in TAG_FEATURES]
        return any(bool(np.any(np.asarray(part.coef)[cols] != 0)) for part in (self.model.lm, self.model.human))

    def probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(LM label wrong), P(one human label wrong)) per row, float64 (one onnxruntime call)."""
        p = np.asarray(self.model.probabilities(np.asarray(features, dtype=np.float32)), dtype=np.float64)
        return p[:, 0], p[:, 1]


@dataclass(frozen=True)
class PanelRunner:
    """The panel-invariant correction model (``panel_correction.json``; pure numpy) and its version
    (``panel-correction/1@<hash>``, or a campaign's adapted version, :mod:`hybridpref.router.adaptation`)."""

    model: Any  # hybridpref.routing_model.panel_correction.PanelCorrectionModel
    version: str

    def probabilities(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(LM label wrong), P(one human vote wrong)) per row of (n, len(PANEL_FEATURES)) panel features."""
        p = self.model.probabilities(features)
        return p[:, 0], p[:, 1]

    def lm_terms(self) -> LinearTerms:
        """The P(LM wrong) logit's standardisation and weights over every panel feature (0 where the model
        reads none): what ``explain.top_correction_features`` ranks the rows' log-odds terms with."""
        from hybridpref.routing_model.panel_correction import PANEL_FEATURES

        lm = self.model.lm
        width = len(PANEL_FEATURES)
        mean, scale, coef = np.zeros(width), np.ones(width), np.zeros(width)
        for j, name in enumerate(lm.columns):
            k = PANEL_FEATURES.index(name)
            mean[k], scale[k], coef[k] = lm.mean[j], lm.scale[j], lm.coef[j]
        return LinearTerms(mean, scale, coef)


@dataclass(frozen=True)
class LinearTerms:
    """``(x - mean) / scale * coef`` per feature: a logistic model's log-odds terms."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray


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
    # The panel-invariant correction model (issue 19): where present, the expected-correction strategies read
    # P(wrong) from it instead of ``correction``.
    panel: PanelRunner | None = None

    @property
    def has_correction(self) -> bool:
        """Whether the expected-correction strategies can run (either correction model)."""
        return self.panel is not None or self.correction is not None

    def correction_name(self) -> tuple[str, str]:
        """(name, version) of the correction model the expected-correction strategies read: the panel model's
        (``panel-correction/1``, ``panel-correction/1@<hash>``), else the ONNX one's (``correction/1``,
        ``correction/1@<bundle version>``), else ("", "")."""
        if self.panel is not None:
            return self.panel.version.split("@", 1)[0], self.panel.version
        if self.correction is not None:
            return self.correction.version, f"{self.correction.version}@{self.bundle_version}"
        return "", ""

    def with_panel(self, panel: PanelRunner) -> RoutingModel:
        """The same bundle with another panel model (a campaign's adapted one)."""
        from dataclasses import replace

        return replace(self, panel=panel)

    @classmethod
    def from_data(cls, data: RoutingModelData) -> RoutingModel:
        scorer = None if data.quadratic is None else QuadraticScorer(*data.quadratic)
        return cls(
            bundle_version=data.bundle_version,
            vocabulary_version=data.vocabulary_version,
            reference_bins_id=data.reference_bins_id,
            scorer=scorer,
            residual_std=data.ppm_residual_std,
            correction=_correction(data),
            domain=None if data.domain is None else DomainModel.from_json(data.domain),
            metrics=dict(data.metrics),
            panel=_panel(data),
        )


def _panel(data: RoutingModelData) -> PanelRunner | None:
    if data.panel_correction is None:
        return None
    from hybridpref.routing_model.panel_correction import PanelCorrectionModel, panel_version

    try:
        model = PanelCorrectionModel.from_json(data.panel_correction)
    except (ValueError, KeyError, TypeError) as exc:
        # The router computes the features itself: another feature list means a router/bundle mismatch.
        raise NotReady(
            f"bundle {data.bundle_version}: its panel correction model cannot run here ({exc}): "
            "deploy a matching router and bundle"
        ) from None
    return PanelRunner(model, data.panel_version or panel_version(data.panel_correction))


def _correction(data: RoutingModelData) -> CorrectionRunner | None:
    if data.correction_onnx is None:
        return None
    from hybridpref.routing_model.correction import FEATURE_NAMES, CorrectionModel

    if tuple(data.correction_features) != tuple(FEATURE_NAMES):
        # The router computes the features itself: a different list means a router/bundle mismatch.
        raise NotReady(
            f"bundle {data.bundle_version}: its correction model reads {len(data.correction_features)} features "
            f"that differ from this router's {len(FEATURE_NAMES)}: deploy a matching router and bundle"
        )
    return CorrectionRunner(
        CorrectionModel.from_onnx(data.correction_onnx),
        tuple(data.correction_features),
        dict(data.correction_metrics),
        data.correction_version or "correction/1",
    )


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
