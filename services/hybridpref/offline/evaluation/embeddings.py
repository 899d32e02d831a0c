"""Per-text embedding cache for the evaluation harness.

``TextEncoder`` (predictor.proxy) caches one file per exact *set* of texts, so every new train/test
split re-encodes everything (MiniLM on 2 cores: 10-13 texts/s). The harness instead keeps one row per
text, keyed by model + code version + the text's hash, in append-only shards; a split only looks
rows up. ``CachedTextEncoder`` has ``TextEncoder``'s ``encode`` signature, so ``EmbeddingBTProxy``
takes it as its encoder unchanged.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybridpref.offline.bundle.proxy import TextEncoder
from hybridpref.server.runtime import cache_dir

# Bump when the way texts are turned into vectors changes (normalisation, window, pooling).
EMBED_CODE_VERSION = "1"


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class CachedTextEncoder:
    """``encode(texts) -> (len(texts), dim) float32`` with a per-text on-disk cache.

    Cache folder: ``cache_dir()/eval-embeddings/<model>-<max_seq_length>-v<EMBED_CODE_VERSION>/``,
    one ``.npz`` shard (``keys`` (m, 16) uint8, ``emb`` (m, D) float32) per batch of new texts.
    """

    def __init__(self, encoder: TextEncoder | None = None, folder: Path | None = None):
        self.inner = encoder or TextEncoder()
        self.model_tag = self.inner.model_tag
        self.max_seq_length = self.inner.max_seq_length
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model_tag)
        self.folder = folder or cache_dir() / "eval-embeddings" / f"{safe}-{self.max_seq_length}-v{EMBED_CODE_VERSION}"
        self._rows: dict[bytes, np.ndarray] = {}
        self._lock = threading.Lock()
        self._loaded = False
        self.encoded_new = 0  # texts this process had to encode (for the report)

    def _load_shards(self) -> None:
        if self._loaded:
            return
        for shard in sorted(self.folder.glob("*.npz")) if self.folder.exists() else []:
            with np.load(shard) as data:
                for key, row in zip(data["keys"], data["emb"]):
                    self._rows[key.tobytes()] = row
        self._loaded = True

    def missing(self, texts: Sequence[str]) -> list[str]:
        """Distinct texts not cached yet."""
        with self._lock:
            self._load_shards()
            return sorted({t for t in texts if text_key(t) not in self._rows})

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        todo = self.missing(texts)
        if todo:
            emb = (
                self.inner._load()
                .encode(
                    todo,
                    batch_size=self.inner.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=show_progress,
                )
                .astype(np.float32)
            )
            self._store(todo, emb)
        with self._lock:
            return np.stack([self._rows[text_key(t)] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    def _store(self, texts: list[str], emb: np.ndarray) -> None:
        keys = np.stack([np.frombuffer(text_key(t), dtype=np.uint8) for t in texts])
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(keys.tobytes()).hexdigest()[:24]
        tmp = self.folder / f"{name}.tmp.npz"
        np.savez(tmp, keys=keys, emb=emb)
        tmp.replace(self.folder / f"{name}.npz")  # atomic: a concurrent reader never sees half a shard
        with self._lock:
            for key, row in zip(keys, emb):
                self._rows[key.tobytes()] = row
        self.encoded_new += len(texts)
