"""A small, real OpenAI-compatible chat-completions server over the embedded model (loopback by default).

    python tests/support/openai_server.py --port 8000 [--model PATH_OR_GGUF] [--api-key KEY]

Serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (non-streaming; ``max_tokens`` /
``max_completion_tokens``, ``temperature``, ``seed``, ``logprobs`` + ``top_logprobs`` up to 20). It exists
so the judge's ``openai`` backend is tested against a real server without building llama-cpp-python
(no wheel here, ~6 min source build on 2 cores). One request runs on the model at a time.
A test double: it lives under tests/ and is not installed with the package.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hybridpref.judge.embedded import EmbeddedBackend

MAX_TOP_LOGPROBS = 20


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet by default
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            return self._error(404, f"no route {self.path}", "not_found")
        if not self._authorised():
            return None
        self._send(
            200,
            {
                "object": "list",
                "data": [{"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "hybridpref"}],
            },
        )
        return None

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._error(404, f"no route {self.path}", "not_found")
        if not self._authorised():
            return None
        try:
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            params = _parse_request(body)
        except (ValueError, TypeError) as exc:
            return self._error(400, str(exc), "invalid_request_error")
        self._send(200, self.server.complete(params))
        return None

    def _authorised(self) -> bool:
        key = self.server.api_key
        if key and self.headers.get("authorization") != f"Bearer {key}":
            self._error(401, "invalid API key", "invalid_api_key")
            return False
        return True

    def _error(self, status: int, message: str, code: str) -> None:
        self._send(status, {"error": {"message": message, "type": code, "code": code}})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # One request per connection: no handler thread lingers on an idle keep-alive socket after the
        # model ran in it (threads that ran torch and outlive interpreter shutdown can abort the process).
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: EmbeddedBackend, model_name: str, api_key: str | None, verbose: bool):
        super().__init__(address, _Handler)
        self.backend = backend
        self.model_name = model_name
        self.api_key = api_key
        self.verbose = verbose
        self._counter = 0
        self._count_lock = threading.Lock()

    def complete(self, p: dict[str, Any]) -> dict[str, Any]:
        tokens, finish, n_prompt = self.backend.generate_chat(
            p["messages"],
            max_tokens=p["max_tokens"],
            temperature=p["temperature"],
            top_logprobs=p["top_logprobs"] if p["logprobs"] else 0,
            seed=p["seed"],
        )
        with self._count_lock:
            self._counter += 1
            n = self._counter
        logprobs = None
        if p["logprobs"]:
            logprobs = {
                "content": [
                    {
                        "token": t.text,
                        "logprob": t.logprob,
                        "bytes": list(t.text.encode()),
                        "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(s.encode())} for s, lp in t.top],
                    }
                    for t in tokens
                ]
            }
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(t.text for t in tokens)},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(tokens), "total_tokens": n_prompt + len(tokens)},
        }


def _parse_request(body: Any) -> dict[str, Any]:
    """Validate a chat-completions body; raises ``ValueError`` with an OpenAI-style message."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    clean = []
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("content"), str)
            or m.get("role") not in ("system", "user", "assistant")
        ):
            raise ValueError(f"messages[{i}] must be {{role: system|user|assistant, content: string}}")
        clean.append({"role": m["role"], "content": m["content"]})
    if body.get("stream"):
        raise ValueError("stream=true is not supported by this server")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 16))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= 512:
        raise ValueError("'max_tokens' must be an integer in [1, 512]")
    top = body.get("top_logprobs") or 0
    if not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"'top_logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}]")
    temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise ValueError("'temperature' must be in [0, 2]")
    return {
        "messages": clean,
        "max_tokens": max_tokens,
        "top_logprobs": top,
        "logprobs": bool(body.get("logprobs")),
        "temperature": temperature,
        "seed": int(body.get("seed") or 0),
    }


def create_server(
    backend: EmbeddedBackend | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_name: str = "SmolLM2-135M-Instruct",
    api_key: str | None = None,
    verbose: bool = False,
) -> tuple[ThreadingHTTPServer, int]:
    """Build (not start) the server; ``port=0`` picks a free port. Returns (server, bound port).

    Start it with ``server.serve_forever()`` (e.g. in a thread); stop with ``server.shutdown()``.
    """
    backend = backend or EmbeddedBackend()
    backend.load()
    server = _Server((host, port), backend, model_name, api_key, verbose)
    return server, server.server_address[1]


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=None, help="GGUF file or HF model dir (default: packaged SmolLM2-135M)")
    parser.add_argument("--model-name", default=None, help="name reported by /v1/models")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    backend = EmbeddedBackend(args.model)
    name = args.model_name or backend.judge_id.split(":", 1)[1]
    server, port = create_server(backend, args.host, args.port, model_name=name, api_key=args.api_key, verbose=args.verbose)
    print(f"serving {name} on http://{args.host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
