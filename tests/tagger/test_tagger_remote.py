"""Tagging through tagger services (``remote_tag_fn``, ``predictor build --tagger``): two real
tagger servers on loopback behind one round-robin channel, as a batch Job reaches the tagger
replicas through a headless Service."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT
from prometheus_client import CollectorRegistry

from hybridpref.server.metrics import Metrics
from hybridpref.server.settings import Settings
from hybridpref.tagger.client import remote_tag_fn
from hybridpref_client.core.errors import InvalidInput
from hybridpref_client.core.instances import read_jsonl


@pytest.fixture(scope="module")
def two_taggers(background_loop):
    from hybridpref.cli.stack import handle_for
    from hybridpref.server.server import start_service

    settings = Settings(tagger={"profile": "fast"})
    running = []
    for _ in range(2):
        metrics = Metrics(CollectorRegistry())
        service = background_loop.run(
            start_service(handle_for("tagger", settings, metrics), settings, metrics, port=0, metrics_port=-1)
        )
        running.append((service, metrics))
    for service, _ in running:
        background_loop.run(service.loaded.wait(), timeout=300)
    yield running
    for service, _ in running:
        background_loop.run(service.stop(0.2))


def _tagged(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("hybridpref_instances_total", {"service": "tagger", "method": "TagInstances"}) or 0.0


def test_remote_tags_equal_in_process_and_spread_over_replicas(two_taggers):
    from hybridpref.tagger.core import Tagger

    instances = read_jsonl(str(ROOT / "samples" / "sample_batch.jsonl"))
    target = "ipv4:" + ",".join(s.address for s, _ in two_taggers)  # what dns:/// of a headless Service yields
    before = [_tagged(m) for _, m in two_taggers]
    tag, bins_json = remote_tag_fn(target, "fast", chunk=4, concurrency=4)
    remote = tag(instances)

    local_tagger = Tagger.for_profile("fast")
    local_tagger.load()
    local = np.asarray(local_tagger.tag(list(instances)).tag_matrix, dtype=np.uint8)
    assert remote.dtype == np.uint8 and remote.shape == local.shape
    assert np.array_equal(remote, local)
    assert remote.any()
    assert bins_json == local_tagger.reference_bins.to_json()
    # round_robin: both replicas did part of the work, all of it in total.
    done = [_tagged(m) - b for (_, m), b in zip(two_taggers, before)]
    assert all(d > 0 for d in done), done
    assert sum(done) == len(instances)


def test_remote_tagger_with_other_bins_is_refused(two_taggers, monkeypatch):
    from hybridpref.routing_model.bins import ReferenceBins

    instances = read_jsonl(str(ROOT / "samples" / "sample_batch.jsonl"))[:3]

    class OtherBins:  # this build's packaged bins differ from the ones the (loaded) taggers use
        def fingerprint(self) -> str:
            return "other-edges"

        def to_json(self) -> str:
            return "{}"

    monkeypatch.setattr(ReferenceBins, "default", classmethod(lambda cls: OtherBins()))
    tag, _ = remote_tag_fn(two_taggers[0][0].address, "fast")
    with pytest.raises(InvalidInput, match="other reference edges"):
        tag(instances)


def test_unknown_profile_is_the_callers_mistake(two_taggers):
    instances = read_jsonl(str(ROOT / "samples" / "sample_batch.jsonl"))[:2]
    tag, _ = remote_tag_fn(two_taggers[0][0].address, "no-such-profile")
    with pytest.raises(InvalidInput):
        tag(instances)


def test_vocabulary_rpc_lists_the_tag_columns(two_taggers):
    import grpc

    from hybridpref.common.vocabulary import TAG_NAMES, VOCABULARY_VERSION
    from hybridpref.v1 import tagger_pb2, tagger_pb2_grpc

    with grpc.insecure_channel(two_taggers[0][0].address) as channel:
        vocab = tagger_pb2_grpc.TaggerServiceStub(channel).GetVocabulary(tagger_pb2.GetVocabularyRequest(), timeout=10).vocabulary
    assert vocab.version == VOCABULARY_VERSION and list(vocab.tags) == list(TAG_NAMES)


def test_predictor_build_cli_tags_through_the_tagger_service(two_taggers, tmp_path, monkeypatch):
    """``predictor build --tagger`` hands build_bundle a remote tag function and the bins it checked
    (the build itself has its own tests; its cross-validation takes a minute here)."""
    import hybridpref.offline.bundle.builder as builder
    from hybridpref.cli.main import main as cli_main
    from hybridpref.routing_model.bins import ReferenceBins

    def no_local_tagger(profile):
        raise AssertionError("--tagger must not load the tagger in process")

    seen = {}

    def fake_build(config, *, tag_fn=None, reference_bins_json=None, progress=True):
        seen.update(
            config=config, tags=tag_fn(read_jsonl(str(ROOT / "samples" / "sample_batch.jsonl"))[:6]), bins=reference_bins_json
        )
        raise SystemExit(0)

    monkeypatch.setattr(builder, "tag_with_tagger", no_local_tagger)
    monkeypatch.setattr(builder, "build_bundle", fake_build)
    before = sum(_tagged(m) for _, m in two_taggers)
    target = "ipv4:" + ",".join(s.address for s, _ in two_taggers)
    with pytest.raises(SystemExit):
        cli_main(
            [
                "predictor",
                "build",
                "--pool",
                "p.jsonl",
                "--out",
                str(tmp_path),
                "--tagger",
                target,
                "--tagger-profile",
                "fast",
                "--tagger-concurrency",
                "2",
                "--no-progress",
            ]
        )
    assert sum(_tagged(m) for _, m in two_taggers) == before + 6
    assert seen["tags"].shape == (6, builder.NUM_TAGS) and seen["tags"].any()
    assert ReferenceBins.from_json(seen["bins"]).fingerprint() == ReferenceBins.default().fingerprint()


def test_rejected_instance_is_named_by_its_index_in_the_whole_batch(two_taggers):
    """The evaluation harness drops rows the tagger rejects by their ``instances[i]`` index: with
    chunking, the index must be the caller's, not the chunk's."""
    import dataclasses

    instances = read_jsonl(str(ROOT / "samples" / "sample_batch.jsonl"))[:8]
    instances[5] = dataclasses.replace(instances[5], response_b="\u200b\ufeff")
    tag, _ = remote_tag_fn(two_taggers[0][0].address, "fast", chunk=4)
    with pytest.raises(InvalidInput) as exc:
        tag(instances)
    fields = [v.field for v in exc.value.violations]
    assert fields and all(f.startswith("instances[5]") for f in fields), fields
