"""Hostile input against the real CampaignService, on a router whose store is a real PostgreSQL (hypothesis,
seeded): every campaign RPC with fuzzed fields (weird unicode, NUL, huge and non-finite numbers, out-of-range
enums, unknown names) and campaign routing with fuzzed instances. No request may end in INTERNAL or UNKNOWN,
and the router stays SERVING. PostgreSQL is the engine that refuses what SQLite stores (NUL in text), so the
fuzz runs there: a NUL in a routed response used to fail the whole batch as an internal error.
"""

from __future__ import annotations

import collections

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.postgres import postgres_server  # noqa: F401  (fixture)

from hybridpref.server.settings import Settings
from hybridpref.v1 import campaign_pb2, campaign_pb2_grpc, common_pb2, router_pb2, router_pb2_grpc

EXAMPLES = 150
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
WEIRD = "\x00\u200b\ufeff\u2028\u202e\u0301\t\n \u00a0\U0001f600\u05d0\x7f\x1b"
texts = st.one_of(
    st.sampled_from(["", " ", "\x00", "ok", "c1", "x" * 300, "nul\x00inside"]),
    st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list(WEIRD)), max_size=30),
)
names = st.one_of(st.sampled_from(["c1", "c2", "missing", ""]), texts)
known = st.one_of(st.sampled_from(["c1", "c2"]), st.sampled_from(["c1", "c2"]), names)  # mostly the two campaigns
doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1.0, 0.0, 2.5]))
uint64 = st.one_of(st.integers(0, 50), st.integers(0, 2**64 - 1))
uint32 = st.one_of(st.integers(0, 5), st.integers(0, 2**32 - 1))
int32 = st.integers(-(2**31), 2**31 - 1)


@st.composite
def budgets(draw) -> campaign_pb2.CampaignBudget:
    kind = draw(st.sampled_from(["count", "cost", None]))
    if kind is None:
        return campaign_pb2.CampaignBudget()
    return campaign_pb2.CampaignBudget(**{kind: draw(uint64 if kind == "count" else doubles)})


@st.composite
def create_requests(draw):
    settings_ = campaign_pb2.CampaignSettings(
        name=draw(names),
        strategy=draw(st.one_of(st.sampled_from(["", "hybrid", "judge_doubt", "random", "simulated"]), texts)),
        judge=draw(st.one_of(st.sampled_from(["", "gpt4"]), texts)),
        votes_per_pair=draw(uint32),
        exploration_share=draw(doubles),
    )
    if draw(st.booleans()):
        settings_.budget.CopyFrom(draw(budgets()))
    if draw(st.booleans()):
        settings_.expected_instances = draw(uint64)
    return campaign_pb2.CreateCampaignRequest(settings=settings_)


@st.composite
def plausible_creates(draw):
    """Settings a careful vendor might send: they reach the store (created, or ALREADY_EXISTS)."""
    budget = draw(
        st.one_of(
            st.builds(campaign_pb2.CampaignBudget, count=st.integers(0, 10**6)),
            st.builds(campaign_pb2.CampaignBudget, cost=st.floats(0, 1e6)),
        )
    )
    settings_ = campaign_pb2.CampaignSettings(
        name=draw(st.text(alphabet="abcé😀-_", min_size=1, max_size=12)),
        budget=budget,
        strategy=draw(st.sampled_from(["", "hybrid", "judge_doubt", "random"])),
        votes_per_pair=draw(st.integers(0, 5)),
        exploration_share=draw(st.floats(0, 1)),
    )
    if draw(st.booleans()):
        settings_.expected_instances = draw(st.integers(1, 10**9))
    return campaign_pb2.CreateCampaignRequest(settings=settings_)


@st.composite
def update_requests(draw):
    request = campaign_pb2.UpdateCampaignRequest(name=draw(known))
    if draw(st.booleans()):
        request.budget.CopyFrom(draw(budgets()))
    if draw(st.booleans()):
        request.expected_instances = draw(uint64)
    return request


@st.composite
def label_requests(draw):
    labels = []
    for _ in range(draw(st.integers(0, 4))):
        label = campaign_pb2.HumanLabel(
            id=draw(st.one_of(st.sampled_from(["f0", "f1", "f2"]), texts)),
            annotator=draw(st.one_of(st.just("ann"), texts)),
            label=draw(st.one_of(st.integers(0, 3), int32)),
            rationale=draw(st.one_of(st.just(""), texts)),
        )
        if draw(st.booleans()):
            label.strength = draw(uint32)
        if draw(st.integers(0, 3)) == 0:
            label.labelled_at.CopyFrom(
                Timestamp(seconds=draw(st.integers(-(2**40), 2**40)), nanos=draw(st.integers(0, 10**9 - 1)))
            )
        labels.append(label)
    return campaign_pb2.SubmitLabelsRequest(campaign=draw(known), labels=labels, source=draw(st.one_of(st.just(""), texts)))


@st.composite
def pending_requests(draw):
    return campaign_pb2.ListPendingPairsRequest(
        campaign=draw(known),
        annotator=draw(st.one_of(st.just(""), texts)),
        page_size=draw(st.one_of(st.integers(0, 1001), uint32)),
        page_token=draw(st.one_of(st.sampled_from(["", "f0", "f2"]), texts)),
    )


@st.composite
def export_requests(draw):
    return campaign_pb2.ExportDatasetRequest(campaign=draw(known), format=draw(st.one_of(st.integers(0, 3), int32)))


@st.composite
def campaign_routes(draw):
    """A few instances, most plausible, for a campaign (or a fuzzed name), with fuzzed texts now and then."""
    config = router_pb2.RouteConfig(campaign=draw(known), batch=draw(st.one_of(st.just(""), st.just(""), texts)))
    instances = []
    for i in range(draw(st.integers(1, 3))):
        msg = common_pb2.PreferenceInstance(
            id=draw(st.one_of(st.just(f"f{i}"), st.just(f"g{i}"), texts)),
            prompt=draw(st.one_of(st.just("What is 2+2?"), st.just("Name a colour."), texts)),
            response_a=draw(st.one_of(st.just("It is 4."), st.just("Blue."), texts)),
            response_b=draw(st.one_of(st.just("Four."), st.just("Green, I think."), texts)),
        )
        msg.lm_labels["gpt4"] = draw(st.integers(1, 5))
        if draw(st.integers(0, 4)) == 0:
            msg.metadata[draw(texts)] = draw(texts)
        instances.append(msg)
    skip = draw(st.booleans())
    config.skip_invalid_instances = skip
    return router_pb2.RouteInstancesRequest(instances=instances, config=config)


@pytest.fixture(scope="module")
def stack(background_loop, postgres_server, log_capture):  # noqa: F811
    from hybridpref.cli.stack import start_embedded_stack
    from hybridpref.store.sql import SqlCampaignStore

    url = postgres_server.create_database("fuzz")
    SqlCampaignStore.open(url, upgrade=True).close()  # PostgreSQL is migrated by the operator (a Job), not on open
    settings_ = Settings(
        tagger={"profile": "fast"},
        judge={"backend": "replay", "replay_key": "gpt4"},
        router={"db_url": url},
        server={"max_deadline_s": 20},
    )
    running = background_loop.run(start_embedded_stack(settings_), timeout=300)
    with grpc.insecure_channel(running.router_address) as channel:  # two campaigns for the fuzz to hit
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        budgets_ = (("c1", campaign_pb2.CampaignBudget(count=2)), ("c2", campaign_pb2.CampaignBudget(cost=3.0)))
        for name, budget in (*budgets_, ("c3", campaign_pb2.CampaignBudget(count=1))):
            settings_ = campaign_pb2.CampaignSettings(name=name, budget=budget, judge="gpt4", votes_per_pair=2)
            stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(settings=settings_), timeout=20)
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture(scope="module")
def codes():
    return collections.Counter()


def _code(call) -> grpc.StatusCode:
    try:
        out = call()
        if hasattr(out, "__iter__") and not hasattr(out, "ListFields"):
            list(out)  # a streaming answer fails while it is read
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


RPCS = {
    "CreateCampaign": st.one_of(create_requests(), plausible_creates()),
    "UpdateCampaign": update_requests(),
    "SubmitLabels": label_requests(),
    "ListPendingPairs": pending_requests(),
    "ExportDataset": export_requests(),
    "GetCampaign": st.builds(campaign_pb2.GetCampaignRequest, name=names),
    # never c1 / c2: the routing fuzz below routes for them
    "CloseCampaign": st.builds(
        campaign_pb2.CloseCampaignRequest, name=st.one_of(st.just("c3"), names.filter(lambda n: n not in ("c1", "c2")))
    ),
    "RetractLabels": st.builds(
        campaign_pb2.RetractLabelsRequest,
        campaign=known,
        annotator=st.one_of(st.sampled_from(["ann", "nobody", ""]), texts),
        ids=st.lists(st.one_of(st.sampled_from(["f0", "f1"]), texts), max_size=3),
    ),
}


RPCS["GetCampaign"] = st.builds(campaign_pb2.GetCampaignRequest, name=known)


@pytest.mark.parametrize("method", list(RPCS))
def test_fuzz_campaign_rpcs(stack, codes, method):
    with grpc.insecure_channel(stack.router_address) as channel:
        call = getattr(campaign_pb2_grpc.CampaignServiceStub(channel), method)

        @FUZZ
        @given(RPCS[method])
        def run(request):
            code = _code(lambda: call(request, timeout=20))
            codes[(method, code.name)] += 1
            assert code not in FORBIDDEN, request

        run()
    seen = {name for (what, name) in codes if what == method}
    assert "INVALID_ARGUMENT" in seen or "NOT_FOUND" in seen, codes
    assert "OK" in seen, codes  # the fuzz reaches the store, not only the checks


def test_fuzz_campaign_routing(stack, codes):
    with grpc.insecure_channel(stack.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        @FUZZ
        @given(campaign_routes())
        def run(request):
            code = _code(lambda: stub.RouteInstances(request, timeout=20))
            codes[("route", code.name)] += 1
            assert code not in FORBIDDEN | {grpc.StatusCode.UNAVAILABLE}, request

        run()
    assert codes[("route", "OK")] >= 20 and codes[("route", "INVALID_ARGUMENT")] >= 10, dict(codes)


def test_after_the_campaign_fuzz_still_serving_and_within_budget(stack, codes):
    assert not [k for k in codes if k[1] in ("INTERNAL", "UNKNOWN")], codes
    with grpc.insecure_channel(stack.router_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="hybridpref.v1.CampaignService"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        for name in ("c1", "c2"):
            campaign = stub.GetCampaign(campaign_pb2.GetCampaignRequest(name=name), timeout=20).campaign
            total = campaign.settings.budget.count or campaign.settings.budget.cost
            assert campaign.budget_spent <= total + 1e-9, campaign  # whatever the fuzz updated, never over
