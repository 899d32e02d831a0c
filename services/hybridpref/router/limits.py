"""The router's request limits, checked on the request before any work (tagging included).

Every numeric option is bounded, every enum checked and every name length-capped here;
instance-level limits live in ``hybridpref_client.core.limits``; the judge template is checked
against what the judge advertises and a replay judge against the instances' recorded labels
(``judge_violations``). Everything is
``INVALID_ARGUMENT`` with ``google.rpc.BadRequest`` field violations, indices in the
caller's batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from hybridpref.common.recorded_judges import judge_names, resolve_judge
from hybridpref.common.vocabulary import NUM_TAGS
from hybridpref.server.settings import LimitsSettings
from hybridpref_client.core.errors import BackendUnavailable, FieldViolation, quote
from hybridpref_client.core.instances import PreferenceInstance
from hybridpref_client.core.limits import position_mode_violation

if TYPE_CHECKING:
    from hybridpref.v1 import router_pb2

MAX_NAME_CHARS = 128  # strategy, template and judge names
# Rows named in one refusal; the message counts the rest (the details must fit gRPC's metadata limit).
MAX_LISTED = 50
MAX_CAMPAIGN_CHARS = 200  # campaign names (the store's limit)
MAX_BATCH_CHARS = 256  # a campaign batch's name (the store's limit)
# How long the judge's advertised info is trusted before it is asked again.
JUDGE_INFO_TTL_S = 30.0

log = structlog.get_logger()


def config_violations(config: router_pb2.RouteConfig, limits: LimitsSettings) -> list[FieldViolation]:
    """Range checks of a ``hybridpref.v1.RouteConfig`` other than the budget's value and the strategy's
    name (``router.budget.budget_violations`` and ``router.strategies.strategy_spec`` check those)."""
    out: list[FieldViolation] = []
    has_budget = config.HasField("budget") and config.budget.WhichOneof("kind") is not None
    if config.campaign:
        if has_budget:
            out.append(
                FieldViolation("config.budget", "leave unset when routing for a campaign: the campaign's total budget governs")
            )
        if len(config.campaign) > MAX_CAMPAIGN_CHARS:
            out.append(FieldViolation("config.campaign", f"longer than {MAX_CAMPAIGN_CHARS} characters"))
    elif not has_budget:
        out.append(FieldViolation("config.budget", "required: set fraction, count, cost or auto"))
    elif config.batch:
        out.append(FieldViolation("config.batch", "names a campaign's batch: set config.campaign too"))
    if len(config.batch) > MAX_BATCH_CHARS:
        out.append(FieldViolation("config.batch", f"longer than {MAX_BATCH_CHARS} characters"))
    for name in ("strategy", "judge_template", "replay_judge"):
        if len(getattr(config, name)) > MAX_NAME_CHARS:
            out.append(FieldViolation(f"config.{name}", f"longer than {MAX_NAME_CHARS} characters"))
    bad_mode = position_mode_violation(config.judge_position_mode, "config.judge_position_mode")
    if bad_mode is not None:
        out.append(bad_mode)
    if config.explain_top_k > NUM_TAGS:
        out.append(
            FieldViolation("config.explain_top_k", f"must be at most {NUM_TAGS} (the number of tags), got {config.explain_top_k}")
        )
    if config.simulated_candidates > limits.max_simulated_candidates:
        out.append(
            FieldViolation(
                "config.simulated_candidates",
                f"must be at most {limits.max_simulated_candidates}, got {config.simulated_candidates}",
            )
        )
    return out


@dataclass(frozen=True)
class JudgeInfo:
    """What the judge accepts: its backend, template names (and ``name@version``s) and, for the
    replay backend, the judge name used when a request names none."""

    backend: str
    templates: frozenset[str] = field(default_factory=frozenset)
    default_replay_judge: str = ""

    @classmethod
    def of(cls, advertised: Any) -> JudgeInfo:
        """From what the judge advertises: its ``GetJudgeInfoResponse`` or, in process, ``Judge.info()``
        (the same fields)."""
        return cls(advertised.backend, frozenset(t.lower() for t in advertised.templates), advertised.default_replay_judge)


class JudgeInfoCache:
    """The judge's ``GetJudgeInfo``, fetched at most every ``ttl_s``; ``None`` while the judge
    cannot say (down, or an older judge without the RPC): checks are then left to the judge."""

    def __init__(self, fetch: Callable[[float], Awaitable[object]], ttl_s: float = JUDGE_INFO_TTL_S):
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._info: JudgeInfo | None = None
        self._stamp = -math.inf

    async def get(self, timeout_s: float = 2.0) -> JudgeInfo | None:
        import grpc  # here, not at the top: the router core imports this module and stays gRPC-free

        if time.monotonic() - self._stamp < self._ttl_s:
            return self._info
        try:
            self._info = JudgeInfo.of(await self._fetch(timeout_s))
            self._stamp = time.monotonic()
        except grpc.RpcError as exc:
            log.info("judge_info_unavailable", code=exc.code().name)
            return self._info  # last known, if any (a judge's backend changes only with a restart)
        except BackendUnavailable:  # known down: the judging call itself will say so, at once
            return self._info
        return self._info


def _template_key(template: str) -> str:
    base, at, version = template.strip().partition("@")
    return base.lower() + at + version


def judge_violations(
    info: JudgeInfo | None,
    template: str,
    replay_judge: str,
    instances: Sequence[PreferenceInstance],
    offset: int = 0,
    needs_judge: bool = True,
    max_listed: int | None = MAX_LISTED,
) -> list[FieldViolation]:
    """Judge template and replay-judge checks.

    A named ``replay_judge`` is replayed by the router from the instances' ``lm_labels`` whatever the
    judge's backend (``hybridpref.router.recorded``): every instance must carry a label from it, and a
    name no instance records is refused. Without one, the template is checked against ``info``
    (``None``: not known; skipped) and, when the judge runs the replay backend, its default judge
    against the instances (``instances[i]`` counted in the caller's batch from ``offset``)."""
    if not needs_judge:
        return []
    if replay_judge:
        return replay_violations(instances, replay_judge, offset, max_listed)
    if info is None:
        return []
    out: list[FieldViolation] = []
    if template.strip() and info.templates and _template_key(template) not in info.templates:
        out.append(
            FieldViolation(
                "config.judge_template", f"unknown template {quote(template)}; the judge has {', '.join(sorted(info.templates))}"
            )
        )
    if info.backend != "replay":
        return out
    if not info.default_replay_judge:
        out.append(FieldViolation("config.replay_judge", "the judge replays recorded labels: name the judge to replay"))
        return out
    return out + replay_violations(instances, info.default_replay_judge, offset, max_listed)


def replay_violations(
    instances: Sequence[PreferenceInstance], name: str, offset: int = 0, max_listed: int | None = MAX_LISTED
) -> list[FieldViolation]:
    """Why ``name`` cannot be replayed on ``instances`` (empty when every row has its label).

    A name no row records is one ``config.replay_judge`` violation listing the judges recorded;
    otherwise the rows without a label, ``instances[i]`` counted from ``offset`` (the first
    ``max_listed`` and a count of the rest; ``None``: all)."""
    missing: list[tuple[int, str]] = []
    recorded: set[str] = set()
    for k, inst in enumerate(instances):
        try:
            resolve_judge(inst.lm_labels.keys(), name)
        except LookupError as exc:
            missing.append((k, str(exc)))
        recorded.update(inst.lm_labels.keys())
    if not missing:
        return []
    if len(missing) == len(instances):
        names = judge_names(recorded)
        return [
            FieldViolation(
                "config.replay_judge",
                f"unknown judge {name!r}: no instance has its labels; recorded judges: "
                f"{', '.join(names) if names else 'none (the instances carry no lm_labels)'}",
            )
        ]
    listed = missing if max_listed is None else missing[:max_listed]
    out = [FieldViolation(f"instances[{k + offset}].lm_labels", text) for k, text in listed]
    if len(listed) < len(missing):
        out.append(FieldViolation("instances", f"... and {len(missing) - len(listed)} more rows without a label from {name!r}"))
    return out
