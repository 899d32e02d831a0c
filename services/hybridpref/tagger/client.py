"""Tag through a running tagger service instead of loading the models in process.

    tag_fn, bins_json = remote_tag_fn("dns:///hybridpref-tagger:50051")
    tags = tag_fn(instances)          # (n, NUM_TAGS) uint8, same as the in-process tagger

Batch jobs (``hybridpref predictor build --tagger ADDRESS``, evaluations) use this to spread a
large pool over the tagger replicas: chunks go out ``concurrency`` at a time on one channel with
round-robin balancing, so a ``dns:///`` name of a headless Service reaches every ready pod.
TLS, client certificates and keepalive come from ``Settings`` (``HYBRIDPREF_TLS_*``), as for the
router's own channel to the tagger.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from hybridpref.common.fields import shift_instances
from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES, VOCABULARY_VERSION
from hybridpref.server.channels import open_sync_channel
from hybridpref.server.settings import Settings
from hybridpref.v1 import tagger_pb2, tagger_pb2_grpc
from hybridpref_client.core.convert import instances_to_proto
from hybridpref_client.core.errors import BackendUnavailable, FieldViolation, InvalidInput
from hybridpref_client.core.grpc_errors import field_violations
from hybridpref_client.core.instances import PreferenceInstance

TagFn = Callable[[Sequence[PreferenceInstance]], np.ndarray]
DEFAULT_CHUNK = 64  # the router's own chunk size: small calls interleave fairly on the tagger
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 600.0


def remote_tag_fn(
    address: str,
    profile: str = "default",
    *,
    settings: Settings | None = None,
    chunk: int = DEFAULT_CHUNK,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[TagFn, str]:
    """A tag function backed by the tagger at ``address``, and the reference bins (JSON) it bins with.

    The bundle must record the bin edges the tags were computed with; the tagger reports only
    their fingerprint, so this checks it against the packaged reference bins and refuses a tagger
    that bins on other edges (``InvalidInput``), rather than build a bundle the router would refuse.
    """
    from hybridpref.routing_model.bins import ReferenceBins

    if chunk < 1 or concurrency < 1:
        raise InvalidInput(FieldViolation("chunk" if chunk < 1 else "concurrency", "must be >= 1"))
    bins = ReferenceBins.default()
    settings = settings or Settings()

    def call(
        stub: tagger_pb2_grpc.TaggerServiceStub, start: int, part: Sequence[PreferenceInstance]
    ) -> tagger_pb2.TagInstancesResponse:
        request = tagger_pb2.TagInstancesRequest(instances=instances_to_proto(part), profile=profile)
        try:
            # wait_for_ready: a tagger pod restarting or still loading is waited for, within the deadline.
            return stub.TagInstances(request, timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidInput(_in_batch(exc, start)) from None
            raise BackendUnavailable(f"tagger at {address}: {exc.code().name}: {exc.details()}") from None

    def tag(instances: Sequence[PreferenceInstance]) -> np.ndarray:
        starts = range(0, len(instances), chunk)
        out = np.zeros((len(instances), NUM_TAGS), dtype=np.uint8)
        with open_sync_channel(address, settings) as channel, ThreadPoolExecutor(concurrency) as pool:
            stub = tagger_pb2_grpc.TaggerServiceStub(channel)
            _check_vocabulary(stub, address, timeout_s)  # fail before the first chunk, not after
            answers = pool.map(lambda s: call(stub, s, instances[s : s + chunk]), starts)
            for start, resp in zip(starts, answers):
                _check(resp, instances[start : start + chunk], bins.fingerprint(), address)
                for j, item in enumerate(resp.instances):
                    out[start + j, list(item.tags.indices)] = 1
        return out

    bins_json = bins.to_json()
    # The in-process tagger's key (``tag_with_tagger``): same profile and bins, same tags, one cache.
    tag.cache_key = f"tagger:{profile}:bins-{hashlib.sha256(bins_json.encode()).hexdigest()[:12]}"  # type: ignore[attr-defined]
    return tag, bins_json


def _in_batch(exc: grpc.RpcError, start: int) -> list[FieldViolation]:
    """The tagger's field violations with instance indices in the caller's batch, not the chunk."""
    found = shift_instances((FieldViolation(field, text) for field, text in field_violations(exc)), start)
    return found or [FieldViolation("instances", exc.details() or "rejected by the tagger")]


def _check_vocabulary(stub: tagger_pb2_grpc.TaggerServiceStub, address: str, timeout_s: float) -> None:
    """The tagger's columns must be this build's: a bundle stores tags by column index."""
    try:
        vocab = stub.GetVocabulary(tagger_pb2.GetVocabularyRequest(), timeout=timeout_s, wait_for_ready=True).vocabulary
    except grpc.RpcError as exc:
        raise BackendUnavailable(f"tagger at {address}: {exc.code().name}: {exc.details()}") from None
    if vocab.version != VOCABULARY_VERSION or list(vocab.tags) != list(TAG_NAMES):
        raise InvalidInput(
            FieldViolation(
                "--tagger",
                f"tagger at {address} has vocabulary {vocab.version!r} "
                f"({len(vocab.tags)} tags), this build {VOCABULARY_VERSION!r} ({NUM_TAGS})",
            )
        )


def _check(resp: tagger_pb2.TagInstancesResponse, part: Sequence[PreferenceInstance], fingerprint: str, address: str) -> None:
    if resp.vocabulary_version != VOCABULARY_VERSION:
        raise InvalidInput(
            FieldViolation(
                "--tagger", f"tagger at {address} uses vocabulary {resp.vocabulary_version!r}, this build {VOCABULARY_VERSION!r}"
            )
        )
    if resp.reference_bins_id != fingerprint:
        raise InvalidInput(
            FieldViolation(
                "--tagger",
                f"tagger at {address} bins on other reference edges ({resp.reference_bins_id!r}, packaged {fingerprint!r})",
            )
        )
    if [item.id for item in resp.instances] != [inst.id for inst in part]:
        raise BackendUnavailable(f"tagger at {address} answered for other instances than asked")
