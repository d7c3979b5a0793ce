"""The stand-in's pretrained text encoder: wordllama's static token embeddings, offline.

``wordllama`` (0.4.x, the ``demo`` extra) ships its weights
(``weights/l2_supercat_256.safetensors``, 16 MB, 256 dimensions) and its
tokenizer inside the wheel. Its default loader looks for the tokenizer in the
wrong folder; loading with ``cache_dir`` set to the package folder and
downloads disabled finds both, so nothing goes to the network.

A text's embedding is wordllama's: the mean of its tokens' embeddings (which
weight informative tokens more: their vectors are longer), scaled here to unit
length, so a dot product is a cosine similarity. Embedding is deterministic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ENCODER_NAME", "Encoder", "StandInUnavailable", "get_encoder"]

ENCODER_NAME = "wordllama l2_supercat_256"


class StandInUnavailable(RuntimeError):
    """The stand-in's encoder cannot be loaded (``wordllama`` is not installed)."""


class Encoder:
    """Unit-length text embeddings from wordllama (thread-safe, deterministic)."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.dim = int(model.embedding.shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 rows of unit length (an empty text: a zero row)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = np.asarray(self._model.embed(list(texts), norm=False), dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)
        rows: np.ndarray = np.nan_to_num(vecs, copy=False)
        return rows


_LOCK = threading.Lock()
_ENCODER: Encoder | None = None


def _load() -> Encoder:
    # wordllama calls logging.basicConfig() when its modules are imported (some only while
    # loading): keep the app's root logger as it was
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        try:
            import wordllama
            from wordllama import WordLlama
        except ImportError as exc:  # pragma: no cover - the demo extra declares it
            raise StandInUnavailable(
                "the stand-in model needs the 'wordllama' package: "
                "pip install 'synth-middleware[demo]'"
            ) from exc
        package = Path(wordllama.__file__).parent
        model = WordLlama.load(cache_dir=package, disable_download=True)
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    logging.getLogger("wordllama").setLevel(logging.WARNING)
    return Encoder(model)


def get_encoder() -> Encoder:
    """The process-wide encoder, loaded on first use (about 0.2 s, no network)."""
    global _ENCODER
    if _ENCODER is None:
        with _LOCK:
            if _ENCODER is None:
                _ENCODER = _load()
    return _ENCODER
