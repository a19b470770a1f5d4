"""Compare two sides of a drift report: one entry per metric with its value, threshold and flag.

What is compared, and how (statistics and thresholds: ``retrain.drift.stats``):

================================  ==========================================================
metric                            statistic
================================  ==========================================================
``labels.psi``                    PSI of the predicted-label mix
``labels.js_distance``            Jensen–Shannon distance of the predicted-label mix
``confidence.wasserstein_norm``   normalised Wasserstein of the confidence histogram
``confidence.share_below_oos``    rise of the share with confidence under the oos threshold
``oos_rate``                      rise of the share predicted ``oos``
``inputs.text_length``            normalised Wasserstein of the text-length histogram
``inputs.share_with_unk``         rise of the share of texts with an unknown word piece
``embedding.cosine_distance``     cosine distance of the embedding centroids
================================  ==========================================================

Beside them, without a flag, :func:`moved_labels` lists the labels whose share moved most.
Both sides come from ``retrain.drift.sides``; nothing here touches the database.
"""

from __future__ import annotations

import math
from typing import Any, TypedDict

import numpy as np

from retrain.drift import stats as drift
from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES
from retrain.drift.sides import Side

TOP_MOVED = 5
"""How many labels the report lists as moved most, up and down."""


def _label_counts(ref: Side, cur: Side) -> tuple[list[str], np.ndarray, np.ndarray]:
    names = sorted(set(ref.labels) | set(cur.labels))
    return (names, np.array([ref.labels.get(k, 0.0) for k in names]),
            np.array([cur.labels.get(k, 0.0) for k in names]))


def _distance_metric(value: float, threshold: float, noise: float, **extra: Any) -> dict[str, Any]:
    return {"value": round(value, 6), "threshold": threshold, "noise_floor": round(noise, 6),
            "flag": drift.flag(value, threshold, noise), **extra}


def _share_metric(ref_count: float | None, ref_n: int, cur_count: float | None, cur_n: int,
                  **extra: Any) -> dict[str, Any]:
    if ref_count is None or cur_count is None or not ref_n or not cur_n:
        return {"value": None, "threshold": drift.SHARE_DELTA_THRESHOLD, "flag": False, "available": False, **extra}
    ref_share, cur_share = ref_count / ref_n, cur_count / cur_n
    delta, z = drift.share_shift(ref_share, ref_n, cur_share, cur_n)
    up = delta >= drift.SHARE_DELTA_THRESHOLD and z >= drift.SHARE_MIN_Z
    return {"value": round(cur_share, 6), "reference": round(ref_share, 6), "delta": round(delta, 6),
            "z": round(z, 3) if math.isfinite(z) else None, "threshold": drift.SHARE_DELTA_THRESHOLD,
            "min_z": drift.SHARE_MIN_Z, "flag": bool(up), "available": True, **extra}


def compare(ref: Side, cur: Side) -> dict[str, dict[str, Any]]:
    """Return one entry per metric: ``{value, threshold, flag, ...}`` (see the module docstring)."""
    _names, r, c = _label_counts(ref, cur)
    conf_x = drift.bin_centres(CONFIDENCE_EDGES)
    len_x = drift.bin_centres(TEXT_LENGTH_EDGES)

    def conf_w(a: np.ndarray, b: np.ndarray) -> float:
        return drift.wasserstein_norm(a, b, conf_x)

    def len_w(a: np.ndarray, b: np.ndarray) -> float:
        return drift.wasserstein_norm(a, b, len_x)

    out: dict[str, dict[str, Any]] = {
        "labels.psi": _distance_metric(drift.psi(r, c), drift.PSI_THRESHOLD, drift.null_quantile(drift.psi, r, c)),
        "labels.js_distance": _distance_metric(drift.js_distance(r, c), drift.JS_THRESHOLD,
                                               drift.null_quantile(drift.js_distance, r, c)),
    }
    rc, cc = np.array(ref.confidence_counts), np.array(cur.confidence_counts)
    out["confidence.wasserstein_norm"] = _distance_metric(conf_w(rc, cc), drift.WASSERSTEIN_THRESHOLD,
                                                          drift.null_quantile(conf_w, rc, cc))
    out["confidence.share_below_oos"] = _share_metric(ref.below_oos, ref.n, cur.below_oos, cur.n)
    out["oos_rate"] = _share_metric(ref.oos, ref.n, cur.oos, cur.n)
    rl, cl = np.array(ref.length_counts), np.array(cur.length_counts)
    if rl.sum() > 0 and cl.sum() > 0:
        out["inputs.text_length"] = _distance_metric(len_w(rl, cl), drift.WASSERSTEIN_THRESHOLD,
                                                     drift.null_quantile(len_w, rl, cl))
    else:
        out["inputs.text_length"] = {"value": None, "threshold": drift.WASSERSTEIN_THRESHOLD, "flag": False,
                                     "available": False}
    if ref.share_with_unk is not None and cur.share_with_unk is not None and cur.rollup_n:
        out["inputs.share_with_unk"] = _share_metric(
            ref.share_with_unk * ref.rollup_n, ref.rollup_n, cur.share_with_unk * cur.rollup_n, cur.rollup_n,
            unk_rate=round(cur.unk_rate or 0.0, 6), reference_unk_rate=ref.unk_rate)
    else:
        out["inputs.share_with_unk"] = _not_available(drift.SHARE_DELTA_THRESHOLD)
    if ref.centroid is not None and cur.centroid is not None and cur.rollup_n \
            and len(ref.centroid) == len(cur.centroid) and np.any(ref.centroid) and np.any(cur.centroid):
        noise = drift.centroid_noise_floor(ref.centroid, ref.rollup_n, cur.rollup_n)
        out["embedding.cosine_distance"] = _distance_metric(
            drift.cosine_distance(ref.centroid, cur.centroid), drift.COSINE_THRESHOLD, noise,
            rows=cur.rollup_n)
    else:
        out["embedding.cosine_distance"] = _not_available(drift.COSINE_THRESHOLD)
    return out


def _not_available(threshold: float) -> dict[str, Any]:
    return {"value": None, "threshold": threshold, "flag": False, "available": False,
            "note": "not available: no serving rollups for this window (or none in the reference)"}


class LabelMove(TypedDict):
    """How one label's share of the predictions moved, rounded to 6 decimals."""

    label: str
    before: float
    after: float
    delta: float


def moved_labels(ref: Side, cur: Side, top: int = TOP_MOVED) -> dict[str, list[LabelMove]]:
    """Return the ``top`` labels whose share rose most and fell most: ``{up: [...], down: [...]}``."""
    names, r, c = _label_counts(ref, cur)
    before, after = r / r.sum(), c / c.sum()
    delta = after - before
    rows: list[LabelMove] = [
        {"label": k, "before": round(float(b), 6), "after": round(float(a), 6), "delta": round(float(d), 6)}
        for k, b, a, d in zip(names, before, after, delta, strict=True)]
    up = sorted((x for x in rows if x["delta"] > 0), key=lambda x: (-x["delta"], x["label"]))[:top]
    down = sorted((x for x in rows if x["delta"] < 0), key=lambda x: (x["delta"], x["label"]))[:top]
    return {"up": up, "down": down}
