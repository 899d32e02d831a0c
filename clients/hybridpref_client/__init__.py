"""Vendor SDK for ``hybridpref.v1.RouterService``.

    from hybridpref_client import RouterClient, read_instances, write_decisions
    with RouterClient("router.example:50050", timeout_s=60) as client:
        result = client.route(read_instances("batch.jsonl"), fraction=0.25, strategy="greedy", seed=7)
    write_decisions("routed.jsonl", result)

Instances are ``PreferenceInstance`` objects or plain dicts (the JSONL schema). The budget is
explicit: ``fraction=``, ``count=``, ``cost=`` or ``budget=Budget(...)`` / ``"auto"`` (a bare number
as ``budget`` is deprecated: ``hybridpref_client.budget``). TLS, API keys and retries:
``RouterClient(address, api_key=..., root_certificates=..., max_attempts=4)`` (see ``ChannelConfig``).
Errors: one hierarchy under ``HybridprefError`` (``hybridpref_client.errors``).

Campaigns (a total budget over many batches, human labels back, one dataset out)::

    client.create_campaign("acme-june", count=2000, expected_instances=8000)
    client.route(batch, campaign="acme-june")          # no budget: the campaign's governs
    client.submit_labels("acme-june", [{"id": "x1", "label": "A", "annotator": "ann1"}])
    client.get_campaign("acme-june").agreement
    for row in client.export_dataset("acme-june"): ...   # prompt / chosen / rejected + provenance
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("hybridpref-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# Lazy exports: ``hybridpref_client.core`` (pure types, no grpc) is shared with the services, whose
# gRPC-free cores must not pull grpc in by importing this package.
_EXPORTS = {
    "AsyncRouterClient": "client",
    "ChannelConfig": "client",
    "RouterClient": "client",
    "Budget": "budget",
    "Cost": "budget",
    "Decision": "messages",
    "RouteResult": "messages",
    "Campaign": "messages",
    "CampaignStatus": "messages",
    "HumanLabel": "messages",
    "LabelResult": "messages",
    "PendingPair": "messages",
    "AnnotatorStats": "messages",
    "Interval": "messages",
    "PreferenceInstance": "core.instances",
    "Message": "core.instances",
    "Label": "core.instances",
    "PositionMode": "core.instances",
    "HybridprefError": "core.errors",
    "InvalidInput": "core.errors",
    "FieldViolation": "core.errors",
    "RoutingError": "errors",
    "InvalidArgumentError": "errors",
    "UnauthenticatedError": "errors",
    "PermissionDeniedError": "errors",
    "ResourceExhaustedError": "errors",
    "UnavailableError": "errors",
    "DeadlineExceededError": "errors",
    "FailedPreconditionError": "errors",
    "NotFoundError": "errors",
    "AlreadyExistsError": "errors",
    "read_instances": "jsonl",
    "write_decisions": "jsonl",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"hybridpref_client.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'hybridpref_client' has no attribute {name!r}")


__all__ = sorted([*_EXPORTS, "__version__"])
