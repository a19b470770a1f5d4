"""Error analysis of one head as a single HTML page for domain experts.

:func:`write_report` turns the evaluation predictions stored with a head (:class:`EvalRows`)
into ``<out_dir>/index.html``: a summary, per-class precision/recall/F1 (a table sortable by
any column, worst F1 first), the most confused label pairs with example phrases, a confidence
histogram of correct vs wrong predictions and, for heads with an out-of-scope class, the
precision and recall of out-of-scope detection over a range of thresholds.

The page is self-contained (inline CSS and JS, plots as inline PNGs), so it opens from disk
or as a CI artifact with no server and no network. The rows and the out-of-scope figures are
``retrain.reports.rows``; the sections and the page, ``retrain.reports.page``.

Example::

    rows = EvalRows(texts=["hi", "bye"], y_true=["greet", "bye"], y_pred=["greet", "greet"],
                    confidence=np.array([0.9, 0.55]))
    write_report("/tmp/report", title="global/intent 20240101", classes=["greet", "bye"], rows=rows)
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retrain.reports.page import (
    confidence_section,
    confused_section,
    oos_section,
    per_class_section,
    render_page,
    summary_section,
)
from retrain.reports.rows import OOS_THRESHOLDS, EvalRows, OosPoint, oos_detection

__all__ = ["OOS_THRESHOLDS", "EvalRows", "OosPoint", "oos_detection", "write_report"]


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    classes: Sequence[str],
    rows: EvalRows,
    oos_label: str | None = None,
    oos_threshold: float | None = None,
    oos_scores: np.ndarray | None = None,
    summary: dict | None = None,
) -> Path:
    """Write ``out_dir/index.html`` (creating ``out_dir``) and return its path.

    ``classes`` fixes the class list and order; a label in ``rows`` outside it is an error.
    ``summary`` (accuracy, weighted F1, version, created_at, ...) is shown as given, floats to
    4 decimals. The out-of-scope section appears only when ``oos_label`` is in ``classes``:
    with ``oos_scores`` (max in-scope probability per row, see :func:`oos_detection`) it shows
    precision/recall at ``oos_threshold`` and over :data:`OOS_THRESHOLDS`; without scores it shows
    the precision/recall of the predicted ``oos_label`` only. The file is written under a
    temporary name and renamed into place.
    """
    classes = list(classes)
    if not rows.texts:
        raise ValueError("the report needs at least one evaluation row")
    if len(set(classes)) != len(classes):
        raise ValueError("classes has duplicates")
    unknown = sorted((set(rows.y_true) | set(rows.y_pred)) - set(classes))
    if unknown:
        msg = f"labels in the rows but not in classes: {unknown[:5]}; pass every label in classes"
        raise ValueError(msg)
    if oos_scores is not None and len(oos_scores) != len(rows.texts):
        msg = f"oos_scores needs one score per row ({len(rows.texts)}), got {len(oos_scores)}"
        raise ValueError(msg)

    index = {c: i for i, c in enumerate(classes)}
    t = np.array([index[y] for y in rows.y_true], dtype=np.int64)
    p = np.array([index[y] for y in rows.y_pred], dtype=np.int64)
    k = len(classes)
    cm = np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    sections = [
        summary_section(summary or {}, n=len(t), accuracy=float((t == p).mean())),
        per_class_section(rows, classes, cm),
        confused_section(rows, classes, t, p, cm),
        confidence_section(rows.confidence, t == p),
    ]
    links = [("per-class", "per class"), ("confused", "confused pairs"), ("confidence", "confidence")]
    if oos_label is not None and oos_label in index:
        sections.append(oos_section(rows, oos_label, oos_threshold, oos_scores))
        links.append(("oos", "out-of-scope"))

    html = render_page(title, links, sections)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    tmp = out / f".index.html.{secrets.token_hex(4)}.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
