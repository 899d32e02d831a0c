"""Progress while a streamed batch is worked on (issue 18 item 14): the router reports its stages
(tagged, judged, stored) before any decision when ``RouteConfig.report_progress`` asks for it, never
otherwise (an older client must not see a message it does not know), and the SDK turns the reports into
``on_progress`` increments, sync and async alike."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from conftest import ROOT

from hybridpref.router.progress import ProgressReporter, StageProgress, report, reporting, with_progress
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc
from hybridpref_client import AsyncRouterClient, RouterClient
from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.instances import read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"


# ---- the reporter and the runner, without gRPC ----------------------------------------------------------


def test_the_reporter_throttles_each_stage_but_always_sends_its_last_report():
    now = [0.0]
    sent: list[StageProgress] = []
    reporter = ProgressReporter(sent.append, min_interval_s=1.0, clock=lambda: now[0])
    reporter.report("tagged", 64, 0)
    reporter.report("tagged", 128, 0)  # too soon
    reporter.report("judged", 64, 200)  # another stage has its own clock
    now[0] = 0.5
    reporter.report("judged", 200, 200)  # completes the stage: sent however soon
    now[0] = 1.5
    reporter.report("tagged", 192, 0)
    assert [(p.stage, p.done, p.total) for p in sent] == [
        ("tagged", 64, 0),
        ("judged", 64, 200),
        ("judged", 200, 200),
        ("tagged", 192, 0),
    ]


def test_report_outside_a_reporting_block_does_nothing():
    report("tagged", 1, 1)  # no reporter: the unary path and the harness call the same core
    sent: list[StageProgress] = []
    with reporting(ProgressReporter(sent.append)):
        report("judged", 3, 3)
    report("judged", 4, 4)
    assert sent == [StageProgress("judged", 3, 3)]


def test_with_progress_yields_reports_then_the_result_and_cancels_abandoned_work():
    async def work() -> str:
        for done in (1, 2):
            report("judged", done, 2)
            await asyncio.sleep(0)
        return "outcome"

    async def failing() -> str:
        report("tagged", 1, 0)
        await asyncio.sleep(0)
        raise ValueError("bad chunk")

    cancelled = asyncio.Event()

    async def slow() -> str:
        report("tagged", 1, 0)
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    async def main():
        items = [item async for item in with_progress(work())]
        assert items == [StageProgress("judged", 1, 2), StageProgress("judged", 2, 2), "outcome"]
        seen = []
        with pytest.raises(ValueError, match="bad chunk"):
            async for item in with_progress(failing()):
                seen.append(item)
        assert seen == [StageProgress("tagged", 1, 0)]
        stream = with_progress(slow())
        assert await anext(stream) == StageProgress("tagged", 1, 0)
        await stream.aclose()  # the caller went away
        assert cancelled.is_set()

    asyncio.run(main())


# ---- a real router stack --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(background_loop, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(tagger={"profile": "fast"}, judge={"backend": "replay", "replay_key": "gpt4"})
    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture(scope="module")
def instances():
    """The sample's 40 pairs five times over, with fresh ids: 200 instances, several slices per stage."""
    rows = read_jsonl(str(SAMPLE))
    return [dataclasses.replace(row, id=f"{row.id}-{copy}") for copy in range(5) for row in rows]


def stream_replies(stack, instances, **config) -> list[router_pb2.RouteInstancesStreamResponse]:
    def messages():
        yield router_pb2.RouteInstancesStreamRequest(
            config=router_pb2.RouteConfig(budget=common_pb2.Budget(fraction=0.25), seed=3, **config)
        )
        for start in range(0, len(instances), 50):
            chunk = instances_to_proto(instances[start : start + 50])
            yield router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=chunk))

    with grpc.insecure_channel(stack.router_address) as channel:
        return list(router_pb2_grpc.RouterServiceStub(channel).RouteInstancesStream(messages(), timeout=120))


def kinds(replies) -> list[str]:
    return [r.WhichOneof("item") for r in replies]


def test_without_the_flag_a_stream_carries_no_progress(stack, instances):
    replies = stream_replies(stack, instances, strategy="greedy")
    assert set(kinds(replies)) == {"decisions", "summary"}


@pytest.mark.parametrize("strategy", ["greedy", "hybrid"])
def test_progress_comes_before_the_decisions_and_ends_at_each_stages_total(stack, instances, strategy):
    replies = stream_replies(stack, instances, strategy=strategy, report_progress=True)
    order = kinds(replies)
    assert order[-1] == "summary" and "progress" in order
    first_decision = order.index("decisions")
    assert "progress" not in order[first_decision:]  # the stages are done before any decision is sent
    reports: dict[str, list[router_pb2.RouteProgress]] = {}
    for reply in replies[:first_decision]:
        reports.setdefault(reply.progress.stage, []).append(reply.progress)
    for stage, seen in reports.items():
        done = [p.done for p in seen]
        assert done == sorted(done), stage
        assert seen[-1].done == seen[-1].total, (stage, seen[-1])  # each stage's last report completes it
    summary = replies[-1].summary
    if strategy == "greedy":  # a PPM strategy: tags as chunks arrive; the judge labels the LM-routed pairs only
        assert reports["tagged"][-1].total == len(instances)
        assert reports["judged"][-1].total == summary.lm_count
    else:  # the default: the judge labels every pair first
        assert reports["judged"][-1].total == len(instances)


def test_the_sdk_turns_reports_into_increments_sync_and_async(stack, instances):
    sync_events: list[tuple[str, int]] = []
    async_events: list[tuple[str, int]] = []
    with RouterClient(stack.router_address, timeout_s=120) as client:
        result = client.route_stream(
            instances,
            fraction=0.25,
            strategy="greedy",
            seed=3,
            chunk_size=50,
            on_progress=lambda phase, n: sync_events.append((phase, n)),
        )

    async def main():
        async with AsyncRouterClient(stack.router_address, timeout_s=120) as client:
            return await client.route_stream(
                instances,
                fraction=0.25,
                strategy="greedy",
                seed=3,
                chunk_size=50,
                on_progress=lambda phase, n: async_events.append((phase, n)),
            )

    async_result = asyncio.run(main())
    lm_count = result.summary["lm_count"]
    assert async_result.summary["lm_count"] == lm_count
    for events in (sync_events, async_events):
        totals: dict[str, int] = {}
        for phase, n in events:
            assert n > 0, (phase, n)
            totals[phase] = totals.get(phase, 0) + n
        assert totals == {"sent": 200, "tagged": 200, "judged": lm_count, "received": 200}
        phases = [phase for phase, _ in events]
        last_stage = max(i for i, p in enumerate(phases) if p in ("tagged", "judged"))
        assert last_stage < phases.index("received")
