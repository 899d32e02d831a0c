"""The labelling loop through gRPC: CampaignService and RouteInstances with a campaign, on a real embedded
stack (tagger ``fast``, judge ``replay`` of the sample's recorded gpt4 labels) with API keys for two vendors
and the campaign store in a SQLite file. The SDK's sync and async clients, as a vendor would call them."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from conftest import ROOT

from hybridpref.server.auth import add_vendor
from hybridpref.server.settings import Settings
from hybridpref.store.sql import SqlCampaignStore
from hybridpref.v1 import campaign_pb2, campaign_pb2_grpc
from hybridpref_client import (
    AlreadyExistsError,
    AsyncRouterClient,
    InvalidArgumentError,
    InvalidInput,
    NotFoundError,
    RouterClient,
)
from hybridpref_client.core.instances import Label, read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return path, {"acme": add_vendor(path, "acme"), "globex": add_vendor(path, "globex")}


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'campaigns.db'}"


@pytest.fixture(scope="module")
def stack(background_loop, keys, db_url, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(
        tagger={"profile": "fast"},
        judge={"backend": "replay", "replay_key": "gpt4"},
        router={"db_url": db_url, "backend_check_s": 2.0},
        auth={"keys_file": str(keys[0])},
    )
    running = background_loop.run(start_embedded_stack(settings, metrics=True), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture(scope="module")
def sample():
    return read_jsonl(str(SAMPLE))


def client_for(stack, keys, vendor: str) -> RouterClient:
    # Retries on (the SDK's default): a loaded test machine may starve a health check now and then, and
    # every campaign call is safe to retry.
    return RouterClient(stack.router_address, timeout_s=120, api_key=keys[1][vendor])


@pytest.fixture()
def acme(stack, keys):
    with client_for(stack, keys, "acme") as c:
        yield c


@pytest.fixture()
def globex(stack, keys):
    with client_for(stack, keys, "globex") as c:
        yield c


def test_create_get_list_and_their_errors(acme):
    created = acme.create_campaign("plain", count=5, votes_per_pair=2, expected_instances=100, exploration_share=0.1)
    assert (created.name, created.budget_kind, created.budget_total, created.votes_per_pair) == ("plain", "count", 5, 2)
    assert created.strategy == "hybrid"  # "" resolves to the router's default, kept by name
    assert created.budget_left == 5 and created.routed == 0 and created.expected_instances == 100
    with pytest.raises(AlreadyExistsError):
        acme.create_campaign("plain", count=1)
    with pytest.raises(NotFoundError):
        acme.get_campaign("never-created")
    with pytest.raises(InvalidArgumentError) as bad:
        acme.create_campaign("sim", count=5, strategy="simulated")  # no per-instance score: cannot spend a campaign
    assert [v.field for v in bad.value.violations] == ["settings.strategy"]
    with pytest.raises(InvalidInput):
        acme.create_campaign("nobudget", budget="fraction:0.2")  # refused before anything is sent
    status = acme.get_campaign("plain")
    assert status.campaign.name == "plain" and status.agreement is None and status.labels_pending == 0
    assert "plain" in [c.name for c in acme.list_campaigns()]


def test_a_create_without_budget_names_the_field(stack, keys):
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateCampaign(
                campaign_pb2.CreateCampaignRequest(settings=campaign_pb2.CampaignSettings(name="x")),
                metadata=(("authorization", f"Bearer {keys[1]['acme']}"),),
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "settings.budget" in err.value.details()


def test_a_vendor_sees_only_its_own_campaigns(acme, globex, sample):
    acme.create_campaign("private", count=3, judge="gpt4")
    acme.route(sample[:5], campaign="private")
    assert "private" not in [c.name for c in globex.list_campaigns()]
    for call in (
        lambda: globex.get_campaign("private"),
        lambda: globex.route(sample[:5], campaign="private"),
        lambda: globex.submit_labels("private", [{"id": sample[0].id, "label": "A", "annotator": "g"}]),
        lambda: list(globex.export_dataset("private")),
        lambda: list(globex.pending_pairs("private")),
        lambda: globex.update_campaign("private", count=100),
        lambda: globex.retract_labels("private", "g"),
    ):
        with pytest.raises(NotFoundError):
            call()
    # The same name is free for another vendor, and independent.
    mine = globex.create_campaign("private", cost=2.5, judge="gpt4")
    assert mine.budget_kind == "cost" and mine.routed == 0
    assert acme.get_campaign("private").campaign.routed == 5


def test_batches_spend_the_campaign_budget_once_and_a_resent_batch_replays(acme, sample, db_url):
    acme.create_campaign("loop", count=12, expected_instances=len(sample), judge="gpt4")
    first = acme.route(sample[:20], campaign="loop", batch="b1")
    assert first.campaign["batch"] == "b1" and first.campaign["replayed"] == 0
    spent_1 = first.campaign["budget_spent"]
    assert 0 < spent_1 <= 12 and spent_1 == sum(d.route == "HUMAN" for d in first.decisions)
    assert all(d.lm_label is not None for d in first.decisions)  # every instance judged: the export needs it
    again = acme.route(sample[:20], campaign="loop", batch="b1-retry")
    assert [(d.id, d.route, d.lm_label) for d in again.decisions] == [(d.id, d.route, d.lm_label) for d in first.decisions]
    assert all(d.replayed for d in again.decisions) and again.campaign["budget_spent"] == spent_1
    last = acme.route(sample[20:], campaign="loop", batch="b2")  # the rest of the announced stream
    assert last.campaign["budget_spent"] == 12 and last.campaign["budget_left"] == 0
    # What the store holds matches what the router answered.
    store = SqlCampaignStore.open(db_url)
    try:
        rows = list(store.export_rows("acme", "loop"))
        routed = {d.id: d.route for d in first.decisions + last.decisions}
        assert {r["id"]: "HUMAN" if r["human_routed"] else "LM" for r in rows} == routed
        assert {r["batch"] for r in rows} == {"b1", "b2"}
        assert store.get_campaign("acme", "loop").spent == 12
    finally:
        store.close()


def test_campaign_requests_that_contradict_the_campaign_are_refused(acme, sample):
    acme.create_campaign("strict", count=4, judge="gpt4")
    from hybridpref.v1 import router_pb2_grpc
    from hybridpref_client.messages import build_config, unary_request

    stub = router_pb2_grpc.RouterServiceStub(acme._channel)
    meta = acme.config.metadata("t")
    cases = {
        "config.budget": build_config("count:2", campaign="strict"),
        "config.strategy": build_config(None, strategy="random", campaign="strict"),
        "config.replay_judge": build_config(None, replay_judge="other", campaign="strict"),
        "config.batch": build_config("count:2", batch="b"),
    }
    for field, config in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            stub.RouteInstances(unary_request(sample[:3], config), metadata=meta)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in err.value.details(), (field, err.value.details())
    with pytest.raises(InvalidInput):  # the SDK says so before sending
        acme.route(sample[:3], count=2, campaign="strict")
    assert acme.get_campaign("strict").campaign.routed == 0


def test_a_streamed_campaign_batch_is_stored_whole(acme, sample):
    acme.create_campaign("streamed", count=10, judge="gpt4", strategy="judge_doubt")
    stages: dict[str, int] = {}
    result = acme.route_stream(
        sample,
        campaign="streamed",
        chunk_size=7,
        on_progress=lambda phase, n: stages.__setitem__(phase, stages.get(phase, 0) + n),
    )
    # progress while the router works: every pair judged, then stored in the campaign's store
    assert stages["judged"] == stages["stored"] == stages["received"] == len(sample)
    assert [d.id for d in result.decisions] == [i.id for i in sample]
    humans = sum(d.route == "HUMAN" for d in result.decisions)
    assert humans == 10 == result.campaign["budget_spent"]  # no stream estimate: the batch is the rest
    status = acme.get_campaign("streamed")
    assert status.campaign.routed == len(sample) and status.campaign.pairs_pending == 10 == status.labels_pending


def test_labels_come_back_per_item_and_feed_the_status_and_the_export(acme, sample):
    acme.create_campaign("labels", count=8, judge="gpt4")
    result = acme.route(sample[:16], campaign="labels")
    routed = result.decisions
    # the campaign's correction model scored the batch: its version is in the summary and the progress
    model = result.campaign["model"]
    assert model["version"] == result.summary["correction_model_version"] and model["version"].startswith("panel-correction/1@")
    changes = result.campaign["expected_changes"]
    assert 0 <= changes["low"] <= changes["value"] <= changes["high"] <= 8
    human = [d for d in routed if d.route == "HUMAN"]
    lm = [d for d in routed if d.route == "LM"]
    truth = {i.id: i.human_label.winner or "tie" for i in sample}
    labels = [
        {"id": d.id, "label": truth[d.id], "annotator": "ann-1", "strength": 2 if truth[d.id] != "tie" else None} for d in human
    ]
    labels.append({"id": lm[0].id, "label": "B", "annotator": "ann-1", "rationale": "spot check"})
    labels.append({"id": "never-routed", "label": "A", "annotator": "ann-1"})
    results = acme.submit_labels("labels", labels)
    assert [r.index for r in results] == list(range(len(labels)))
    assert [r.status for r in results[: len(human)]] == ["stored"] * len(human)
    assert results[len(human)].audit and results[len(human)].status == "stored"
    assert (
        results[-1].status == "rejected"
        and "never-routed" in results[-1].error
        and results[-1].error.startswith(f"labels[{len(labels) - 1}].id")
    )
    again = acme.submit_labels("labels", labels[:2])
    assert [r.status for r in again] == ["unchanged", "unchanged"]  # a retry never double counts
    status = acme.get_campaign("labels")
    assert status.campaign.labels_returned == len(human) + 1 and status.labels_pending == 0
    (annotator,) = status.annotators  # one annotator, alone on every pair: nothing to compare with but the LM
    assert (annotator.annotator, annotator.votes, annotator.with_others) == ("ann-1", len(human) + 1, None)
    assert annotator.with_lm is not None and 0 <= annotator.with_lm.low <= annotator.with_lm.estimate <= annotator.with_lm.high
    # GetCampaign names the model that routes the next batch: the one fitted when the batch was routed (no label
    # back then), until REFIT_EVERY new votes have come back
    from hybridpref.router.adaptation import REFIT_EVERY

    assert status.model is not None and status.model["version"] == model["version"] and not status.model["adapted"]
    assert status.model["labels"] == 0 and len(human) + 1 < REFIT_EVERY
    # Agreement over labelled pairs where neither the human nor the LM label is a tie, with its interval.
    votes = {d.id: truth[d.id] for d in human} | {lm[0].id: "B"}
    lm_winner = {d.id: Label[d.lm_label].winner for d in human + lm[:1]}
    compared = [(votes[i], lm_winner[i]) for i in votes if votes[i] != "tie" and lm_winner[i] is not None]
    assert status.agreement is not None and status.agreement.low <= status.agreement.estimate <= status.agreement.high
    assert status.agreement.estimate == pytest.approx(sum(h == w for h, w in compared) / len(compared))
    # The model's check over gRPC: majorities that differ from the LM label against sum P(LM wrong), over the
    # human-routed pairs with a non-tie vote (every decision stored its P(LM wrong): the bundle has a model).
    decided = [d for d in human if votes[d.id] != "tie"]
    assert status.changes_known == len(decided) > 0
    assert status.realised_changes == sum(votes[d.id] != lm_winner[d.id] for d in decided)
    checked = status.expected_changes
    assert checked is not None and 0 <= checked.low <= checked.estimate <= checked.high <= len(decided)
    rows = list(acme.export_dataset("labels"))
    assert len(rows) == 16 and {r["label_source"] for r in rows if r["human_routed"]} == {"human"}
    by_id = {r["id"]: r for r in rows}
    for d in human:
        row, inst = by_id[d.id], next(i for i in sample if i.id == d.id)
        winner = truth[d.id]
        assert row["tie"] == (winner == "tie")
        if winner != "tie":
            assert row["chosen"] == (inst.response_a if winner == "A" else inst.response_b)
    audited = by_id[lm[0].id]
    assert audited["label_source"] == "lm" and not audited["human_routed"]  # an audit vote does not relabel
    # TRL's conversational form over gRPC: the same rows, the prompt as turns (the instance's messages when it
    # was routed with a conversation), one assistant turn each side
    chat = list(acme.export_dataset("labels", "trl-chat"))
    assert [r["id"] for r in chat] == [r["id"] for r in rows]
    for plain, turns in zip(rows, chat, strict=True):
        inst = next(i for i in sample if i.id == plain["id"])
        expected = [{"role": m.role, "content": m.content} for m in inst.messages] or [
            {"role": "user", "content": plain["prompt"]}
        ]
        assert turns["prompt"] == expected
        assert turns["chosen"] == [{"role": "assistant", "content": plain["chosen"]}]
        assert turns["rejected"] == [{"role": "assistant", "content": plain["rejected"]}]
        assert turns["label_source"] == plain["label_source"] and turns["tie"] == plain["tie"]
    pool = list(acme.export_dataset("labels", "pool"))
    assert {r["id"] for r in pool} == {d.id for d in human} | {lm[0].id}


def test_a_malformed_label_item_is_rejected_alone(stack, keys, acme, sample):
    acme.create_campaign("malformed", count=2, judge="gpt4")
    acme.route(sample[:4], campaign="malformed")
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        resp = stub.SubmitLabels(
            campaign_pb2.SubmitLabelsRequest(
                campaign="malformed",
                labels=[
                    campaign_pb2.HumanLabel(id=sample[0].id, annotator="a"),  # no label
                    campaign_pb2.HumanLabel(id=sample[1].id, annotator="a", label=campaign_pb2.HUMAN_PREFERENCE_A, strength=7),
                    campaign_pb2.HumanLabel(id=sample[2].id, annotator="a", label=campaign_pb2.HUMAN_PREFERENCE_B),
                ],
            ),
            metadata=(("authorization", f"Bearer {keys[1]['acme']}"),),
        )
    statuses = [campaign_pb2.LabelStatus.Name(r.status) for r in resp.results]
    assert statuses == ["LABEL_STATUS_REJECTED", "LABEL_STATUS_REJECTED", "LABEL_STATUS_STORED"]
    assert resp.results[0].error.startswith("labels[0].label") and resp.results[1].error.startswith("labels[1].strength")
    with pytest.raises(InvalidInput) as bad:  # the SDK names the bad fields of dict rows before sending
        acme.submit_labels("malformed", [{"id": "x", "label": "maybe", "annotator": ""}])
    assert {v.field for v in bad.value.violations} == {"labels[0].label", "labels[0].annotator"}


def test_pending_pairs_come_a_page_at_a_time_for_annotation_tools(stack, keys, acme, sample):
    acme.create_campaign("handoff", count=9, votes_per_pair=2, judge="gpt4")
    human = [d.id for d in acme.route(sample, campaign="handoff").decisions if d.route == "HUMAN"]
    assert len(human) == 9
    pairs = list(acme.pending_pairs("handoff", page_size=4))  # three pages: 4, 4, 1
    assert [p.id for p in pairs] == human and {(p.votes, p.votes_needed) for p in pairs} == {(0, 2)}
    by_id = {i.id: i for i in sample}
    assert all(p.response_a == by_id[p.id].response_a and p.prompt for p in pairs)
    acme.submit_labels("handoff", [{"id": human[0], "label": "A", "annotator": "ann-1"}], source="label-studio")
    assert [p.id for p in acme.pending_pairs("handoff", "ann-1")] == human[1:]  # what ann-1 has not labelled
    assert [(p.id, p.votes) for p in acme.pending_pairs("handoff")][:1] == [(human[0], 1)]  # still wants a vote
    # The raw RPC: a cursor, and the caller's own fields named in its errors.
    metadata = (("authorization", f"Bearer {keys[1]['acme']}"),)
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        page = stub.ListPendingPairs(campaign_pb2.ListPendingPairsRequest(campaign="handoff", page_size=5), metadata=metadata)
        assert [p.id for p in page.pairs] == human[:5] and page.next_page_token == human[4]
        last = stub.ListPendingPairs(
            campaign_pb2.ListPendingPairsRequest(campaign="handoff", page_size=5, page_token=page.next_page_token),
            metadata=metadata,
        )
        assert [p.id for p in last.pairs] == human[5:] and last.next_page_token == ""
        for request, field in (
            (campaign_pb2.ListPendingPairsRequest(campaign="handoff", page_size=1001), "page_size"),
            (campaign_pb2.ListPendingPairsRequest(campaign="handoff", page_token="nope"), "page_token"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.ListPendingPairs(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()

    async def pages():
        async with AsyncRouterClient(stack.router_address, timeout_s=120, api_key=keys[1]["acme"]) as c:
            return [p.id async for p in c.pending_pairs("handoff", page_size=2)]

    assert asyncio.run(pages()) == human


def test_update_campaign_tops_up_the_budget_in_its_own_unit(stack, keys, acme, sample):
    acme.create_campaign("topup", count=3, expected_instances=len(sample), judge="gpt4")
    first = acme.route(sample[:20], campaign="topup")
    spent = first.campaign["budget_spent"]
    updated = acme.update_campaign("topup", count=10, expected_instances=len(sample) + 10)
    assert (updated.budget_total, updated.expected_instances, updated.budget_spent) == (10, len(sample) + 10, spent)
    assert updated.budget_left == 10 - spent
    second = acme.route(sample[20:], campaign="topup")
    assert second.campaign["budget_spent"] > spent  # the new total paces the next batch
    for call, field in (
        (lambda: acme.update_campaign("topup", cost=50.0), "budget"),  # a count campaign stays a count
        (lambda: acme.update_campaign("topup", count=1), "budget.count"),  # below what is spent
        (lambda: acme.update_campaign("topup", expected_instances=5), "expected_instances"),  # below what is routed
    ):
        with pytest.raises(InvalidArgumentError) as err:
            call()
        assert err.value.violations[0].field == field
    with pytest.raises(InvalidInput):  # the SDK says so before sending
        acme.update_campaign("topup")

    async def cut():
        async with AsyncRouterClient(stack.router_address, timeout_s=120, api_key=keys[1]["acme"]) as c:
            return await c.update_campaign("topup", budget=f"count:{int(second.campaign['budget_spent'])}")

    assert asyncio.run(cut()).budget_left == 0


def test_an_annotators_labels_can_be_retracted(stack, keys, acme, sample):
    acme.create_campaign("retract", count=4, votes_per_pair=2, judge="gpt4")
    human = [d.id for d in acme.route(sample[:12], campaign="retract").decisions if d.route == "HUMAN"]
    acme.submit_labels("retract", [{"id": i, "label": "A", "annotator": a} for i in human for a in ("good", "spam")])
    assert {a.annotator for a in acme.get_campaign("retract").annotators} == {"good", "spam"}
    assert acme.retract_labels("retract", "spam", human[:1]) == 1
    assert acme.retract_labels("retract", "spam", []) == 0  # nothing sent: an empty list is not "all"
    before = _campaign_labels_metric(stack, "retracted")
    assert acme.retract_labels("retract", "spam") == len(human) - 1
    assert _campaign_labels_metric(stack, "retracted") == before + len(human) - 1
    status = acme.get_campaign("retract")
    assert [a.annotator for a in status.annotators] == ["good"] and status.labels_pending == len(human)
    with pytest.raises(InvalidArgumentError) as err:
        acme.retract_labels("retract", "")
    assert err.value.violations[0].field == "annotator"

    async def again():
        async with AsyncRouterClient(stack.router_address, timeout_s=120, api_key=keys[1]["acme"]) as c:
            return await c.retract_labels("retract", "spam")

    assert asyncio.run(again()) == 0


def test_a_closed_campaign_refuses_new_instances_over_grpc(stack, keys, acme, globex, sample):
    from hybridpref_client import FailedPreconditionError

    acme.create_campaign("closing", count=3, judge="gpt4")
    first = acme.route(sample[:8], campaign="closing")
    closed = acme.close_campaign("closing")
    assert closed.closed_at is not None and closed.routed == 8
    assert [c.closed_at for c in acme.list_campaigns() if c.name == "closing"] == [closed.closed_at]
    replayed = acme.route(sample[:8], campaign="closing")  # a retry of a batch routed before: its stored decisions
    assert [d.route for d in replayed.decisions] == [d.route for d in first.decisions]
    with pytest.raises(FailedPreconditionError, match="closed"):
        acme.route(sample[8:12], campaign="closing")
    with pytest.raises(NotFoundError):
        globex.close_campaign("closing")  # another vendor's campaign does not exist for it
    human = [d.id for d in first.decisions if d.route == "HUMAN"]
    assert acme.submit_labels("closing", [{"id": human[0], "label": "A", "annotator": "x"}])[0].status == "stored"

    async def close_again():
        async with AsyncRouterClient(stack.router_address, timeout_s=120, api_key=keys[1]["acme"]) as c:
            return await c.close_campaign("closing")

    assert asyncio.run(close_again()).closed_at == closed.closed_at


def test_the_async_client_does_the_same(stack, keys, sample):
    async def main():
        async with AsyncRouterClient(stack.router_address, timeout_s=120, api_key=keys[1]["acme"]) as c:
            created = await c.create_campaign("async", budget="count:3", judge="gpt4")
            routed = await c.route(sample[:6], campaign="async")
            human = [d.id for d in routed.decisions if d.route == "HUMAN"]
            results = await c.submit_labels("async", [{"id": i, "label": "tie", "annotator": "z"} for i in human])
            status = await c.get_campaign("async")
            rows = [r async for r in c.export_dataset("async")]
            names = [x.name for x in await c.list_campaigns()]
            with pytest.raises(NotFoundError):
                await c.get_campaign("absent")
            return created, human, results, status, rows, names

    created, human, results, status, rows, names = asyncio.run(main())
    assert created.budget_total == 3 and len(human) == 3 and {r.status for r in results} == {"stored"}
    assert status.campaign.labels_returned == 3 and "async" in names
    assert sum(r["tie"] and r["label_source"] == "human" for r in rows) == 3


def test_campaign_metrics_are_per_vendor(stack, acme, sample):
    acme.create_campaign("metered", count=2, judge="gpt4")
    routed = acme.route(sample[:6], campaign="metered").decisions
    human = [d for d in routed if d.route == "HUMAN"]
    acme.submit_labels("metered", [{"id": d.id, "label": "A", "annotator": "m"} for d in human])
    port = stack.services["router"].metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lines = [line for line in body.splitlines() if line.startswith("hybridpref_campaign_")]
    assert any(line.startswith('hybridpref_campaign_decisions_total{route="HUMAN",vendor="acme"}') for line in lines)
    assert any(line.startswith('hybridpref_campaign_labels_total{status="stored",vendor="acme"}') for line in lines)
    assert any(line.startswith('hybridpref_campaign_budget_spent_total{kind="count",vendor="acme"}') for line in lines)
    assert not any("metered" in line for line in lines)  # campaign names never become labels
    agreement = {
        k: _value(lines, f'hybridpref_campaign_agreement_votes_total{{outcome="{k}",vendor="acme"}}')
        for k in ("agree", "disagree")
    }
    expected = _value(lines, 'hybridpref_campaign_expected_agreement_total{vendor="acme"}')
    assert sum(agreement.values()) >= 1 and 0 < expected <= sum(agreement.values())


def _value(lines: list[str], prefix: str) -> float:
    return float(next(line for line in lines if line.startswith(prefix)).rsplit(" ", 1)[1])


def _campaign_labels_metric(stack, status: str) -> float:
    port = stack.services["router"].metrics_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    prefix = f'hybridpref_campaign_labels_total{{status="{status}",vendor="acme"}}'
    return next((float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(prefix)), 0.0)
