"""Thin gRPC servicer over the predictor core (``hybridpref.predictor.core.Predictor``)."""

from __future__ import annotations

from pathlib import Path

import structlog

from hybridpref.predictor.watcher import BundleWatcher
from hybridpref.routing_model.proto import routing_model_to_proto
from hybridpref.server.executors import CoreExecutor
from hybridpref.server.metrics import Metrics
from hybridpref.server.server import ServiceHandle
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, predictor_pb2, predictor_pb2_grpc
from hybridpref_client.core.errors import NotReady

log = structlog.get_logger()
SERVICE_NAME = predictor_pb2.DESCRIPTOR.services_by_name["PredictorService"].full_name


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

        return Path(self._settings.predictor.bundle_path) if self._settings.predictor.bundle_path else default_bundle_path()

    def load(self) -> str:
        """Load the bundle at ``bundle_path``; returns its version (``NotReady`` when unusable)."""
        self.predictor.load(self.bundle_path)
        return self.predictor.info().bundle_version

    async def GetModelInfo(self, request, context):
        info = self.predictor.info()
        return predictor_pb2.GetModelInfoResponse(
            loaded=info.loaded,
            bundle_version=info.bundle_version,
            bundle_path=info.bundle_path,
            vocabulary=common_pb2.TagVocabulary(version=info.vocabulary_version, tags=info.vocabulary),
            model_kind=info.model_kind,
            metrics=info.metrics,
            data_fingerprint=info.data_fingerprint,
            status_message=info.status_message,
            reference_bins_id=info.reference_bins_id,
        )

    async def GetRoutingModel(self, request, context):
        data = self.predictor.routing_model()
        if request.known_bundle_version and request.known_bundle_version == data.bundle_version:
            return predictor_pb2.GetRoutingModelResponse(unchanged=True, bundle_version=data.bundle_version)
        return routing_model_to_proto(data)

    async def close(self) -> None:
        self._executor.shutdown()


def predictor_handle(settings: Settings, metrics: Metrics | None = None) -> ServiceHandle:
    servicer = PredictorServicer(settings, metrics or Metrics.default())
    on_health_change: list = []
    watcher = BundleWatcher(servicer.bundle_path, servicer.load, settings.predictor.bundle_watch_s, on_health_change)

    def load() -> None:
        try:
            servicer.load()
        except NotReady as exc:  # no usable bundle: serve, but answer FAILED_PRECONDITION (info says why)
            log.error("bundle_not_loaded", error=str(exc))
        if settings.predictor.bundle_watch_s > 0:
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
