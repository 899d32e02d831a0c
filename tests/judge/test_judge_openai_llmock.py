"""The judge's ``openai`` backend against a third-party OpenAI-compatible server: LLMock (PyPI ``llmock``,
MIT, a real uvicorn/FastAPI HTTP server in a thread) with scripted replies and HTTP faults. LLMock never
returns logprobs, so every verdict here comes from parsing the reply text. A reply body that is not
JSON at all is something LLMock cannot send; a bare ``http.server`` covers that one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from llmock.scenarios import Fail, Reply
from llmock.testing import LLMockServer

from hybridpref.judge.core import Judge
from hybridpref_client.core.errors import BackendUnavailable
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance

PAIRS = [
    PreferenceInstance("p1", "What is the capital of France?", "Paris.", "Berlin."),
    PreferenceInstance("p2", "What is 12 times 12?", "124", "144"),
]


@pytest.fixture(scope="module")
def mock_server() -> Iterator[LLMockServer]:
    with LLMockServer() as server:
        yield server


@pytest.fixture()
def mock(mock_server: LLMockServer) -> LLMockServer:
    mock_server.state.reset()
    return mock_server


def _judge(server: LLMockServer, **kw: object) -> Judge:
    opts = {
        "base_url": server.base_url("openai"),
        "model": "gpt-4o-mini",
        "api_key": "test",
        "concurrency": 1,
        "backoff_s": 0.05,
        "max_retries": 2,
    }
    opts.update(kw)
    return Judge.from_config("openai", default_template="short", **opts)


def _calls(server: LLMockServer) -> int:
    return sum(1 for r in server.state.journal.records() if r.path.endswith("/chat/completions"))


def test_text_replies_without_logprobs_both_orders(mock: LLMockServer) -> None:
    # concurrency 1: requests go out in order p1 AB, p1 BA, p2 AB, p2 BA
    mock.state.scenarios.add(Reply(text="A"), Reply(text="B"), Reply(text="B"), Reply(text="B"))
    out = _judge(mock).judge(PAIRS, mode=PositionMode.BOTH)
    p1, p2 = out
    # p1: "A" shown first, then "B" with the order swapped: A wins in both orders
    assert p1.label == Label.A_BETTER and not p1.order_inconsistent and p1.p_a_better == 1.0
    # p2: "B" in both presentations = a position-following judge: order-inconsistent, not a winner
    assert p2.label == Label.TIE and p2.order_inconsistent and p2.confidence == 0.0 and p2.p_a_better == 0.5
    assert (p2.verdict_ab, p2.verdict_ba) == (Label.B_BETTER, Label.A_BETTER)
    assert {o.backend for o in out} == {"openai"} and out[0].judge_id == "openai:gpt-4o-mini"
    assert _calls(mock) == 4


def test_reply_without_a_verdict_is_no_label(mock: LLMockServer) -> None:
    mock.state.scenarios.add(Reply(text="Both answers have merit; it is hard to say.", times=None))
    (out,) = _judge(mock).judge(PAIRS[:1], mode=PositionMode.BOTH)
    assert out.label == Label.TIE and out.confidence == 0.0 and out.p_a_better is None
    assert (out.verdict_ab, out.verdict_ba) == (Label.UNSPECIFIED, Label.UNSPECIFIED)


def test_503_is_retried_then_answers(mock: LLMockServer) -> None:
    mock.state.scenarios.add(Fail(503, times=1), Reply(text="A", times=None))
    (out,) = _judge(mock).judge(PAIRS[:1], mode=PositionMode.RANDOM, seed=1)
    assert out.label.winner in ("A", "B") and out.confidence == 1.0
    assert _calls(mock) == 2


def test_429_with_retry_after_gives_up_as_unavailable(mock: LLMockServer) -> None:
    mock.state.scenarios.add(Fail(429, retry_after=0.2, times=None))
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as err:
        _judge(mock).judge(PAIRS[:1], mode=PositionMode.RANDOM, deadline=10)
    assert err.value.retry_after_s == pytest.approx(0.2, abs=0.05)
    assert _calls(mock) == 3 and time.monotonic() - t0 >= 0.35  # 1 + max_retries, waiting Retry-After


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_fail_at_once(mock: LLMockServer, status: int) -> None:
    mock.state.scenarios.add(Fail(status, times=None))
    with pytest.raises(BackendUnavailable, match=str(status)):
        _judge(mock).judge(PAIRS[:1], mode=PositionMode.RANDOM, deadline=10)
    assert _calls(mock) == 1  # a configuration error is not retried


class _NotJson(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"<html><body>502 Bad Gateway (proxy page)</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_non_json_body_is_unavailable() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        judge = Judge.from_config("openai", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", model="m")
        with pytest.raises(BackendUnavailable, match="JSON"):
            judge.judge(PAIRS[:1], deadline=10)
    finally:
        server.shutdown()
        server.server_close()


# --- HTTP 200 that is not a chat.completion (issue 18, item 3) ------------------------------------------
# An endpoint (or a proxy in front of it) answered 200 with JSON of another shape: the judge used to
# return OK with a TIE label for every pair. It is an error now, counted, never a label.
class _Body(BaseHTTPRequestHandler):
    body = b"{}"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture()
def body_server() -> Iterator[type[_Body]]:
    handler = type("Body", (_Body,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/v1"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()


MALFORMED = {
    "other_json": b'{"weird": "Bearer sk-echoed"}',
    "no_choices": b'{"choices": []}',
    "completions_shape": b'{"choices": [{"index": 0, "text": "A"}]}',
    "content_not_text": b'{"choices": [{"message": {"role": "assistant", "content": 5}}]}',
    "logprobs_wrong_shape": b'{"choices": [{"message": {"content": "A"}, "logprobs": "A"}]}',
    "json_list": b'[{"choices": []}]',
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_200_is_an_error_never_a_label(body_server: type[_Body], body: bytes) -> None:
    body_server.body = body
    failures: list[str] = []
    judge = Judge.from_config("openai", base_url=body_server.url, model="m", on_failure=failures.append)  # type: ignore[attr-defined]
    with pytest.raises(BackendUnavailable, match="malformed response") as err:
        judge.judge(PAIRS, mode=PositionMode.BOTH, deadline=10)
    assert "sk-echoed" not in str(err.value)
    assert failures and set(failures) == {"malformed_response"}


def test_well_formed_reply_without_a_verdict_still_works(body_server: type[_Body]) -> None:
    # The contrast: a real chat.completion whose text names no option is the model's "no verdict".
    body_server.body = b'{"choices": [{"message": {"role": "assistant", "content": null}, "logprobs": null}]}'
    failures: list[str] = []
    judge = Judge.from_config("openai", base_url=body_server.url, model="m", on_failure=failures.append)  # type: ignore[attr-defined]
    (out,) = judge.judge(PAIRS[:1], mode=PositionMode.BOTH, deadline=10)
    assert out.confidence == 0.0 and (out.verdict_ab, out.verdict_ba) == (Label.UNSPECIFIED, Label.UNSPECIFIED)
    assert failures == []


def test_judge_service_fails_and_counts_a_malformed_endpoint(body_server: type[_Body], background_loop) -> None:
    import grpc
    from prometheus_client import CollectorRegistry

    from hybridpref.judge.servicer import judge_handle
    from hybridpref.server.metrics import Metrics
    from hybridpref.server.server import start_service
    from hybridpref.server.settings import Settings
    from hybridpref.v1 import common_pb2, judge_pb2, judge_pb2_grpc

    body_server.body = MALFORMED["other_json"]
    metrics = Metrics(CollectorRegistry())
    settings = Settings(judge={"backend": "openai", "openai_base_url": body_server.url, "openai_model": "m"})
    running = background_loop.run(start_service(judge_handle(settings, metrics), settings, metrics, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    request = judge_pb2.JudgeInstancesRequest(
        instances=[
            common_pb2.PreferenceInstance(id=p.id, prompt=p.prompt, response_a=p.response_a, response_b=p.response_b)
            for p in PAIRS
        ]
    )
    try:
        with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as err:
            judge_pb2_grpc.JudgeServiceStub(channel).JudgeInstances(request, timeout=30)
    finally:
        background_loop.run(running.stop(0.1))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "malformed response" in err.value.details()
    counted = metrics.registry.get_sample_value(
        "hybridpref_backend_errors_total", {"service": "judge", "backend": "openai", "reason": "malformed_response"}
    )
    assert counted is not None and counted >= 1
