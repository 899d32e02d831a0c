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

from importlib import import_module
from typing import Any

# Lazy exports: ``hybridpref_client.core`` (pure types, no grpc) is shared with the services, whose
# gRPC-free cores must not pull grpc in by importing this package.
_EXPORTS = {
    "AsyncRouterClient": "client", "ChannelConfig": "client", "Cost": "client", "Decision": "client",
    "RouteResult": "client", "RouterClient": "client", "RoutingError": "client",
    "read_instances": "jsonl", "write_decisions": "jsonl",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"hybridpref_client.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'hybridpref_client' has no attribute {name!r}")


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
