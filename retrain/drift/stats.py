"""Drift statistics on binned distributions: PSI, Jensen–Shannon, normalised Wasserstein, cosine.

Every function takes *counts* (or shares) per bin, never raw rows: the drift report
(``retrain.drift.report``) gets them from SQL aggregates in PostgreSQL and from the head's
``reference.json`` (``retrain.drift.reference``), so neither side is ever rescanned in Python.
Both arguments of a two-sample statistic are (reference, current), binned alike.

Definitions (we follow Evidently's stattests, ``evidently.calculations.stattests``, so the
numbers and thresholds mean what its users expect):

- **PSI** (population stability index): ``sum((r - c) * ln(r / c))`` over bins, ``r`` and ``c``
  the reference and current shares. An empty bin would make it infinite, so, like Evidently's
  ``get_binned_data(feel_zeroes=True)``, a share of exactly 0 is replaced by
  :data:`PSI_EPSILON` (1e-4) on that side only; the shares are not renormalised afterwards.
- **Jensen–Shannon distance**: ``scipy.spatial.distance.jensenshannon(r, c)`` with the natural
  logarithm (scipy's default base, and Evidently's: it passes ``base=None``), so it lies in
  ``[0, sqrt(ln 2)] ≈ [0, 0.833]``. No epsilon: JS is finite with empty bins.
- **Normalised Wasserstein distance**: Evidently's ``wasserstein_distance_norm``:
  ``scipy.stats.wasserstein_distance(ref, cur) / max(std(ref), 0.001)``, ``std`` the population
  standard deviation (numpy's default, ``ddof=0``) of the reference. From a histogram, each
  bin's values sit at its centre (:func:`bin_centres`), weighted by its count; this equals the
  sample formula on the histogram "expanded" to one value per counted row.
- **Cosine distance** between two centroids (mean embeddings): ``1 - a·b / (|a| |b|)``
  (``scipy.spatial.distance.cosine``); 0 for the same direction.

A flag needs two things (:func:`flag`): the value reaches its threshold (an *effect size*: big
enough to matter), and it exceeds what sampling alone gives at these row counts
(:func:`null_quantile`, the ``NOISE_QUANTILE`` quantile of the statistic when both windows are
drawn from one pooled distribution). The second guard matters for labels: with ~150 classes,
sampling noise alone gives a JS distance of about ``sqrt((k-1)(1/n_ref + 1/n_cur) / 8)`` —
0.11 for 2,000 current rows against a 5,500-row reference — so a fixed 0.1 would flag every
small window. Evidently makes the same split: below 1,000 rows it uses a test (chi-square, KS),
above it a distance with a threshold.

Example::

    >>> round(js_distance([50, 50], [50, 50]), 6)
    0.0
    >>> round(psi([60, 40], [40, 60]), 4)
    0.1622
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import numpy as np
from scipy import stats
from scipy.spatial import distance

PSI_EPSILON = 1e-4
"""Share put in place of an empty bin before PSI takes ``ln(r / c)``: Evidently's 0.0001.

Small enough that a bin's contribution stays near ``r * ln(r / 1e-4)`` (a label that vanished
counts strongly), large enough to stay finite.
"""

PSI_THRESHOLD = 0.2
"""PSI at or above this flags drift of the predicted labels.

0.1 is Evidently's default and the classic "some change" mark; 0.2 is the credit-risk
industry's "significant shift, act now" mark (Siddiqi, *Credit Risk Scorecards*, 2006). We
flag at 0.2: a report that pages someone should mean "act", and over ~150 labels PSI carries
more sampling noise than a 10-bin score (it grows with ``(k - 1)(1/n_ref + 1/n_cur)``). The
value is always reported, so 0.1–0.2 ("watch") is still visible.
"""

JS_THRESHOLD = 0.1
"""Jensen–Shannon distance (natural log) at or above this flags drift: Evidently's default for
categorical columns with more than 1,000 reference rows. Kept as is: it is the best-known
reference point, and the noise guard (:func:`null_quantile`) covers small windows."""

WASSERSTEIN_THRESHOLD = 0.1
"""Normalised Wasserstein distance at or above this flags drift: Evidently's default for numerical
columns with more than 1,000 reference rows (a shift of a tenth of the reference's standard
deviation). Used for the confidence and the text length."""

COSINE_THRESHOLD = 0.2
"""Cosine distance between the reference and current embedding centroids that flags drift.

Evidently's embedding ``distance`` method compares the means of the two embedding sets with
threshold 0.2 (its default distance is euclidean; cosine is one of its options). We use cosine
because the centroids of unit vectors differ in length with how spread the texts are (the
reference's ``centroid_norm`` is ~0.27 for CLINC150), and direction is what says the topics
moved. 0.2 is an angle of ~37°: far more than sampling noise for a few hundred phrases
(:func:`centroid_noise_floor`), reached when the traffic narrows to a few domains.
"""

SHARE_DELTA_THRESHOLD = 0.05
"""Rise of a share (out-of-scope rate, share under the oos threshold, share of texts with an
unknown word piece), current minus reference, that flags drift: 5 percentage points.

No library default applies; 5 points is where a dashboard of these rates becomes worth a look
for a classifier whose reference rates are a few percent, and the rise must also clear
:data:`SHARE_MIN_Z` standard errors so a small window cannot trip it by chance.
"""

SHARE_MIN_Z = 3.0
"""A share's rise must be at least this many standard errors (two-proportion z) to flag."""

NOISE_QUANTILE = 0.99
"""Quantile of a statistic under "no drift" that its value must also exceed to flag."""

NOISE_DRAWS = 300
"""Simulated pairs of windows behind :func:`null_quantile` (seeded: a report repeats exactly)."""

WASSERSTEIN_MIN_STD = 0.001
"""Floor of the reference standard deviation that normalises Wasserstein (Evidently's)."""


def _counts(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0 or not np.isfinite(a).all() or (a < 0).any():
        msg = f"{name} must be a non-empty list of non-negative finite counts"
        raise ValueError(msg)
    return a


def _pair(ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, c = _counts(ref, "reference"), _counts(cur, "current")
    if r.shape != c.shape:
        msg = f"reference and current need the same bins, got {r.size} and {c.size}"
        raise ValueError(msg)
    if r.sum() == 0 or c.sum() == 0:
        raise ValueError("reference and current each need at least one counted row")
    return r, c


def shares(counts: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return counts (or shares) as shares that sum to 1; all zeros for no rows."""
    a = _counts(counts, "counts")
    total = a.sum()
    return a / total if total > 0 else np.zeros_like(a)


def psi(ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Return the population stability index of ``cur`` against ``ref`` (counts or shares per bin).

    Empty bins get the share ``eps`` on their side (see :data:`PSI_EPSILON`). Symmetric;
    0 for identical distributions.
    """
    r, c = _pair(ref, cur)
    p, q = r / r.sum(), c / c.sum()
    p = np.where(p == 0, eps, p)
    q = np.where(q == 0, eps, q)
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray) -> float:
    """Return the Jensen–Shannon distance (natural log, in ``[0, 0.833]``) between two histograms."""
    r, c = _pair(ref, cur)
    value = float(distance.jensenshannon(r / r.sum(), c / c.sum()))
    return 0.0 if math.isnan(value) else max(value, 0.0)  # rounding can give sqrt of -1e-17


def bin_centres(edges: Sequence[float | None]) -> np.ndarray:
    """Return the value that stands for each bin between ``edges`` (as ``retrain.drift.reference`` stores them).

    The midpoint of each finite bin; an open last bin (``inf`` or ``None``, e.g. texts of 500
    characters or more) stands at its lower edge, the least it can hold: its share is tiny in
    practice, and any finite guess would be arbitrary.
    """
    e = [math.inf if x is None else float(x) for x in edges]
    if len(e) < 2 or any(b <= a for a, b in pairwise(e)):
        msg = f"edges must be at least two increasing numbers, got {list(edges)!r}"
        raise ValueError(msg)
    return np.array([lo if math.isinf(hi) else (lo + hi) / 2 for lo, hi in pairwise(e)])


def weighted_std(values: np.ndarray, weights: np.ndarray) -> float:
    """Return the population standard deviation of ``values`` repeated ``weights`` times."""
    w = np.asarray(weights, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    mean = np.average(v, weights=w)
    return float(math.sqrt(np.average((v - mean) ** 2, weights=w)))


def wasserstein_norm(ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray,
                     centres: Sequence[float] | np.ndarray) -> float:
    """Return the Wasserstein distance between two histograms over ``centres``, over the reference's std.

    ``centres`` holds each bin's value (:func:`bin_centres`). The normaliser is
    ``max(std(ref), 0.001)`` as in Evidently, so the result reads "in reference standard deviations".
    """
    r, c = _pair(ref, cur)
    x = np.asarray(centres, dtype=np.float64).ravel()
    if x.shape != r.shape:
        msg = f"one centre per bin: {r.size} bins, {x.size} centres"
        raise ValueError(msg)
    norm = max(weighted_std(x, r), WASSERSTEIN_MIN_STD)
    return float(stats.wasserstein_distance(x, x, u_weights=r, v_weights=c)) / norm


def cosine_distance(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Return ``1 - cos(a, b)`` for two centroids; raise ``ValueError`` for a zero vector or other shapes."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        msg = f"centroids need the same dimension, got {x.size} and {y.size}"
        raise ValueError(msg)
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0 or ny == 0:
        raise ValueError("a centroid is the zero vector: no direction to compare")
    return float(min(2.0, max(0.0, 1.0 - float(x @ y) / (nx * ny))))


def null_quantile(statistic: Callable[[np.ndarray, np.ndarray], float], ref: Sequence[float] | np.ndarray,
                  cur: Sequence[float] | np.ndarray, q: float = NOISE_QUANTILE, draws: int = NOISE_DRAWS,
                  seed: int = 0) -> float:
    """Return the ``q`` quantile of ``statistic`` when nothing drifted, at these row counts.

    Both windows are redrawn ``draws`` times from one pooled distribution (the two histograms
    added), with their own totals (counts are rounded to whole rows), and the statistic is
    computed on each pair: the parametric bootstrap of the null hypothesis "same
    distribution". Seeded, so a report is reproducible.
    """
    r, c = _pair(ref, cur)
    n_ref, n_cur = round(r.sum()), round(c.sum())
    pooled = (r / r.sum() * n_ref + c / c.sum() * n_cur)
    pooled = pooled / pooled.sum()
    rng = np.random.default_rng(seed)
    sims_r = rng.multinomial(max(n_ref, 1), pooled, size=draws)
    sims_c = rng.multinomial(max(n_cur, 1), pooled, size=draws)
    values = np.array([statistic(a, b) for a, b in zip(sims_r, sims_c, strict=True)])
    return float(np.quantile(values, q))


def centroid_noise_floor(ref_centroid: Sequence[float] | np.ndarray, n_ref: int, n_cur: int,
                         q: float = NOISE_QUANTILE) -> float:
    """Return about the largest cosine distance sampling alone gives between two centroids.

    The centroids are means of unit vectors, so each row's spread around the mean has total
    variance ``1 - |c|²``; the difference of two window means has ``s² = (1 - |c|²)(1/n_ref +
    1/n_cur)``. Taking it as spread evenly over the ``d`` dimensions, its squared length is
    ``s² χ²_d / d``; at the ``q`` quantile it tilts the centroid by at most ``atan(len / |c|)``.
    An approximation (embeddings are not isotropic), used only as the noise guard of the flag.
    """
    c = np.asarray(ref_centroid, dtype=np.float64).ravel()
    norm2 = float(c @ c)
    if norm2 <= 0 or n_ref <= 0 or n_cur <= 0:
        return 1.0
    d = c.size
    s2 = max(0.0, 1.0 - norm2) * (1.0 / n_ref + 1.0 / n_cur)
    length = math.sqrt(s2 * float(stats.chi2.ppf(q, d)) / d)
    return float(1.0 - math.cos(math.atan(length / math.sqrt(norm2))))


def share_shift(ref_share: float, n_ref: int, cur_share: float, n_cur: int) -> tuple[float, float]:
    """Return (current - reference, its two-proportion z score) for two shares of ``n_ref``/``n_cur`` rows."""
    delta = float(cur_share) - float(ref_share)
    pooled = (ref_share * n_ref + cur_share * n_cur) / max(n_ref + n_cur, 1)
    se = math.sqrt(max(pooled * (1 - pooled), 0.0) * (1.0 / max(n_ref, 1) + 1.0 / max(n_cur, 1)))
    if se == 0:
        return delta, (0.0 if delta == 0 else math.copysign(math.inf, delta))
    return delta, delta / se


def flag(value: float | None, threshold: float, noise: float | None = None) -> bool:
    """Say whether ``value`` drifted: at or above ``threshold`` and above the ``noise`` floor (if given)."""
    if value is None or math.isnan(value):
        return False
    return bool(value >= threshold and (noise is None or value > noise))
