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

from hybridpref_client.core.errors import BackendUnavailable
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance
from hybridpref.judge.core import Judge

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
    opts = {"base_url": server.base_url("openai"), "model": "gpt-4o-mini", "api_key": "test", "concurrency": 1,
            "backoff_s": 0.05, "max_retries": 2}
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
        _judge(mock).judge(PAIRS[:1], mode=PositionMode.RANDOM, deadline_s=10)
    assert err.value.retry_after_s == pytest.approx(0.2, abs=0.05)
    assert _calls(mock) == 3 and time.monotonic() - t0 >= 0.35  # 1 + max_retries, waiting Retry-After


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_fail_at_once(mock: LLMockServer, status: int) -> None:
    mock.state.scenarios.add(Fail(status, times=None))
    with pytest.raises(BackendUnavailable, match=str(status)):
        _judge(mock).judge(PAIRS[:1], mode=PositionMode.RANDOM, deadline_s=10)
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
            judge.judge(PAIRS[:1], deadline_s=10)
    finally:
        server.shutdown()
        server.server_close()
