"""Prometheus metrics shared by every service (labelled by ``service``), served on an
HTTP ``/metrics`` port separate from the gRPC port.

One ``Metrics`` object per registry; ``Metrics.default()`` is the process's. Several
services in one process (the embedded stack, tests) share it and differ by label.
"""

from __future__ import annotations

from functools import lru_cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        self.requests = Counter(
            "hybridpref_rpc_requests",
            "RPCs handled, by final status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "hybridpref_rpc_latency_seconds",
            "RPC handling time in seconds.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "hybridpref_rpc_in_flight",
            "RPCs being handled now.",
            ["service", "method"],
            registry=registry,
        )
        self.instances = Counter(
            "hybridpref_instances",
            "Instances processed.",
            ["service", "method"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "hybridpref_model_ready",
            "1 once the service's models are loaded.",
            ["service"],
            registry=registry,
        )
        self.undecodable = Counter(
            "hybridpref_undecodable_requests",
            "Request messages that could not be decoded (INVALID_ARGUMENT).",
            ["service", "method"],
            registry=registry,
        )
        self.backend_ready = Gauge(
            "hybridpref_backend_ready",
            "Router: 1 while a backend answers its health check with SERVING.",
            ["backend"],
            registry=registry,
        )
        self.backend_errors = Counter(
            "hybridpref_backend_errors",
            "Failed exchanges with an external LM endpoint (OpenAI-compatible), by reason: malformed_response "
            "(HTTP 200 that is not a chat.completion), http_status, unreachable, timeout.",
            ["service", "backend", "reason"],
            registry=registry,
        )
        self.routed = Counter(
            "hybridpref_routed_instances",
            "Routing decisions, by route and strategy.",
            ["route", "strategy"],
            registry=registry,
        )
        # Per vendor (issue 18 item 12): the vendor of the caller's API key, a bounded label (VendorLabels).
        self.vendor_calls = Counter(
            "hybridpref_vendor_calls",
            "Calls by the caller's vendor (its API key's entry; 'anonymous' with auth off, "
            "'unauthenticated' for a missing or unknown key, 'other' past the first 100 vendors) and final status code.",
            ["service", "vendor", "method", "code"],
            registry=registry,
        )
        # Routing quality (router): what an operator can alert on.
        self.judge_labels = Counter(
            "hybridpref_judge_labels",
            "LM labels the router used, by whether the judge was unsure (order flip, tie or "
            "no verdict, or a probability within 0.15 of 0.5).",
            ["unsure"],
            registry=registry,
        )
        self.routed_batches = Counter(
            "hybridpref_routed_batches",
            "Routed batches by the domain check's verdict: in, out, unknown (no routing model or no domain statistics).",
            ["domain"],
            registry=registry,
        )
        self.routing_warnings = Counter(
            "hybridpref_routing_warnings",
            "Warnings in routing summaries, by kind (hybridpref.router.summary.WARNING_KINDS).",
            ["kind"],
            registry=registry,
        )
        self.vendor_labels = VendorLabels()

        # Campaigns (router): labelled by vendor (the keys file's names, a bounded set), never by campaign
        # name (vendors create those freely); per-campaign numbers are in GetCampaign.
        self.campaign_decisions = Counter(
            "hybridpref_campaign_decisions",
            "Campaign decisions stored (re-sent ids not counted), by vendor and route.",
            ["vendor", "route"],
            registry=registry,
        )
        self.campaign_budget_spent = Counter(
            "hybridpref_campaign_budget_spent",
            "Campaign budget units reserved by human-routed decisions, by vendor and "
            "budget kind (count: labels; cost: cost units).",
            ["vendor", "kind"],
            registry=registry,
        )
        self.campaign_labels = Counter(
            "hybridpref_campaign_labels",
            "Human labels submitted to campaigns, by vendor and outcome (stored, replaced, unchanged, rejected), "
            "and labels retracted (RetractLabels).",
            ["vendor", "status"],
            registry=registry,
        )
        self.campaign_agreement_votes = Counter(
            "hybridpref_campaign_agreement_votes",
            "New non-tie human votes on pairs with a non-tie LM label, by vendor and whether the vote agrees with the LM label.",
            ["vendor", "outcome"],
            registry=registry,
        )
        self.campaign_expected_agreement = Counter(
            "hybridpref_campaign_expected_agreement",
            "Sum over the same votes of the agreement the bundle expected "
            "(1 - P(LM label wrong) from the correction model, else the judge's confidence).",
            ["vendor"],
            registry=registry,
        )

    @staticmethod
    @lru_cache(maxsize=1)
    def default() -> Metrics:
        return Metrics(REGISTRY)


class VendorLabels:
    """Vendor names as metric label values, bounded: the first ``limit`` distinct names keep theirs,
    later ones share "other" (names come from the operator's keys file, but a label must never grow
    without bound)."""

    def __init__(self, limit: int = 100):
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, vendor: str) -> str:
        if vendor in self._known:
            return vendor
        if len(self._known) < self.limit:
            self._known.add(vendor)
            return vendor
        return "other"


def start_metrics_server(port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY) -> int:
    """Serve ``/metrics`` over HTTP in a daemon thread; returns the bound port (0 -> ephemeral)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_address[1])
