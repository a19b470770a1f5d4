"""The nearest training examples of a label: a cosine index over a head's training rows.

Training writes it into the head's folder (``retrain.train.artifacts``), so it is covered by
the folder's checksums like every other file, and no pickle is involved:

    neighbors.safetensors   ``vectors``: float16 ``[n, 384]``, the unit sentence embedding
                            (the readout's first block, ``mean6``) of each training row
    neighbors.json          ``{"block": "mean6", "rows": [[text, label], ...]}`` in the same order

The rows are the head's training rows (splits ``train`` and ``val`` of ``train_data.jsonl.gz``,
each distinct (cleaned text, label) once); the texts are the raw texts, as an expert wrote them.
The cosine of two unit vectors is their dot product; float16 keeps it to about 1e-3.

A head trained before the index existed has neither file. :func:`index_for` then builds one
from ``train_data.jsonl.gz`` when it is given an embedder (the ``explain`` command), kept in
memory with the head; without one (the stream never embeds for evidence) it returns ``None``.
"""

from __future__ import annotations

import gzip
import json
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.heads.artifact import NEIGHBORS_FILE, NEIGHBORS_ROWS_FILE, TRAIN_DATA_FILE, HeadError
from models.heads.serve import BLOCK_DIM, Head

SENTENCE_BLOCK = "mean6"
"""The readout block the index compares: the sentence embedding (L2-normalised)."""


class FeatureSource(Protocol):
    """What building an index needs of the embedder (``models.embedder.Embedder``)."""

    @property
    def readout(self) -> tuple[str, ...]: ...

    def features_batch(self, texts: Sequence[str]) -> np.ndarray: ...


def sentence_columns(readout: Sequence[str]) -> slice:
    """Return the columns of the sentence embedding in a readout of blocks ``readout``."""
    if SENTENCE_BLOCK not in readout:
        raise HeadError(f"the readout {list(readout)} has no sentence embedding block {SENTENCE_BLOCK!r}")
    start = BLOCK_DIM * list(readout).index(SENTENCE_BLOCK)
    return slice(start, start + BLOCK_DIM)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Return the rows of ``x`` scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


class NeighborIndex:
    """Unit vectors of training rows, their texts and labels; :meth:`nearest` within one label."""

    def __init__(self, vectors: np.ndarray, texts: Sequence[str], labels: Sequence[str], built: str = "training"):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or len(vectors) != len(texts) or len(texts) != len(labels):
            raise HeadError(f"a neighbour index needs one vector per (text, label): {vectors.shape}, "
                            f"{len(texts)} texts, {len(labels)} labels")
        self.vectors = vectors.astype(np.float16)
        self.texts = list(texts)
        self.labels = list(labels)
        self.built = built
        """``training`` (stored in the head's folder) or ``on first use`` (built from its snapshot now)."""
        by_label: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            by_label.setdefault(label, []).append(i)
        self._rows = {label: np.asarray(rows, dtype=np.int64) for label, rows in by_label.items()}
        self._blocks: dict[str, np.ndarray] = {}
        """Each label's rows in float32, converted on the label's first query and kept: converting
        them on every query cost a head with few labels (thousands of rows each) 7 ms a phrase."""

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def build(cls, embeddings: np.ndarray, texts: Sequence[str], labels: Sequence[str],
              keys: Sequence[str] | None = None, built: str = "training") -> NeighborIndex:
        """Index ``embeddings`` (sentence embeddings, any scale), each distinct (key, label) once.

        ``keys`` (default: ``texts``) decide what is a duplicate: the cleaned texts, usually.
        """
        keys = list(texts) if keys is None else list(keys)
        seen: set[tuple[str, str]] = set()
        keep: list[int] = []
        for i, (k, label) in enumerate(zip(keys, labels)):
            if (k, label) not in seen:
                seen.add((k, label))
                keep.append(i)
        vecs = unit_rows(np.asarray(embeddings)[keep]) if keep else np.zeros((0, BLOCK_DIM), np.float32)
        return cls(vecs, [texts[i] for i in keep], [labels[i] for i in keep], built)

    def write(self, folder: Path | str) -> list[Path]:
        """Write :data:`NEIGHBORS_FILE` and :data:`NEIGHBORS_ROWS_FILE` into ``folder``; return both paths."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        vec_path, rows_path = folder / NEIGHBORS_FILE, folder / NEIGHBORS_ROWS_FILE
        save_file({"vectors": np.ascontiguousarray(self.vectors, dtype=np.float16)}, str(vec_path))
        rows = [[t, label] for t, label in zip(self.texts, self.labels)]
        rows_path.write_text(json.dumps({"block": SENTENCE_BLOCK, "rows": rows}, ensure_ascii=False) + "\n",
                             encoding="utf-8")
        return [vec_path, rows_path]

    @classmethod
    def read(cls, folder: Path | str) -> NeighborIndex:
        """Read the index a head's folder holds (:class:`HeadError` if it is malformed)."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            vectors = load_file(str(folder / NEIGHBORS_FILE))["vectors"]
            raw = json.loads((folder / NEIGHBORS_ROWS_FILE).read_text(encoding="utf-8"))
            rows = raw["rows"]
            return cls(vectors, [str(r[0]) for r in rows], [str(r[1]) for r in rows])
        except (OSError, KeyError, TypeError, ValueError, IndexError) as e:
            raise HeadError(f"{folder}: the neighbour index is not usable: {e!r}") from None

    def nearest(self, query: np.ndarray, label: str, k: int = 3) -> list[list[Any]]:
        """Return up to ``k`` ``[text, label, cosine]`` of ``label``, most similar first.

        ``query`` is a sentence embedding (it is scaled to unit length here).
        """
        return self.nearest_many(np.asarray(query).reshape(1, -1), [label], k)[0]

    def _block(self, label: str, rows: np.ndarray) -> np.ndarray:
        """Return ``label``'s unit vectors in float32 (converted once; the index in float32 at most)."""
        block = self._blocks.get(label)
        if block is None:
            block = self._blocks[label] = np.ascontiguousarray(self.vectors[rows], dtype=np.float32)
        return block

    def nearest_many(self, queries: np.ndarray, labels: Sequence[str], k: int = 3) -> list[list[list[Any]]]:
        """:meth:`nearest` for each row of ``queries`` with ``labels[i]``: one product per label, on
        its rows in float32 (converted from float16 on the label's first query, then kept)."""
        q = unit_rows(np.asarray(queries, dtype=np.float32).reshape(len(labels), -1))
        out: list[list[list[Any]]] = [[] for _ in labels]
        wanted: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            wanted.setdefault(label, []).append(i)
        for label, asking in wanted.items():
            rows = self._rows.get(label)
            if rows is None or not len(rows) or k <= 0:
                continue
            sims = q[asking] @ self._block(label, rows).T
            for i, row_sims in zip(asking, sims):
                top = np.argsort(-row_sims, kind="stable")[:k]
                out[i] = [[self.texts[rows[j]], label, round(float(row_sims[j]), 4)] for j in top]
        return out


_cache: weakref.WeakKeyDictionary[Head, NeighborIndex | None] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def has_stored_index(head: Head) -> bool:
    """Whether the head's folder holds an index written at training time."""
    folder = getattr(head, "path", None)
    return folder is not None and (Path(folder) / NEIGHBORS_FILE).is_file()


def snapshot_rows(folder: Path | str) -> list[dict[str, Any]]:
    """The training rows (splits ``train`` and ``val``) of a head's ``train_data.jsonl.gz``."""
    path = Path(folder) / TRAIN_DATA_FILE
    if not path.is_file():
        raise HeadError(f"{folder} has no {TRAIN_DATA_FILE}: no training rows to index")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r.get("split") in ("train", "val")]


def build_from_snapshot(head: Head, embedder: FeatureSource, chunk: int = 256) -> NeighborIndex:
    """Embed the head's training snapshot and index it (a head trained before the index existed)."""
    from schemas.cleaning import clean

    rows = snapshot_rows(head.path)
    texts = [str(r["text"]) for r in rows]
    labels = [str(r["label"]) for r in rows]
    cleaned = [clean(t) for t in texts]
    distinct = list(dict.fromkeys(cleaned))
    cols = sentence_columns(embedder.readout)
    emb = np.zeros((len(distinct), BLOCK_DIM), dtype=np.float32)
    for i in range(0, len(distinct), chunk):
        part = distinct[i:i + chunk]
        emb[i:i + len(part)] = np.asarray(embedder.features_batch(part), dtype=np.float32)[:, cols]
    where = {t: i for i, t in enumerate(distinct)}
    return NeighborIndex.build(emb[[where[t] for t in cleaned]], texts, labels, keys=cleaned, built="on first use")


def index_for(head: Head, embedder: FeatureSource | None = None) -> NeighborIndex | None:
    """Return the head's neighbour index, read once and kept in memory with the head.

    A head without a stored index gets one built from its training snapshot when ``embedder``
    is given, else ``None`` (and it is asked again next time, in case an embedder comes).
    """
    with _lock:
        if head in _cache and _cache[head] is not None:
            return _cache[head]
        if has_stored_index(head):
            found: NeighborIndex | None = NeighborIndex.read(head.path)
        elif embedder is not None and getattr(head, "path", None) is not None:
            found = build_from_snapshot(head, embedder)
        else:
            found = None
        _cache[head] = found
        return found
