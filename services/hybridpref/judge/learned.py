"""Learned judge backend (the embedded default): a symmetric pairwise preference model on cheap features.

``p_a_better = sigmoid(features(prompt, A, B) @ w)`` with antisymmetric features and no intercept
(``hybridpref.judge.features``), run by onnxruntime over the whole batch. Swapping A and B gives
exactly ``1 - p``, so one pass answers both presentation orders: ``verdict_ab == verdict_ba``, never
order-inconsistent, and ``position_mode`` changes nothing. The probability is calibrated (temperature
fitted out of source); the label is A or B, and ``TIE`` only when the features cannot tell the two
responses apart (identical texts), never as a stand-in for "unsure": unsure is a confidence near 0.5.

Model, feature spec and model card ship in this package (``learned_judge.onnx``, ``learned_judge.json``,
``MODEL_CARD.md``); ``hybridpref judge train`` rebuilds them from ``../shared/data``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridpref.judge import features as F
from hybridpref.judge.templates import PromptTemplate
from hybridpref.judge.types import JudgeBackend, Judgement
from hybridpref.server.deadline import Deadline
from hybridpref_client.core.errors import FieldViolation, InvalidInput, NotReady
from hybridpref_client.core.instances import Label, PositionMode, PreferenceInstance

PACKAGE_DIR = Path(__file__).resolve().parent
SPEC_FILE = "learned_judge.json"


class LearnedBackend(JudgeBackend):
    """The packaged learned judge, or ``model``: a spec JSON (or its folder) written by ``hybridpref judge train``.

    ``threads``: onnxruntime intra-op threads (default 1: the model is one small matrix product; the
    features, in Python, are the cost).
    """

    kind = "learned"

    def __init__(self, model: str | Path | None = None, *, threads: int = 1):
        path = Path(model).expanduser() if model else PACKAGE_DIR / SPEC_FILE
        self.spec_path = path / SPEC_FILE if path.is_dir() else path
        self.threads = int(threads)
        self.spec: dict[str, Any] = {}
        self._session: Any = None
        self._lock = threading.Lock()
        self.judge_id = f"learned:{_spec_name(self.spec_path)}"

    @property
    def ready(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime as ort

            if not self.spec_path.is_file():
                raise InvalidInput(FieldViolation("model", f"learned judge spec {self.spec_path} does not exist"))
            spec = json.loads(self.spec_path.read_text())
            if spec.get("feature_version") != F.FEATURE_VERSION or spec.get("feature_names") != F.feature_names():
                raise NotReady(
                    f"learned judge {self.spec_path} was trained on features {spec.get('feature_version')!r}; "
                    f"this code computes {F.FEATURE_VERSION!r}: retrain with `hybridpref judge train`"
                )
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            model_path = self.spec_path.parent / spec["model_file"]
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
            self.spec = spec
            self.judge_id = f"learned:{spec['name']}"

    def p_a_better(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> np.ndarray:
        """Calibrated P(A better) for each pair, (n,) float64."""
        if self._session is None:
            raise NotReady("learned judge not loaded; call load() first")
        x = F.pair_features(prompts, responses_a, responses_b).astype(np.float32)
        if len(x) == 0:
            return np.zeros(0)
        (p,) = self._session.run(["p_a_better"], {"features": x})
        return p.astype(np.float64)

    def judge(
        self,
        instances: Sequence[PreferenceInstance],
        *,
        mode: PositionMode,
        template: PromptTemplate,
        seed: int,
        replay_judge: str | None,
        deadline: Deadline,
    ) -> list[Judgement]:
        deadline.check(what="computing judge features")
        p = self.p_a_better(
            [i.prompt_text for i in instances], [i.response_a for i in instances], [i.response_b for i in instances]
        )
        version = f"{self.spec.get('name', 'learned')}/{F.FEATURE_VERSION}"
        return [
            _judgement(inst.id, float(pi), identical=inst.response_a == inst.response_b, judge_id=self.judge_id, version=version)
            for inst, pi in zip(instances, p)
        ]


def _spec_name(path: Path) -> str:
    """The model name in a spec file, read cheaply so ``judge_id`` is known before ``load``."""
    try:
        return str(json.loads(path.read_text()).get("name") or path.stem)
    except (OSError, ValueError):
        return path.stem


def _judgement(instance_id: str, p: float, *, identical: bool, judge_id: str, version: str) -> Judgement:
    """A or B by the probability; TIE only when the model sees no difference (identical responses, or
    features that cancel exactly)."""
    if identical or p == 0.5:
        label, p = Label.TIE, 0.5
    else:
        label = Label.A_BETTER if p >= 0.5 else Label.B_BETTER
    return Judgement(
        instance_id, label, max(p, 1.0 - p), label, label, False, judge_id, version, p_a_better=p, backend=LearnedBackend.kind
    )
