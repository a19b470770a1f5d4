"""A disk cache of training features, keyed by (embedder version and precision, cleaned text).

Training embeds every text once per embedder version and precision: a second run, a sweep, or
a retrain on mostly the same texts embeds only the texts it has not seen. The cache lives under
``<models_root>/embcache/<embedder_version>/`` for fp32 features and under
``<models_root>/embcache/<embedder_version>-<precision>/`` for the others (``bf16``, ``int8``:
a head is trained on the features of the precision that serves it, so they never mix), as
shards, each written once::

    shard-<sha256 of its texts, 16 hex>.npy    float32 [n, feature_dim] (np.save, no pickle)
    shard-<...>.json                           the n cleaned texts, in row order

The ``.npy`` is written first and the ``.json`` last, each atomically (temporary file, then
``os.replace``), so a shard without its ``.json`` is incomplete and ignored. A shard of the
wrong shape or dtype is ignored too.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

EMBED_CHUNK = 256


DEFAULT_PRECISION = "fp32"


class FeatureEmbedder(Protocol):
    """What the cache needs of the embedder (``models.embedder.Embedder``; its ``precision`` too,
    which :func:`precision_of` reads)."""

    version: str

    @property
    def feature_dim(self) -> int: ...

    def features_batch(self, texts: Sequence[str]) -> np.ndarray: ...


def precision_of(embedder: object) -> str:
    """Return the precision an embedder computes in: its ``precision``, or fp32 for one without
    (a stand-in that computes no precision of its own)."""
    return str(getattr(embedder, "precision", DEFAULT_PRECISION))


def cache_dir(models_root: Path | str, embedder_version: str, precision: str = DEFAULT_PRECISION) -> Path:
    """Return ``<models_root>/embcache/<embedder_version>``, with ``-<precision>`` unless fp32."""
    name = embedder_version if precision == DEFAULT_PRECISION else f"{embedder_version}-{precision}"
    return Path(models_root) / "embcache" / name


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class FeatureCache:
    """Features of cleaned texts for one embedder version, on disk."""

    def __init__(self, folder: Path | str, feature_dim: int) -> None:
        self.folder = Path(folder)
        self.feature_dim = feature_dim

    def _shards(self) -> list[tuple[Path, list[str]]]:
        out: list[tuple[Path, list[str]]] = []
        if not self.folder.is_dir():
            return out
        for meta in sorted(self.folder.glob("shard-*.json")):
            try:
                texts = json.loads(meta.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(texts, list) and meta.with_suffix(".npy").is_file():
                out.append((meta.with_suffix(".npy"), texts))
        return out

    def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return ``[n, feature_dim]`` features with cached rows filled in, and the found mask."""
        out = np.zeros((len(texts), self.feature_dim), dtype=np.float32)
        found = np.zeros(len(texts), dtype=bool)
        wanted: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            wanted.setdefault(text, []).append(i)
        for npy, shard_texts in self._shards():
            rows = [(r, wanted[t]) for r, t in enumerate(shard_texts) if t in wanted]
            if not rows:
                continue
            try:
                arr = np.load(npy, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                continue
            if arr.dtype != np.float32 or arr.shape != (len(shard_texts), self.feature_dim):
                continue
            for r, targets in rows:
                out[targets] = arr[r]
                found[targets] = True
            for _, targets in rows:
                wanted.pop(texts[targets[0]], None)
            if not wanted:
                break
        return out, found

    def add(self, texts: Sequence[str], features: np.ndarray) -> Path | None:
        """Store ``features`` (row i for ``texts[i]``) as one new shard; return its ``.npy``."""
        if not len(texts):
            return None
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.shape != (len(texts), self.feature_dim):
            raise ValueError(f"features of shape {features.shape} for {len(texts)} texts of dim {self.feature_dim}")
        self.folder.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
        npy = self.folder / f"shard-{key}.npy"
        _atomic_write(npy, lambda fh: np.save(fh, features, allow_pickle=False))
        _atomic_write(npy.with_suffix(".json"),
                      lambda fh: fh.write(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")))
        return npy


def cached_features(
    embedder: FeatureEmbedder,
    texts: Sequence[str],
    models_root: Path | str,
    progress: bool = True,
    chunk: int = EMBED_CHUNK,
) -> tuple[np.ndarray, int]:
    """Return the features of ``texts`` (in order) and how many distinct texts were embedded now.

    Texts found in the cache are not embedded again; the others are embedded (each distinct
    text once, with a progress bar) and added to the cache as one shard.
    """
    texts = list(texts)
    cache = FeatureCache(cache_dir(models_root, embedder.version, precision_of(embedder)), embedder.feature_dim)
    out, found = cache.lookup(texts)
    missing = list(dict.fromkeys(t for t, f in zip(texts, found) if not f))
    if missing:
        from tqdm.auto import tqdm

        computed = np.empty((len(missing), embedder.feature_dim), dtype=np.float32)
        with tqdm(total=len(missing), desc="embedding", unit="text", disable=not progress, file=sys.stderr) as bar:
            for i in range(0, len(missing), chunk):
                part = missing[i : i + chunk]
                computed[i : i + len(part)] = np.asarray(embedder.features_batch(part), dtype=np.float32)
                bar.update(len(part))
        cache.add(missing, computed)
        row = {t: i for i, t in enumerate(missing)}
        for i, (text, f) in enumerate(zip(texts, found)):
            if not f:
                out[i] = computed[row[text]]
    return out, len(missing)
