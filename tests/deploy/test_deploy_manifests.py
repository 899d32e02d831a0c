"""Static checks of deploy/: Kubernetes manifests, kustomize layout, alerts, dashboard, Dockerfile.

These hold the manifests to the settings/metrics contract the services implement (ports, env var
names, metric names) without a cluster. Where ``kubectl`` is installed (the dev extra brings it), the
overlays are also rendered with ``kubectl kustomize`` and the rendered objects are checked; where
``promtool`` is (``scripts/dev.py`` unpacks Debian's), every alert runs its unit tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.tools import find_tool, skip_reason

from hybridpref.server.settings import environment_variables

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"

# The contract (brief / docs/operations.md): gRPC and metrics port per service.
PORTS = {"router": (50050, 9150), "tagger": (50051, 9151), "judge": (50052, 9152), "predictor": (50053, 9153)}
HPA_SERVICES = {"router", "tagger", "judge"}
SETTINGS = {
    "HYBRIDPREF_HOST",
    "HYBRIDPREF_PORT",
    "HYBRIDPREF_METRICS_PORT",
    "HYBRIDPREF_TAGGER_ADDRESS",
    "HYBRIDPREF_JUDGE_ADDRESS",
    "HYBRIDPREF_PREDICTOR_ADDRESS",
    "HYBRIDPREF_BUNDLE_PATH",
    "HYBRIDPREF_TAGGER_PROFILE",
    "HYBRIDPREF_JUDGE_BACKEND",
    "HYBRIDPREF_JUDGE_OPENAI_BASE_URL",
    "HYBRIDPREF_JUDGE_OPENAI_MODEL",
    "HYBRIDPREF_JUDGE_OPENAI_API_KEY_FILE",
    "HYBRIDPREF_GRACE_PERIOD_S",
    "HYBRIDPREF_MAX_MESSAGE_MB",
    "HYBRIDPREF_MAX_BATCH",
    "HYBRIDPREF_LOG_LEVEL",
    "HYBRIDPREF_LOG_FORMAT",
    "HYBRIDPREF_CACHE_DIR",
    "HYBRIDPREF_CPUS",
    "HYBRIDPREF_MAX_CONNECTION_AGE_S",
    "HYBRIDPREF_TLS_CERT_FILE",
    "HYBRIDPREF_TLS_KEY_FILE",
    "HYBRIDPREF_TLS_CA_FILE",
    "HYBRIDPREF_TLS_CLIENT_CA_FILE",
    "HYBRIDPREF_TLS_CLIENT_CERT_FILE",
    "HYBRIDPREF_TLS_CLIENT_KEY_FILE",
    "HYBRIDPREF_HEALTH_PORT",
    "HYBRIDPREF_API_KEYS_FILE",
}
HEALTH_PORT = 8086  # components/tls: plaintext grpc.health.v1 for the kubelet's probes
METRICS = {
    "hybridpref_rpc_requests_total",
    "hybridpref_rpc_latency_seconds",
    "hybridpref_rpc_in_flight",
    "hybridpref_instances_total",
    "hybridpref_model_ready",
    "hybridpref_routed_instances_total",
    # issue 18 item 12: per vendor, and routing quality
    "hybridpref_vendor_calls_total",
    "hybridpref_judge_labels_total",
    "hybridpref_routed_batches_total",
    "hybridpref_routing_warnings_total",
    # campaigns (issue 20), labelled by vendor, never by campaign
    "hybridpref_campaign_decisions_total",
    "hybridpref_campaign_budget_spent_total",
    "hybridpref_campaign_labels_total",
    "hybridpref_campaign_agreement_votes_total",
    "hybridpref_campaign_expected_agreement_total",
}
HISTOGRAMS = {"hybridpref_rpc_latency_seconds"}
METRIC_LABELS = {
    "service",
    "method",
    "code",
    "route",
    "strategy",
    "le",
    "namespace",
    "pod",
    "job",
    "instance",
    "vendor",
    "unsure",
    "domain",
    "kind",
    "status",
    "outcome",
}
KUSTOMIZE_PATH_FIELDS = ("resources", "components")
# What the code really reads: the Settings fields, plus the two runtime.py reads directly.
READ_BY_CODE = set(environment_variables()) | {"HYBRIDPREF_CPUS", "HYBRIDPREF_CACHE_DIR"}


# ----------------------------------------------------------------------------- helpers


PROMTOOL_TESTS = DEPLOY / "prometheus" / "tests"


def _yaml_files() -> list[Path]:
    """Kubernetes/kustomize YAML (promtool's unit-test files are not Kubernetes objects)."""
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and PROMTOOL_TESTS not in p.parents)


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def _base_objects() -> list[dict[str, Any]]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [doc for res in kust["resources"] for doc in _load_all(BASE / res)]


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (label values and label names excluded)."""
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_matchers = re.sub(r"\{[^}]*\}", "{}", no_strings)
    names = set(re.findall(r"\bhybridpref_[a-z0-9_]+", no_matchers))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS else n for n in names}


def _proto_service(name: str) -> str:
    """Full gRPC service name of a hybridpref service, from the generated descriptors."""
    module = importlib.import_module(f"hybridpref.v1.{name}_pb2")
    (service,) = module.DESCRIPTOR.services_by_name.values()
    return service.full_name


def _cpu(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


_MEM_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _mem(value: str | int) -> int:
    text = str(value)
    for unit, factor in _MEM_UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _base_objects()


@pytest.fixture(scope="module")
def config() -> dict[str, str]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    (gen,) = [g for g in kust["configMapGenerator"] if g["name"] == "hybridpref-config"]
    out: dict[str, str] = {}
    for env_file in gen.get("envs", []):
        out.update(_env_file(BASE / env_file))
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        out[key] = value
    return out


# ----------------------------------------------------------------------------- parsing, layout


def test_every_yaml_parses_and_has_kind() -> None:
    files = _yaml_files()
    assert len(files) >= 10
    for path in files:
        docs = _load_all(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), path
            if path.name == "kustomization.yaml":
                assert doc.get("kind") in ("Kustomization", "Component"), path
            else:
                assert doc.get("apiVersion") and doc.get("kind"), path
                assert doc.get("metadata", {}).get("name"), path


def test_kustomization_references_exist() -> None:
    kusts = _kustomizations()
    assert {BASE, K8S / "overlays" / "dev", K8S / "overlays" / "prod"} <= {k.parent for k in kusts}
    for kust_path in kusts:
        kust = yaml.safe_load(kust_path.read_text())
        here = kust_path.parent
        for field in KUSTOMIZE_PATH_FIELDS:
            for ref in kust.get(field, []):
                target = here / ref
                assert target.exists(), f"{kust_path}: {field} {ref} does not exist"
                if target.is_dir():
                    assert (target / "kustomization.yaml").exists(), f"{kust_path}: {ref} has no kustomization.yaml"
        for gen in kust.get("configMapGenerator", []) + kust.get("secretGenerator", []):
            for ref in gen.get("envs", []) + [f.split("=", 1)[-1] for f in gen.get("files", [])]:
                assert (here / ref).is_file(), f"{kust_path}: generator file {ref} does not exist"
        for patch in kust.get("patches", []):
            if "path" in patch:
                assert (here / patch["path"]).is_file(), f"{kust_path}: patch {patch['path']} does not exist"
            else:
                assert patch.get("patch") and patch.get("target"), f"{kust_path}: inline patch needs a target"


def test_overlays_build_on_base() -> None:
    for overlay in ("dev", "prod"):
        kust = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert "../../base" in kust["resources"]
        assert kust.get("namespace"), overlay
        assert "namePrefix" not in kust and "nameSuffix" not in kust, "service addresses rely on fixed names"


# ----------------------------------------------------------------------------- settings contract


def test_contract_settings_are_read_by_the_code() -> None:
    assert SETTINGS <= READ_BY_CODE, SETTINGS - READ_BY_CODE


def test_config_uses_only_known_settings(config: dict[str, str]) -> None:
    assert set(config) <= READ_BY_CODE, set(config) - READ_BY_CODE
    assert config["HYBRIDPREF_HOST"] == "0.0.0.0"
    assert config["HYBRIDPREF_JUDGE_BACKEND"] in ("learned", "embedded", "openai", "replay")
    assert config["HYBRIDPREF_TAGGER_PROFILE"] in ("default", "fast")
    assert config["HYBRIDPREF_LOG_FORMAT"] in ("json", "console")
    assert int(config["HYBRIDPREF_GRACE_PERIOD_S"]) > 0
    for overlay in ("dev", "prod"):
        kust = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        for gen in kust.get("configMapGenerator", []):
            assert gen.get("behavior") == "merge", f"{overlay} must merge into the base ConfigMap"
            keys = {lit.partition("=")[0] for lit in gen.get("literals", [])}
            assert keys <= READ_BY_CODE, keys - READ_BY_CODE


def test_router_addresses_point_at_services(base: list[dict[str, Any]], config: dict[str, str]) -> None:
    services = _by_kind(base, "Service")
    for downstream in ("tagger", "judge", "predictor"):
        address = config[f"HYBRIDPREF_{downstream.upper()}_ADDRESS"]
        # dns:/// resolves every pod of a headless Service; the router balances over them
        # (round_robin in hybridpref.server.channels). A virtual IP would pin one pod per channel.
        assert address.startswith("dns:///"), address
        host, _, port = address.removeprefix("dns:///").rpartition(":")
        assert host in services, f"{downstream} address names no Service: {host}"
        assert services[host]["spec"].get("clusterIP") == "None", f"{host} must be headless"
        svc_ports = {p["name"]: p["port"] for p in services[host]["spec"]["ports"]}
        assert int(port) == svc_ports["grpc"] == PORTS[downstream][0]
    # Clients reach the router through its virtual IP (or an ingress), not pod by pod.
    assert services["hybridpref-router"]["spec"].get("clusterIP") != "None"
    # Servers end old connections, so clients re-resolve DNS and find pods added by the HPA.
    assert float(config["HYBRIDPREF_MAX_CONNECTION_AGE_S"]) > 0


def test_each_service_has_deployment_service_pdb(base: list[dict[str, Any]]) -> None:
    deployments, services = _by_kind(base, "Deployment"), _by_kind(base, "Service")
    pdbs, hpas = _by_kind(base, "PodDisruptionBudget"), _by_kind(base, "HorizontalPodAutoscaler")
    for name in PORTS:
        full = f"hybridpref-{name}"
        assert full in deployments and full in services and full in pdbs, name
        pod_labels = deployments[full]["spec"]["template"]["metadata"]["labels"]
        for selector in (
            services[full]["spec"]["selector"],
            pdbs[full]["spec"]["selector"]["matchLabels"],
            deployments[full]["spec"]["selector"]["matchLabels"],
        ):
            assert selector.items() <= pod_labels.items(), f"{name}: selector does not match the pods"
        assert selector["app.kubernetes.io/component"] == name
    assert set(hpas) == {f"hybridpref-{n}" for n in HPA_SERVICES}


def test_hpas_target_deployments_without_fixed_replicas(base: list[dict[str, Any]]) -> None:
    deployments = _by_kind(base, "Deployment")
    for name, hpa in _by_kind(base, "HorizontalPodAutoscaler").items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] == name and ref["name"] in deployments
        assert "replicas" not in deployments[name]["spec"], f"{name}: replicas would fight the HPA"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
    # HPAs scale on CPU utilisation = usage / request: every scaled container needs a CPU request.
    assert deployments["hybridpref-predictor"]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("name", sorted(PORTS))
def test_deployment_ports_probes_resources(base: list[dict[str, Any]], config: dict[str, str], name: str) -> None:
    dep = _by_kind(base, "Deployment")[f"hybridpref-{name}"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    env = _env(c)
    grpc_port, metrics_port = PORTS[name]

    assert c["args"] == ["serve", name]
    assert set(env) <= READ_BY_CODE, set(env) - READ_BY_CODE
    assert [r["configMapRef"]["name"] for r in c["envFrom"]] == ["hybridpref-config"]
    assert int(env["HYBRIDPREF_PORT"]) == grpc_port and int(env["HYBRIDPREF_METRICS_PORT"]) == metrics_port
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    svc = _by_kind(base, "Service")[f"hybridpref-{name}"]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == ports
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports) | set(ports.values())

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port, f"{name}: {probe} must use the gRPC health port"
    # Start-up and liveness check the server ("" = load finished); readiness the service itself,
    # whose health follows its models (the servers register health under the proto's full name).
    assert c["startupProbe"]["grpc"].get("service", "") == "" and c["livenessProbe"]["grpc"].get("service", "") == ""
    assert c["readinessProbe"]["grpc"]["service"] == _proto_service(name)
    # Model loading takes minutes: the startup probe must allow several of them.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300

    res = c["resources"]
    for kind in ("cpu", "memory"):
        assert kind in res["requests"] and kind in res["limits"], f"{name}: {kind} requests and limits"
    assert _cpu(res["requests"]["cpu"]) <= _cpu(res["limits"]["cpu"])
    assert _mem(res["requests"]["memory"]) <= _mem(res["limits"]["memory"])

    grace = int(config["HYBRIDPREF_GRACE_PERIOD_S"])
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = int(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0
    assert pod["terminationGracePeriodSeconds"] > grace + pre_stop_s


@pytest.mark.parametrize("name", sorted(PORTS))
def test_deployment_security(base: list[dict[str, Any]], config: dict[str, str], name: str) -> None:
    dep = _by_kind(base, "Deployment")[f"hybridpref-{name}"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod.get("automountServiceAccountToken") is False
    # Read-only root: /tmp and the cache dir must be writable emptyDirs.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    for path in ("/tmp", config["HYBRIDPREF_CACHE_DIR"]):
        assert path in mounts, f"{name}: {path} not mounted"
        assert "emptyDir" in volumes[mounts[path]], f"{name}: {path} must be an emptyDir"


def test_judge_api_key_from_secret_file(base: list[dict[str, Any]]) -> None:
    dep = _by_kind(base, "Deployment")["hybridpref-judge"]
    c = _container(dep)
    key_file = Path(_env(c)["HYBRIDPREF_JUDGE_OPENAI_API_KEY_FILE"])
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == key_file.parent]
    assert mount.get("readOnly") is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "hybridpref-judge-openai"
    assert key_file.name in {item["path"] for item in secret.get("items", [])} or not secret.get("items")
    # The key must never travel as a plain env var.
    assert not any("API_KEY" in e["name"] and "FILE" not in e["name"] for e in c.get("env", []))
    for other in ("router", "tagger", "predictor"):
        other_env = _env(_container(_by_kind(base, "Deployment")[f"hybridpref-{other}"]))
        assert "HYBRIDPREF_JUDGE_OPENAI_API_KEY_FILE" not in other_env


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and In/NotIn/Exists expressions)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _allowed_peers(base: list[dict[str, Any]], pod_labels: dict[str, str], port: str) -> list[dict[str, Any]]:
    """The ``from`` peers of every policy rule that opens ``port`` on pods with ``pod_labels``
    ({} = from anywhere); None when no policy selects the pod (then all traffic is allowed)."""
    peers: list[dict[str, Any]] = []
    for policy in (o for o in base if o["kind"] == "NetworkPolicy"):
        if not _selects(policy["spec"]["podSelector"], pod_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if any(p["port"] == port for p in rule.get("ports", [])):
                peers.extend(rule.get("from", [{}]))
    return peers


def test_network_policies(base: list[dict[str, Any]]) -> None:
    deployments = _by_kind(base, "Deployment")
    labels = {n: deployments[f"hybridpref-{n}"]["spec"]["template"]["metadata"]["labels"] for n in PORTS}
    batch = {"app.kubernetes.io/name": "hybridpref", "app.kubernetes.io/component": "batch"}
    for name in PORTS:
        # Every service is selected by some policy (else everything is open to it).
        assert any(_selects(o["spec"]["podSelector"], labels[name]) for o in base if o["kind"] == "NetworkPolicy"), name
        # Metrics: only from the monitoring namespace, never from any pod.
        metrics_peers = _allowed_peers(base, labels[name], "metrics")
        assert metrics_peers, f"{name}: metrics must stay scrapeable"
        for peer in metrics_peers:
            assert set(peer) == {"namespaceSelector"}, f"{name}: metrics open beyond the monitoring namespace"
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
        grpc_peers = _allowed_peers(base, labels[name], "grpc")
        if name == "router":
            assert {} in grpc_peers, "clients must reach the router"
            continue
        assert {} not in grpc_peers, f"{name}: gRPC open to every pod"
        callers = [p["podSelector"]["matchLabels"] for p in grpc_peers]
        assert all(set(p) == {"podSelector"} for p in grpc_peers)
        assert any(c.items() <= labels["router"].items() for c in callers), f"router cannot reach {name}"
        # Batch Jobs (bundle builds) reach the tagger only.
        assert any(c.items() <= batch.items() for c in callers) == (name == "tagger"), name
    # Named ports exist on every container a policy names them for.
    for policy in (o for o in base if o["kind"] == "NetworkPolicy"):
        for name in PORTS:
            if _selects(policy["spec"]["podSelector"], labels[name]):
                names = {p["name"] for p in _container(deployments[f"hybridpref-{name}"])["ports"]}
                for rule in policy["spec"]["ingress"]:
                    assert {p["port"] for p in rule["ports"]} <= names, (policy["metadata"]["name"], name)


def test_network_policy_selector_semantics() -> None:
    # Guards _selects: a policy that selected nothing would make the checks above vacuous.
    sel = {"matchExpressions": [{"key": "c", "operator": "In", "values": ["tagger"]}]}
    assert _selects(sel, {"c": "tagger"}) and not _selects(sel, {"c": "router"})
    assert not _selects({"matchLabels": {"a": "1"}}, {"a": "2"})


@pytest.mark.parametrize("name", sorted(PORTS))
def test_zone_spread_per_service(base: list[dict[str, Any]], name: str) -> None:
    dep = _by_kind(base, "Deployment")[f"hybridpref-{name}"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]}
    zone = spread["topology.kubernetes.io/zone"]
    # Per service: the selector picks this service's pods only (a shared one would let all judges
    # sit in one zone as long as routers balanced the count).
    assert zone["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    assert zone["labelSelector"]["matchLabels"].get("app.kubernetes.io/component") == name
    assert zone["maxSkew"] == 1


def test_service_monitor_scrapes_metrics_ports(base: list[dict[str, Any]]) -> None:
    (sm,) = [o for o in base if o["kind"] == "ServiceMonitor"]
    selector = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in _by_kind(base, "Service").values() if selector.items() <= s["metadata"]["labels"].items()]
    assert {s["metadata"]["name"] for s in selected} == {f"hybridpref-{n}" for n in PORTS}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint.get("path", "/metrics") == "/metrics"
    # Our metrics have a `service` label; the operator's target label of that name must not win.
    assert endpoint.get("honorLabels") is True
    for svc in selected:
        assert "metrics" in {p["name"] for p in svc["spec"]["ports"]}


# ----------------------------------------------------------------------------- alerts, dashboard


def _alert_rules() -> list[dict[str, Any]]:
    (rule,) = _load_all(DEPLOY / "prometheus" / "alerts.yaml")
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_alerts_reference_existing_metrics() -> None:
    rules = _alert_rules()
    names = {r["alert"] for r in rules}
    # The brief's three: error rate, latency p99, not SERVING.
    assert {"HybridprefHighErrorRate", "HybridprefHighLatencyP99", "HybridprefServiceNotServing"} <= names
    assert len(names) == len(rules), "duplicate alert names"
    for r in rules:
        used = _metric_names(r["expr"])
        # Only Prometheus' own scrape health (up) may stand in for a hybridpref metric.
        assert used or re.search(r"\bup\{", r["expr"]), f"{r['alert']} uses no hybridpref metric"
        assert used <= METRICS, f"{r['alert']}: unknown metrics {used - METRICS}"
        assert r["labels"]["severity"] in ("critical", "warning", "info")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
        labels_used = set(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", r["expr"]))
        for group in labels_used:
            assert {g.strip() for g in group.split(",")} <= METRIC_LABELS, r["alert"]


def test_alerts_cover_the_failure_modes() -> None:
    by_name = {r["alert"]: r for r in _alert_rules()}
    assert "hybridpref_model_ready" in by_name["HybridprefServiceNotServing"]["expr"]
    assert "hybridpref_rpc_latency_seconds_bucket" in by_name["HybridprefHighLatencyP99"]["expr"]
    assert "histogram_quantile(0.99" in by_name["HybridprefHighLatencyP99"]["expr"]
    error_expr = by_name["HybridprefHighErrorRate"]["expr"]
    assert "hybridpref_rpc_requests_total" in error_expr
    # Caller mistakes must not page.
    assert "INVALID_ARGUMENT" not in error_expr and "INTERNAL" in error_expr
    # Successful health probes must not dilute an outage of the real RPCs.
    for name in ("HybridprefHighErrorRate", "HybridprefElevatedErrorRate"):
        selectors = re.findall(r"hybridpref_rpc_requests_total(\{[^}]*\})?", by_name[name]["expr"])
        assert selectors and all('method!~"Check|Watch|ServerReflectionInfo"' in sel for sel in selectors), name
    assert 'method=~"RouteInstances|RouteInstancesStream"' in by_name["HybridprefRouteInstancesFailing"]["expr"]
    # A service with no target up, or none at all.
    assert "up{" in by_name["HybridprefNoTargetUp"]["expr"]
    absent = by_name["HybridprefServiceAbsent"]["expr"]
    assert {f'absent(up{{job="hybridpref-{n}"}})' for n in PORTS} <= {m.group(0) for m in re.finditer(r"absent\([^)]*\)", absent)}


PROMTOOL = find_tool("promtool")


def _promtool_files(tmp_path: Path, edit: Any = None) -> Path:
    """The PrometheusRule's groups as plain rule files, with the unit tests beside them (``edit``: a
    function applied to the alerts file's text first): what scripts/promtool_test.py runs promtool on."""
    spec = importlib.util.spec_from_file_location("promtool_test", ROOT / "scripts" / "promtool_test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder: Path = module.write_rule_files(tmp_path, edit)
    return folder


@pytest.mark.skipif(PROMTOOL is None, reason=skip_reason("promtool"))
def test_the_documented_promtool_recipe_passes() -> None:
    """Issue 18 item 15: docs/operations.md's "by hand" recipe failed 10 of 10 cases (annotations)."""
    docs = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "python3 scripts/promtool_test.py" in docs
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "promtool_test.py"), "--promtool", str(PROMTOOL)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_every_alert_has_a_promtool_case_that_fires() -> None:
    tests = yaml.safe_load((PROMTOOL_TESTS / "alerts_test.yaml").read_text(encoding="utf-8"))
    assert tests["rule_files"] == ["alerts.rules.yaml"]
    firing = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if c.get("exp_alerts")}
    quiet = {c["alertname"] for t in tests["tests"] for c in t["alert_rule_test"] if not c.get("exp_alerts")}
    names = {r["alert"] for r in _alert_rules()}
    assert names <= firing, f"alerts without a firing case: {names - firing}"
    assert len(quiet & names) >= len(names) - 2, f"few negative cases: {names - quiet}"


@pytest.mark.skipif(PROMTOOL is None, reason=skip_reason("promtool"))
def test_alerts_promtool(tmp_path: Path) -> None:
    work = _promtool_files(tmp_path)
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(work / "alerts.full.yaml")], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=work, capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=skip_reason("promtool"))
def test_promtool_catches_the_issue_outage_with_old_rule(tmp_path: Path) -> None:
    """Guards the unit tests: with health checks counted (the old rule), the outage cases must
    fail, i.e. the tests really exercise the exclusion."""

    def old_rule(text: str) -> str:
        broken = text.replace('method!~"Check|Watch|ServerReflectionInfo", ', "").replace(
            '{method!~"Check|Watch|ServerReflectionInfo"}', ""
        )
        assert broken != text
        return broken

    work = _promtool_files(tmp_path, old_rule)
    test = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=work, capture_output=True, text=True, timeout=120)
    assert test.returncode != 0
    assert "alertname: HybridprefHighErrorRate" in test.stdout + test.stderr


def test_quota_refusals_are_not_server_side_errors() -> None:
    # Issue 18: a vendor over its quota (RESOURCE_EXHAUSTED) fired two critical alerts. No alert may
    # count it as a server-side failure (the promtool case "one vendor over its quota" runs it).
    for rule in _alert_rules():
        assert "RESOURCE_EXHAUSTED" not in rule["expr"], rule["alert"]


@pytest.mark.skipif(PROMTOOL is None, reason=skip_reason("promtool"))
def test_promtool_quota_case_fails_with_the_old_rule(tmp_path: Path) -> None:
    """Guards the quota case: with RESOURCE_EXHAUSTED counted as a server error again, it must fail."""

    def old_rule(text: str) -> str:
        broken = text.replace("DEADLINE_EXCEEDED|DATA_LOSS", "DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|DATA_LOSS")
        assert broken != text
        return broken

    work = _promtool_files(tmp_path, old_rule)
    test = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=work, capture_output=True, text=True, timeout=120)
    out = test.stdout + test.stderr
    assert test.returncode != 0
    assert "alertname: HybridprefRouteInstancesFailing" in out and "alertname: HybridprefHighErrorRate" in out


def test_alert_metric_extraction_rejects_unknown_names() -> None:
    # Guards the check above: a typo in a metric name must be caught.
    assert _metric_names('rate(hybridpref_rpc_request_total{code="OK"}[5m])') == {"hybridpref_rpc_request_total"}
    assert _metric_names('x{service="hybridpref_fake"}') == set()
    assert _metric_names("hybridpref_rpc_latency_seconds_bucket") == {"hybridpref_rpc_latency_seconds"}


def test_promql_syntax() -> None:
    """Full PromQL parse of every alert and panel (promql-parser: the dev extra)."""
    import promql_parser

    dash = json.loads((DEPLOY / "grafana" / "hybridpref-dashboard.json").read_text(encoding="utf-8"))
    grafana_vars = {"$__rate_interval": "5m", "$namespace": ".*", "$service": ".*"}
    exprs = [r["expr"] for r in _alert_rules()]
    for p in dash["panels"]:
        for t in p["targets"]:
            expr = t["expr"]
            for var, value in grafana_vars.items():
                expr = expr.replace(var, value)
            exprs.append(expr)
    for expr in exprs:
        promql_parser.parse(expr)  # raises ValueError on a syntax error


def _dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    exprs += [v["definition"] for v in dash.get("templating", {}).get("list", []) if v.get("definition")]
    return exprs


def test_grafana_dashboard() -> None:
    path = DEPLOY / "grafana" / "hybridpref-dashboard.json"
    dash = json.loads(path.read_text(encoding="utf-8"))
    assert dash["uid"] and dash["title"]
    panels = dash["panels"]
    assert len(panels) >= 6
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    used: set[str] = set()
    for expr in _dashboard_exprs(dash):
        names = _metric_names(expr)
        assert names <= METRICS, f"unknown metrics {names - METRICS} in {expr}"
        used |= names
    # Every contract metric is on the dashboard.
    assert used == METRICS, METRICS - used
    for p in panels:
        assert p["targets"], p["title"]
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys()
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines()]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    # Both stages on one base, pinned by digest (a tag moves under you).
    assert len(froms) == 2 and len(set(froms)) == 1, froms
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", froms[0]), froms[0]
    # Kubernetes probes with native gRPC probes; a Docker HEALTHCHECK would only add load.
    assert not any(ln.upper().startswith("HEALTHCHECK") for ln in lines)
    assert text.index("pip install ./clients") < text.index("&& pip install . "), "the SDK distribution first"
    torch_at = text.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch_at < text.index("RUN pip install ."), "CPU torch must be installed before the project"
    assert 'ENTRYPOINT ["hybridpref"]' in text
    assert 'CMD ["serve", "router"]' in text
    # The image's user must be the uid the pods run as (runAsNonRoot needs a numeric USER).
    uid = re.search(r"ARG UID=(\d+)", text)
    assert uid and "USER ${UID}" in text
    for dep in _by_kind(_base_objects(), "Deployment").values():
        assert int(uid.group(1)) == dep["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    for grpc_port, metrics_port in PORTS.values():
        assert str(grpc_port) in text and str(metrics_port) in text
    for folder in ("services", "generated", "clients"):
        assert (ROOT / folder).is_dir() and f"COPY {folder}" in text


# ----------------------------------------------------------------------------- rendered (kubectl)

KUBECTL = find_tool("kubectl")


def _render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_renders(overlay: str) -> None:
    objects = _render(K8S / "overlays" / overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    configmaps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("hybridpref-config-")]
    assert len(configmaps) == 1, "one hashed settings ConfigMap"
    cm = configmaps[0]
    for dep in _by_kind(objects, "Deployment").values():
        c = _container(dep)
        assert c["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"], "hash suffix not propagated"
        if overlay == "prod":
            assert "/" in c["image"] and ":" in c["image"], "prod pulls a pinned image from a registry"
            # TLS and API keys are on in prod (components/tls, components/api-keys).
            assert "HYBRIDPREF_TLS_CERT_FILE" in _env(c)
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] not in ("Namespace",)}
    assert len(namespaces) == 1 and None not in namespaces
    if overlay == "dev":
        assert "ServiceMonitor" not in kinds
        assert cm["data"]["HYBRIDPREF_LOG_FORMAT"] == "console"
        assert all(h["spec"]["minReplicas"] == 1 for h in _by_kind(objects, "HorizontalPodAutoscaler").values())
    else:
        assert {"ServiceMonitor", "PrometheusRule"} <= kinds
        dashboards = [
            o for o in objects if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        ]
        assert len(dashboards) == 1
        json.loads(next(iter(dashboards[0]["data"].values())))
        assert _by_kind(objects, "HorizontalPodAutoscaler")["hybridpref-judge"]["spec"]["maxReplicas"] == 20
    # The recommended labels on the workloads and their pods, never in a selector (a selector cannot change).
    recommended = {"app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"}
    if overlay == "prod":
        recommended |= {"app.kubernetes.io/instance", "app.kubernetes.io/version"}
    tag = next(i["newTag"] for i in yaml.safe_load((K8S / "overlays" / "prod" / "kustomization.yaml").read_text())["images"])
    for dep in _by_kind(objects, "Deployment").values():
        for where in (dep["metadata"]["labels"], dep["spec"]["template"]["metadata"]["labels"]):
            assert recommended <= set(where), (dep["metadata"]["name"], where)
        assert not recommended & set(dep["spec"]["selector"]["matchLabels"])
        if overlay == "prod":
            assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == str(tag)


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
def test_bundle_volume_component_renders(tmp_path: Path) -> None:
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{rel}/base]\ncomponents: [{rel}/components/bundle-volume]\n", encoding="utf-8"
    )
    objects = _render(tmp_path)
    assert "hybridpref-bundles" in _by_kind(objects, "PersistentVolumeClaim")
    c = _container(_by_kind(objects, "Deployment")["hybridpref-predictor"])
    bundle = Path(_env(c)["HYBRIDPREF_BUNDLE_PATH"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert str(bundle.parent) in mounts and mounts[str(bundle.parent)]["readOnly"] is True
    # Other services are untouched.
    assert "HYBRIDPREF_BUNDLE_PATH" not in _env(_container(_by_kind(objects, "Deployment")["hybridpref-router"]))


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
def test_annotate_component_renders(tmp_path: Path) -> None:
    """components/annotate: the annotation page's Deployment + Service (+ its NetworkPolicy), HTTP
    probes on the paths the app serves, non-root, resources, and arguments the CLI accepts."""
    from hybridpref.cli.main import build_parser

    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{rel}/base]\ncomponents: [{rel}/components/annotate]\n", encoding="utf-8"
    )
    objects = _render(tmp_path)
    dep = _by_kind(objects, "Deployment")["hybridpref-annotate"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep)
    assert c["image"] == "hybridpref", "overlays set the image by the placeholder name"
    args = build_parser().parse_args(c["args"])
    assert args.command == "annotate" and args.host == "0.0.0.0" and args.secure_cookies
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": args.port}
    probes = {name: c[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    assert all(p["port"] == "http" for p in probes.values())
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    for kind in ("requests", "limits"):
        assert _cpu(c["resources"][kind]["cpu"]) > 0 and _mem(c["resources"][kind]["memory"]) > 0
    # Settings: the campaign and seed from the (hashed) ConfigMap, the database URL from a Secret.
    (cm_ref,) = c["envFrom"]
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_ref["configMapRef"]["name"]]
    assert cm["metadata"]["name"].startswith("hybridpref-annotate-"), "hash suffix propagated"
    env = {e["name"]: e for e in c["env"]}
    assert env["HYBRIDPREF_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "hybridpref-store-db", "key": "url"}
    code = "".join((ROOT / "services" / "hybridpref" / f).read_text() for f in ("cli/annotate.py", "store/engine.py"))
    for name in [*cm["data"], *env]:
        assert f'"{name}"' in code, f"{name} is set in the manifest but read by no code"
    svc = _by_kind(objects, "Service")["hybridpref-annotate"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    policy = _by_kind(objects, "NetworkPolicy")["hybridpref-annotate"]
    assert policy["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
def test_campaign_store_and_postgres_components_render(tmp_path: Path) -> None:
    """components/campaign-store (the router's database URL from a Secret, the migrations Job) with
    components/postgres (a StatefulSet with a PVC, its headless Service and who may reach it)."""
    from hybridpref.cli.main import build_parser

    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{rel}/base]\ncomponents: [{rel}/components/annotate, {rel}/components/campaign-store, "
        f"{rel}/components/postgres]\n",
        encoding="utf-8",
    )
    objects = _render(tmp_path)
    deployments = _by_kind(objects, "Deployment")
    secret_url = {"name": "hybridpref-store-db", "key": "url"}
    router = _container(deployments["hybridpref-router"])
    router_env = {e["name"]: e for e in router["env"]}
    assert router_env["HYBRIDPREF_DB_URL"]["valueFrom"]["secretKeyRef"] == secret_url
    assert "HYBRIDPREF_DB_URL" in environment_variables(), "the router reads it (its settings)"
    for name in ("hybridpref-tagger", "hybridpref-judge", "hybridpref-predictor"):
        assert "HYBRIDPREF_DB_URL" not in {e["name"] for e in _container(deployments[name]).get("env", [])}
    # The migrations Job: the CLI command, the same Secret, non-root, gone after it finished.
    job = _by_kind(objects, "Job")["hybridpref-store-migrate"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = build_parser().parse_args(c["args"])
    assert (args.command, args.store_command, args.db) == ("store", "migrate", None), "the URL comes from the env"
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]} == {"HYBRIDPREF_DB_URL": secret_url}
    assert c["image"] == "hybridpref" and pod["restartPolicy"] in ("Never", "OnFailure")
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 3600 and job["spec"]["backoffLimit"] >= 3
    # PostgreSQL: one replica, its data on a claim, the Service the example URL names.
    sts = _by_kind(objects, "StatefulSet")["hybridpref-postgres"]
    svc = _by_kind(objects, "Service")[sts["spec"]["serviceName"]]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    (port,) = svc["spec"]["ports"]
    comment = (K8S / "components" / "postgres" / "kustomization.yaml").read_text(encoding="utf-8")
    assert f"@{svc['metadata']['name']}:{port['port']}/" in comment
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    pg = sts["spec"]["template"]["spec"]["containers"][0]
    pg_env = {e["name"]: e for e in pg["env"]}
    data_mount = {m["name"]: m["mountPath"] for m in pg["volumeMounts"]}[claim["metadata"]["name"]]
    assert pg_env["PGDATA"]["value"].startswith(data_mount + "/"), "initdb refuses the volume root (lost+found)"
    assert pg_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "hybridpref-postgres"
    assert "@" not in pg["image"] and re.fullmatch(r"postgres:\d+\.\d+-\w+", pg["image"]), "a pinned minor version"
    # Only the router, the annotation page and the migrations reach it, and those labels are theirs.
    policy = _by_kind(objects, "NetworkPolicy")["hybridpref-postgres"]
    (rule,) = policy["spec"]["ingress"]
    (allowed,) = [
        m["values"] for m in rule["from"][0]["podSelector"]["matchExpressions"] if m["key"] == "app.kubernetes.io/component"
    ]
    pods = [deployments["hybridpref-router"], deployments["hybridpref-annotate"], job]
    assert sorted(allowed) == sorted(p["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods)
    assert rule["ports"] == [{"port": "postgres", "protocol": "TCP"}]


# ----------------------------------------------------------------------------- image overrides

IMAGE_KUSTOMIZATIONS = [K8S / "overlays" / "dev", K8S / "overlays" / "prod", K8S / "jobs"]


def _image_name(image: str) -> str:
    """``ghcr.io/x/hybridpref:0.1.0`` / ``...@sha256:..`` -> ``ghcr.io/x/hybridpref`` (what ``images:`` matches)."""
    head, _, last = image.split("@", 1)[0].rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def _images_in(objects: list[dict[str, Any]]) -> set[str]:
    out = set()
    for o in objects:
        pod = o.get("spec", {}).get("template", {}).get("spec", {})
        out |= {_image_name(c["image"]) for c in pod.get("containers", []) + pod.get("initContainers", [])}
    return out


def _images_before(kust_dir: Path) -> set[str]:
    """Image names reaching a kustomization's ``images:`` transformer: its own resource files'
    and what the kustomizations it builds on output (after their own ``images:``)."""
    kust = yaml.safe_load((kust_dir / "kustomization.yaml").read_text())
    names: set[str] = set()
    for ref in kust.get("resources", []):
        target = kust_dir / ref
        if target.is_dir():
            inner = yaml.safe_load((target / "kustomization.yaml").read_text())
            renamed = {i["name"]: i.get("newName", i["name"]) for i in inner.get("images", [])}
            names |= {renamed.get(n, n) for n in _images_before(target)}
        else:
            names |= _images_in(_load_all(target))
    return names


@pytest.mark.parametrize("kust_dir", IMAGE_KUSTOMIZATIONS, ids=lambda p: p.name)
def test_image_overrides_match_an_image(kust_dir: Path) -> None:
    """An ``images:`` entry whose name matches no container is silently ignored by kustomize
    (the issue: dev and prod both deployed the base tag). Checked without kubectl."""
    kust = yaml.safe_load((kust_dir / "kustomization.yaml").read_text())
    entries = kust.get("images", [])
    assert entries, f"{kust_dir} sets no image"
    available = _images_before(kust_dir)
    for entry in entries:
        assert entry["name"] in available, f"{kust_dir}: images entry {entry['name']!r} matches none of {available}"
        assert entry.get("newTag") or entry.get("digest"), entry


def test_image_override_check_catches_a_miss(tmp_path: Path) -> None:
    # The shape of the original bug: the base renames the image, the overlay names the old one.
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "d.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "x"},
                "spec": {"template": {"spec": {"containers": [{"name": "x", "image": "hybridpref"}]}}},
            }
        )
    )
    (tmp_path / "base" / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["d.yaml"],
                "images": [{"name": "hybridpref", "newName": "ghcr.io/example/hybridpref", "newTag": "0.1.0"}],
            }
        )
    )
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["../base"]}))
    assert _images_before(tmp_path / "overlay") == {"ghcr.io/example/hybridpref"}


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
@pytest.mark.parametrize("kust_dir", IMAGE_KUSTOMIZATIONS, ids=lambda p: p.name)
def test_rendered_images_are_the_overrides(kust_dir: Path) -> None:
    kust = yaml.safe_load((kust_dir / "kustomization.yaml").read_text())
    (entry,) = kust["images"]
    want = entry.get("newName", entry["name"]) + (f"@{entry['digest']}" if entry.get("digest") else f":{entry['newTag']}")
    objects = _render(kust_dir)
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        for c in pod["containers"]:
            assert c["image"] == want, f"{kust_dir.name}: {c['name']} runs {c['image']}, not the override {want}"


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
def test_tls_and_api_key_components_render() -> None:
    objects = _render(K8S / "overlays" / "prod")
    deployments = _by_kind(objects, "Deployment")
    for name, (grpc_port, _) in PORTS.items():
        dep = deployments[f"hybridpref-{name}"]
        c = _container(dep)
        env = _env(c)
        assert set(env) <= READ_BY_CODE, set(env) - READ_BY_CODE
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        keys = ["HYBRIDPREF_TLS_CERT_FILE", "HYBRIDPREF_TLS_KEY_FILE"]
        keys += (
            ["HYBRIDPREF_TLS_CA_FILE", "HYBRIDPREF_TLS_CLIENT_CERT_FILE", "HYBRIDPREF_TLS_CLIENT_KEY_FILE"]
            if name == "router"
            else ["HYBRIDPREF_TLS_CLIENT_CA_FILE"]
        )
        for key in keys:
            folder = str(Path(env[key]).parent)
            assert mounts[folder]["readOnly"] is True
            assert volumes[mounts[folder]["name"]]["secret"]["secretName"] == f"hybridpref-{name}-tls"
        # The kubelet's probes cannot speak TLS: they use the plaintext health port.
        assert int(env["HYBRIDPREF_HEALTH_PORT"]) == HEALTH_PORT
        assert {"grpc": grpc_port, "health": HEALTH_PORT}.items() <= {p["name"]: p["containerPort"] for p in c["ports"]}.items()
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == HEALTH_PORT, (name, probe)
        assert ("HYBRIDPREF_API_KEYS_FILE" in env) == (name == "router")
    router = _container(deployments["hybridpref-router"])
    keys_file = Path(_env(router)["HYBRIDPREF_API_KEYS_FILE"])
    (mount,) = [m for m in router["volumeMounts"] if Path(m["mountPath"]) == keys_file.parent]
    volumes = {v["name"]: v for v in deployments["hybridpref-router"]["spec"]["template"]["spec"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "hybridpref-api-keys" and not secret.get("optional")
    assert keys_file.name in {i["path"] for i in secret["items"]}


def test_bundle_build_job_tags_through_the_tagger_service(base: list[dict[str, Any]]) -> None:
    (job,) = _load_all(K8S / "jobs" / "bundle-build.yaml")
    assert job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["initContainers"]  # the build, then (issue 18 item 15) its routing models
    (routing,) = pod["containers"]
    env = _env(c)
    assert set(env) - {"JOB_UID"} <= READ_BY_CODE, set(env) - READ_BY_CODE
    args = dict(a.removeprefix("--").split("=", 1) for a in c["args"] if a.startswith("--") and "=" in a)
    assert c["args"][:2] == ["predictor", "build"]
    # Through the headless tagger Service (round_robin over its replicas), not in process.
    config = dict(
        line.split("=", 1) for line in (BASE / "hybridpref.env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert args["tagger"] == config["HYBRIDPREF_TAGGER_ADDRESS"]
    from hybridpref.cli.main import build_parser

    parsed = build_parser().parse_args([a.replace("$(JOB_UID)", "x") for a in c["args"]])
    assert parsed.tagger == args["tagger"] and parsed.tagger_concurrency >= 2
    # The NetworkPolicy lets this pod reach the tagger.
    labels = job["spec"]["template"]["metadata"]["labels"]
    tagger = _by_kind(base, "Deployment")["hybridpref-tagger"]["spec"]["template"]["metadata"]["labels"]
    callers = [p["podSelector"]["matchLabels"] for p in _allowed_peers(base, tagger, "grpc")]
    assert any(sel.items() <= labels.items() for sel in callers)
    # Same hardening as the services; the TLS client files come from a mounted Secret.
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for key in ("HYBRIDPREF_TLS_CA_FILE", "HYBRIDPREF_TLS_CLIENT_CERT_FILE", "HYBRIDPREF_TLS_CLIENT_KEY_FILE"):
        assert mounts[str(Path(env[key]).parent)]["readOnly"] is True
    out = args["out"]
    assert any(out.startswith(path) for path in mounts), "the bundle must land on a mounted volume"
    # The routing-models step completes that bundle, on the same pool and the same volume.
    routing_args = build_parser().parse_args([a.replace("$(JOB_UID)", "x") for a in routing["args"]])
    assert routing["args"][:2] == ["predictor", "add-routing-models"]
    assert str(routing_args.bundle) == out.replace("$(JOB_UID)", "x")
    assert [p.split("=", 1)[1] for p in routing_args.pool] == [args["pool"]]
    routing_mounts = {m["mountPath"]: m for m in routing["volumeMounts"]}
    assert routing_mounts["/bundles"]["name"] == mounts["/bundles"]["name"] and "readOnly" not in routing_mounts["/bundles"]
    assert routing["securityContext"]["readOnlyRootFilesystem"] is True and set(_env(routing)) - {"JOB_UID"} <= READ_BY_CODE


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
def test_gateway_component_exposes_only_the_vendor_services_over_tls(tmp_path: Path) -> None:
    """Issue 18 item 15: a documented, rendered way to reach the router from outside the cluster."""
    rel = os.path.relpath(K8S, tmp_path)
    # As an operator adds it: to an overlay of their own over prod, which sets the namespace.
    (tmp_path / "kustomization.yaml").write_text(
        f"namespace: hybridpref\nresources: [{rel}/overlays/prod]\ncomponents: [{rel}/components/gateway]\n", encoding="utf-8"
    )
    objects = _render(tmp_path)
    (gateway,) = _by_kind(objects, "Gateway").values()
    (route,) = _by_kind(objects, "GRPCRoute").values()
    assert gateway["apiVersion"] == route["apiVersion"] == "gateway.networking.k8s.io/v1"
    listeners = {lst["name"]: lst for lst in gateway["spec"]["listeners"]}
    (parent,) = route["spec"]["parentRefs"]
    assert parent["name"] == gateway["metadata"]["name"]
    listener = listeners[parent["sectionName"]]
    assert listener["protocol"] == "HTTPS" and listener["port"] == 443 and listener["tls"]["mode"] == "Terminate"
    assert [c["name"] for c in listener["tls"]["certificateRefs"]] == ["hybridpref-router-public-tls"]
    assert {"kind": "GRPCRoute"} in listener["allowedRoutes"]["kinds"]
    assert set(route["spec"]["hostnames"]) == {listener["hostname"]}
    # Same namespace as the Service it routes to, and exactly the services the router serves to vendors
    # (its handle's, health and reflection aside): the campaign calls were missing until 2026-12-06.
    assert gateway["metadata"]["namespace"] == route["metadata"]["namespace"] == "hybridpref"
    (rule,) = route["spec"]["rules"]
    from hybridpref.router.campaign_servicer import SERVICE_NAME as CAMPAIGN_SERVICE
    from hybridpref.router.servicer import SERVICE_NAME as ROUTER_SERVICE

    served = {ROUTER_SERVICE, CAMPAIGN_SERVICE}  # the names router_handle registers
    assert served == {_proto_service("router"), _proto_service("campaign")}
    assert sorted(m["method"]["service"] for m in rule["matches"]) == sorted(served)
    assert all(m["method"]["type"] == "Exact" for m in rule["matches"])
    (backend,) = rule["backendRefs"]
    service = _by_kind(objects, "Service")[backend["name"]]
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert ports[backend["port"]]["name"] == "grpc" and service["metadata"]["namespace"] == "hybridpref"
    # Exposed with the vendors' API keys on (the prod overlay's api-keys component).
    router = _container(_by_kind(objects, "Deployment")["hybridpref-router"])
    assert "HYBRIDPREF_API_KEYS_FILE" in _env(router)


@pytest.mark.skipif(KUBECTL is None, reason=skip_reason("kubectl"))
def test_gateway_backend_tls_lets_the_gateway_reach_a_tls_router(tmp_path: Path) -> None:
    """With components/tls on (prod), the router's port speaks TLS: the Gateway needs a BackendTLSPolicy on the
    Service port the GRPCRoute sends to, trusting the CA that issued the router's certificate for its name."""
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"namespace: hybridpref\nresources: [{rel}/overlays/prod]\n"
        f"components: [{rel}/components/gateway, {rel}/components/gateway-backend-tls]\n",
        encoding="utf-8",
    )
    objects = _render(tmp_path)
    (policy,) = _by_kind(objects, "BackendTLSPolicy").values()
    (route,) = _by_kind(objects, "GRPCRoute").values()
    assert policy["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == "hybridpref"  # beside the Service, as the policy requires
    (target,) = policy["spec"]["targetRefs"]
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    service = _by_kind(objects, "Service")[target["name"]]
    assert (target["group"], target["kind"], target["name"]) == ("", "Service", backend["name"])
    port = next(p for p in service["spec"]["ports"] if p["name"] == target["sectionName"])
    assert port["port"] == backend["port"]  # the very port the route forwards to
    # The router does serve TLS there in this overlay, from the Secret the CA below issued.
    router = _env(_container(_by_kind(objects, "Deployment")["hybridpref-router"]))
    assert router.get("HYBRIDPREF_TLS_CERT_FILE") and router.get("HYBRIDPREF_TLS_KEY_FILE")
    validation = policy["spec"]["validation"]
    assert validation["hostname"] == service["metadata"]["name"]  # the name the tls component's certificates carry
    assert validation["caCertificateRefs"] == [{"group": "", "kind": "ConfigMap", "name": "hybridpref-router-ca"}]
