"""The predictor core the gRPC servicer wraps: load a bundle and hand out its routing model.

The router runs the PPM (a quadratic form), the correction model and the domain check in process; the
predictor validates the bundle and serves those parts (``GetRoutingModel``) and what it is
(``GetModelInfo``).

Thread safety and hot reload: every call reads ``self._state`` once and works on that immutable
snapshot; ``load`` builds a complete new snapshot (validated) and swaps the reference in one assignment.
In-flight calls finish on the old snapshot.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES, VOCABULARY_VERSION
from hybridpref.routing_model import bundle as bundle_io
from hybridpref.routing_model.data import RoutingModelData, read_routing_parts
from hybridpref.routing_model.ppm import QuadraticPPM
from hybridpref_client.core.errors import InvalidInput, NotReady


def default_bundle_path() -> Path:
    """The bundle committed with the package (built from ``../shared/data``, see its MODEL_CARD.md)."""
    return Path(__file__).with_name("default_bundle")


@dataclass
class ModelInfoData:
    """What ``GetModelInfo`` returns; ``loaded`` False means ``routing_model`` raises ``NotReady``."""

    loaded: bool
    bundle_version: str = ""
    bundle_path: str = ""
    vocabulary_version: str = ""
    vocabulary: list[str] = field(default_factory=list)
    model_kind: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    data_fingerprint: str = ""
    reference_bins_id: str = ""
    status_message: str = ""


@dataclass(frozen=True)
class _State:
    info: ModelInfoData
    routing: RoutingModelData


class Predictor:
    """One validated model bundle at a time. ``Predictor(None)`` starts unloaded."""

    def __init__(self, bundle_path: str | Path | None = None):
        self._state: _State | None = None
        self._load_lock = threading.Lock()  # one load at a time; readers never take it
        self._status = "no bundle loaded"
        if bundle_path is not None:
            self.load(bundle_path)

    @property
    def ready(self) -> bool:
        return self._state is not None

    def info(self) -> ModelInfoData:
        state = self._state
        if state is None:
            return ModelInfoData(loaded=False, status_message=self._status)
        return state.info

    def load(self, bundle_path: str | Path) -> None:
        """Validate and open a bundle, then swap it in atomically.

        Raises ``NotReady`` (keeping the previous bundle, if any) when the folder is missing or
        corrupt, or the vocabulary or its version differs from ``hybridpref.common.vocabulary``.
        """
        with self._load_lock:
            try:
                state = _open_bundle(Path(bundle_path))
            except NotReady as exc:
                if self._state is None:
                    self._status = str(exc)
                raise
            self._state = state

    def routing_model(self) -> RoutingModelData:
        """What the router needs to route in process, from the loaded bundle (``NotReady`` without one)."""
        return self._require().routing

    def _require(self) -> _State:
        state = self._state
        if state is None:
            raise NotReady(f"predictor has no model bundle: {self._status}")
        return state


def _open_bundle(folder: Path) -> _State:
    manifest = bundle_io.read_manifest(folder)
    vocab = bundle_io.read_json(folder, "vocabulary.json")
    if vocab.get("version") != VOCABULARY_VERSION or tuple(vocab.get("tags", ())) != TAG_NAMES:
        raise NotReady(
            f"bundle {folder} was built on vocabulary {vocab.get('version')!r} with {len(vocab.get('tags', ()))} tags; "
            f"this build uses {VOCABULARY_VERSION!r} with {NUM_TAGS}: rebuild the bundle (hybridpref predictor build)"
        )
    ppm = _load_ppm(folder)
    metrics = bundle_io.read_json(folder, "metrics.json")
    info = ModelInfoData(
        loaded=True,
        bundle_version=manifest["bundle_version"],
        bundle_path=str(folder.resolve()),
        vocabulary_version=VOCABULARY_VERSION,
        vocabulary=list(TAG_NAMES),
        model_kind=manifest.get("model_kind", ""),
        metrics={k: float(v) for k, v in metrics.get("served", {}).items()},
        data_fingerprint=manifest.get("data_fingerprint", ""),
        status_message="ok",
        reference_bins_id=_reference_bins_id(folder),
    )
    routing = RoutingModelData(
        bundle_version=info.bundle_version,
        vocabulary_version=VOCABULARY_VERSION,
        reference_bins_id=info.reference_bins_id,
        quadratic=None if ppm is None else (ppm.bias, ppm.linear, ppm.quad),
        metrics=info.metrics,
        **read_routing_parts(folder),
    )
    return _State(info=info, routing=routing)


def _reference_bins_id(folder: Path) -> str:
    """Fingerprint of the bundle's reference bin edges (as the tagger computes it); "" when the
    bundle records no tagger bins (e.g. built from a custom tag function): nothing to check then."""
    from hybridpref.routing_model.bins import ReferenceBins

    try:
        return ReferenceBins.from_json((folder / "reference_bins.json").read_text()).fingerprint()
    except (OSError, InvalidInput):
        return ""


def _load_ppm(folder: Path) -> QuadraticPPM | None:
    raw = bundle_io.read_json(folder, "ppm.json")
    if raw.get("form") != "quadratic":
        return None
    ppm = QuadraticPPM(
        float(raw["bias"]),
        np.asarray(raw["linear"], dtype=np.float64),
        np.asarray(raw["quad"], dtype=np.float64),
        str(raw.get("kind", "quadratic-ridge")),
    )
    if ppm.linear.shape != (NUM_TAGS,) or ppm.quad.shape != (NUM_TAGS, NUM_TAGS):
        raise NotReady(f"bundle {folder}: ppm.json has shapes {ppm.linear.shape}, {ppm.quad.shape}")
    if not (np.isfinite(ppm.bias) and np.isfinite(ppm.linear).all() and np.isfinite(ppm.quad).all()):
        raise NotReady(f"bundle {folder}: ppm.json has non-finite coefficients")
    return ppm
