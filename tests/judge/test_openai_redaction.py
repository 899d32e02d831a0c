"""An LM endpoint that echoes the request (Authorization header included) in its error bodies:
nothing of it, nor the endpoint's URL, may leave the judge, in its errors or its logs."""

from __future__ import annotations

import http.server
import json
import threading

import grpc
import pytest

from hybridpref.common.openai_http import ChatCompletionsClient
from hybridpref.server.settings import Settings
from hybridpref.v1 import common_pb2, judge_pb2, judge_pb2_grpc
from hybridpref_client.core.errors import BackendUnavailable

SECRET = "sk-live-very-secret-key-123"


class _Echo(http.server.BaseHTTPRequestHandler):
    status = 401

    def do_POST(self):  # noqa: N802 (http.server API)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"error": f"bad key {self.headers.get('authorization')} for {self.path}"}).encode()
        self.send_response(type(self).status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module", params=[401, 500])
def echo_server(request):
    handler = type("Echo", (_Echo,), {"status": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_client_error_carries_status_only(echo_server):
    client = ChatCompletionsClient(echo_server, api_key=SECRET, max_retries=0, backoff_s=0.0)
    with pytest.raises(BackendUnavailable) as err:
        client.post({"model": "m", "messages": []})
    text = str(err.value)
    assert SECRET not in text and "127.0.0.1" not in text and "bad key" not in text
    assert "HTTP 401" in text or "HTTP 500" in text


def test_judge_service_error_and_logs_are_redacted(background_loop, echo_server, log_capture, tmp_path):
    from hybridpref.judge.servicer import judge_handle
    from hybridpref.server.server import start_service

    key_file = tmp_path / "key"
    key_file.write_text(SECRET)
    settings = Settings(
        judge={"backend": "openai", "openai_base_url": echo_server, "openai_model": "m", "openai_api_key_file": str(key_file)}
    )
    running = background_loop.run(start_service(judge_handle(settings), settings, port=0, metrics_port=-1))
    background_loop.run(running.loaded.wait())
    try:
        request = judge_pb2.JudgeInstancesRequest(
            instances=[common_pb2.PreferenceInstance(id="a", prompt="q?", response_a="x", response_b="y")]
        )
        with grpc.insecure_channel(running.address) as channel:
            with pytest.raises(grpc.RpcError) as err:
                judge_pb2_grpc.JudgeServiceStub(channel).JudgeInstances(request, timeout=30)
    finally:
        background_loop.run(running.stop(0.1))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert SECRET not in err.value.details() and "127.0.0.1" not in err.value.details()
    assert SECRET not in log_capture.getvalue()
