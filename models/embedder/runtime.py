"""The loaded embedder: :func:`load_embedder` gives the :class:`Embedder` the stream and training call.

>>> embedder = load_embedder(Settings())  # doctest: +SKIP
>>> embedder.features_batch(["what is my balance"]).shape  # doctest: +SKIP
(1, 1920)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.embedder.compat import import_hub
from models.embedder.cpu import choose_precision, configure_threads, cpu_has_bf16, read_cpu_flags
from models.embedder.export import build_embedder, read_manifest, verify_checksums
from models.embedder.spec import CHUNK, DIM, PRECISIONS, READOUT, SINGLE_PAD, UNK_ID, EmbedderError
from models.embedder.tfenv import native_log_filter
from schemas.settings import Settings

log = logging.getLogger(__name__)


def quantise(features: np.ndarray) -> np.ndarray:
    """Round float32 features to the nearest float16 values (kept as float32).

    Every feature vector the heads see, in training and in serving, is float16-exact, so the
    embedding cache stores float16 (half the memory) and a cache hit equals a fresh miss.
    """
    return np.asarray(features, dtype=np.float32).astype(np.float16).astype(np.float32)


def length_chunks(texts: Sequence[str], size: int = CHUNK) -> list[list[int]]:
    """Return indices of ``texts`` sorted by length (stable) and cut into chunks of ``size``."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


@dataclass
class Embedder:
    """The loaded export: ``embed_batch(texts)`` gives float32 ``[n, 384]`` unit vectors.

    ``features_batch(texts)`` gives the heads' input, float32 ``[n, feature_dim]``: the blocks
    of ``readout`` side by side, the first 384 columns being the sentence embedding. Both run the
    export's function for ``precision`` and the batch: ``fp32`` runs ``features`` (packed
    tokens), or ``features_single`` (XLA) for one text alone; ``bf16`` runs ``features_bf16``.
    """

    version: str
    path: Path
    model: Any = field(repr=False)
    dim: int = DIM
    chunk_size: int = CHUNK
    readout: tuple[str, ...] = READOUT
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EmbedderError(f"unknown embed precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")

    @property
    def feature_dim(self) -> int:
        return self.dim * len(self.readout)

    def _features(self, batch: np.ndarray) -> np.ndarray:
        """Run the export function for this precision and batch size (see ``features_single``)."""
        if self.precision == "bf16":
            run = self.model.features_bf16
        elif len(batch) == 1:
            run = self.model.features_single
        else:
            run = self.model.features
        return run(batch).numpy()

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Return the readout of ``texts`` in input order; ``n == 0`` gives ``(0, feature_dim)``."""
        return self._in_chunks(texts, self.feature_dim, lambda batch: quantise(self._features(batch)))

    def _in_chunks(self, texts: Sequence[str], width: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Run ``run`` on length-sorted chunks of ``texts`` (as UTF-8); return rows in input order."""
        texts = list(texts)
        out = np.empty((len(texts), width), dtype=np.float32)
        for idx in length_chunks(texts, self.chunk_size):
            out[idx] = run(np.array([texts[i].encode("utf-8", "replace") for i in idx], dtype=object))
        return out

    def unknown_rates(self, texts: Sequence[str]) -> np.ndarray:
        """Return, per text, the share of its word pieces that are ``[UNK]`` (0 for no pieces)."""
        out = np.zeros(len(texts), dtype=np.float64)
        for idx in length_chunks(list(texts), 256):
            ids, mask = self.token_ids([texts[i] for i in idx])
            pieces = mask.sum(axis=1) - 2  # without [CLS] and [SEP]
            unk = (ids == UNK_ID).sum(axis=1)
            out[idx] = np.where(pieces > 0, unk / np.maximum(pieces, 1), 0.0)
        return out

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; rows are L2-normalised and in input order; ``n == 0`` gives (0, 384)."""
        return self._in_chunks(texts, self.dim, lambda batch: self._features(batch)[:, : self.dim])

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return the padded word-piece ids and attention mask the export computes (for checks)."""
        batch = np.array([t.encode("utf-8", "replace") for t in texts], dtype=object)
        res = self.model.tokenize(batch)
        return res["input_ids"].numpy(), res["attention_mask"].numpy()


def load_embedder(settings: Settings, precision: str | None = None, warm: bool | None = None) -> Embedder:
    """Build the export if it is missing, verify its checksums and load it with tensorflow_hub.

    TensorFlow's threads are sized first (:func:`~models.embedder.cpu.configure_threads`).
    ``precision`` (``auto``, ``fp32``, ``bf16``) defaults to ``settings.embed_precision``
    (``PHRASESTREAM_EMBED_PRECISION``); ``auto`` is resolved from the CPU's flags
    (:func:`~models.embedder.cpu.choose_precision`). ``warm`` (default
    ``settings.embed_warmup``) runs :func:`warm_up`: serving wants it; training, which embeds
    batches only, does not (its batch graph compiles at its first batch).
    """
    threads = configure_threads()
    flags = read_cpu_flags()
    setting: str = precision or settings.embed_precision
    chosen = choose_precision(setting, flags)
    export_dir = build_embedder(settings, progress=False)
    manifest = read_manifest(export_dir)
    verify_checksums(export_dir, manifest)
    import tensorflow_text  # noqa: F401  registers the ops the graph uses

    model = import_hub().load(str(export_dir))
    readout = tuple(manifest.get("readout") or ("mean6",))
    embedder = Embedder(version=manifest["version"], path=export_dir, model=model, readout=readout, precision=chosen)
    log.info("embedder %s: precision %s (CPU bf16: %s), TensorFlow threads (intra, inter) %s",
             embedder.version, chosen, cpu_has_bf16(flags), threads or "as they were")
    if settings.embed_warmup if warm is None else warm:
        warm_up(embedder)
    return embedder


def warm_up(embedder: Embedder) -> None:
    """Run the embedder once per graph that serving uses, so that serving does not stall on them.

    The first call of a function optimises its graph (~1 s), and the single-text path compiles
    each padded length once: this calls it for a batch and for one text of each padded length
    up to 32 pieces (99.9% of CLINC150's phrases). ``PHRASESTREAM_EMBED_WARMUP=false`` leaves it
    to the first phrases (each graph then compiles when first used).
    (Filtered: oneDNN's rewrite logs a false alarm as an error then; tfenv.FALSE_ALARMS.)
    """
    with native_log_filter():
        embedder.features_batch(["warm up", "warm up"])
        for pieces in range(SINGLE_PAD, 33, SINGLE_PAD):
            embedder.features_batch([" ".join(["a"] * (pieces - 2))])
