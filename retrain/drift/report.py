"""The drift report of one (region, model): a current window of stored inferences against a reference.

:func:`build_report` computes every figure **in PostgreSQL** with SQL aggregates over
``<schema>.inferences`` (two queries, each one scan of the window's rows through the index on
``(region, model, predicted_at)``) and ``<schema>.serving_rollups`` (the worker's per-hour sums
of embeddings and unknown-word-piece rates), so no row ever comes into Python. It compares
them with a reference and writes ``report.html`` (self-contained: plots as inline PNGs, drawn by
``retrain.drift.page``) and ``summary.json`` into the output folder.

The reference is either the live head's ``reference.json`` (``reference="training"``: what the
head saw on its evaluation data, ``retrain.drift.reference``) or the same aggregates over a window of
the given length just before the current one (``reference="30d"``).

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

Beside them, without flags: volume, cache-hit rate, latency p50/p99 and out-of-scope rate per
hour, the share of each model version (a promotion shows as a step), and the labels whose
share moved most. The histograms use ``retrain.drift.reference``'s edges, binned in SQL with
``width_bucket`` exactly as that module bins in numpy.

Example::

    summary = build_report(Settings(), "global", "intent", timedelta(days=7), "training", Path("out"))
    summary["drift"]  # True when any metric's flag is up
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from retrain.drift import stats as drift
from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES

OOS_LABEL = "oos"
"""The out-of-scope label (``models.heads.OOS``), counted for the out-of-scope rate."""

TOP_MOVED = 5
"""How many labels the report lists as moved most, up and down."""

ROLLUPS_TABLE = "serving_rollups"

WORK_MEM = "64MB"
"""``work_mem`` of the report's transaction: the per-hour latency sort of a week of a million
rows (~13 MB) then stays in memory instead of spilling to temporary files (default 4 MB)."""


class DriftReportError(Exception):
    """A report that cannot be made; the message says why and what to do."""


class EmptyWindow(DriftReportError):
    """The current window (or a window reference) holds no inference rows for the (region, model)."""


class UnknownHead(DriftReportError):
    """The (region, model) has no live head to take the training reference from."""


class ServicesDown(DriftReportError):
    """PostgreSQL or Kafka does not answer."""


# --------------------------------------------------------------------------------------------
# One side of the comparison


@dataclass
class Side:
    """The aggregates of one side (current window, reference window, or the training reference)."""

    n: int
    labels: dict[str, float]
    confidence_counts: list[float]
    below_oos: float | None
    length_counts: list[float]
    oos: float | None
    unk_rate: float | None = None
    share_with_unk: float | None = None
    rollup_n: int = 0
    centroid: list[float] | None = None
    hours: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    version_hours: list[tuple[datetime, str, int]] = field(default_factory=list)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    cache_hit_rate: float | None = None


def side_from_reference(ref: dict[str, Any]) -> Side:
    """Return a head's ``reference.json`` as a :class:`Side` (shares turned back into counts)."""
    n = int(ref["n"])
    conf = ref["confidence_histogram"]
    length = ref["text_length"]
    for name, hist, edges in (("confidence_histogram", conf, CONFIDENCE_EDGES),
                              ("text_length", length, TEXT_LENGTH_EDGES)):
        if len(hist["counts"]) != len(edges) - 1:
            msg = f"reference.json's {name} has {len(hist['counts'])} bins, this code expects {len(edges) - 1}"
            raise DriftReportError(msg)
    below = conf.get("share_below_oos_threshold")
    oos_rate = ref.get("oos_rate")
    unk = ref.get("unk_rate") or {}
    return Side(
        n=n,
        labels={k: float(v) * n for k, v in ref["label_distribution"].items()},
        confidence_counts=[float(c) for c in conf["counts"]],
        below_oos=None if below is None else float(below) * n,
        length_counts=[float(c) for c in length["counts"]],
        oos=None if oos_rate is None else float(oos_rate) * n,
        unk_rate=unk.get("mean"), share_with_unk=unk.get("share_with_unk"), rollup_n=n,
        centroid=ref.get("embedding_centroid"),
    )


# --------------------------------------------------------------------------------------------
# SQL


def _lower_edges(edges: Sequence[float]) -> list[float]:
    """Return the lower edges ``width_bucket`` takes (see ``retrain.drift.reference``'s docstring)."""
    return [float(e) for e in edges[:-1]]


# One scan: the label counts, both histograms, and counts per (hour, version).
# GROUPING(label, cb, lb, hour, model_version) tells the sets apart: bit set = column not grouped.
COUNTS_SQL = """
SELECT GROUPING(label, cb, lb, hour, model_version) AS g, label, cb, lb, hour, model_version,
       count(*) AS n,
       count(*) FILTER (WHERE probability < %(oos_threshold)s) AS below,
       count(*) FILTER (WHERE cache_hit) AS hits,
       count(*) FILTER (WHERE label = %(oos_label)s) AS oos
FROM (
    SELECT label, probability, cache_hit, model_version,
           greatest(width_bucket(probability, %(conf_edges)s::float8[]), 1) AS cb,
           CASE WHEN clean_text IS NOT NULL
                THEN greatest(width_bucket(char_length(clean_text)::float8, %(len_edges)s::float8[]), 1) END AS lb,
           date_trunc('hour', predicted_at) AS hour
    FROM {table}
    WHERE region = %(region)s AND model = %(model)s AND predicted_at >= %(start)s AND predicted_at < %(end)s
) s
GROUP BY GROUPING SETS ((label), (cb), (lb), (hour, model_version))
"""
"""Label counts (g=15), confidence bins (g=23), length bins (g=27), (hour, version) counts (g=28)."""

G_LABEL, G_CONF, G_LEN, G_HOUR_VERSION = 0b01111, 0b10111, 0b11011, 0b11100

LATENCY_SQL = """
SELECT hour, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
FROM (SELECT date_trunc('hour', predicted_at) AS hour, latency_ms
      FROM {table}
      WHERE region = %(region)s AND model = %(model)s AND predicted_at >= %(start)s AND predicted_at < %(end)s) s
GROUP BY ROLLUP (hour)
ORDER BY hour NULLS LAST
"""
"""Latency percentiles (``percentile_cont``, numpy's linear quantile) per hour, then over the window."""

ROLLUP_SQL = """
SELECT sum(n)::bigint, sum(unk_rate_sum), sum(with_unk)::bigint, count(*)
FROM {table}
WHERE region = %(region)s AND model = %(model)s AND hour >= %(start)s AND hour < %(end)s
"""

CENTROID_SQL = """
SELECT u.i, sum(u.v)
FROM {table}, unnest(embedding_sum) WITH ORDINALITY AS u(v, i)
WHERE region = %(region)s AND model = %(model)s AND hour >= %(start)s AND hour < %(end)s
GROUP BY u.i ORDER BY u.i
"""
"""The element-wise sum of the window's embedding sums (a few rows per hour: cheap)."""


def window_side(cur: Any, schema: str, region: str, model: str, start: datetime, end: datetime,
                oos_threshold: float | None) -> Side:
    """Return the aggregates of ``[start, end)`` computed in PostgreSQL (``cur``: a psycopg2 cursor).

    Hours are UTC. A window whose start is not on the hour counts a part hour first: the
    serving rollups are per whole hour, so their window is the hours that start in it.
    """
    from psycopg2 import sql

    cur.execute("SET LOCAL TIME ZONE 'UTC'")
    cur.execute("SET LOCAL work_mem = %s", (WORK_MEM,))
    params = {"region": region, "model": model, "start": start, "end": end, "oos_threshold": oos_threshold,
              "oos_label": OOS_LABEL, "conf_edges": _lower_edges(CONFIDENCE_EDGES),
              "len_edges": _lower_edges(TEXT_LENGTH_EDGES)}
    table = sql.Identifier(schema, "inferences")
    cur.execute(sql.SQL(COUNTS_SQL).format(table=table), params)
    labels: dict[str, float] = {}
    conf = [0.0] * (len(CONFIDENCE_EDGES) - 1)
    length = [0.0] * (len(TEXT_LENGTH_EDGES) - 1)
    below = oos = 0
    hours: dict[datetime, dict[str, Any]] = {}
    version_hours: list[tuple[datetime, str, int]] = []
    versions: dict[str, int] = {}
    hits = 0
    for g, label, cb, lb, hour, version, n, n_below, n_hits, n_oos in cur.fetchall():
        if g == G_LABEL:
            labels[label] = float(n)
            oos += n_oos
            below += n_below
        elif g == G_CONF:
            conf[cb - 1] += n
        elif g == G_LEN and lb is not None:
            length[lb - 1] += n
        elif g == G_HOUR_VERSION:
            h = hours.setdefault(hour, {"hour": hour, "n": 0, "hits": 0, "oos": 0})
            h["n"] += n
            h["hits"] += n_hits
            h["oos"] += n_oos
            hits += n_hits
            versions[version] = versions.get(version, 0) + n
            version_hours.append((hour, version, n))
    total = int(sum(labels.values()))
    side = Side(n=total, labels=labels, confidence_counts=conf, below_oos=float(below) if oos_threshold is not None
                else None, length_counts=length, oos=float(oos), versions=versions,
                version_hours=sorted(version_hours), cache_hit_rate=(hits / total) if total else None)
    if not total:
        return side

    cur.execute(sql.SQL(LATENCY_SQL).format(table=table), params)
    for hour, _n, p50, p99 in cur.fetchall():
        if hour is None:
            side.latency_ms = {"p50": p50, "p99": p99}
        elif hour in hours:
            hours[hour].update(p50_ms=p50, p99_ms=p99)
    side.hours = [{"hour": h["hour"], "n": h["n"], "cache_hit_rate": h["hits"] / h["n"],
                   "oos_rate": h["oos"] / h["n"], "p50_ms": h.get("p50_ms"), "p99_ms": h.get("p99_ms")}
                  for _, h in sorted(hours.items())]
    _add_rollups(cur, schema, side, params)
    return side


def _add_rollups(cur: Any, schema: str, side: Side, params: dict[str, Any]) -> None:
    """Fill the embedding centroid and unknown-word-piece figures from ``serving_rollups``, if it has rows."""
    from psycopg2 import sql

    cur.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, ROLLUPS_TABLE).as_string(cur),))
    if cur.fetchone()[0] is None:  # the table's migration has not run here: nothing to report
        return
    table = sql.Identifier(schema, ROLLUPS_TABLE)
    cur.execute(sql.SQL(ROLLUP_SQL).format(table=table), params)
    n, unk_sum, with_unk, _rows = cur.fetchone()
    if not n:
        return
    side.rollup_n = int(n)
    side.unk_rate = float(unk_sum) / n
    side.share_with_unk = float(with_unk) / n
    cur.execute(sql.SQL(CENTROID_SQL).format(table=table), params)
    sums = [float(v) for _, v in cur.fetchall()]
    side.centroid = [v / n for v in sums] if sums else None


# --------------------------------------------------------------------------------------------
# Comparison


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


# --------------------------------------------------------------------------------------------
# The report


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def live_reference(settings: Any, region: str, model: str) -> tuple[str, dict[str, Any]]:
    """Return (version, reference.json) of the live head of (region, model), fetching its bundle if needed.

    Raise :class:`UnknownHead` when it has no live version or no reference statistics, and
    :class:`ServicesDown` when the registry cannot be read.
    """
    import psycopg2

    from models.heads import REFERENCE_FILE, HeadRef
    from models.registry.bundles import BundleError
    from models.registry.lifecycle import LifecycleError, head_folder, live_pointers

    try:
        pointers = live_pointers(settings)
    except LifecycleError as exc:
        raise ServicesDown(str(exc)) from None
    pointer = pointers.get((region, model))
    if pointer is None:
        known = ", ".join(f"{r}/{m}" for r, m in sorted(pointers)) or "none"
        msg = f"no live head {region}/{model} to take the training reference from; live heads: {known}"
        raise UnknownHead(msg)
    ref = HeadRef(region, model, pointer.version)
    try:
        folder = head_folder(settings, ref, pointer.bundle_sha256)
    except BundleError as exc:
        raise UnknownHead(f"the live head {ref} cannot be read: {exc}") from None
    except psycopg2.Error as exc:
        raise ServicesDown(f"PostgreSQL: {str(exc).strip()} (is it up? `phrasestream up`)") from None
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        msg = (f"the live head {ref} has no {REFERENCE_FILE} (trained before reference statistics were "
               "stored): retrain it, or compare against a window with --reference 30d")
        raise UnknownHead(msg)
    return pointer.version, json.loads(path.read_text(encoding="utf-8"))


def build_report(settings: Any, region: str, model: str, current: timedelta, reference: str = "training",
                 out_dir: Path | str = Path("drift-report"), now: datetime | None = None, *,
                 head_reference: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Compare the window ``[now - current, now)`` of (region, model) with ``reference``; return the summary.

    ``reference`` is ``"training"`` (the live head's ``reference.json``) or a length like
    ``"30d"`` (the window of that length just before the current one; ``retrain.replay.windows``'s
    units h, d, w, y). ``head_reference`` (version, reference dict) stands in for the live
    head's, read from the registry otherwise (with a window reference only its oos threshold
    is used, and a missing live head leaves that threshold out). Writes ``report.html`` and
    ``summary.json`` into ``out_dir``.

    Raise :class:`EmptyWindow` for a window with no rows, :class:`UnknownHead` for a head
    without a training reference, :class:`ServicesDown` when PostgreSQL or Kafka does not
    answer, ``ValueError`` for a bad ``reference``.
    """
    import psycopg2
    from psycopg2 import errors

    from ops.postgres.db import pg_connect
    from retrain.drift.page import render_html
    from retrain.replay.windows import WindowError, parse_duration

    now = (now or datetime.now(UTC)).astimezone(UTC)
    if current <= timedelta(0):
        raise ValueError("the current window must be longer than zero")
    start, end = now - current, now
    kind = "training" if reference.strip().lower() == "training" else "window"
    ref_length: timedelta | None = None
    if kind == "window":
        try:
            ref_length = parse_duration(reference)
        except WindowError as exc:
            raise ValueError(f"--reference: {exc}; or 'training'") from None
        if ref_length is None:
            raise ValueError("--reference all is not a window: give a length like 30d, or 'training'")

    version: str | None = None
    ref_json: dict[str, Any] | None = None
    notes: list[str] = []
    if head_reference is not None:
        version, ref_json = head_reference
    elif kind == "training":
        version, ref_json = live_reference(settings, region, model)
    else:  # a window reference needs the head only for its oos threshold
        try:
            version, ref_json = live_reference(settings, region, model)
        except (UnknownHead, ServicesDown) as exc:
            notes.append(f"no oos threshold, so no share under it: {exc}")
    oos_threshold = (ref_json or {}).get("oos_threshold")

    try:
        conn = pg_connect(settings)
    except psycopg2.Error as exc:
        raise ServicesDown(f"PostgreSQL does not answer: {str(exc).strip()} (start it: `phrasestream up`)") from None
    try:
        with conn, conn.cursor() as cur:
            cur_side = window_side(cur, settings.pg_schema, region, model, start, end, oos_threshold)
            if cur_side.n == 0:
                raise EmptyWindow(f"no inferences of {region}/{model} in the current window "
                                  f"{_iso(start)} .. {_iso(end)} (schema {settings.pg_schema})")
            if kind == "window":
                assert ref_length is not None
                ref_start, ref_end = start - ref_length, start
                ref_side = window_side(cur, settings.pg_schema, region, model, ref_start, ref_end, oos_threshold)
                if ref_side.n == 0:
                    raise EmptyWindow(f"no inferences of {region}/{model} in the reference window "
                                      f"{_iso(ref_start)} .. {_iso(ref_end)}: choose a shorter --reference, or "
                                      "--reference training")
    except errors.UndefinedTable:
        raise ServicesDown(f"schema {settings.pg_schema} has no inferences table: run `phrasestream up` "
                           "(it applies the migrations)") from None
    except psycopg2.OperationalError as exc:
        raise ServicesDown(f"PostgreSQL: {str(exc).strip()}") from None
    finally:
        conn.close()
    if kind == "training":
        assert ref_json is not None
        ref_side = side_from_reference(ref_json)
        ref_info = {"kind": "training", "version": version, "rows": ref_side.n}
    else:
        ref_info = {"kind": "window", "label": reference.strip().lower(), "start": _iso(ref_start),
                    "end": _iso(ref_end), "rows": ref_side.n, "version": version}

    metrics = compare(ref_side, cur_side)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / "report.html"
    summary = {
        "region": region, "model": model, "generated_at": _iso(datetime.now(UTC)),
        "window": {"start": _iso(start), "end": _iso(end), "length": _length(current)},
        "reference": ref_info,
        "rows": {"current": cur_side.n, "reference": ref_side.n},
        "drift": any(m["flag"] for m in metrics.values()),
        "flags": sorted(k for k, m in metrics.items() if m["flag"]),
        "metrics": metrics,
        "labels_moved": moved_labels(ref_side, cur_side),
        "oos_threshold": oos_threshold,
        "operations": {
            "cache_hit_rate": _round(cur_side.cache_hit_rate),
            "latency_ms": {k: _round(v) for k, v in cur_side.latency_ms.items()},
            "versions": {v: {"rows": n, "share": round(n / cur_side.n, 6)} for v, n in sorted(cur_side.versions.items())},
            "hours": [{**h, "hour": _iso(h["hour"]), "cache_hit_rate": _round(h["cache_hit_rate"]),
                       "oos_rate": _round(h["oos_rate"]), "p50_ms": _round(h["p50_ms"]), "p99_ms": _round(h["p99_ms"])}
                      for h in cur_side.hours],
        },
        "report": str(html_path.resolve()),
        "notes": notes,
    }
    html_path.write_text(render_html(summary, ref_side, cur_side), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def _length(d: timedelta) -> str:
    hours = int(d.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 and hours else f"{hours}h"


def format_summary(summary: dict[str, Any]) -> str:
    """Return the summary as readable lines for a terminal."""
    ref = summary["reference"]
    ref_text = (f"training reference of {summary['region']}/{summary['model']} {ref.get('version')}"
                if ref["kind"] == "training" else f"window {ref['start']} .. {ref['end']}")
    lines = [f"drift report {summary['region']}/{summary['model']}: "
             f"{'DRIFT' if summary['drift'] else 'no drift'}",
             f"  current   {summary['window']['start']} .. {summary['window']['end']}  ({summary['rows']['current']} rows)",
             f"  reference {ref_text}  ({summary['rows']['reference']} rows)", ""]
    lines.append(f"  {'metric':<30} {'value (change)':>18} {'threshold':>10}  flag")
    for name, m in summary["metrics"].items():
        value = "n/a" if m["value"] is None else f"{m['value']:.4f}"
        if "delta" in m:
            value = f"{m['value']:.4f} ({m['delta']:+.4f})"
        state = "DRIFT" if m["flag"] else ("n/a" if m.get("available") is False else "ok")
        thr = f"+{m['threshold']}" if "delta" in m or name.startswith(("oos", "inputs.share", "confidence.share")) \
            else f"{m['threshold']}"
        lines.append(f"  {name:<30} {value:>18} {thr:>10}  {state}")
    moved = summary["labels_moved"]
    if moved["up"] or moved["down"]:
        lines.append("")
        lines.append("  labels moved most (share before -> after):")
        for x in moved["up"]:
            lines.append(f"    up   {x['label']:<28} {x['before']:.4f} -> {x['after']:.4f}")
        for x in moved["down"]:
            lines.append(f"    down {x['label']:<28} {x['before']:.4f} -> {x['after']:.4f}")
    ops = summary["operations"]
    lat = ops["latency_ms"]
    lines.append("")
    versions = ", ".join(f"{v} {x['share']:.1%}" for v, x in ops["versions"].items())
    lines.append(f"  cache hits {ops['cache_hit_rate']}, latency p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms; "
                 f"versions {versions}")
    lines.extend(f"  note: {note}" for note in summary.get("notes", []))
    lines.append(f"  report: {summary['report']}")
    return "\n".join(lines)
