"""The evaluation rows of one head, and how well they detect out-of-scope phrases at a threshold.

:class:`EvalRows` is what ``phrasestream report`` reads back from a head's
``eval_predictions.jsonl.gz``; :func:`oos_detection` gives the precision and recall of the
out-of-scope rule at one threshold. Plain numpy: the page is ``retrain.reports.page``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OOS_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Thresholds of the out-of-scope precision/recall table (0.05 ... 0.95); the chosen one is added."""


@dataclass
class EvalRows:
    """The evaluation predictions of one head, as stored with the head at training time.

    One entry per row in every field; ``confidence`` is the probability of the predicted
    label, ``top_k`` (optional) the k most probable ``(label, probability)`` pairs per row,
    shown beside the example phrases, and ``evidence`` (optional) why the head gave it.
    """

    texts: list[str]
    y_true: list[str]
    y_pred: list[str]
    confidence: np.ndarray
    top_k: list[list[tuple[str, float]]] | None = None
    evidence: list[dict[str, Any] | None] | None = None
    """Why the head gave each row's label (``models.heads.explain.evidence``; None for a row without)."""

    def __post_init__(self) -> None:
        self.confidence = np.asarray(self.confidence, dtype=np.float64).ravel()
        n = len(self.texts)
        lengths = {"y_true": len(self.y_true), "y_pred": len(self.y_pred), "confidence": len(self.confidence)}
        if self.top_k is not None:
            lengths["top_k"] = len(self.top_k)
        if self.evidence is not None:
            lengths["evidence"] = len(self.evidence)
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            msg = f"EvalRows needs one entry per text ({n} texts); got {wrong}"
            raise ValueError(msg)


@dataclass(frozen=True)
class OosPoint:
    """Out-of-scope detection at one threshold: a row is flagged when its score < threshold."""

    threshold: float
    flagged: int
    true_positives: int
    precision: float
    recall: float


def oos_detection(y_true: Sequence[str], oos_scores: np.ndarray, *, oos_label: str, threshold: float) -> OosPoint:
    """Return precision and recall of flagging rows whose ``oos_scores`` are below ``threshold``.

    ``oos_scores`` is the max in-scope probability of each row (the highest probability over
    the classes other than ``oos_label``). A row is flagged out-of-scope exactly when its score is
    ``< threshold``; it is a true positive when its true label is ``oos_label``. Precision and
    recall are 0.0 when their denominator is 0 (as scikit-learn's ``zero_division=0``).
    If serving also flags rows whose top label is ``oos_label`` whatever the threshold, fold that
    into the scores (say 0.0 for those rows) so that the figures describe the serving rule.
    """
    scores = np.asarray(oos_scores, dtype=np.float64).ravel()
    truth = np.array([y == oos_label for y in y_true], dtype=bool)
    flagged = scores < threshold
    tp = int((flagged & truth).sum())
    n_flagged = int(flagged.sum())
    n_true = int(truth.sum())
    return OosPoint(
        threshold=float(threshold),
        flagged=n_flagged,
        true_positives=tp,
        precision=tp / n_flagged if n_flagged else 0.0,
        recall=tp / n_true if n_true else 0.0,
    )
