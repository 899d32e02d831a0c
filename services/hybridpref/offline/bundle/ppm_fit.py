"""Fitting and exporting the PPM (offline): ridge regression of the quadratic form with the penalty chosen by
cross-validation, out-of-fold predictions, and the ONNX export with its parity check.
The served form is :class:`hybridpref.routing_model.ppm.QuadraticPPM`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridpref.routing_model.ppm import QuadraticPPM, quadratic_features

ALPHAS = tuple(np.logspace(-4, 4, 17))


def fit_ridge(x: np.ndarray, y: np.ndarray, quadratic: bool, alphas: tuple[float, ...] = ALPHAS) -> tuple[QuadraticPPM, float]:
    """Fit a linear or quadratic ridge PPM; the penalty is picked by leave-one-out CV (RidgeCV's
    efficient GCV) on standardised features. Returns (model, chosen alpha)."""
    from sklearn.linear_model import RidgeCV

    v = x.shape[1]
    feats = quadratic_features(x) if quadratic else x
    mu, sd = feats.mean(0), feats.std(0)
    live = sd > 1e-12  # constant features (tags absent from the pool) get a zero coefficient
    z = (feats[:, live] - mu[live]) / sd[live]
    model = RidgeCV(alphas=alphas).fit(z, y)
    coef = np.zeros(feats.shape[1])
    coef[live] = model.coef_ / sd[live]
    bias = float(model.intercept_ - coef[live] @ mu[live])
    linear = coef[:v].copy()
    quad = np.zeros((v, v))
    if quadratic:
        j, k = np.triu_indices(v)
        c = coef[v:]
        quad[j, k] += np.where(j == k, c, c / 2)  # split off-diagonal terms so quad is symmetric
        quad[k, j] += np.where(j == k, 0.0, c / 2)
    kind = "quadratic-ridge" if quadratic else "linear-ridge"
    return QuadraticPPM(bias, linear, quad, kind), float(model.alpha_)


def cross_validate(x: np.ndarray, y: np.ndarray, variant: str, folds: int = 10, seed: int = 0) -> dict[str, float]:
    """K-fold CV of a variant ("linear", "quadratic", "gbm"): Spearman and RMSE of the pooled
    out-of-fold predictions, plus the mean per-fold Spearman. Deterministic for ``seed``."""
    from scipy.stats import spearmanr

    pred, per_fold = out_of_fold(x, y, variant, folds, seed)
    rho = spearmanr(y, pred).statistic if np.ptp(pred) > 0 else 0.0
    return {
        "cv_spearman": float(rho),
        "cv_spearman_fold_mean": float(np.mean(per_fold)) if per_fold else 0.0,
        "cv_rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
        "target_std": float(np.std(y)),
    }


def out_of_fold(x: np.ndarray, y: np.ndarray, variant: str, folds: int = 10, seed: int = 0) -> tuple[np.ndarray, list[float]]:
    """K-fold out-of-fold predictions (m,) and the per-fold Spearman values. Deterministic for ``seed``."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold

    pred = np.zeros_like(y, dtype=np.float64)
    per_fold = []
    for train, test in KFold(n_splits=folds, shuffle=True, random_state=seed).split(x):
        pred[test] = _fit_predict(x[train], y[train], x[test], variant, seed)
        if np.ptp(y[test]) > 0 and np.ptp(pred[test]) > 0:
            per_fold.append(float(spearmanr(y[test], pred[test]).statistic))
    return pred, per_fold


def _fit_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, variant: str, seed: int) -> np.ndarray:
    if variant in ("linear", "quadratic"):
        return fit_ridge(xtr, ytr, quadratic=variant == "quadratic")[0].predict(xte)
    if variant == "gbm":
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed).fit(xtr, ytr).predict(xte)
    raise ValueError(f"unknown PPM variant {variant!r}; expected linear, quadratic or gbm")


def to_onnx(ppm: QuadraticPPM, path: Path, opset: int = 17) -> None:
    """Write f as ONNX: inputs ``counts`` float32 [batch, V] and ``pool_size`` float32 [1];
    output ``score`` float32 [batch]. Computes, in float64, x = counts / pool_size, then
    sum(x * (x @ quad + linear), axis=1) + bias (= x^T Q x + w.x + b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    v = len(ppm.linear)
    # float64 inside: a quadratic form's terms can cancel (sum |terms| >> |score|), and float32 arithmetic then
    # drifts past the 1e-5 parity bound; only the interface (inputs, output) is float32.
    inits = [
        numpy_helper.from_array(ppm.quad.astype(np.float64), "quad"),
        numpy_helper.from_array(ppm.linear.astype(np.float64), "linear"),
        numpy_helper.from_array(np.array([ppm.bias], dtype=np.float64), "bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Cast", ["counts"], ["counts64"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["pool_size"], ["pool_size64"], to=TensorProto.DOUBLE),
        helper.make_node("Div", ["counts64", "pool_size64"], ["x"]),
        helper.make_node("MatMul", ["x", "quad"], ["xq"]),
        helper.make_node("Add", ["xq", "linear"], ["xq_w"]),
        helper.make_node("Mul", ["xq_w", "x"], ["terms"]),
        helper.make_node("ReduceSum", ["terms", "axis1"], ["total"], keepdims=0),
        helper.make_node("Add", ["total", "bias"], ["score64"]),
        helper.make_node("Cast", ["score64"], ["score"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "hybridpref_ppm",
        [
            helper.make_tensor_value_info("counts", TensorProto.FLOAT, ["batch", v]),
            helper.make_tensor_value_info("pool_size", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hybridpref")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString(deterministic=True))


def check_parity(ppm: QuadraticPPM, onnx_path: Path, seed: int = 0, n: int = 2000, intra_op_threads: int = 1) -> float:
    """Max |onnx - numpy| over ``n`` random mixes (each a random subset of a random pool's
    tag rows, so x lies where real mixes do). Raise if > 1e-5; returns the difference."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    v = len(ppm.linear)
    pool_size = 200
    tags = (rng.random((pool_size, v)) < rng.uniform(0.02, 0.5, size=v)).astype(np.float64)
    routed = rng.random((n, pool_size)) < rng.random((n, 1))
    counts = routed.astype(np.float64) @ tags
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(["score"], {"counts": counts.astype(np.float32), "pool_size": np.array([pool_size], np.float32)})[0]
    diff = float(np.max(np.abs(got.astype(np.float64) - ppm.predict(counts / pool_size))))
    if not diff <= 1e-5:
        raise RuntimeError(f"ONNX parity failed: max abs diff {diff:.3g} > 1e-5")
    return diff
