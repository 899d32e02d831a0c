"""Thin gRPC servicer over the tagger core (``hybridpref.tagger.core.Tagger``)."""

from __future__ import annotations

import threading

from hybridpref.common.vocabulary import LEXICAL_MEASURES, TAG_NAMES, VOCABULARY_VERSION
from hybridpref.server.executors import CoreExecutor
from hybridpref.server.metrics import Metrics
from hybridpref.server.server import ServiceHandle
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, tagger_pb2, tagger_pb2_grpc
from hybridpref_client.core.convert import instances_from_proto
from hybridpref_client.core.errors import FieldViolation, InvalidInput
from hybridpref_client.core.instances import validate_instances
from hybridpref_client.core.limits import Limits

SERVICE_NAME = tagger_pb2.DESCRIPTOR.services_by_name["TaggerService"].full_name
PROFILES = ("default", "fast")


class TaggerServicer(tagger_pb2_grpc.TaggerServiceServicer):
    def __init__(self, settings: Settings, metrics: Metrics):
        from hybridpref.tagger.core import Tagger

        self._settings = settings
        self._metrics = metrics
        self._default_profile = settings.tagger.profile
        self._taggers = {settings.tagger.profile: Tagger.for_profile(settings.tagger.profile)}
        self._lock = threading.Lock()
        self._executor = CoreExecutor("tagger")
        self._limits = Limits.from_settings(settings.limits)

    def load(self) -> None:
        self._taggers[self._default_profile].load()

    def _tagger(self, profile: str):
        from hybridpref.tagger.core import Tagger

        profile = profile or self._default_profile
        if profile not in PROFILES:
            raise InvalidInput(FieldViolation("profile", f"unknown profile {profile!r}; expected one of {PROFILES}"))
        with self._lock:  # other profiles load on first use
            if profile not in self._taggers:
                self._taggers[profile] = Tagger.for_profile(profile)
            return profile, self._taggers[profile]

    async def TagInstances(self, request, context):
        instances = instances_from_proto(request.instances, self._limits, max_count=self._settings.limits.max_batch)
        validate_instances(instances, self._settings.limits.max_batch)
        profile, tagger = self._tagger(request.profile)
        if not tagger.ready:
            await self._executor.run(tagger.load)
        batch = await self._executor.run(tagger.tag, instances, size=len(instances))  # small calls first
        self._metrics.instances.labels("tagger", "TagInstances").inc(len(instances))
        return to_response(batch, profile, tagger.reference_bins.fingerprint())

    async def GetVocabulary(self, request, context):
        return tagger_pb2.GetVocabularyResponse(vocabulary=common_pb2.TagVocabulary(version=VOCABULARY_VERSION, tags=TAG_NAMES))

    async def close(self) -> None:
        self._executor.shutdown()


def to_response(batch, profile: str, reference_bins_id: str) -> tagger_pb2.TagInstancesResponse:
    out = tagger_pb2.TagInstancesResponse(
        vocabulary_version=VOCABULARY_VERSION, profile=profile, reference_bins_id=reference_bins_id
    )
    for i, inst_id in enumerate(batch.ids):
        item = out.instances.add(id=inst_id, truncated=bool(batch.truncated[i]))
        item.tags.indices.extend(int(j) for j in batch.tag_matrix[i].nonzero()[0])
        item.measures.update({name: float(batch.measures[i, k]) for k, name in enumerate(LEXICAL_MEASURES)})
        item.analyzer.update(batch.analyzer[i])
        item.notes.extend(batch.notes[i])
    return out


def tagger_handle(settings: Settings, metrics: Metrics | None = None) -> ServiceHandle:
    servicer = TaggerServicer(settings, metrics or Metrics.default())
    return ServiceHandle(
        name="tagger",
        service_names=(SERVICE_NAME,),
        register=lambda server: tagger_pb2_grpc.add_TaggerServiceServicer_to_server(servicer, server),
        load=servicer.load,
        close=servicer.close,
    )
