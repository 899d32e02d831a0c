"""All four services on loopback, talking real gRPC: router -> tagger -> judge -> predictor.

The stack here uses the tagger's ``fast`` profile and the judge's ``replay`` backend
(labels recorded in the sample batch) so it loads in seconds; the embedded LM judge
and the default tagger profile have their own tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from conftest import ROOT

from hybridpref.server.settings import Settings
from hybridpref_client import Cost, RouterClient, RoutingError
from hybridpref_client.core.instances import Label, read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"


@pytest.fixture(scope="module")
def stack(background_loop, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(
        tagger={"profile": "fast"}, judge={"backend": "replay", "replay_key": "gpt4"}, router={"default_strategy": "greedy"}
    )
    running = background_loop.run(start_embedded_stack(settings, metrics=True), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


@pytest.fixture(scope="module")
def sample():
    return read_jsonl(str(SAMPLE))


@pytest.fixture()
def client(stack):
    with RouterClient(stack.router_address, timeout_s=120) as c:
        yield c


def test_random_routes_the_budget_and_replays_recorded_labels(client, sample):
    result = client.route(sample, fraction=0.25, strategy="random", seed=3)
    humans = [d for d in result.decisions if d.route == "HUMAN"]
    assert len(humans) == round(0.25 * len(sample))
    assert [d.id for d in result.decisions] == [i.id for i in sample]
    recorded = {i.id: i.lm_labels["gpt4"] for i in sample}
    for d in result.decisions:
        if d.route == "LM":
            assert d.lm_label == recorded[d.id].name
        else:
            assert d.lm_label is None  # judge calls only for instances that need them
    assert result.summary["human_count"] == len(humans) and result.summary["lm_count"] == len(sample) - len(humans)
    assert {"tag", "route", "judge"} <= set(result.summary["stage_seconds"])


def test_same_seed_same_decisions_other_seed_differs(client, sample):
    routes = lambda seed: [d.route for d in client.route(sample, fraction=0.5, strategy="random", seed=seed).decisions]  # noqa: E731
    assert routes(11) == routes(11)
    assert routes(11) != routes(12)


@pytest.mark.parametrize(("strategy", "humans"), [("all_human", 1.0), ("all_lm", 0.0)])
def test_baselines(client, sample, strategy, humans):
    result = client.route(sample, fraction=0.3, strategy=strategy)
    assert sum(d.route == "HUMAN" for d in result.decisions) == round(humans * len(sample))


def test_greedy_routes_in_process_and_explains(client, sample):
    result = client.route(sample, fraction=0.25, strategy="greedy", seed=1)
    s = result.summary
    assert s["bundle_version"] and s["human_count"] == round(0.25 * len(sample))
    assert list(s["mixes"]) == ["chosen", "all_human", "all_lm", "random"]
    assert s["mixes"]["all_lm"].get("score_note") in ("batch_independent", "uncalibrated", "out_of_domain")
    for name, mix in s["mixes"].items():  # never a bare number: an interval, or the reason there is none
        if "predicted_score" in mix:
            est = mix["predicted_score"]
            assert est["low"] < est["value"] < est["high"], name
        else:
            assert mix["score_note"], name
    assert all(0 < len(d.top_tags) <= 3 for d in result.decisions)  # unset explain_top_k: 3
    assert any(d.gain != 0 for d in result.decisions)
    quiet = client.route(sample, fraction=0.25, strategy="greedy", seed=1, explain_top_k=0)  # 0 = no explanations
    assert not any(d.top_tags for d in quiet.decisions)
    assert [d.route for d in quiet.decisions] == [d.route for d in result.decisions]


def test_cost_budget_and_streaming_match_unary(client, sample):
    unary = client.route(sample, budget=Cost(200.0), strategy="greedy", seed=5)
    assert 0 < unary.summary["human_cost"] <= 200.0
    streamed = client.route_stream(sample, budget=Cost(200.0), strategy="greedy", seed=5, chunk_size=7)
    assert [(d.id, d.route, d.lm_label) for d in streamed.decisions] == [(d.id, d.route, d.lm_label) for d in unary.decisions]


def test_request_id_reaches_every_service_log(client, sample, log_capture):
    client.route(sample[:8], fraction=0.5, strategy="greedy", request_id="req-e2e-42")
    services = {r.get("service") for r in log_capture.records() if r.get("request_id") == "req-e2e-42"}
    assert {"router", "tagger", "judge", "predictor"} <= services


def test_tiny_deadline_is_deadline_exceeded(stack, sample):
    with RouterClient(stack.router_address, timeout_s=0.001) as hurried, pytest.raises(RoutingError) as err:
        hurried.route(sample, fraction=0.25, strategy="random")
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_metrics_of_each_service_after_a_call(stack, client, sample):
    client.route(sample[:4], fraction=0.5, strategy="greedy")
    for name, method in (
        ("router", "RouteInstances"),
        ("tagger", "TagInstances"),
        ("judge", "JudgeInstances"),
        ("predictor", "GetRoutingModel"),
    ):
        port = stack.services[name].metrics_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert f'hybridpref_rpc_requests_total{{code="OK",method="{method}",service="{name}"}}' in body, name


def test_cli_route_against_running_router(stack, tmp_path):
    out = tmp_path / "routed.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "route",
            "--input",
            str(SAMPLE),
            "--budget",
            "count:5",
            "--strategy",
            "random",
            "--router",
            stack.router_address,
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["route"] == "HUMAN" for r in rows) == 5 and "routing summary" in proc.stderr


def test_cli_names_line_and_field_for_bad_rows(stack, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {"id": "1", "prompt": "p", "response_a": "a", "response_b": "b"}
    bad.write_text("\n".join(json.dumps(r) for r in (good, {**good, "id": "2"}, {**good, "id": "1"})) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "route",
            "--input",
            str(bad),
            "--budget",
            "0.5",
            "--router",
            stack.router_address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: line 3.id: duplicate id" in proc.stderr and "Traceback" not in proc.stderr
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "2", "response_b": "   "}) + "\n")
    cli = [sys.executable, "-m", "hybridpref.cli.main", "route", "--input", str(bad), "--router", stack.router_address]
    proc = subprocess.run([*cli, "--budget", "0.5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: line 2.response_b: empty response" in proc.stderr
    proc = subprocess.run([*cli, "--budget", "2.0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: config.budget.fraction" in proc.stderr
    proc = subprocess.run([*cli, "--budget", "lots"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "error: --budget" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_names_the_first_of_many_bad_rows_and_counts_the_rest(stack, tmp_path):
    # Issue 18 item 7: 1,000 bad rows used to end in RESOURCE_EXHAUSTED (metadata too large), rc 1.
    bad = tmp_path / "many_bad.jsonl"
    bad.write_text(
        "".join(json.dumps({"id": str(i), "prompt": "p", "response_a": " ", "response_b": "b"}) + "\n" for i in range(1_000))
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "route",
            "--input",
            str(bad),
            "--budget",
            "0.5",
            "--router",
            stack.router_address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: line 1.response_a: empty response" in proc.stderr and "Traceback" not in proc.stderr
    listed = proc.stderr.count("empty response")
    more = re.search(r"error: --input: (\d+) more bad fields not listed", proc.stderr)
    assert 1 <= listed <= 50 and more and listed + int(more.group(1)) == 500  # the first bad chunk (500 rows) is refused


def _free_port_base() -> int:
    for base in range(42000, 60000, 211):
        ports = [base + o for o in (0, 1, 2, 3, 100, 101, 102, 103)]
        ok = True
        for p in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return base
    raise RuntimeError("no free ports")


def test_up_starts_all_four_and_stops_cleanly_on_sigterm():
    base = _free_port_base()
    env = dict(os.environ, HYBRIDPREF_TAGGER_PROFILE="fast", HYBRIDPREF_JUDGE_BACKEND="replay", HYBRIDPREF_GRACE_PERIOD_S="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridpref.cli.main", "up", "--port-base", str(base), "--timeout", "240"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "all SERVING" in line, line
        with RouterClient(f"127.0.0.1:{base}", timeout_s=60) as client:
            result = client.route(read_jsonl(str(SAMPLE))[:6], fraction=0.5, strategy="random", replay_judge="gpt4")
        assert len(result.decisions) == 6
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        time.sleep(0.2)
        with socket.socket() as s:  # the router's port is free again: every child exited
            s.bind(("127.0.0.1", base))
    finally:
        if proc.poll() is None:
            proc.kill()


def test_lm_labels_are_five_level_names(client, sample):
    result = client.route(sample, fraction=0.0, strategy="random")
    assert {d.lm_label for d in result.decisions} <= {label.name for label in Label if label != Label.UNSPECIFIED}


def test_stream_matches_unary_and_spans_chunks(client, sample):
    unary = client.route(sample, fraction=0.4, strategy="random", seed=9)
    streamed = client.route_stream(sample, fraction=0.4, strategy="random", seed=9, chunk_size=6)
    assert [(d.id, d.route, d.lm_label) for d in streamed.decisions] == [(d.id, d.route, d.lm_label) for d in unary.decisions]
    assert streamed.summary["human_count"] == unary.summary["human_count"]


def test_stream_rejects_a_duplicate_in_a_later_chunk(client, sample):
    batch = list(sample[:10]) + [sample[2]]
    with pytest.raises(RoutingError) as err:
        client.route_stream(batch, fraction=0.5, strategy="random", chunk_size=4)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.value.violations] == ["instances[10].id"]
    with pytest.raises(RoutingError) as err:  # the budget is checked against the whole stream's size
        client.route_stream(sample[:5], count=6, strategy="random", chunk_size=2)
    assert [f for f, _ in err.value.violations] == ["config.budget.count"]


def test_bundle_binned_on_other_edges_is_refused(background_loop, sample, tmp_path):
    """Tags binned with other reference edges than the PPM learned from would be silently wrong."""
    import shutil

    from hybridpref.cli.stack import start_embedded_stack
    from hybridpref.predictor.core import default_bundle_path

    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), bundle)
    bins = json.loads((bundle / "reference_bins.json").read_text())
    bins["grids"]["prompt_len"] = [v * 2 for v in bins["grids"]["prompt_len"]]
    (bundle / "reference_bins.json").write_text(json.dumps(bins))
    from hybridpref.routing_model.bundle import sha256_file

    manifest = json.loads((bundle / "manifest.json").read_text())  # a consistent bundle, built on other edges
    manifest["files"]["reference_bins.json"] = sha256_file(bundle / "reference_bins.json")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    settings = Settings(
        tagger={"profile": "fast"}, judge={"backend": "replay"}, predictor={"bundle_path": str(bundle), "bundle_watch_s": 0}
    )
    other = background_loop.run(start_embedded_stack(settings), timeout=300)
    try:
        with RouterClient(other.router_address, timeout_s=60) as c:
            with pytest.raises(RoutingError) as err:
                c.route(sample, fraction=0.25, strategy="greedy")
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "reference edges" in err.value.details
            assert len(c.route(sample, fraction=0.25, strategy="random").decisions) == len(sample)
    finally:
        background_loop.run(other.stop(0.2))


@pytest.fixture(scope="module")
def routing_stack(background_loop, tmp_path_factory, sample):
    """A stack whose bundle has a correction model, a domain (the sample batch) and a residual std."""
    from test_router_core import enrich_bundle

    from hybridpref.cli.stack import start_embedded_stack
    from hybridpref.tagger.core import Tagger

    folder = tmp_path_factory.mktemp("e2e-routing") / "bundle"
    enrich_bundle(folder, Tagger.for_profile("fast"), sample)
    settings = Settings(
        tagger={"profile": "fast"},
        judge={"backend": "replay", "replay_key": "gpt4"},
        predictor={"bundle_path": str(folder), "bundle_watch_s": 0},
    )
    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


def test_default_strategy_over_grpc_reports_intervals_and_expected_gains(routing_stack, sample):
    with RouterClient(routing_stack.router_address, timeout_s=120) as c:
        result = c.route(sample, fraction=0.25, seed=2)  # "" = the default strategy
    s = result.summary
    assert s["strategy"] == "hybrid" and s["interval_level"] == pytest.approx(0.9)
    assert all(d.expected_gain is not None for d in result.decisions)
    chosen = s["mixes"]["chosen"]
    assert chosen["predicted_score"]["low"] < chosen["predicted_score"]["value"] < chosen["predicted_score"]["high"]
    corr = chosen["expected_corrections"]
    assert corr["low"] < corr["value"] < corr["high"]
    assert corr["value"] == pytest.approx(sum(d.expected_gain for d in result.decisions if d.route == "HUMAN"), rel=1e-6)
    assert s["mixes"]["all_lm"]["score_note"] == "batch_independent" and "predicted_score" not in s["mixes"]["all_lm"]
    assert s["domain"]["in_domain"] and result.warnings == s["warnings"]
    # the bundle's panel correction model routed, and the summary says which version over the wire
    assert s["correction_model"] == "panel-correction/1" and s["correction_model_version"].startswith("panel-correction/1@")


def test_cli_prints_out_of_domain_warning(routing_stack):
    from conftest import FIXTURES

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "route",
            "--input",
            str(FIXTURES / "router_off_domain.jsonl"),
            "--budget",
            "0.5",
            "--router",
            routing_stack.router_address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning: out of domain" in proc.stderr and "OUT OF DOMAIN" in proc.stderr
    assert "panel-correction/1@" in proc.stderr  # the correction model that routed
