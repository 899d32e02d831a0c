"""The SDK (``clients/``, distribution ``hybridpref-client``) on its own: what it imports, that it
installs and routes from a fresh virtual environment with only its declared dependencies, and its
TLS and API-key options, dict rows, explicit budgets, progress and errors against a real router
stack over mutual TLS with API keys (the retries: tests/sdk/test_client_retries.py, a scripted server)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import venv
from pathlib import Path

import grpc
import pytest
from conftest import ROOT
from support.pki import write_pki

import hybridpref_client
import hybridpref_client.core.instances
from hybridpref.server.auth import add_vendor
from hybridpref.server.settings import Settings
from hybridpref_client import (
    AsyncRouterClient,
    Budget,
    ChannelConfig,
    Cost,
    HybridprefError,
    InvalidArgumentError,
    InvalidInput,
    PreferenceInstance,
    RouterClient,
    UnauthenticatedError,
    UnavailableError,
)
from hybridpref_client.core.instances import read_jsonl

SAMPLE = ROOT / "samples" / "sample_batch.jsonl"
HEAVY = ("torch", "numpy", "scipy", "spacy", "transformers", "sklearn", "onnxruntime", "pydantic", "structlog", "yaml")


def test_importing_the_sdk_loads_no_service_code_or_models():
    code = (
        "import sys, json, hybridpref_client; from hybridpref_client import core, RouterClient; "
        "print(json.dumps(sorted(m for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    modules = json.loads(out.stdout)
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    ours = {m for m in modules if m.split(".")[0] == "hybridpref"}
    assert ours and all(m == "hybridpref" or m.startswith("hybridpref.v1") for m in ours), ours


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
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT / "clients")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build the wheel here (needs setuptools>=70 from the package index): {build.stderr[-500:]}")
    (wheel,) = out.glob("hybridpref_client-*.whl")
    return wheel


def test_sdk_installs_alone_and_routes_from_a_fresh_venv(sdk_wheel, tmp_path, stack, pki, keys):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(sdk_wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    result = client.route(read_instances({str(SAMPLE)!r}), fraction=0.25, strategy="random", seed=3)
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

    settings = Settings(
        tagger={"profile": "fast"},
        judge={"backend": "replay", "replay_key": "gpt4"},
        tls={
            "cert_file": str(pki["server.pem"]),
            "key_file": str(pki["server.key"]),
            "client_ca_file": str(pki["ca.pem"]),
            "ca_file": str(pki["ca.pem"]),
            "client_cert_file": str(pki["client.pem"]),
            "client_key_file": str(pki["client.key"]),
        },
        auth={"keys_file": str(keys["path"])},
    )
    running = background_loop.run(start_embedded_stack(settings), timeout=300)
    yield running
    background_loop.run(running.stop(0.2))


def secure(pki, keys) -> dict:
    return {
        "api_key": keys["vendor"],
        "root_certificates": pki["ca.pem"].read_bytes(),
        "certificate_chain": pki["client.pem"].read_bytes(),
        "private_key": pki["client.key"].read_bytes(),
    }


def test_sync_client_over_tls_with_api_key(stack, pki, keys):
    instances = read_jsonl(str(SAMPLE))
    with RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
        result = client.route(instances, fraction=0.25, strategy="random", seed=3)
    assert len(result.decisions) == len(instances)
    assert sum(d.route == "HUMAN" for d in result.decisions) == 10


def test_async_client_unary_and_stream_match_the_sync_client(stack, pki, keys):
    instances = read_jsonl(str(SAMPLE))
    with RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
        expected = [
            (d.id, d.route, d.lm_label) for d in client.route(instances, fraction=0.25, strategy="greedy", seed=5).decisions
        ]

    async def main():
        async with AsyncRouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
            unary, streamed = await asyncio.gather(
                client.route(instances, fraction=0.25, strategy="greedy", seed=5),
                client.route_stream(instances, fraction=0.25, strategy="greedy", seed=5, chunk_size=7),
            )
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
            await client.route(instances, fraction=0.5, strategy="random", seed=1)

    with pytest.raises(UnauthenticatedError) as exc:
        asyncio.run(call(api_key="hpk_wrong"))
    assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED and isinstance(exc.value, HybridprefError)
    with pytest.raises(UnavailableError) as exc:
        asyncio.run(call(root_certificates=None, certificate_chain=None, private_key=None, tls=False, max_attempts=1))
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE  # plaintext against a TLS port
    bad = [instances[0], instances[0]]

    async def duplicate():
        async with AsyncRouterClient(stack.router_address, timeout_s=30, **options) as client:
            await client.route(bad, fraction=0.5, strategy="random", seed=1)

    with pytest.raises(InvalidArgumentError) as exc:
        asyncio.run(duplicate())
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT and exc.value.violations


def _router_calls(method: str, code: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"service": "router", "method": method, "code": code}
    return REGISTRY.get_sample_value("hybridpref_rpc_requests_total", labels) or 0.0


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_ten_thousand_bad_rows_name_the_first_rows_in_one_call(stack, pki, keys, stream):
    # Issue 18, F1: past ~360 bad rows the violations overflowed gRPC's 16 KiB metadata limit: the
    # vendor got RESOURCE_EXHAUSTED with no row named, and the SDK sent the batch 3-4 times.
    rows = [{"id": f"r{i}", "prompt": "What is 2 + 2?", "response_a": " ", "response_b": "4"} for i in range(10_000)]
    method = "RouteInstancesStream" if stream else "RouteInstances"
    before = _router_calls(method, "INVALID_ARGUMENT")
    with (
        RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client,
        pytest.raises(InvalidArgumentError) as exc,
    ):
        if stream:
            client.route_stream(rows, fraction=0.25, strategy="random", chunk_size=5_000)
        else:
            client.route(rows, fraction=0.25, strategy="random")
    err = exc.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.attempts == 1
    assert [v.field for v in err.violations[:3]] == [f"instances[{i}].response_a" for i in range(3)]
    assert len(err.violations) <= 50 and err.violation_total >= 5_000  # a stream is checked per chunk
    # the router counts a call once its handler has finished, a moment after the client saw the status
    deadline = time.monotonic() + 5
    while _router_calls(method, "INVALID_ARGUMENT") - before < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert _router_calls(method, "INVALID_ARGUMENT") - before == 1  # sent once


def test_plain_dicts_route_like_instances(stack, pki, keys):
    rows = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    with RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
        from_dicts = client.route(rows, fraction=0.25, strategy="greedy", seed=4)
        from_objects = client.route(read_jsonl(str(SAMPLE)), fraction=0.25, strategy="greedy", seed=4)
    assert [(d.id, d.route, d.lm_label) for d in from_dicts.decisions] == [
        (d.id, d.route, d.lm_label) for d in from_objects.decisions
    ]
    assert PreferenceInstance is hybridpref_client.core.instances.PreferenceInstance  # the public typed class


def test_explicit_budgets_and_the_ambiguous_bare_number(stack, pki, keys):
    instances = read_jsonl(str(SAMPLE))
    with RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
        humans = lambda **budget: client.route(instances, strategy="random", seed=2, **budget).summary["human_count"]  # noqa: E731
        assert humans(count=1) == 1 and humans(fraction=1.0) == 40 and humans(fraction=0.25) == 10
        assert humans(budget="25%") == 10 and humans(budget=Budget(count=3)) == 3 and humans(budget="count:3") == 3
        by_cost = client.route(instances, cost=5.0, strategy="random", seed=2).summary
        assert 0 < by_cost["human_cost"] <= 5.0 and humans(budget=Cost(5.0)) == by_cost["human_count"]
        for ambiguous in (1, 1.0):  # was one instance vs all of them, silently
            with pytest.raises(InvalidInput, match="ambiguous"):
                humans(budget=ambiguous)
        with pytest.warns(FutureWarning, match="fraction=0.25") as caught:
            assert humans(budget=0.25) == 10
        assert caught[0].filename == __file__  # the warning points at the caller's line
        with pytest.warns(FutureWarning, match="count=3"):
            assert humans(budget=3) == 3
        for wrong in ({"count": 1, "fraction": 0.5}, {}, {"count": -1}, {"fraction": 1.5}, {"count": 2.0}, {"budget": True}):
            with pytest.raises(InvalidInput):
                humans(**wrong)


def test_budget_spellings_and_messages():
    assert Budget.parse("0.25") == Budget(fraction=0.25) and Budget.parse("25%") == Budget(fraction=0.25)
    assert Budget.parse("count:100") == Budget(count=100) and Budget.parse("cost:500") == Budget(cost=500.0)
    assert Budget.parse(" AUTO ") == Budget(auto=True)
    assert Budget(count=0).to_proto().WhichOneof("kind") == "count"
    assert Budget(fraction=1).to_proto().fraction == 1.0
    with pytest.raises(InvalidInput) as err:
        Budget.parse("lots")
    assert err.value.violations[0].field == "budget" and "count:100" in str(err.value)


def test_async_stream_reports_progress_like_the_sync_client(stack, pki, keys):
    instances = read_jsonl(str(SAMPLE))
    sync_events: list[tuple[str, int]] = []
    async_events: list[tuple[str, int]] = []
    with RouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
        client.route_stream(
            instances,
            fraction=0.25,
            strategy="random",
            seed=1,
            chunk_size=7,
            on_progress=lambda phase, n: sync_events.append((phase, n)),
        )

    async def main():
        async with AsyncRouterClient(stack.router_address, timeout_s=60, **secure(pki, keys)) as client:
            return await client.route_stream(
                instances,
                fraction=0.25,
                strategy="random",
                seed=1,
                chunk_size=7,
                on_progress=lambda phase, n: async_events.append((phase, n)),
            )

    result = asyncio.run(main())
    assert len(result.decisions) == 40
    assert sorted(async_events) == sorted(sync_events)
    assert [n for phase, n in async_events if phase == "sent"] == [7, 7, 7, 7, 7, 5]
    assert sum(n for phase, n in async_events if phase == "received") == 40


def test_version_comes_from_the_package_metadata():
    import tomllib
    from importlib import metadata

    declared = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]["version"]
    assert hybridpref_client.__version__ == metadata.version("hybridpref-client") == declared


def test_channel_config_validation():
    with pytest.raises(ValueError):
        ChannelConfig(certificate_chain=b"x")
    for attempts in (0, 21):
        with pytest.raises(ValueError):
            ChannelConfig(max_attempts=attempts)
    with pytest.raises(ValueError):
        ChannelConfig(initial_backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(TypeError):
        RouterClient("127.0.0.1:1", config=ChannelConfig(), api_key="k")
    # gRPC's own retry policy is off: it cannot read RetryInfo (hybridpref_client.retry retries instead)
    assert "grpc.service_config" not in dict(ChannelConfig().options())
