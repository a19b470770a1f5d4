"""Reference statistics for drift, computed on a head's evaluation data at training time.

:func:`reference_stats` summarises what the head saw and predicted on its evaluation rows:
the predicted label distribution, the confidence, the text lengths, the unknown word pieces
and the embedding centroid. The result is a small JSON dict stored with the head; a drift
report later compares SQL aggregates over the served predictions against it and never has to
rescan the training data.

Histograms use fixed edges (exported below), so both sides bin the same way. Bin ``i`` holds
``edges[i] <= x < edges[i + 1]``; values below the first edge count in the first bin and
values at or above the last finite lower edge count in the last bin (so a confidence of
exactly 1.0 is in the last bin, as with ``np.histogram``). In PostgreSQL the same 1-based bin
is ``width_bucket(x, ARRAY[edges[0], ..., edges[-2]])`` (the lower edges only), with 0 lifted
to 1. Quantiles are numpy's linear ones, which is PostgreSQL's ``percentile_cont``.

Example::

    stats = reference_stats(classes=["a", "b"], y_pred=["a", "a"], confidence=np.array([0.9, 0.6]),
                            texts=["hello", "hi there"], unk_rate=np.zeros(2), embeddings=np.ones((2, 384)),
                            oos_label=None, oos_threshold=None)
    stats["label_distribution"]  # {"a": 1.0, "b": 0.0}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import SupportsFloat

import numpy as np

SCHEMA = 1
"""Version of the dict layout; bump it when a key changes meaning."""

DIGITS = 6
"""Every float in the result is rounded to this many decimals."""

CONFIDENCE_EDGES: tuple[float, ...] = tuple(round(i * 0.05, 2) for i in range(21))
"""20 equal bins over [0, 1]: 0.0, 0.05, ..., 1.0."""

TEXT_LENGTH_EDGES: tuple[float, ...] = (0, 5, 10, 15, 20, 30, 40, 60, 80, 120, 200, 500, math.inf)
"""Bins of the text length in characters (Python ``len``, i.e. code points: PostgreSQL's ``char_length``)."""

WORD_COUNT_EDGES: tuple[float, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, math.inf)
"""Bins of the word count (``len(text.split())``: runs of whitespace separate words)."""

QUANTILES: dict[str, float] = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}


def _edges(edges: Sequence[float | None]) -> np.ndarray:
    """Return the edges as floats; ``None`` (how JSON stores infinity here) becomes ``inf``."""
    out = np.array([math.inf if e is None else float(e) for e in edges], dtype=np.float64)
    if out.ndim != 1 or len(out) < 2 or np.isnan(out).any() or np.any(np.diff(out) <= 0):
        msg = f"histogram edges must be at least two strictly increasing numbers, got {list(edges)!r}"
        raise ValueError(msg)
    return out


def histogram_counts(values: Sequence[float] | np.ndarray, edges: Sequence[float | None]) -> list[int]:
    """Count ``values`` into the bins between ``edges`` (see the module docstring for the rule).

    ``edges`` may end in ``inf`` or ``None`` (as read back from the stored JSON).
    Every value lands in exactly one bin, so the counts sum to ``len(values)``.
    """
    e = _edges(edges)
    v = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(v).any():
        raise ValueError("histogram values contain NaN")
    bins = np.searchsorted(e[1:-1], v, side="right")
    return [int(c) for c in np.bincount(bins, minlength=len(e) - 1)]


def histogram_shares(values: Sequence[float] | np.ndarray, edges: Sequence[float | None]) -> list[float]:
    """Return the share of ``values`` in each bin between ``edges``, rounded to 6 decimals.

    The same binning as :func:`histogram_counts`; all zeros for no values.
    """
    counts = histogram_counts(values, edges)
    n = sum(counts)
    return [_r(c / n) if n else 0.0 for c in counts]


def json_edges(edges: Sequence[float]) -> list[float | None]:
    """Return ``edges`` as stored in the JSON: the numbers as given, with ``inf`` written as ``null``."""
    return [None if math.isinf(e) else e for e in edges]


def reference_stats(
    *,
    classes: Sequence[str],
    y_pred: Sequence[str],
    confidence: np.ndarray,
    texts: Sequence[str],
    unk_rate: np.ndarray,
    embeddings: np.ndarray,
    oos_label: str | None,
    oos_threshold: float | None,
) -> dict:
    """Return the reference statistics of one head's evaluation rows as a JSON-ready dict.

    All inputs are per evaluation row, in the same order: the predicted label, its
    probability (``confidence``), the cleaned text, the rate of unknown word pieces in it (the
    caller counts them with the embedder's tokenizer) and its embedding (any dimension, 384
    for MiniLM; it is L2-normalised here). Keys::

        schema                1
        n                     number of rows
        label_distribution    {label: share of predictions} over every class (0.0 if never predicted)
        confidence_histogram  {edges, counts, shares, mean, p05, p25, p50, p75, p95,
                               share_below_oos_threshold (share with confidence < threshold, or null)}
        text_length           characters: {edges, counts, shares, mean, p50, p95}
        word_count            words: the same layout
        unk_rate              {mean, share_with_unk (share of texts with any unknown piece)}
        embedding_centroid    mean of the L2-normalised embeddings (list of floats)
        centroid_norm         its L2 norm (1.0 when all texts embed alike, lower as they spread)
        dim                   embedding dimension
        oos_label, oos_threshold   as given (or null)
        oos_rate              share predicted as ``oos_label`` (null without one)

    Floats are rounded to 6 decimals. The last edge of ``text_length`` and ``word_count`` is
    infinite and written as ``null`` (JSON has no infinity); :func:`histogram_shares` accepts the
    edges back as stored. Raises ``ValueError`` for no rows, lengths that differ, a predicted
    label not in ``classes`` or NaN values.
    """
    classes = list(classes)
    y_pred = list(y_pred)
    texts = list(texts)
    n = len(y_pred)
    if n == 0:
        raise ValueError("reference statistics need at least one evaluation row")
    if len(set(classes)) != len(classes):
        raise ValueError("classes has duplicates")
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    unk = np.asarray(unk_rate, dtype=np.float64).ravel()
    emb = np.asarray(embeddings, dtype=np.float64)
    lengths = {"confidence": len(conf), "texts": len(texts), "unk_rate": len(unk), "embeddings": len(emb)}
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        msg = f"every input needs one entry per row ({n} predictions); got {wrong}"
        raise ValueError(msg)
    if emb.ndim != 2:
        msg = f"embeddings must be a [rows, dim] array, got shape {emb.shape}"
        raise ValueError(msg)
    for name, arr in (("confidence", conf), ("unk_rate", unk), ("embeddings", emb)):
        if not np.isfinite(arr).all():
            msg = f"{name} has NaN or infinite values"
            raise ValueError(msg)
    unknown = sorted(set(y_pred) - set(classes))
    if unknown:
        msg = f"predicted labels not in classes: {unknown[:5]}"
        raise ValueError(msg)

    counts = dict.fromkeys(classes, 0)
    for y in y_pred:
        counts[y] += 1

    conf_hist = _histogram(np.clip(conf, 0.0, 1.0), CONFIDENCE_EDGES)
    conf_hist["mean"] = _r(conf.mean())
    conf_hist.update({name: _r(np.quantile(conf, q)) for name, q in QUANTILES.items()})
    conf_hist["share_below_oos_threshold"] = _r(np.mean(conf < oos_threshold)) if oos_threshold is not None else None

    chars = np.array([len(t) for t in texts], dtype=np.float64)
    words = np.array([len(t.split()) for t in texts], dtype=np.float64)

    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    unit = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    centroid = unit.mean(axis=0)

    return {
        "schema": SCHEMA,
        "n": n,
        "label_distribution": {label: _r(c / n) for label, c in counts.items()},
        "confidence_histogram": conf_hist,
        "text_length": _length_stats(chars, TEXT_LENGTH_EDGES),
        "word_count": _length_stats(words, WORD_COUNT_EDGES),
        "unk_rate": {"mean": _r(unk.mean()), "share_with_unk": _r(np.mean(unk > 0))},
        "embedding_centroid": [_r(x) for x in centroid],
        "centroid_norm": _r(np.linalg.norm(centroid)),
        "dim": int(emb.shape[1]),
        "oos_label": oos_label,
        "oos_threshold": _r(oos_threshold) if oos_threshold is not None else None,
        "oos_rate": _r(counts.get(oos_label, 0) / n) if oos_label is not None else None,
    }


def _histogram(values: np.ndarray, edges: Sequence[float]) -> dict:
    counts = histogram_counts(values, edges)
    n = sum(counts)
    return {"edges": json_edges(edges), "counts": counts, "shares": [_r(c / n) for c in counts]}


def _length_stats(values: np.ndarray, edges: Sequence[float]) -> dict:
    out = _histogram(values, edges)
    out.update(mean=_r(values.mean()), p50=_r(np.quantile(values, 0.5)), p95=_r(np.quantile(values, 0.95)))
    return out


def _r(x: SupportsFloat) -> float:
    """Round to :data:`DIGITS` decimals as a plain float (``-0.0`` becomes ``0.0``)."""
    return round(float(x), DIGITS) + 0.0
