"""Score a head on the test slice and decide whether the candidate goes live.

:func:`score` scores a head (weighted F1 and accuracy with scikit-learn,
``retrain.train.evaluate.summarise``); candidate and live head go through this one function.
:func:`gate` compares the two with a tolerance and returns a :class:`Decision` with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from retrain.replay.select import Example


class Predictor(Protocol):
    """What scoring needs of a head (``models.heads.Head``)."""

    def predict(self, features: np.ndarray, top_k: int = 3, texts: Sequence[str] | None = None) -> list[Any]: ...


@dataclass(frozen=True)
class Score:
    """A head's figures on the test slice."""

    version: str
    weighted_f1: float
    accuracy: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "weighted_f1": self.weighted_f1, "accuracy": self.accuracy, "n": self.n}


def score(head: Predictor, version: str, features: np.ndarray, examples: Sequence[Example]) -> Score:
    """Score ``head`` on ``examples`` (features row i for example i) with ``retrain.train.evaluate.summarise``.

    Weighted F1 over the true labels (a label the head does not know counts as an error) and
    accuracy, rounded to 6 places. Candidate and live head go through this one function.
    """
    from retrain.train.evaluate import summarise

    if not examples:
        raise ValueError("cannot score on an empty test slice")
    texts = [e.clean_text for e in examples]
    y_true = [e.label for e in examples]
    y_pred = [p.label for p in head.predict(features, 1, texts=texts)]
    summary = summarise(y_true, y_pred, sorted(set(y_true) | set(y_pred))).summary
    return Score(version, float(summary["weighted_f1"] or 0.0), float(summary["accuracy"] or 0.0), len(examples))


@dataclass(frozen=True)
class Decision:
    """Whether the candidate should go live, and why (one line)."""

    promote: bool
    reason: str


def gate(candidate: Score, live: Score | None, tolerance: float, no_live_reason: str = "no live head") -> Decision:
    """Promote when the candidate's weighted F1 >= the live head's - ``tolerance`` (equal counts as passing).

    With no score of the live head (none is live, or it cannot be scored) the candidate is
    promoted, and ``no_live_reason`` says why in the decision.

    >>> gate(Score("new", 0.90, 0.9, 50), Score("old", 0.92, 0.92, 50), 0.005).promote
    False
    """
    if tolerance < 0:
        raise ValueError(f"the tolerance must be >= 0, got {tolerance}")
    if live is None:
        return Decision(True, f"{no_live_reason}: nothing to compare with, the candidate goes live")
    c, v = candidate.weighted_f1, live.weighted_f1
    # rounded: 0.900 - 0.005 must not lose to a float representation of 0.895
    if round(c - (v - tolerance), 9) >= 0:
        return Decision(True, f"candidate weighted F1 {c:.4f} >= live {v:.4f} - tolerance {tolerance:g}")
    return Decision(False, f"candidate weighted F1 {c:.4f} < live {v:.4f} - tolerance {tolerance:g}")
