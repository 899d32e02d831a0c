"""Real files with a few bad rows (issue 18 item 11): the router can leave invalid instances out and
route the rest (``RouteConfig.skip_invalid_instances``); ``hybridpref route --on-bad-row skip`` writes
the rejects with their reasons and routes the rest; a non-UTF-8 file and a 70 MB line are one-line
errors with exit code 2, like every other bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, router_pb2, router_pb2_grpc


@pytest.fixture(scope="module")
def stack(background_loop, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(
        tagger={"profile": "fast"}, judge={"backend": "replay", "replay_key": "gpt4"}, router={"default_strategy": "random"}
    )
    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running
    background_loop.run(running.stop(0.5))


def row(i: int, **fields) -> dict:
    return {
        "id": f"r{i}",
        "prompt": "What is 2+2?",
        "response_a": "4",
        "response_b": "Four, since 2+2=4.",
        "lm_labels": {"gpt4": "A"},
        **fields,
    }


def proto(i: int, **fields) -> common_pb2.PreferenceInstance:
    msg = common_pb2.PreferenceInstance(id=f"r{i}", prompt="What is 2+2?", response_a="4", response_b="Four.")
    msg.lm_labels["gpt4"] = 2
    for key, value in fields.items():
        if key == "lm_labels":
            msg.lm_labels.clear()
            msg.lm_labels.update(value)
        else:
            setattr(msg, key, value)
    return msg


# 9: a NUL character is not text (and PostgreSQL, the campaign store's production engine, cannot keep it)
BAD = {
    3: {"response_a": "  "},
    5: {"id": "r1"},
    7: {"human_label": 42},
    8: {"lm_labels": {"other": 2}},
    9: {"response_b": "Fo\x00ur."},
}
EXPECTED_FIELDS = {
    3: "instances[3].response_a",
    5: "instances[5].id",
    7: "instances[7].human_label",
    8: "instances[8].lm_labels",
    9: "instances[9].response_b",
}


def batch(n: int = 12) -> list[common_pb2.PreferenceInstance]:
    return [proto(i, **BAD.get(i, {})) for i in range(n)]


def config(skip: bool) -> router_pb2.RouteConfig:
    return router_pb2.RouteConfig(
        budget=common_pb2.Budget(fraction=0.5), strategy="random", replay_judge="gpt4", skip_invalid_instances=skip
    )


def test_without_the_option_one_bad_instance_refuses_the_batch(stack):
    with grpc.insecure_channel(stack.router_address) as channel, pytest.raises(grpc.RpcError) as info:
        router_pb2_grpc.RouterServiceStub(channel).RouteInstances(
            router_pb2.RouteInstancesRequest(instances=batch(), config=config(False)), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unary_leaves_invalid_instances_out_and_routes_the_rest(stack):
    with grpc.insecure_channel(stack.router_address) as channel:
        reply = router_pb2_grpc.RouterServiceStub(channel).RouteInstances(
            router_pb2.RouteInstancesRequest(instances=batch(), config=config(True)), timeout=30
        )
    assert [d.id for d in reply.decisions] == [f"r{i}" for i in range(12) if i not in BAD]
    rejected = {r.index: r for r in reply.summary.rejected}
    assert {i: r.field for i, r in rejected.items()} == EXPECTED_FIELDS
    assert rejected[5].id == "r1" and "duplicate" in rejected[5].description
    assert reply.summary.rejected_count == 5 and reply.summary.human_count in (3, 4)  # half of the 7 routed
    assert any("5 invalid instances were left out" in w for w in reply.summary.warnings)


def test_a_stream_leaves_them_out_chunk_by_chunk_with_the_callers_indices(stack):
    rows = batch(30)
    rows[25] = proto(25, response_b="\u200b")  # in the third chunk
    rows[26] = proto(26, id="r4")  # a duplicate of a row two chunks earlier

    def messages():
        yield router_pb2.RouteInstancesStreamRequest(config=config(True))
        for start in range(0, len(rows), 10):
            yield router_pb2.RouteInstancesStreamRequest(chunk=router_pb2.InstanceChunk(instances=rows[start : start + 10]))

    with grpc.insecure_channel(stack.router_address) as channel:
        replies = list(router_pb2_grpc.RouterServiceStub(channel).RouteInstancesStream(messages(), timeout=30))
    decided = [d.id for r in replies if r.HasField("decisions") for d in r.decisions.decisions]
    summary = next(r.summary for r in replies if r.HasField("summary"))
    bad = {**BAD, 25: None, 26: None}
    assert decided == [f"r{i}" for i in range(30) if i not in bad]
    assert {r.index: r.field for r in summary.rejected} == {
        **EXPECTED_FIELDS,
        25: "instances[25].response_b",
        26: "instances[26].id",
    }


# ------------------------------------------------------------------ the CLI


def route_cli(stack, path, *extra, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridpref.cli.main",
            "route",
            "--input",
            str(path),
            "--budget",
            "0.5",
            "--strategy",
            "random",
            "--router",
            stack.router_address,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def messy_file(path) -> None:
    """Rows 1-10 good except: line 3 a boolean response (caught locally), line 5 a blank response (caught by
    the router), line 7 not UTF-8 (latin-1 'café'), line 9 not JSON."""
    lines = [json.dumps(row(i)).encode() for i in range(10)]
    lines[2] = json.dumps(row(2, response_a=True)).encode()
    lines[4] = json.dumps(row(4, response_b="   ")).encode()
    lines[6] = json.dumps(row(6, prompt="caf\u00e9")).encode().replace(b"\\u00e9", "\u00e9".encode("latin-1"))
    lines[8] = b'{"id": "r8", "prompt": '
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_skip_routes_the_good_rows_and_writes_the_rejects_with_reasons(stack, tmp_path):
    src, out = tmp_path / "messy.jsonl", tmp_path / "out.jsonl"
    messy_file(src)
    proc = route_cli(stack, src, "--on-bad-row", "skip", "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [f"r{i}" for i in (0, 1, 3, 5, 7, 9)]
    rejects = [json.loads(x) for x in (tmp_path / "messy.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rejects] == [(3, "response_a"), (5, "response_b"), (7, ""), (9, "")]
    reasons = [r["reason"] for r in rejects]
    assert "expected a string" in reasons[0] and "empty response" in reasons[1]
    assert "not UTF-8" in reasons[2] and "0xe9" in reasons[2] and "not valid JSON" in reasons[3]
    assert "skipped 4 bad rows" in proc.stderr and "Traceback" not in proc.stderr


def test_without_skip_every_bad_row_is_named_with_exit_code_2(stack, tmp_path):
    src = tmp_path / "messy.jsonl"
    messy_file(src)
    proc = route_cli(stack, src)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: line 3.response_a: expected a string" in proc.stderr
    assert "error: line 7: not UTF-8 text (byte 0xe9" in proc.stderr and "error: line 9: not valid JSON" in proc.stderr
    assert "--on-bad-row skip" in proc.stderr


def test_a_non_utf8_file_is_a_one_line_error(stack, tmp_path):
    src = tmp_path / "latin1.jsonl"
    src.write_bytes(json.dumps(row(0, prompt="caf\u00e9"), ensure_ascii=False).encode("latin-1") + b"\n")
    proc = route_cli(stack, src)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.startswith("error:")][0].startswith("error: line 1: not UTF-8 text")


def test_a_70_mb_line_is_a_one_line_error(stack, tmp_path):
    src = tmp_path / "huge.jsonl"
    with open(src, "w", encoding="utf-8") as fh:
        for i in range(4):
            fh.write(json.dumps(row(i, response_a="x" * 70_000_000) if i == 2 else row(i)) + "\n")
    proc = route_cli(stack, src)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "RESOURCE_EXHAUSTED" not in proc.stderr
    assert "error: line 3.response_a: longer than 200000 characters" in proc.stderr
