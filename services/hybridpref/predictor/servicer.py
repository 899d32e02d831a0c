"""Thin gRPC servicer over the predictor core (``hybridpref.predictor.core.Predictor``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import structlog

from hybridpref.common.errors import FieldViolation, InvalidInput, NotReady
from hybridpref.common.executors import CoreExecutor
from hybridpref.common.metrics import Metrics
from hybridpref.common.server import ServiceHandle
from hybridpref.common.settings import Settings
from hybridpref.common.vocabulary import NUM_TAGS, VOCABULARY_VERSION
from hybridpref.v1 import common_pb2, predictor_pb2, predictor_pb2_grpc

log = structlog.get_logger()
SERVICE_NAME = predictor_pb2.DESCRIPTOR.services_by_name["PredictorService"].full_name


def counts_matrix(mixes, field: str) -> np.ndarray:
    """(m, V) float64 from repeated MixVector; every row checked for width."""
    bad = [FieldViolation(f"{field}[{i}].counts", f"expected {NUM_TAGS} counts, got {len(m.counts)}")
           for i, m in enumerate(mixes) if len(m.counts) != NUM_TAGS]
    if bad:
        raise InvalidInput(bad)
    return np.array([m.counts for m in mixes], dtype=np.float64).reshape(len(mixes), NUM_TAGS)


def tag_matrix(vectors, field: str = "instances") -> np.ndarray:
    """(n, V) uint8 from repeated TagVector; indices checked against the vocabulary."""
    out = np.zeros((len(vectors), NUM_TAGS), dtype=np.uint8)
    bad: list[FieldViolation] = []
    for i, v in enumerate(vectors):
        idx = np.fromiter(v.indices, dtype=np.int64, count=len(v.indices))
        if idx.size and (idx.max() >= NUM_TAGS):
            bad.append(FieldViolation(f"{field}[{i}].indices", f"tag index {int(idx.max())} >= vocabulary size {NUM_TAGS}"))
            continue
        out[i, idx] = 1
    if bad:
        raise InvalidInput(bad)
    return out


def check_vocabulary(version: str) -> None:
    if version and version != VOCABULARY_VERSION:
        raise NotReady(f"caller uses vocabulary {version!r}, this predictor serves {VOCABULARY_VERSION!r}")


class PredictorServicer(predictor_pb2_grpc.PredictorServiceServicer):
    def __init__(self, settings: Settings, metrics: Metrics):
        from hybridpref.predictor.core import Predictor

        self._settings = settings
        self._metrics = metrics
        self.predictor = Predictor()
        self._executor = CoreExecutor("predictor", workers=2)

    @property
    def bundle_path(self) -> Path:
        from hybridpref.predictor.core import default_bundle_path

        return Path(self._settings.bundle_path) if self._settings.bundle_path else default_bundle_path()

    def load(self) -> None:
        self.predictor.load(self.bundle_path)

    async def ScoreMixes(self, request, context):
        check_vocabulary(request.vocabulary_version)
        counts = counts_matrix(request.mixes, "mixes")
        scores = await self._executor.run(self.predictor.score, counts, int(request.pool_size), size=len(counts))
        self._metrics.instances.labels("predictor", "ScoreMixes").inc(len(scores))
        return predictor_pb2.ScoreMixesResponse(scores=scores.tolist(), bundle_version=self.predictor.info().bundle_version)

    async def InstanceGains(self, request, context):
        check_vocabulary(request.vocabulary_version)
        tags = tag_matrix(request.instances)
        current = counts_matrix([request.current], "current")[0] if len(request.current.counts) else None
        gains, current_score, explanations = await self._executor.run(
            self.predictor.gains, tags, current, int(request.pool_size), int(request.explain_top_k), size=len(tags),
        )
        out = predictor_pb2.InstanceGainsResponse(
            gains=np.asarray(gains).tolist(), current_score=float(current_score),
            bundle_version=self.predictor.info().bundle_version,
        )
        for top in explanations:
            out.explanations.add(top_tags=[common_pb2.TagContribution(tag=t, contribution=c) for t, c in top])
        return out

    async def GetModelInfo(self, request, context):
        info = self.predictor.info()
        return predictor_pb2.GetModelInfoResponse(
            loaded=info.loaded, bundle_version=info.bundle_version, bundle_path=info.bundle_path,
            vocabulary=common_pb2.TagVocabulary(version=info.vocabulary_version, tags=info.vocabulary),
            model_kind=info.model_kind, metrics=info.metrics, data_fingerprint=info.data_fingerprint,
            status_message=info.status_message, reference_bins_id=info.reference_bins_id,
        )

    async def GetRoutingModel(self, request, context):
        data = self.predictor.routing_model()
        if request.known_bundle_version and request.known_bundle_version == data.bundle_version:
            return predictor_pb2.GetRoutingModelResponse(unchanged=True, bundle_version=data.bundle_version)
        return routing_model_to_proto(data)

    async def close(self) -> None:
        self._executor.shutdown()


def routing_model_to_proto(data) -> predictor_pb2.GetRoutingModelResponse:
    """``RoutingModelData`` -> the ``GetRoutingModel`` answer (the inverse is in the router's client)."""
    out = predictor_pb2.GetRoutingModelResponse(
        bundle_version=data.bundle_version, vocabulary_version=data.vocabulary_version,
        reference_bins_id=data.reference_bins_id, metrics=data.metrics,
    )
    if data.quadratic is not None:
        bias, linear, quad = data.quadratic
        out.ppm.CopyFrom(predictor_pb2.QuadraticForm(
            bias=float(bias), linear=np.asarray(linear, np.float64).tolist(), quad=np.asarray(quad, np.float64).ravel().tolist()))
    if data.ppm_residual_std is not None:
        out.ppm_residual_std = data.ppm_residual_std
    if data.correction_onnx is not None:
        out.correction.CopyFrom(predictor_pb2.CorrectionModelSpec(
            onnx=data.correction_onnx, feature_names=list(data.correction_features), version=data.correction_version,
            metrics=data.correction_metrics))
    if data.domain is not None:
        out.domain.CopyFrom(domain_to_proto(data.domain))
    return out


def domain_to_proto(domain: dict) -> predictor_pb2.DomainStats:
    """domain.json -> ``DomainStats`` (typed parts plus the file verbatim)."""
    pools = domain.get("pools", {})
    return predictor_pb2.DomainStats(
        distance=str(domain.get("distance", "")), threshold=float(domain.get("threshold", 0.0) or 0.0),
        feature_names=[str(n) for n in domain.get("features", domain.get("feature_names", ()))],
        pools=[predictor_pb2.DomainPool(name=str(name), mean=[float(v) for v in p.get("mean", ())],
                                        sd=[float(v) for v in p.get("sd", ())], count=int(p.get("rows", p.get("count", 0))))
               for name, p in sorted(pools.items())],
        ppm_pools=[str(p) for p in domain.get("ppm_pools", ())],
        raw_json=json.dumps(domain, sort_keys=True),
    )


def bundle_signature(path: Path) -> tuple:
    """What changes when a bundle is replaced: the resolved folder (a ``current`` symlink
    repointed) and its files' sizes and mtimes (a folder rewritten in place)."""
    try:
        real = path.resolve()
        return (str(real), tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in real.iterdir())))
    except OSError:
        return ("missing", str(path))


class BundleWatcher:
    """Hot reload: poll the bundle folder and load a new bundle when it changes.

    In-flight calls finish on the old bundle (the core swaps snapshots atomically); a
    bad new bundle is refused and the old one keeps serving (the log says why)."""

    def __init__(self, servicer: PredictorServicer, interval_s: float, on_change: list):
        self._servicer, self._interval_s, self._on_change = servicer, interval_s, on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)
        self._seen = bundle_signature(servicer.bundle_path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            signature = bundle_signature(self._servicer.bundle_path)
            if signature == self._seen:
                continue
            self._seen = signature
            try:
                self._servicer.load()
                log.info("bundle_reloaded", bundle_version=self._servicer.predictor.info().bundle_version)
            except NotReady as exc:
                log.error("bundle_reload_refused", error=str(exc))
            for callback in self._on_change:
                callback()


def predictor_handle(settings: Settings, metrics: Metrics | None = None) -> ServiceHandle:
    servicer = PredictorServicer(settings, metrics or Metrics.default())
    on_health_change: list = []
    watcher = BundleWatcher(servicer, settings.bundle_watch_s, on_health_change)

    def load() -> None:
        try:
            servicer.load()
        except NotReady as exc:  # no usable bundle: serve, but answer FAILED_PRECONDITION (info says why)
            log.error("bundle_not_loaded", error=str(exc))
        if settings.bundle_watch_s > 0:
            watcher.start()

    async def close() -> None:
        watcher.stop()
        await servicer.close()

    return ServiceHandle(
        name="predictor",
        service_names=(SERVICE_NAME,),
        register=lambda server: predictor_pb2_grpc.add_PredictorServiceServicer_to_server(servicer, server),
        load=load,
        ready=lambda: servicer.predictor.ready,
        close=close,
        on_health_change=on_health_change,
    )
