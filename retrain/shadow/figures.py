"""The shadow report's figures, as plain functions on lists: agreement, confusion, accuracy by slice.

The database gives the counts and quantiles (``retrain.shadow.rows``); these functions turn
them into the summary, and score both heads on the labelled phrases:

- :func:`confusion` folds the (live label, shadow label) counts into a readable table: the
  ``top`` labels of each side, the rest as ``(other)``, and the largest disagreements;
- :func:`scores` gives each head's accuracy and weighted F1 on the labelled phrases, by slice:
  every labelled phrase, the review's **random slice** (weighted by ``sampling_weight``, with a
  95% Wilson interval on the Kish effective sample size: an unbiased estimate of live accuracy),
  the **doubtful** review answers (margin, oos, shadow disagreement: biased by design) and the
  examples produced outside the review.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

OTHER = "(other)"
TOP_LABELS = 8
"""Labels per side in the confusion table; the rest are folded into ``(other)``."""
Z95 = 1.959964


@dataclass(frozen=True)
class Labelled:
    """One labelled phrase with both heads' answers for it."""

    clean_text: str
    truth: str
    live: str
    shadow: str
    source: str | None = None
    reason: str | None = None
    sampling_weight: float | None = None

    @property
    def random_slice(self) -> bool:
        """In the review's random slice: only its answers carry a sampling weight."""
        return self.sampling_weight is not None

    @property
    def doubtful(self) -> bool:
        """A review answer routed for doubt (margin, oos or shadow disagreement), whatever else it is."""
        reasons = {r.strip() for r in (self.reason or "").split(",") if r.strip()}
        return self.source == "review" and bool(reasons - {"random"})


def agreement(counts: Iterable[tuple[str, str, int]]) -> tuple[int, int, float | None]:
    """Return (paired, agreeing, agreement rate) of (live label, shadow label, count) rows."""
    total = agree = 0
    for live, shadow, n in counts:
        total += n
        agree += n if live == shadow else 0
    return total, agree, (agree / total if total else None)


def confusion(counts: Sequence[tuple[str, str, int]], top: int = TOP_LABELS, pairs: int = 10) -> dict[str, Any]:
    """Return the confusion table of live (rows) against shadow (columns), folded to ``top`` labels a side.

    ``cells[i][j]`` counts phrases the live head gave ``rows[i]`` and the shadow ``columns[j]``;
    ``disagreements`` lists the ``pairs`` largest (live, shadow, count) with different labels.
    """
    live_n: Counter[str] = Counter()
    shadow_n: Counter[str] = Counter()
    for live, shadow, n in counts:
        live_n[live] += n
        shadow_n[shadow] += n

    def keep(counter: Counter[str]) -> list[str]:
        names = [name for name, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]
        return names if len(names) <= top else [*names[:top], OTHER]

    rows, columns = keep(live_n), keep(shadow_n)
    row_at = {name: i for i, name in enumerate(rows)}
    col_at = {name: j for j, name in enumerate(columns)}
    cells = [[0] * len(columns) for _ in rows]
    for live, shadow, n in counts:
        cells[row_at.get(live, row_at.get(OTHER, 0))][col_at.get(shadow, col_at.get(OTHER, 0))] += n
    worst = sorted(((live, shadow, n) for live, shadow, n in counts if live != shadow), key=lambda t: (-t[2], t[0], t[1]))
    return {"rows": rows, "columns": columns, "cells": cells,
            "disagreements": [{"live": a, "shadow": b, "n": n} for a, b, n in worst[:pairs]]}


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion ``p`` on ``n`` (effective) trials."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def head_scores(truth: Sequence[str], pred: Sequence[str], weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Return accuracy and weighted F1 of ``pred`` against ``truth`` (``weights``: sample weights)."""
    from sklearn.metrics import f1_score

    if not truth:
        return {"accuracy": None, "weighted_f1": None}
    w = list(weights) if weights is not None else [1.0] * len(truth)
    correct = sum(wi for t, p, wi in zip(truth, pred, w, strict=True) if t == p)
    f1 = f1_score(list(truth), list(pred), labels=sorted(set(truth)), average="weighted", sample_weight=w,
                  zero_division=0)
    return {"accuracy": _r(correct / sum(w)), "weighted_f1": _r(f1)}


def slice_scores(items: Sequence[Labelled], weighted: bool = False) -> dict[str, Any]:
    """Return n and both heads' scores on ``items``; ``weighted``: by sampling weight, with 95% intervals."""
    out: dict[str, Any] = {"n": len(items)}
    truth = [x.truth for x in items]
    weights = [float(x.sampling_weight or 1.0) for x in items] if weighted else None
    for side in ("live", "shadow"):
        out[side] = head_scores(truth, [getattr(x, side) for x in items], weights)
    if weighted and items:
        assert weights is not None
        n_eff = sum(weights) ** 2 / sum(w * w for w in weights)  # Kish's effective sample size
        out["effective_n"] = _r(n_eff)
        for side in ("live", "shadow"):
            acc = out[side]["accuracy"]
            low, high = wilson(acc, n_eff)
            out[side]["accuracy_ci95"] = [_r(low), _r(high)]
    return out


def scores(items: Sequence[Labelled]) -> dict[str, Any]:
    """Return both heads' scores on every labelled phrase and on each slice (see the module doc).

    The slices overlap: an answer routed both at random and for doubt is in both.
    """
    return {
        "all": slice_scores(items),
        "random_slice": slice_scores([x for x in items if x.random_slice], weighted=True),
        "doubtful": slice_scores([x for x in items if x.doubtful]),
        "outside_review": slice_scores([x for x in items if x.source != "review"]),
    }


def match_labels(examples: Iterable[Any], answers: dict[str, tuple[str, str]]) -> list[Labelled]:
    """Pair labelled examples with both heads' answers by cleaned text.

    ``examples`` are ``retrain.replay.select.Example`` (deduplicated: one label per text);
    ``answers`` maps a cleaned text to its (live label, shadow label). Unmatched examples are
    left out: the heads never answered that text in the window.
    """
    out = []
    for ex in examples:
        pair = answers.get(ex.clean_text)
        if pair is None:
            continue
        out.append(Labelled(ex.clean_text, ex.label, pair[0], pair[1], getattr(ex, "source", None),
                            getattr(ex, "reason", None), getattr(ex, "sampling_weight", None)))
    return out
