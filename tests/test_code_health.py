"""Structure checks on the installed package: no import cycles, no test doubles or benchmark
adapters shipped, the SDK free of service code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hybridpref": ROOT / "services" / "hybridpref", "hybridpref_client": ROOT / "clients" / "hybridpref_client"}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at module level or inside functions (lazy
    imports still form a cycle: each half needs the other to be importable)."""
    modules: dict[str, set[str]] = {}
    for top, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            name = ".".join((top, *path.relative_to(folder).with_suffix("").parts)).removesuffix(".__init__")
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
            modules[name] = deps
    return {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_no_import_cycles():
    assert _cycles(_import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_judge_backends_do_not_import_the_core():
    graph = _import_graph()
    for backend in ("embedded", "openai_backend", "replay", "learned"):
        assert "hybridpref.judge.core" not in graph[f"hybridpref.judge.{backend}"], backend


def test_sdk_imports_no_service_module():
    graph = _import_graph()
    for module, deps in graph.items():
        if module.startswith("hybridpref_client"):
            assert not {d for d in deps if d.startswith("hybridpref.")}, module


def test_test_doubles_and_benchmark_adapters_are_not_shipped():
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "services").rglob("*.py")}
    assert "services/hybridpref/judge/openai_server.py" not in shipped
    assert "services/hybridpref/router/paper_features.py" not in shipped
    assert (ROOT / "tests" / "support" / "openai_server.py").is_file()
    assert (ROOT / "benchmarks" / "paper_features.py").is_file()


# ---------------------------------------------------------------- wings (docs/architecture.md, "The house")

SERVICES = ("tagger", "judge", "predictor", "router")
# What each wing may import inside hybridpref (besides itself and the SDK, hybridpref_client / hybridpref.v1).
# Floors, top down: cli > offline > annotate > {predictor, router} > {tagger, judge, store} > routing_model >
# {common, server}. A running service never imports offline/ or cli/; the router and the predictor meet only
# in routing_model/; the router persists campaigns through store/.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "server": {"common"},
    "routing_model": {"common"},
    "tagger": {"common", "server", "routing_model"},
    "judge": {"common", "server", "routing_model"},
    "predictor": {"common", "server", "routing_model"},
    "router": {"common", "server", "routing_model", "store"},
    "store": {"common", "server", "routing_model"},
    "annotate": {"common", "server", "routing_model", "store"},
    "offline": {"common", "server", "routing_model", "tagger", "judge", "predictor", "router", "store"},
    "cli": {"common", "server", "routing_model", "tagger", "judge", "predictor", "router", "store", "annotate", "offline"},
}


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "hybridpref" and len(parts) > 1 and parts[1] != "v1" else None


def _package_graph() -> dict[str, set[str]]:
    """Wing -> the wings its modules import (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for module, deps in _import_graph().items():
        wing = _wing(module)
        if wing is None:
            continue
        graph.setdefault(wing, set()).update(w for d in deps if (w := _wing(d)) and w != wing)
    return graph


def test_every_wing_has_a_rule():
    assert set(_package_graph()) <= set(ALLOWED), set(_package_graph()) - set(ALLOWED)


def test_wings_import_only_the_floors_below():
    broken = {wing: sorted(deps - ALLOWED[wing]) for wing, deps in _package_graph().items() if deps - ALLOWED.get(wing, set())}
    assert broken == {}


def test_no_package_level_cycle():
    assert _cycles(_package_graph()) == []


def test_services_never_import_offline_or_one_another():
    graph = _package_graph()
    for service in SERVICES:
        assert not graph.get(service, set()) & {"offline", "cli", *SERVICES} - {service}, service


def test_wing_rules_catch_a_back_arrow():
    """The checker itself: a router -> predictor arrow and a cycle through offline are reported."""
    graph = {"router": {"predictor"}, "predictor": {"offline"}, "offline": {"predictor"}}
    assert {w for w, d in graph.items() if d - ALLOWED[w]} == {"router", "predictor"}
    assert _cycles(graph) == [{"predictor", "offline"}]


# The tests mirror the house: tests/<wing>/ for each package wing under test, plus the folders that test
# across wings (the SDK, the deploy manifests, the whole stack end to end). Only these structure checks and
# the proto checks sit at the top.
CROSS_WING_TEST_FOLDERS = {"sdk", "deploy", "e2e"}
TOP_LEVEL_TESTS = {"test_code_health.py", "test_protos.py"}


def test_test_files_mirror_the_wings():
    tests = ROOT / "tests"
    wings = {p.name for p in PACKAGES["hybridpref"].iterdir() if p.is_dir() and any(p.glob("*.py"))}
    for path in tests.rglob("test_*.py"):
        where = path.relative_to(tests).parts
        if len(where) == 1:
            assert where[0] in TOP_LEVEL_TESTS, f"{path}: put it in tests/<wing>/"
        else:
            assert where[0] in wings | CROSS_WING_TEST_FOLDERS, f"{path}: tests/{where[0]} is not a wing of hybridpref"
