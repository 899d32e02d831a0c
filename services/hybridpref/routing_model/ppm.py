"""Performance prediction model (PPM), the served form: normalised count vector x (V,) -> predicted gold accuracy.

Every variant served here is a quadratic form

    f(x) = bias + linear . x + x^T quad x,      x = counts / pool_size,  quad symmetric (V, V)

(the linear PPM is the special case quad = 0). Fitting (:mod:`hybridpref.offline.bundle.ppm_fit`): ridge regression on standardised
features [x_j] + [x_j x_k, j <= k] (4,185 terms for V = 90) with the penalty chosen by
cross-validation, folded back to raw coefficients. The paper's quadratic model was fitted by
plain least squares on ~200 rows (4,186 terms): an unregularised fit that cannot generalise.
The bundle also carries the form as ONNX (``ppm_fit.to_onnx``) for tools outside Python; the router
runs the form from ``ppm.json`` (served by the predictor's ``GetRoutingModel``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuadraticPPM:
    """f(x) = bias + linear . x + x^T quad x on x = counts / pool_size. Shapes: (V,), (V, V) symmetric."""

    bias: float
    linear: np.ndarray
    quad: np.ndarray
    kind: str = "quadratic-ridge"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(m, V) normalised counts -> (m,) float64 predictions."""
        x = np.asarray(x, dtype=np.float64)
        scores: np.ndarray = self.bias + x @ self.linear + np.einsum("mv,mv->m", x @ self.quad, x)
        return scores


def quadratic_features(x: np.ndarray) -> np.ndarray:
    """(m, V) -> (m, V + V(V+1)/2): [x_j] then [x_j x_k for j <= k] in np.triu_indices order."""
    j, k = np.triu_indices(x.shape[1])
    return np.concatenate([x, x[:, j] * x[:, k]], axis=1)
