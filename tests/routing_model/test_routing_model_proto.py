"""The routing-model contract on the wire: ``routing_model_to_proto`` and its inverse round-trip, for the
default bundle and for a minimal one, and the inverse refuses what the router cannot run."""

from __future__ import annotations

import numpy as np
import pytest

from hybridpref.common.vocabulary import NUM_TAGS, VOCABULARY_VERSION
from hybridpref.predictor.core import Predictor, default_bundle_path
from hybridpref.routing_model.data import RoutingModelData
from hybridpref.routing_model.proto import routing_model_from_proto, routing_model_to_proto
from hybridpref_client.core.errors import NotReady


def _assert_same(a: RoutingModelData, b: RoutingModelData) -> None:
    assert (a.bundle_version, a.vocabulary_version, a.reference_bins_id) == (
        b.bundle_version,
        b.vocabulary_version,
        b.reference_bins_id,
    )
    assert (a.quadratic is None) == (b.quadratic is None)
    if a.quadratic is not None and b.quadratic is not None:
        assert a.quadratic[0] == b.quadratic[0]
        np.testing.assert_array_equal(a.quadratic[1], b.quadratic[1])
        np.testing.assert_array_equal(a.quadratic[2], b.quadratic[2])
    assert a.ppm_residual_std == b.ppm_residual_std
    assert (a.correction_onnx, a.correction_features, a.correction_version) == (
        b.correction_onnx,
        b.correction_features,
        b.correction_version,
    )
    assert a.correction_metrics == b.correction_metrics and a.metrics == b.metrics and a.domain == b.domain
    assert a.panel_correction == b.panel_correction and a.panel_version == b.panel_version


def test_default_bundle_round_trips():
    served = Predictor(default_bundle_path()).routing_model()
    assert served.correction_onnx and served.domain and served.panel_correction  # the default bundle carries every part
    assert served.panel_version.startswith("panel-correction/1@")
    back = routing_model_from_proto(routing_model_to_proto(served))
    _assert_same(served, back)
    # the router evaluates the model it received exactly as the bundle's file would
    from hybridpref.routing_model.panel_correction import PANEL_FEATURES, PanelCorrectionModel, read_panel_correction

    x = np.random.default_rng(1).uniform(size=(50, len(PANEL_FEATURES)))
    np.testing.assert_array_equal(
        PanelCorrectionModel.from_json(back.panel_correction).probabilities(x),
        read_panel_correction(default_bundle_path()).probabilities(x),
    )


def test_minimal_model_round_trips():
    rng = np.random.default_rng(0)
    quad = rng.normal(size=(NUM_TAGS, NUM_TAGS))
    data = RoutingModelData("ppm-x", VOCABULARY_VERSION, "", (0.5, rng.normal(size=NUM_TAGS), (quad + quad.T) / 2))
    back = routing_model_from_proto(routing_model_to_proto(data))
    _assert_same(data, back)
    assert back.ppm_residual_std is None and back.domain is None and back.correction_onnx is None
    assert back.panel_correction is None and back.panel_version == ""


def test_panel_model_round_trips_alone():
    """A bundle with the panel model and nothing else optional: the JSON and its version cross the wire."""
    from hybridpref.routing_model.panel_correction import Linear, PanelCorrectionModel, panel_version

    model = PanelCorrectionModel(
        Linear(("disagree",), np.array([0.2]), np.array([0.3]), np.array([1.5]), -1.0),
        (2.0, -1.5),
        Linear.constant(0.1),
        human_rate=0.1,
    )
    data = RoutingModelData(
        "ppm-y", VOCABULARY_VERSION, "", None, panel_correction=model.to_json(), panel_version=panel_version(model)
    )
    back = routing_model_from_proto(routing_model_to_proto(data))
    _assert_same(data, back)
    assert panel_version(back.panel_correction) == back.panel_version


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
