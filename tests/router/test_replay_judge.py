"""``replay_judge`` (the vendor's own recorded LM labels) is honoured router-side whatever the judge
service runs (issue 18 item 1): here the judge runs its default ``learned`` backend, and every label
that comes back must still be the recorded one; a judge name no row records is INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import pytest
from conftest import ROOT

from hybridpref.server.settings import Settings
from hybridpref_client import RouterClient, RoutingError
from hybridpref_client.core.instances import LM_LABEL_RAW_PREFIX, Label, PositionMode, PreferenceInstance, read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"


@pytest.fixture(scope="module")
def stack(background_loop, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(tagger={"profile": "fast"}, judge={"backend": "learned"}, router={"default_strategy": "random"})
    running = background_loop.run(start_embedded_stack(settings, metrics=True), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture(scope="module")
def sample() -> list[PreferenceInstance]:
    return read_jsonl(str(SAMPLE))


@pytest.fixture()
def client(stack):
    with RouterClient(stack.router_address, timeout_s=120) as c:
        yield c


def expected(inst: PreferenceInstance) -> tuple[str, float]:
    """(label name, confidence) the replay backend gives for the sample's single-key ``gpt4`` labels."""
    if inst.metadata.get(LM_LABEL_RAW_PREFIX + "gpt4") == "tie_inconsistent":
        return "TIE", 0.0
    return inst.lm_labels["gpt4"].name, 1.0


def test_the_learned_judge_disagrees_with_the_recorded_labels(client, sample):
    """The precondition that makes the next tests able to fail: without replay the labels differ."""
    live = client.route(sample, fraction=0.0, strategy="all_lm")
    assert any((d.lm_label, d.lm_confidence) != expected(i) for d, i in zip(live.decisions, sample))


@pytest.mark.parametrize("strategy", ["all_lm", "random", "hybrid"])  # hybrid judges every row first
def test_recorded_labels_are_used_whatever_the_judge_backend(client, sample, strategy):
    result = client.route(sample, fraction=0.25, strategy=strategy, seed=5, replay_judge="gpt4")
    judged = [(d, i) for d, i in zip(result.decisions, sample) if d.route == "LM" or strategy == "hybrid"]
    assert judged
    for d, inst in judged:
        assert (d.lm_label, d.lm_confidence) == expected(inst), d.id


def test_recorded_labels_in_a_stream_and_by_prefix(client, sample):
    result = client.route_stream(sample, fraction=0.0, strategy="all_lm", replay_judge="GPT-4", chunk_size=7)
    assert [(d.lm_label, d.lm_confidence) for d in result.decisions] == [expected(i) for i in sample]


def test_per_order_labels_are_combined_as_the_replay_backend_does(client):
    rows = [
        PreferenceInstance(
            id=f"o{i}",
            prompt="Which is better?",
            response_a="Yes, it is.",
            response_b="No.",
            lm_labels={"J/P/order_ab": Label.A_BETTER, "J/P/order_ba": ab},
        )
        for i, ab in enumerate([Label.A_BETTER, Label.B_BETTER])
    ]
    result = client.route(rows, fraction=0.0, strategy="all_lm", replay_judge="J/P", judge_mode=PositionMode.BOTH)
    agree, flip = result.decisions
    assert (agree.lm_label, agree.lm_confidence, agree.judge_order_inconsistent) == ("A_BETTER", 1.0, False)
    assert (flip.lm_label, flip.judge_order_inconsistent) == ("TIE", True)


def test_an_unknown_judge_name_is_invalid_argument(client, sample, stack):
    for call in (
        lambda: client.route(sample, fraction=0.25, replay_judge="gpt-5"),
        lambda: client.route_stream(sample, fraction=0.25, replay_judge="gpt-5", chunk_size=10),
    ):
        with pytest.raises(RoutingError) as info:
            call()
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        [(field, text)] = info.value.violations
        assert field == "config.replay_judge" and "gpt-5" in text and "gpt4" in text  # names what is recorded


def test_rows_without_the_label_are_named(client, sample):
    rows = [*sample[:3], PreferenceInstance(id="nolabel", prompt="p", response_a="a", response_b="b")]
    with pytest.raises(RoutingError) as info:
        client.route(rows, fraction=0.25, replay_judge="gpt4")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in info.value.violations] == ["instances[3].lm_labels"]
