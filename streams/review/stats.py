"""The progress panel's estimators: live accuracy from the random slice, and agreement between experts.

**Live accuracy.** The review rule keeps each answer in the random slice with probability
``random_rate`` (a hash of the phrase id), whatever its margin, and gives it the sampling
weight ``w = 1 / random_rate``. For the random-slice items an expert labelled, ``c_i`` is 1
when the expert's label is the model's. The estimate is the weighted mean (the Hájek ratio
estimator) ``p = Σ w_i c_i / Σ w_i``: when the rate changed over time, each item stands for the
``w_i`` answers it was drawn from. Its 95% interval is Wilson's score interval on ``p`` with the
Kish effective sample size ``n_eff = (Σ w_i)² / Σ w_i²`` in place of n (with one rate, every
weight is equal and this is the plain Wilson interval on n items). Wilson's interval stays
inside [0, 1] and behaves at p near 0 or 1 and for small n, where the normal one does not.
Caveats: the hourly cap on the slice (``random_budget_per_hour``) drops items once reached, so
the slice is uniform only while it is not hit; and skipped, unsure and out-of-scope answers are
left out (they say nothing about whether the model was right).

**Agreement between experts.** A double item's first two label answers (in the order they were
given) are a pair. Percent agreement is the share of pairs that agree; Cohen's kappa
``(p_o - p_e) / (1 - p_e)`` corrects it for chance, ``p_e`` being the chance that the first and
second answer agree given how often each label is used in each position.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Return Wilson's score interval for a proportion ``p`` measured on ``n`` (possibly effective) trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def weighted_accuracy(outcomes: Iterable[tuple[bool, float]]) -> dict[str, Any]:
    """Estimate accuracy from (correct, sampling weight) pairs; return n, n_eff, estimate, low, high.

    No pairs: the estimate and its bounds are None. A weight that is not positive is an error.
    """
    pairs = list(outcomes)
    if any(w <= 0 for _, w in pairs):
        raise ValueError("sampling weights must be positive")
    if not pairs:
        return {"n": 0, "n_eff": 0.0, "estimate": None, "low": None, "high": None}
    total = sum(w for _, w in pairs)
    p = sum(w for c, w in pairs if c) / total
    n_eff = total * total / sum(w * w for _, w in pairs)
    low, high = wilson(p, n_eff)
    return {"n": len(pairs), "n_eff": n_eff, "estimate": p, "low": low, "high": high}


def rater_agreement(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Return n, percent agreement and Cohen's kappa of (first answer, second answer) pairs.

    Kappa is None when there are no pairs or when chance agreement is 1 (both always gave the
    same single label: kappa is undefined there).
    """
    n = len(pairs)
    if not n:
        return {"n": 0, "agreement": None, "kappa": None}
    p_o = sum(1 for a, b in pairs if a == b) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_e = sum(first[k] * second[k] for k in first) / (n * n)
    kappa = None if p_e >= 1 else (p_o - p_e) / (1 - p_e)
    return {"n": n, "agreement": p_o, "kappa": kappa}


def confidence_words(probability: float, margin: float) -> str:
    """Say how sure the model was, in words (domain experts read these better than percentages)."""
    if probability >= 0.9 and margin >= 0.5:
        return "very sure"
    if probability >= 0.7 and margin >= 0.3:
        return "fairly sure"
    if margin >= 0.1:
        return "unsure"
    return "torn between two labels"
