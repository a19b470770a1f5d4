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

What is compared, and how: ``retrain.drift.compare`` (one side: ``retrain.drift.sides``;
statistics and thresholds: ``retrain.drift.stats``). Beside the flagged metrics, without flags:
volume, cache-hit rate, latency p50/p99 and out-of-scope rate per hour, the share of each model
version (a promotion shows as a step), and the labels whose share moved most.

Example::

    summary = build_report(Settings(), "global", "intent", timedelta(days=7), "training", Path("out"))
    summary["drift"]  # True when any metric's flag is up
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from retrain.drift.compare import compare, moved_labels
from retrain.drift.sides import DriftReportError, side_from_reference, window_side


class EmptyWindow(DriftReportError):
    """The current window (or a window reference) holds no inference rows for the (region, model)."""


class UnknownHead(DriftReportError):
    """The (region, model) has no live head to take the training reference from."""


class ServicesDown(DriftReportError):
    """PostgreSQL or Kafka does not answer."""


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
