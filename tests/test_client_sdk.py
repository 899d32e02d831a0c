"""The SDK (``clients/``, distribution ``hybridpref-client``) on its own: what it imports, that it
installs and routes from a fresh virtual environment with only its declared dependencies, and its
TLS, API-key and retry options against real servers (a real router stack over mutual TLS with
API keys; a scripted server for the retry policy, which no healthy router can be made to exercise)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import venv
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from hybridpref.server.auth import add_vendor
from hybridpref_client.core.instances import read_jsonl
from hybridpref.server.settings import Settings
from hybridpref.v1 import router_pb2
from hybridpref_client import AsyncRouterClient, ChannelConfig, RouterClient, RoutingError

from support.pki import write_pki
from conftest import ROOT

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"
HEAVY = ("torch", "numpy", "scipy", "spacy", "transformers", "sklearn", "onnxruntime", "pydantic", "structlog", "yaml")


def test_importing_the_sdk_loads_no_service_code_or_models():
    code = ("import sys, json, hybridpref_client; from hybridpref_client import core, RouterClient; "
            "print(json.dumps(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    modules = json.loads(out.stdout)
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    ours = {m for m in modules if m.split(".")[0] == "hybridpref"}
    assert ours and all(m == "hybridpref" or m.startswith("hybridpref.v1") for m in ours), ours


def test_service_modules_are_aliases_of_the_sdk_core():
    import hybridpref_client.core.errors as service_errors
    import hybridpref_client.core.instances as service_instances
    import hybridpref_client.core.errors as sdk_errors
    import hybridpref_client.core.instances as sdk_instances

    assert service_instances is sdk_instances and service_errors is sdk_errors
    assert service_instances.PreferenceInstance is sdk_instances.PreferenceInstance


# ----------------------------------------------------------------------------- fresh virtual environment

SITE = Path(grpc.__file__).resolve().parents[1]


def _declared_closure() -> set[str]:
    """Top-level import names of the SDK's declared dependencies and theirs (read from
    clients/pyproject.toml and the installed distributions' metadata)."""
    import re
    import tomllib
    from importlib import metadata

    todo = list(tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]["dependencies"])
    seen: set[str] = set()
    names: set[str] = set()
    while todo:
        req = todo.pop()
        if "extra ==" in req:
            continue
        dist_name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")
        if dist_name in seen:
            continue
        seen.add(dist_name)
        dist = metadata.distribution(dist_name)
        todo.extend(dist.requires or [])
        for f in dist.files or []:
            top = f.parts[0]
            if not top.endswith((".dist-info", ".data")) and top != ".." and not top.startswith("__"):
                names.add(top)
    return names


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT / "clients")],
                           capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.skip(f"cannot build the wheel here (needs setuptools>=70 from the package index): {build.stderr[-500:]}")
    (wheel,) = out.glob("hybridpref_client-*.whl")
    return wheel


def test_sdk_installs_alone_and_routes_from_a_fresh_venv(sdk_wheel, tmp_path, stack, pki, keys):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(sdk_wheel)],
                             capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    # Its declared dependencies only, linked in from this environment: nothing else is importable.
    deps = tmp_path / "deps"
    deps.mkdir()
    for name in _declared_closure():
        if (SITE / name).exists():
            (deps / name).symlink_to(SITE / name)
    site = next((env_dir / "lib").glob("python3.*/site-packages"))
    (site / "deps.pth").write_text(str(deps) + "\n")
    script = f"""
import sys
from hybridpref_client import RouterClient, read_instances
for heavy in ("numpy", "torch", "hybridpref.common"):
    try:
        __import__(heavy)
    except ImportError:
        pass
    else:
        raise SystemExit(heavy + " is importable in the SDK's venv")
pem = lambda name: open(name, "rb").read()
with RouterClient({stack.router_address!r}, timeout_s=60, api_key={keys["vendor"]!r}, root_certificates=pem({str(pki["ca.pem"])!r}),
                  certificate_chain=pem({str(pki["client.pem"])!r}), private_key=pem({str(pki["client.key"])!r})) as client:
    result = client.route(read_instances({str(SAMPLE)!r}), 0.25, "random", 3)
print(len(result.decisions), sum(d.route == "HUMAN" for d in result.decisions))
"""
    run = subprocess.run([str(python), "-I", "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    total, humans = map(int, run.stdout.split())
    assert total == 40 and humans == 10


# ----------------------------------------------------------------------------- TLS, API keys (real stack)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return write_pki(tmp_path_factory.mktemp("pki"), "vendor")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    return {"path": path, "vendor": add_vendor(path, "vendor")}


@pytest.fixture(scope="module")
def stack(background_loop, pki, keys, log_capture):
    from hybridpref.cli.stack import start_embedded_stack

    settings = Settings(tagger={"profile": "fast"},
                        judge={"backend": "replay", "replay_key": "gpt4"},
                        tls={"cert_file": str(pki["server.pem"]), "key_file": str(pki["server.key"]), "client_ca_file": str(pki["ca.pem"]),
                             "ca_file": str(pki["ca.pem"]), "client_cert_file": str(pki["client.pem"]),
                             "client_key_file": str(pki["client.key"])},
                        auth={"keys_file": str(keys["path"])})
    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running
    background_loop.run(running.stop(0.2))


def secure(pki, keys) -> dict:
    return {"api_key": keys["vendor"], "root_certificates": pki["ca.pem"].read_bytes(),
            "certificate_chain": pki["client.pem"].read_bytes(), "private_key": pki["client.key"].read_bytes()}


def test_sync_client_over_tls_with_api_key(stack, pki, keys):
    instances = read_jsonl(str(SAMPLE))
    with RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
        result = client.route(instances, 0.25, "random", 3)
    assert len(result.decisions) == len(instances)
    assert sum(d.route == "HUMAN" for d in result.decisions) == 10


def test_async_client_unary_and_stream_match_the_sync_client(stack, pki, keys):
    instances = read_jsonl(str(SAMPLE))
    with RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
        expected = [(d.id, d.route, d.lm_label) for d in client.route(instances, 0.25, "greedy", 5).decisions]

    async def main():
        async with AsyncRouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
            unary, streamed = await asyncio.gather(client.route(instances, 0.25, "greedy", 5),
                                                   client.route_stream(instances, 0.25, "greedy", 5, chunk_size=7))
        return unary, streamed

    unary, streamed = asyncio.run(main())
    assert [(d.id, d.route, d.lm_label) for d in unary.decisions] == expected
    assert [(d.id, d.route, d.lm_label) for d in streamed.decisions] == expected
    assert streamed.summary["human_count"] == 10 and streamed.summary["strategy"] == "greedy"


def test_async_client_errors(stack, pki, keys):
    instances = read_jsonl(str(SAMPLE))[:4]
    options = secure(pki, keys)

    async def call(**overrides):
        async with AsyncRouterClient(stack.router_address, timeout_s=30, **{**options, **overrides}) as client:
            await client.route(instances, 0.5, "random", 1)

    with pytest.raises(RoutingError) as exc:
        asyncio.run(call(api_key="hpk_wrong"))
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(RoutingError) as exc:
        asyncio.run(call(root_certificates=None, certificate_chain=None, private_key=None, tls=False, max_attempts=1))
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE  # plaintext against a TLS port
    bad = [instances[0], instances[0]]

    async def duplicate():
        async with AsyncRouterClient(stack.router_address, timeout_s=30, **options) as client:
            await client.route(bad, 0.5, "random", 1)

    with pytest.raises(RoutingError) as exc:
        asyncio.run(duplicate())
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT and exc.value.violations


def test_channel_config_validation():
    with pytest.raises(ValueError):
        ChannelConfig(certificate_chain=b"x")
    with pytest.raises(ValueError):
        ChannelConfig(max_attempts=9)
    with pytest.raises(TypeError):
        RouterClient("127.0.0.1:1", config=ChannelConfig(), api_key="k")
    policy = json.loads(ChannelConfig().service_config())["methodConfig"][0]
    assert policy["name"] == [{"service": "hybridpref.v1.RouterService"}]
    assert set(policy["retryPolicy"]["retryableStatusCodes"]) == {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert "retryPolicy" not in json.loads(ChannelConfig(max_attempts=1).service_config())["methodConfig"][0]


# ----------------------------------------------------------------------------- retries (scripted server)


class FlakyRouter:
    """RouteInstances fails ``failures`` times with ``code``, then answers with no decisions."""

    def __init__(self, failures: int, code: grpc.StatusCode):
        self.failures, self.code, self.calls, self.keys = failures, code, 0, []
        self._lock = threading.Lock()

    def __call__(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
            n = self.calls
            self.keys.append(dict(context.invocation_metadata()).get("authorization"))
        if n <= self.failures:
            context.abort(self.code, f"attempt {n} refused")
        return router_pb2.RouteInstancesResponse().SerializeToString()


@pytest.fixture()
def flaky():
    servers = []

    def start(failures: int, code: grpc.StatusCode) -> tuple[str, FlakyRouter]:
        handler = FlakyRouter(failures, code)
        server = grpc.server(futures.ThreadPoolExecutor(2))
        method = grpc.unary_unary_rpc_method_handler(handler)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hybridpref.v1.RouterService", {"RouteInstances": method}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", handler

    yield start
    for server in servers:
        server.stop(0)


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_retries_with_backoff_then_succeeds(flaky, code):
    address, router = flaky(2, code)
    instances = read_jsonl(str(SAMPLE))[:2]
    with RouterClient(address, timeout_s=20, api_key="k1", initial_backoff_s=0.05) as client:
        result = client.route(instances, 0.5)
    assert result.decisions == [] and router.calls == 3
    assert router.keys == ["Bearer k1"] * 3  # every attempt carries the key


def test_gives_up_after_max_attempts_and_does_not_retry_caller_errors(flaky):
    instances = read_jsonl(str(SAMPLE))[:2]
    address, router = flaky(10, grpc.StatusCode.UNAVAILABLE)
    with RouterClient(address, timeout_s=20, max_attempts=3, initial_backoff_s=0.05) as client, pytest.raises(RoutingError) as exc:
        client.route(instances, 0.5)
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE and router.calls == 3
    address, router = flaky(10, grpc.StatusCode.INVALID_ARGUMENT)

    async def call():
        async with AsyncRouterClient(address, timeout_s=20, initial_backoff_s=0.05) as client:
            await client.route(instances, 0.5)

    with pytest.raises(RoutingError) as exc:
        asyncio.run(call())
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT and router.calls == 1


def test_async_client_retries_too(flaky):
    address, router = flaky(1, grpc.StatusCode.RESOURCE_EXHAUSTED)
    instances = read_jsonl(str(SAMPLE))[:2]

    async def call():
        async with AsyncRouterClient(address, timeout_s=20, initial_backoff_s=0.05) as client:
            return await client.route(instances, 0.5)

    assert asyncio.run(call()).decisions == [] and router.calls == 2
