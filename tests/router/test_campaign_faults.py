"""Nothing lost, nothing counted twice, on both engines (a SQLite file and a real PostgreSQL server), through
real router processes (``hybridpref serve router``) and gRPC clients:

* kill -9 of the router while it routes a campaign's batches, and while it stores labels: after a restart
  every acknowledged decision and label is there, and re-sending everything (the unacknowledged call
  included) counts each instance and each vote once;
* 20 concurrent gRPC clients submitting labels to one campaign: the counts are exact;
* two router processes on one PostgreSQL database routing batches of one campaign at once: the budget is
  spent once, never over.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.postgres import postgres_server, store_url  # noqa: F401  (fixtures)
from support.router_process import Backends, RouterProcess, instances

from hybridpref.store.engine import migrate
from hybridpref.store.sql import SqlCampaignStore
from hybridpref_client import RouterClient, RoutingError

VENDOR = "default"  # the routers run without API keys


@pytest.fixture(scope="module")
def backends(background_loop, log_capture):
    running = Backends.start(background_loop)
    yield running
    running.stop(background_loop)


@pytest.fixture
def db(store_url):  # noqa: F811
    migrate(store_url)  # the production order: migrations first (a router never migrates PostgreSQL)
    return store_url


@pytest.fixture
def router(backends, db):
    proc = RouterProcess(backends, db).start()
    yield proc
    proc.stop()


def client(proc: RouterProcess) -> RouterClient:
    return RouterClient(proc.address, timeout_s=60, max_attempts=1)


def stored(db: str, name: str):
    store = SqlCampaignStore.open(db)
    try:
        return store.get_campaign(VENDOR, name), {r["id"]: r["human_routed"] for r in store.export_rows(VENDOR, name)}
    finally:
        store.close()


def kill_after(proc: RouterProcess, acked: list, n: int, seed: int, stop: threading.Event, within_s: float) -> None:
    """SIGKILL the router once ``n`` calls were acknowledged, a seeded moment (up to ``within_s``) later."""
    while len(acked) < n and not stop.is_set():
        time.sleep(0.002)
    time.sleep(random.Random(seed).uniform(0.0, within_s))
    proc.kill9()


def test_kill9_while_routing_a_campaign_loses_no_acknowledged_decision(backends, db, router):
    batches = [instances(f"b{k}-", 60, seed=k) for k in range(10)]
    total = sum(len(b) for b in batches)
    with client(router) as c:
        c.create_campaign("crash", count=90, expected_instances=total, judge="gpt4")
    acked: list[tuple[int, dict[str, str]]] = []
    failed: list[RoutingError] = []
    stop = threading.Event()

    def send() -> None:
        with client(router) as c:
            for k, batch in enumerate(batches):
                try:
                    result = c.route(batch, campaign="crash", batch=f"batch-{k}")
                except RoutingError as exc:
                    failed.append(exc)
                    return
                acked.append((k, {d.id: d.route for d in result.decisions}))
        stop.set()

    sender = threading.Thread(target=send)
    sender.start()
    kill_after(router, acked, 3, seed=1, stop=stop, within_s=0.15)
    sender.join(60)
    assert failed and len(acked) < len(batches), "the kill must land while batches were still being routed"
    campaign, rows = stored(db, "crash")
    for _, routes in acked:  # every acknowledged decision survived, as answered
        assert {i: ("HUMAN" if rows[i] else "LM") for i in routes} == routes
    assert campaign.routed == len(rows) and campaign.spent == sum(rows.values()) <= 90

    restarted = RouterProcess(backends, db).start()
    try:
        with client(restarted) as c:
            final = {}
            for k, batch in enumerate(batches):  # the client re-sends everything, acknowledged or not
                result = c.route(batch, campaign="crash", batch=f"batch-{k}")
                final.update({d.id: d for d in result.decisions})
            status = c.get_campaign("crash").campaign
    finally:
        restarted.stop()
    for _, routes in acked:
        assert all(final[i].replayed and final[i].route == r for i, r in routes.items())
    assert status.routed == total  # each instance once
    humans = sum(d.route == "HUMAN" for d in final.values())
    assert status.human_routed == humans == status.budget_spent == 90  # the stream ended: exactly the total


def test_kill9_while_storing_labels_loses_no_acknowledged_label(backends, db, router):
    batch = instances("l-", 400, seed=7)
    with client(router) as c:
        c.create_campaign("votes", count=400, votes_per_pair=3, judge="gpt4")  # every pair to humans
        c.route(batch, campaign="votes")
    rng = random.Random(3)
    labels = [
        {"id": inst["id"], "label": rng.choice(("A", "B", "tie")), "annotator": f"ann{a}"} for a in range(3) for inst in batch
    ]
    chunks = [labels[k : k + 5] for k in range(0, len(labels), 5)]  # many small calls: the kill lands among them
    acked: list[int] = []
    failed: list[RoutingError] = []
    stop = threading.Event()

    def send() -> None:
        with client(router) as c:
            for k, chunk in enumerate(chunks):
                try:
                    results = c.submit_labels("votes", chunk)
                except RoutingError as exc:
                    failed.append(exc)
                    return
                assert {r.status for r in results} == {"stored"}
                acked.append(k)
        stop.set()

    sender = threading.Thread(target=send)
    sender.start()
    kill_after(router, acked, 4, seed=2, stop=stop, within_s=0.05)
    sender.join(60)
    assert failed and len(acked) < len(chunks)
    store = SqlCampaignStore.open(db)
    try:
        held = {
            (h.instance_id, h.annotator, h.preference) for _, _, votes in store.returned_labels(VENDOR, "votes") for h in votes
        }
    finally:
        store.close()
    for k in acked:
        assert {(x["id"], x["annotator"], x["label"]) for x in chunks[k]} <= held

    restarted = RouterProcess(backends, db).start()
    try:
        with client(restarted) as c:
            statuses = [[r.status for r in c.submit_labels("votes", chunk)] for chunk in chunks]
            status = c.get_campaign("votes")
    finally:
        restarted.stop()
    for k in acked:
        assert set(statuses[k]) == {"unchanged"}
    assert status.campaign.labels_returned == len(labels)  # each (pair, annotator) once
    assert status.labels_pending == 0 and status.campaign.pairs_pending == 0


def test_twenty_grpc_clients_submitting_labels_count_exactly(db, router):
    batch = instances("c-", 100, seed=11)
    with client(router) as c:
        c.create_campaign("crowd", count=100, votes_per_pair=10, judge="gpt4")
        ids = [d.id for d in c.route(batch, campaign="crowd").decisions]
    barrier = threading.Barrier(20)

    def annotate(t: int) -> list[str]:
        # clients t and t + 10 are one annotator sending the same labels (a retry on another connection)
        labels = [{"id": i, "label": "A" if k % 3 else "B", "annotator": f"ann{t % 10}"} for k, i in enumerate(ids)]
        with client(router) as c:
            barrier.wait()
            out = []
            for start in range(0, len(labels), 10):
                out += [r.status for r in c.submit_labels("crowd", labels[start : start + 10])]
            return out

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(annotate, range(20)))
    assert sum(r.count("stored") for r in results) == 1000
    assert sum(r.count("unchanged") for r in results) == 1000
    with client(router) as c:
        status = c.get_campaign("crowd")
    assert status.campaign.labels_returned == 1000 and status.labels_pending == 0


def test_two_routers_on_one_postgres_never_overspend(backends, postgres_server):  # noqa: F811
    url = postgres_server.create_database("two")
    migrate(url)
    routers = [RouterProcess(backends, url).start() for _ in range(2)]
    try:
        batches = [instances(f"t{k}-", 40, seed=100 + k) for k in range(12)]
        total = sum(len(b) for b in batches)
        with client(routers[0]) as c:
            c.create_campaign("shared", count=100, expected_instances=total, judge="gpt4")
        barrier = threading.Barrier(len(batches))

        def route(k: int):
            with client(routers[k % 2]) as c:
                barrier.wait()
                result = c.route(batches[k], campaign="shared", batch=f"b{k}")
                return sum(d.route == "HUMAN" for d in result.decisions), result.campaign["budget_spent"]

        with ThreadPoolExecutor(len(batches)) as pool:
            outcomes = list(pool.map(route, range(len(batches))))
        assert all(spent <= 100 for _, spent in outcomes)  # never over, as each router saw it
        campaign, rows = stored(url, "shared")
        assert campaign.routed == total == len(rows)
        assert sum(h for h, _ in outcomes) == sum(rows.values()) == campaign.spent == 100
    finally:
        for proc in routers:
            proc.stop()
        postgres_server.drop_database(url)


def test_a_router_refuses_a_postgres_store_that_is_behind_until_it_is_migrated(backends, postgres_server):  # noqa: F811
    from hybridpref_client import FailedPreconditionError

    url = postgres_server.create_database("behind")  # empty: never migrated
    proc = RouterProcess(backends, url).start()
    try:
        with client(proc) as c:
            batch = instances("m-", 5, seed=3)
            assert c.route(batch, fraction=0.4, replay_judge="gpt4").summary["human_count"] == 2  # no campaign: fine
            with pytest.raises(FailedPreconditionError) as refused:
                c.create_campaign("late", count=1)
            assert "hybridpref store migrate" in refused.value.details
            migrate(url)  # the Job runs; the router needs no restart
            assert c.create_campaign("late", count=1, judge="gpt4").name == "late"
            assert c.route(batch, campaign="late").campaign["budget_spent"] == 1
    finally:
        proc.stop()
        postgres_server.drop_database(url)
