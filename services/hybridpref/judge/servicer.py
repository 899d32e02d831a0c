"""Thin gRPC servicer over the judge core (``hybridpref.judge.core.Judge``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridpref.server import deadline as deadlines
from hybridpref.server.channels import remaining_timeout
from hybridpref.server.executors import CoreExecutor
from hybridpref.server.metrics import Metrics
from hybridpref.server.server import ServiceHandle
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from hybridpref_client.core.convert import instances_from_proto
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import PositionMode, validate_instances
from hybridpref_client.core.limits import Limits, position_mode_violation

if TYPE_CHECKING:
    from hybridpref.judge.core import Judge

SERVICE_NAME = judge_pb2.DESCRIPTOR.services_by_name["JudgeService"].full_name


def build_judge(settings: Settings, metrics: Metrics | None = None) -> Judge:
    """The judge core configured from settings (backend and its options); with ``metrics``, failed
    exchanges with an LM endpoint are counted in ``hybridpref_backend_errors_total``."""
    from hybridpref.judge.core import Judge

    options: dict[str, Any]
    if settings.judge.backend == "openai":
        options = {
            "base_url": settings.judge.openai_base_url,
            "model": settings.judge.openai_model,
            **({"api_key_file": settings.judge.openai_api_key_file} if settings.judge.openai_api_key_file else {}),
            "concurrency": settings.judge.openai_concurrency,
        }
        if metrics is not None:
            errors = metrics.backend_errors
            options["on_failure"] = lambda reason: errors.labels("judge", "openai", reason).inc()
    elif settings.judge.backend == "replay":
        options = {"default_judge": settings.judge.replay_key}
    else:  # learned (a spec JSON) or embedded (a GGUF / HF model): both read judge_model_path
        options = {"model": settings.judge.model_path} if settings.judge.model_path else {}
    return Judge.from_config(settings.judge.backend, default_template=settings.judge.template, **options)


class JudgeServicer(judge_pb2_grpc.JudgeServiceServicer):
    def __init__(self, settings: Settings, metrics: Metrics):
        self._settings = settings
        self._metrics = metrics
        self.judge = build_judge(settings, metrics)
        self._executor = CoreExecutor("judge")
        self._limits = Limits.from_settings(settings.limits)

    async def JudgeInstances(self, request, context):
        bad_mode = position_mode_violation(request.position_mode, "position_mode")
        if bad_mode is not None:
            raise InvalidInput(bad_mode)
        instances = instances_from_proto(request.instances, self._limits, max_count=self._settings.limits.max_batch)
        validate_instances(instances, self._settings.limits.max_batch)
        judgements = await self._executor.run(
            self.judge.judge,
            instances,
            mode=PositionMode(request.position_mode),
            template=request.template or None,
            seed=request.seed,
            replay_judge=request.replay_judge or None,
            deadline=deadlines.current() or remaining_timeout(context),
            size=len(instances),  # small calls first
        )
        self._metrics.instances.labels("judge", "JudgeInstances").inc(len(instances))
        return judge_pb2.JudgeInstancesResponse(judgements=[to_proto(j) for j in judgements])

    async def GetJudgeInfo(self, request, context):
        info = self.judge.info()
        return judge_pb2.GetJudgeInfoResponse(
            backend=info.backend,
            judge_id=info.judge_id,
            templates=list(info.templates),
            default_template=info.default_template,
            default_replay_judge=info.default_replay_judge,
        )

    async def close(self) -> None:
        self._executor.shutdown()


def to_proto(j) -> judge_pb2.Judgement:
    return judge_pb2.Judgement(
        id=j.id,
        label=common_pb2.PreferenceLabel.ValueType(int(j.label)),
        confidence=float(j.confidence),
        verdict_ab=common_pb2.PreferenceLabel.ValueType(int(j.verdict_ab)),
        verdict_ba=common_pb2.PreferenceLabel.ValueType(int(j.verdict_ba)),
        order_inconsistent=bool(j.order_inconsistent),
        judge_id=j.judge_id,
        template_version=j.template_version,
        backend=j.backend,
        **({"p_a_better": float(j.p_a_better)} if j.p_a_better is not None else {}),
    )


def judge_handle(settings: Settings, metrics: Metrics | None = None) -> ServiceHandle:
    servicer = JudgeServicer(settings, metrics or Metrics.default())
    return ServiceHandle(
        name="judge",
        service_names=(SERVICE_NAME,),
        register=lambda server: judge_pb2_grpc.add_JudgeServiceServicer_to_server(servicer, server),
        load=servicer.judge.load,
        close=servicer.close,
    )
