"""The routing-model contract on the wire: ``routing_model_to_proto`` and its inverse round-trip, for the
default bundle and for a minimal one, and the inverse refuses what the router cannot run."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref_client.core.errors import NotReady
from hybridpref.common.vocabulary import NUM_TAGS, VOCABULARY_VERSION
from hybridpref.predictor.core import Predictor, default_bundle_path
from hybridpref.routing_model.data import RoutingModelData
from hybridpref.routing_model.proto import routing_model_from_proto, routing_model_to_proto


def _assert_same(a: RoutingModelData, b: RoutingModelData) -> None:
    assert (a.bundle_version, a.vocabulary_version, a.reference_bins_id) == (b.bundle_version, b.vocabulary_version, b.reference_bins_id)
    assert (a.quadratic is None) == (b.quadratic is None)
    if a.quadratic is not None and b.quadratic is not None:
        assert a.quadratic[0] == b.quadratic[0]
        np.testing.assert_array_equal(a.quadratic[1], b.quadratic[1])
        np.testing.assert_array_equal(a.quadratic[2], b.quadratic[2])
    assert a.ppm_residual_std == b.ppm_residual_std
    assert (a.correction_onnx, a.correction_features, a.correction_version) == (b.correction_onnx, b.correction_features, b.correction_version)
    assert a.correction_metrics == b.correction_metrics and a.metrics == b.metrics and a.domain == b.domain


def test_default_bundle_round_trips():
    served = Predictor(default_bundle_path()).routing_model()
    assert served.correction_onnx and served.domain  # the default bundle carries every part
    _assert_same(served, routing_model_from_proto(routing_model_to_proto(served)))


def test_minimal_model_round_trips():
    rng = np.random.default_rng(0)
    quad = rng.normal(size=(NUM_TAGS, NUM_TAGS))
    data = RoutingModelData("ppm-x", VOCABULARY_VERSION, "", (0.5, rng.normal(size=NUM_TAGS), (quad + quad.T) / 2))
    back = routing_model_from_proto(routing_model_to_proto(data))
    _assert_same(data, back)
    assert back.ppm_residual_std is None and back.domain is None and back.correction_onnx is None


def test_inverse_refuses_another_vocabulary_or_width():
    data = RoutingModelData("ppm-x", VOCABULARY_VERSION, "", (0.0, np.zeros(NUM_TAGS), np.zeros((NUM_TAGS, NUM_TAGS))))
    other = routing_model_to_proto(data)
    other.vocabulary_version = "hybridpref-tags-v0"
    with pytest.raises(NotReady, match="vocabulary"):
        routing_model_from_proto(other)
    narrow = routing_model_to_proto(data)
    del narrow.ppm.linear[-1]
    with pytest.raises(NotReady, match="width"):
        routing_model_from_proto(narrow)
