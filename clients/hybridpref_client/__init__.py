"""Vendor SDK for ``hybridpref.v1.RouterService``.

    from hybridpref_client import RouterClient, read_instances, write_decisions
    with RouterClient("router.example:50050", timeout_s=60) as client:
        result = client.route(read_instances("batch.jsonl"), budget=0.25, strategy="greedy", seed=7)
    write_decisions("routed.jsonl", result)

TLS, API keys and retries: ``RouterClient(address, api_key=..., root_certificates=..., max_attempts=4)``
(see ``ChannelConfig``).

``budget`` is a fraction (float in [0, 1]), a count (int), ``Cost(total)`` or ``"auto"``.
Errors are ``RoutingError`` with the gRPC code and, for bad input, the field violations.
"""

from hybridpref_client.client import (
    AsyncRouterClient,
    ChannelConfig,
    Cost,
    Decision,
    RouteResult,
    RouterClient,
    RoutingError,
)
from hybridpref_client.jsonl import read_instances, write_decisions

__all__ = [
    "AsyncRouterClient",
    "ChannelConfig",
    "Cost",
    "Decision",
    "RouteResult",
    "RouterClient",
    "RoutingError",
    "read_instances",
    "write_decisions",
]
