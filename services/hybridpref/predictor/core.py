"""The predictor core the gRPC servicer wraps: load a bundle, score mixes, compute instance gains.

All scores are predicted gold-set pairwise accuracy (in [0, 1] for a sane PPM) of a reward
model trained on a mix. Count vectors are normalised by ``pool_size`` (x = counts / pool_size)
before the PPM, so one PPM serves any batch size.

Thread safety and hot reload: every call reads ``self._state`` once and works on that
immutable snapshot; ``load`` builds a complete new snapshot (validated, session open, parity
checked) and swaps the reference in one assignment. In-flight calls finish on the old session.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridpref.common.errors import FieldViolation, InvalidInput, NotReady
from hybridpref.common.runtime import cpu_limit
from hybridpref.common.vocabulary import NUM_TAGS, TAG_NAMES, VOCABULARY_VERSION
from hybridpref.predictor import bundle as bundle_io
from hybridpref.predictor.ppm import QuadraticPPM
from hybridpref.predictor.routing import RoutingModelData, read_routing_parts

_CHUNK = 8_192  # rows per onnxruntime call: the float32 block (3 MB) stays in cache; measured best


def default_bundle_path() -> Path:
    """The bundle committed with the package (built from ``../shared/data``, see its MODEL_CARD.md)."""
    return Path(__file__).with_name("default_bundle")


@dataclass
class ModelInfoData:
    """What ``GetModelInfo`` returns; ``loaded`` False means scoring raises ``NotReady``."""

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
    session: object  # onnxruntime.InferenceSession
    ppm: QuadraticPPM | None
    info: ModelInfoData
    routing: RoutingModelData


class Predictor:
    """In-process PPM scorer over one model bundle. ``Predictor(None)`` starts unloaded."""

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
        corrupt, the vocabulary or its version differs from ``hybridpref.common.vocabulary``, or
        the ONNX model disagrees with its quadratic form.
        """
        with self._load_lock:
            try:
                state = _open_bundle(Path(bundle_path))
            except NotReady as exc:
                if self._state is None:
                    self._status = str(exc)
                raise
            self._state = state

    def check_vocabulary(self, version: str) -> None:
        """Raise ``NotReady`` (FAILED_PRECONDITION) when a caller's non-empty vocabulary version
        differs from the loaded bundle's; requests carry it as ``vocabulary_version``."""
        state = self._require()
        if version and version != state.info.vocabulary_version:
            raise NotReady(f"caller uses tag vocabulary {version!r}; bundle {state.info.bundle_version} reads "
                           f"{state.info.vocabulary_version!r}: tag with a matching tagger or load a matching bundle")

    def quadratic_form(self) -> tuple[float, np.ndarray, np.ndarray] | None:
        """(bias, linear (V,), quad (V, V) symmetric) with f = bias + w.x + x^T Q x on
        x = counts / pool_size, in float64; None for a non-quadratic PPM. For in-process greedy
        routing: gain of adding tag row t to x is w.t' + 2 x^T Q t' + t'^T Q t' with t' = t / pool_size."""
        state = self._require()
        return None if state.ppm is None else (state.ppm.bias, state.ppm.linear, state.ppm.quad)

    def routing_model(self) -> RoutingModelData:
        """What the router needs to route in process, from the loaded bundle (``NotReady`` without one)."""
        return self._require().routing

    def score(self, counts: np.ndarray, pool_size: int) -> np.ndarray:
        """(m, V) counts of human-routed instances per tag -> (m,) float64 predicted accuracy.

        ``counts`` may be an array or a list of rows (e.g. ``[mix.counts for mix in request.mixes]``;
        a ragged row is reported by its index). Larger is better; compare scores of mixes drawn
        from the same pool, the absolute level is the proxy's accuracy scale.

        Raises ``NotReady`` without a bundle, ``InvalidInput`` on a wrong width, negative or
        non-finite counts (field ``mixes[i].counts``) or ``pool_size`` <= 0.
        """
        state = self._require()
        arr = _check_matrix(counts, "mixes", "counts")
        _check_pool_size(pool_size)
        return _run(state, arr, pool_size)

    def gains(self, tag_matrix: np.ndarray, current: np.ndarray | None, pool_size: int,
              explain_top_k: int = 0) -> tuple[np.ndarray, float, list[list[tuple[str, float]]]]:
        """Marginal gain of routing each instance to humans given the current mix.

        ``tag_matrix`` (n, V) 0/1 tags; ``current`` (V,) counts already routed (None = nothing).
        Returns (gains (n,) = f(current + t_i) - f(current), f(current), explanations) where
        explanations[i] lists up to ``explain_top_k`` (tag, contribution) by |contribution|.

        Attribution: for a quadratic f the gain splits exactly over the instance's tags as
        c_j = t_j (w_j + 2 (Q x)_j + (Q t)_j) (x = current, both / pool_size): this is the
        Shapley value of tag j (each pairwise term t_j t_k Q_jk shared equally), and the c_j
        sum to the gain. For other PPMs: occlusion, c_j = f(x + t) - f(x + t - t_j e_j).
        """
        state = self._require()
        tags = _check_matrix(tag_matrix, "instances", "indices")
        empty = current is None or np.size(current) == 0  # proto: an empty MixVector = nothing routed yet
        cur = np.zeros(NUM_TAGS) if empty else _check_matrix([np.ravel(current)], "current", "counts", single=True)[0]
        _check_pool_size(pool_size)
        if explain_top_k < 0:
            raise InvalidInput(FieldViolation("explain_top_k", f"must be >= 0, got {explain_top_k}"))
        base = float(_run(state, cur[None, :], pool_size)[0])
        gains = _run(state, cur[None, :] + tags, pool_size) - base
        explanations = _explain(state, tags, cur, pool_size, explain_top_k) if explain_top_k > 0 else []
        return gains, base, explanations

    def _require(self) -> _State:
        state = self._state
        if state is None:
            raise NotReady(f"predictor has no model bundle: {self._status}")
        return state


def _open_bundle(folder: Path) -> _State:
    import onnxruntime as ort

    manifest = bundle_io.read_manifest(folder)
    vocab = bundle_io.read_json(folder, "vocabulary.json")
    if vocab.get("version") != VOCABULARY_VERSION or tuple(vocab.get("tags", ())) != TAG_NAMES:
        raise NotReady(
            f"bundle {folder} was built on vocabulary {vocab.get('version')!r} with {len(vocab.get('tags', ()))} tags; "
            f"this build uses {VOCABULARY_VERSION!r} with {NUM_TAGS}: rebuild the bundle (hybridpref predictor build)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpu_limit()
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise NotReady(f"bundle {folder}: model.onnx does not load: {exc}") from None
    ppm = _load_ppm(folder, session)
    metrics = bundle_io.read_json(folder, "metrics.json")
    info = ModelInfoData(
        loaded=True, bundle_version=manifest["bundle_version"], bundle_path=str(folder.resolve()),
        vocabulary_version=VOCABULARY_VERSION, vocabulary=list(TAG_NAMES), model_kind=manifest.get("model_kind", ""),
        metrics={k: float(v) for k, v in metrics.get("served", {}).items()},
        data_fingerprint=manifest.get("data_fingerprint", ""), status_message="ok",
        reference_bins_id=_reference_bins_id(folder))
    routing = RoutingModelData(
        bundle_version=info.bundle_version, vocabulary_version=VOCABULARY_VERSION, reference_bins_id=info.reference_bins_id,
        quadratic=None if ppm is None else (ppm.bias, ppm.linear, ppm.quad), metrics=info.metrics,
        **read_routing_parts(folder))
    return _State(session=session, ppm=ppm, info=info, routing=routing)


def _reference_bins_id(folder: Path) -> str:
    """Fingerprint of the bundle's reference bin edges (as the tagger computes it); "" when the
    bundle records no tagger bins (e.g. built from a custom tag function): nothing to check then."""
    from hybridpref.tagger.bins import ReferenceBins

    try:
        return ReferenceBins.from_json((folder / "reference_bins.json").read_text()).fingerprint()
    except (OSError, InvalidInput):
        return ""


def _load_ppm(folder: Path, session) -> QuadraticPPM | None:
    raw = bundle_io.read_json(folder, "ppm.json")
    if raw.get("form") != "quadratic":
        return None
    ppm = QuadraticPPM(float(raw["bias"]), np.asarray(raw["linear"], dtype=np.float64),
                       np.asarray(raw["quad"], dtype=np.float64), str(raw.get("kind", "quadratic-ridge")))
    if ppm.linear.shape != (NUM_TAGS,) or ppm.quad.shape != (NUM_TAGS, NUM_TAGS):
        raise NotReady(f"bundle {folder}: ppm.json has shapes {ppm.linear.shape}, {ppm.quad.shape}")
    # The served scorer is the ONNX model; refuse a bundle whose two copies disagree.
    rng = np.random.default_rng(0)
    x = (rng.random((64, NUM_TAGS)) < 0.2) * rng.integers(0, 50, size=(64, NUM_TAGS))
    got = session.run(["score"], {"counts": x.astype(np.float32), "pool_size": np.array([100], np.float32)})[0]
    if np.max(np.abs(got - ppm.predict(x / 100.0))) > 1e-4:
        raise NotReady(f"bundle {folder}: model.onnx and ppm.json disagree")
    return ppm


def _run(state: _State, counts: np.ndarray, pool_size: int) -> np.ndarray:
    size = np.array([pool_size], dtype=np.float32)
    out = np.empty(len(counts), dtype=np.float64)
    for start in range(0, len(counts), _CHUNK):
        block = np.ascontiguousarray(counts[start:start + _CHUNK], dtype=np.float32)
        out[start:start + len(block)] = state.session.run(["score"], {"counts": block, "pool_size": size})[0]
    return out


def _explain(state: _State, tags: np.ndarray, cur: np.ndarray, pool_size: int, k: int) -> list[list[tuple[str, float]]]:
    if state.ppm is not None:
        t = tags / pool_size
        x = cur / pool_size
        q = state.ppm.quad
        contrib = t * (state.ppm.linear + 2.0 * (x @ q) + t @ q)
    else:
        contrib = np.zeros_like(tags, dtype=np.float64)
        full = _run(state, cur[None, :] + tags, pool_size)
        for j in range(NUM_TAGS):
            rows = np.flatnonzero(tags[:, j])
            if len(rows):
                less = cur[None, :] + tags[rows]
                less[:, j] -= tags[rows, j]
                contrib[rows, j] = full[rows] - _run(state, less, pool_size)
    out = []
    for row, carried in zip(contrib, tags):
        nz = np.flatnonzero(carried)  # every tag the instance carries may be listed, even at 0
        top = nz[np.argsort(-np.abs(row[nz]), kind="stable")[:k]]
        out.append([(TAG_NAMES[j], float(row[j])) for j in top])
    return out


def _check_matrix(values: np.ndarray, name: str, field_name: str, single: bool = False) -> np.ndarray:
    """Validate an (m, V) non-negative finite matrix; violations name ``name[i].field_name``."""
    def where(i: int) -> str:
        return f"{name}.{field_name}" if single else f"{name}[{i}].{field_name}"

    if not isinstance(values, np.ndarray):  # list of rows (from a request): name the first ragged row
        rows = list(values)
        for i, row in enumerate(rows):
            if np.ndim(row) != 1 or len(row) != NUM_TAGS:
                raise InvalidInput(FieldViolation(where(i), f"width {np.size(row)}, expected {NUM_TAGS} (vocabulary {VOCABULARY_VERSION})"))
        values = np.asarray(rows, dtype=np.float64).reshape(len(rows), NUM_TAGS)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(FieldViolation(name, "expected a numeric matrix")) from None
    if arr.size == 0:
        arr = arr.reshape(0, NUM_TAGS)
    if arr.ndim != 2 or arr.shape[1] != NUM_TAGS:
        width = arr.shape[-1] if arr.ndim else 0
        raise InvalidInput(FieldViolation(where(0), f"width {width}, expected {NUM_TAGS} (vocabulary {VOCABULARY_VERSION})"))
    if arr.size == 0 or (arr.min() >= 0 and arr.max() < np.inf):  # fast path: two reductions, no temporaries
        return arr
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        violations = [FieldViolation(where(int(i)), "values must be finite and >= 0") for i in rows[:20]]
        raise InvalidInput(violations)
    return arr


def _check_pool_size(pool_size: int) -> None:
    if not isinstance(pool_size, (int, np.integer)) or isinstance(pool_size, bool) or pool_size <= 0:
        raise InvalidInput(FieldViolation("pool_size", f"must be a positive integer (the batch size the counts come from), got {pool_size!r}"))
