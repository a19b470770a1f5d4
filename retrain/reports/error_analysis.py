"""Error analysis of one head as a single HTML page for domain experts.

:func:`write_report` turns the evaluation predictions stored with a head (:class:`EvalRows`)
into ``<out_dir>/index.html``: a summary, per-class precision/recall/F1 (a table sortable by
any column, worst F1 first), the most confused label pairs with example phrases, a confidence
histogram of correct vs wrong predictions and, for heads with an out-of-scope class, the
precision and recall of out-of-scope detection over a range of thresholds.

The page is self-contained (inline CSS and JS, plots as inline PNGs), so it opens from disk
or as a CI artifact with no server and no network. Plots are drawn with matplotlib's Agg
canvas on a bare ``Figure`` (pyplot is never imported, so no display is needed and the
caller's matplotlib backend is left alone). Every label and text is HTML-escaped.

Example::

    rows = EvalRows(texts=["hi", "bye"], y_true=["greet", "bye"], y_pred=["greet", "greet"],
                    confidence=np.array([0.9, 0.55]))
    write_report("/tmp/report", title="global/intent 20240101", classes=["greet", "bye"], rows=rows)
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_fscore_support

from retrain.drift.reference import CONFIDENCE_EDGES

TOP_PAIRS = 25
"""How many confused (true -> predicted) pairs the report lists."""

EXAMPLES_PER_PAIR = 3
OOS_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Thresholds of the out-of-scope precision/recall table (0.05 ... 0.95); the chosen one is added."""


@dataclass
class EvalRows:
    """The evaluation predictions of one head, as stored with the head at training time.

    One entry per row in every field; ``confidence`` is the probability of the predicted
    label, ``top_k`` (optional) the k most probable ``(label, probability)`` pairs per row,
    shown beside the example phrases.
    """

    texts: list[str]
    y_true: list[str]
    y_pred: list[str]
    confidence: np.ndarray
    top_k: list[list[tuple[str, float]]] | None = None

    def __post_init__(self) -> None:
        self.confidence = np.asarray(self.confidence, dtype=np.float64).ravel()
        n = len(self.texts)
        lengths = {"y_true": len(self.y_true), "y_pred": len(self.y_pred), "confidence": len(self.confidence)}
        if self.top_k is not None:
            lengths["top_k"] = len(self.top_k)
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
        _summary_section(summary or {}, n=len(t), accuracy=float((t == p).mean())),
        _per_class_section(rows, classes, cm),
        _confused_section(rows, classes, t, p, cm),
        _confidence_section(rows.confidence, t == p),
    ]
    links = [("per-class", "per class"), ("confused", "confused pairs"), ("confidence", "confidence")]
    if oos_label is not None and oos_label in index:
        sections.append(_oos_section(rows, oos_label, oos_threshold, oos_scores))
        links.append(("oos", "out-of-scope"))

    nav = " &middot; ".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in links)
    html = _PAGE.format(title=escape(title), nav=nav, css=_CSS, js=_JS, body="\n".join(sections))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    tmp = out / f".index.html.{secrets.token_hex(4)}.tmp"
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- sections


def _summary_section(summary: dict, *, n: int, accuracy: float) -> str:
    items = dict(summary) if summary else {"n_eval": n, "accuracy": accuracy}
    cells = "".join(f"<tr><th>{escape(str(key))}</th><td>{_value(v)}</td></tr>" for key, v in items.items())
    return f'<section id="summary"><table class="summary">{cells}</table></section>'


def _per_class_section(rows: EvalRows, classes: list[str], cm: np.ndarray) -> str:
    precision, recall, f1, support = precision_recall_fscore_support(
        rows.y_true, rows.y_pred, labels=classes, zero_division=0
    )
    predicted = cm.sum(axis=0)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = sorted(range(len(classes)), key=lambda i: (f1[i], classes[i]))
    body = []
    for i in order:
        j = int(off[i].argmax())
        confused = f"{escape(classes[j])} ({off[i, j]})" if off[i, j] else ""
        body.append(
            f'<tr><td data-v="{escape(classes[i])}">{escape(classes[i])}</td>'
            f"{_num(precision[i])}{_num(recall[i])}{_f1_cell(f1[i])}"
            f'<td data-v="{int(support[i])}">{int(support[i])}</td>'
            f'<td data-v="{int(predicted[i])}">{int(predicted[i])}</td>'
            f'<td data-v="{escape(classes[j]) if off[i, j] else ""}">{confused}</td></tr>'
        )
    header = (
        '<tr><th data-type="text">class</th><th data-type="num">precision</th><th data-type="num">recall</th>'
        '<th data-type="num" class="sorted-asc">F1</th><th data-type="num">support</th>'
        '<th data-type="num">predicted</th><th data-type="text">most often predicted instead</th></tr>'
    )
    return (
        '<section id="per-class"><h2>Per class</h2>'
        f"<p>{len(classes)} classes; worst F1 first. Click a column header to sort by it (again to reverse). "
        "<em>predicted</em> counts the rows predicted as the class; the last column is the wrong label "
        "its rows most often receive.</p>"
        '<input id="class-filter" type="search" placeholder="filter classes" aria-label="filter classes">'
        f'<table id="per-class-table" class="sortable"><thead>{header}</thead><tbody>{"".join(body)}</tbody></table>'
        "</section>"
    )


def _confused_section(rows: EvalRows, classes: list[str], t: np.ndarray, p: np.ndarray, cm: np.ndarray) -> str:
    k = len(classes)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    nonzero = np.flatnonzero(flat)
    top = sorted(nonzero, key=lambda c: (-flat[c], classes[c // k], classes[c % k]))[:TOP_PAIRS]
    pairs = [(int(c // k), int(c % k)) for c in top]
    if not pairs:
        return '<section id="confused"><h2>Most confused pairs</h2><p>No wrong predictions.</p></section>'
    examples: dict[tuple[int, int], list[int]] = {pair: [] for pair in pairs}
    for row in np.flatnonzero(t != p):
        ex = examples.get((int(t[row]), int(p[row])))
        if ex is not None and len(ex) < EXAMPLES_PER_PAIR:
            ex.append(int(row))
    n_wrong = int(flat.sum())
    body = []
    for a, b in pairs:
        items = "".join(f"<li>{_example(rows, r)}</li>" for r in examples[(a, b)])
        body.append(
            f'<tr><td>{escape(classes[a])}</td><td class="arrow">&rarr;</td><td>{escape(classes[b])}</td>'
            f'<td class="n">{off[a, b]}</td><td class="n">{off[a, b] / cm[a].sum():.1%}</td>'
            f'<td><ul class="examples">{items}</ul></td></tr>'
        )
    return (
        '<section id="confused"><h2>Most confused pairs</h2>'
        f"<p>The {len(pairs)} most frequent (true &rarr; predicted) mistakes out of {n_wrong} wrong predictions, "
        f"with up to {EXAMPLES_PER_PAIR} example phrases each (the predicted label's probability in brackets).</p>"
        '<table class="pairs"><thead><tr><th>true</th><th></th><th>predicted</th><th>count</th>'
        "<th>of true</th><th>examples</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></section>"
    )


def _example(rows: EvalRows, r: int) -> str:
    text = f'{escape(rows.texts[r])} <span class="conf">({rows.confidence[r]:.2f})</span>'
    if rows.top_k is not None and rows.top_k[r]:
        alts = ", ".join(f"{escape(label)} {prob:.2f}" for label, prob in rows.top_k[r])
        text += f'<div class="topk">top: {alts}</div>'
    return text


def _confidence_section(confidence: np.ndarray, correct: np.ndarray) -> str:
    conf = np.clip(confidence, 0.0, 1.0)
    fig = Figure(figsize=(7.5, 3.2), dpi=110)
    ax = fig.add_subplot()
    for group, color, name in ((correct, "#2a7ab0", "correct"), (~correct, "#d0453a", "wrong")):
        values = conf[group]
        if values.size:
            weights = np.full(values.size, 1.0 / values.size)
            ax.hist(values, bins=CONFIDENCE_EDGES, weights=weights, alpha=0.6, color=color,
                    label=f"{name} ({values.size})")
    ax.set_xlabel("confidence (probability of the predicted label)")
    ax.set_ylabel("share of the group")
    ax.set_xlim(0, 1)
    ax.legend(loc="best", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    wrong = conf[~correct]
    note = (
        f"Median confidence: correct {np.median(conf[correct]):.2f}, wrong {np.median(wrong):.2f}."
        if correct.any() and wrong.size
        else ""
    )
    return (
        '<section id="confidence"><h2>Confidence</h2>'
        "<p>How sure the head was on correct and on wrong predictions: 20 bins, overlaid, each group scaled "
        f"to its own total so that both shapes show. {note}</p>"
        f"{png_img(fig, 'confidence histogram of correct and wrong predictions')}</section>"
    )


def _oos_section(rows: EvalRows, oos_label: str, threshold: float | None, scores: np.ndarray | None) -> str:
    label = escape(oos_label)
    head = f'<section id="oos"><h2>Out-of-scope detection (<code>{label}</code>)</h2>'
    n_true = sum(y == oos_label for y in rows.y_true)
    if scores is None:
        tp = sum(a == b == oos_label for a, b in zip(rows.y_true, rows.y_pred))
        n_pred = sum(y == oos_label for y in rows.y_pred)
        return (
            f"{head}<p>No out-of-scope scores were given: these are the figures of the predicted label "
            f"<code>{label}</code> alone.</p>"
            f'<table class="summary"><tr><th>precision</th><td>{_ratio(tp, n_pred)}</td></tr>'
            f"<tr><th>recall</th><td>{_ratio(tp, n_true)}</td></tr>"
            f"<tr><th>true {label} rows</th><td>{n_true}</td></tr></table></section>"
        )
    thresholds = sorted(set(OOS_THRESHOLDS) | ({float(threshold)} if threshold is not None else set()))
    points = [oos_detection(rows.y_true, scores, oos_label=oos_label, threshold=th) for th in thresholds]
    chosen = next((pt for pt in points if threshold is not None and pt.threshold == float(threshold)), None)

    fig = Figure(figsize=(7.5, 3.2), dpi=110)
    ax = fig.add_subplot()
    ax.plot(thresholds, [pt.precision for pt in points], marker=".", color="#2a7ab0", label="precision")
    ax.plot(thresholds, [pt.recall for pt in points], marker=".", color="#d0453a", label="recall")
    if chosen is not None:
        ax.axvline(chosen.threshold, color="#444", linestyle="--", linewidth=1, label=f"chosen {chosen.threshold:g}")
    ax.set_xlabel("threshold on the max in-scope probability")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.legend(loc="lower left", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()

    table = "".join(
        f'<tr class="{"chosen" if pt is chosen else ""}"><td class="n">{pt.threshold:g}</td>'
        f'<td class="n">{pt.flagged}</td><td class="n">{pt.true_positives}</td>'
        f'<td class="n">{pt.precision:.3f}</td><td class="n">{pt.recall:.3f}</td></tr>'
        for pt in points
    )
    if chosen is not None:
        at = (
            f'<table class="summary"><tr><th>threshold</th><td>{chosen.threshold:g}</td></tr>'
            f'<tr><th>precision</th><td id="oos-precision">{chosen.precision:.4f}</td></tr>'
            f'<tr><th>recall</th><td id="oos-recall">{chosen.recall:.4f}</td></tr>'
            f"<tr><th>flagged / true {label}</th><td>{chosen.flagged} / {n_true}</td></tr></table>"
        )
    else:
        at = "<p>No threshold was chosen.</p>"
    return (
        f"{head}<p>A phrase is flagged out-of-scope when its <em>max in-scope probability</em> (the highest "
        f"probability over the classes other than <code>{label}</code>) is below the threshold. "
        f"Precision: share of flagged phrases that are truly <code>{label}</code>; recall: share of true "
        f"<code>{label}</code> phrases ({n_true}) that are flagged.</p>{at}"
        f"{png_img(fig, 'out-of-scope precision and recall by threshold')}"
        '<details><summary>By threshold</summary><table class="oos-curve"><thead><tr><th>threshold</th>'
        "<th>flagged</th><th>true positives</th><th>precision</th><th>recall</th></tr></thead>"
        f"<tbody>{table}</tbody></table></details></section>"
    )


# ----------------------------------------------------------------------------- helpers


def png_img(fig: Figure, alt: str) -> str:
    """Return ``fig`` as an ``<img>`` with the PNG inline, so a page opens without a server."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _num(x: float) -> str:
    return f'<td class="n" data-v="{float(x):.6f}">{float(x):.3f}</td>'


def _f1_cell(x: float) -> str:
    pct = max(0.0, min(1.0, float(x))) * 100
    return (
        f'<td class="n f1" data-v="{float(x):.6f}" style="background:linear-gradient(90deg,#f4c7c3 {pct:.0f}%,'
        f'transparent {pct:.0f}%)">{float(x):.3f}</td>'
    )


def _ratio(num: int, den: int) -> str:
    return f"{num / den:.4f} ({num}/{den})" if den else f"0.0000 (0/{den})"


def _value(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return escape(str(v))
    if isinstance(v, float | np.floating):
        return f"{float(v):.4f}"
    if isinstance(v, dict | list | tuple):
        return escape(json.dumps(v, default=str, ensure_ascii=False))
    return escape(str(v))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style></head>
<body><header><h1>{title}</h1>
<nav>{nav}</nav></header>
<main>
{body}
</main>
<script>{js}</script>
</body></html>
"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0;background:#fafafa}
header{background:#fff;border-bottom:1px solid #ddd;padding:12px 24px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}
nav a{color:#2a7ab0;text-decoration:none}
main{padding:4px 24px 40px;max-width:1200px}
table{border-collapse:collapse;background:#fff}
th,td{border-bottom:1px solid #e6e6e6;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f0f0;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.summary th{position:static;font-weight:600}
table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable th.sorted-asc::after{content:" \\25B2"}table.sortable th.sorted-desc::after{content:" \\25BC"}
ul.examples{margin:0;padding-left:18px}ul.examples li{margin:2px 0}
.conf,.topk{color:#777;font-size:12px}.arrow{color:#999}
tr.chosen td{font-weight:700;background:#fff6d5}
#class-filter{margin:4px 0 8px;padding:4px 8px;width:240px}
img{max-width:100%;background:#fff;border:1px solid #eee}
code{background:#eee;padding:0 3px;border-radius:3px}
"""

_JS = """
(function(){
  var table=document.getElementById('per-class-table');
  if(!table)return;
  var heads=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads,function(th,col){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('sorted-asc');
      Array.prototype.forEach.call(heads,function(h){h.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc?'sorted-asc':'sorted-desc');
      var num=th.getAttribute('data-type')==='num';
      var body=table.tBodies[0];
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[col].getAttribute('data-v'),y=b.cells[col].getAttribute('data-v');
        var c=num?(parseFloat(x)-parseFloat(y)):x.localeCompare(y);
        return asc?c:-c;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  var filter=document.getElementById('class-filter');
  filter.addEventListener('input',function(){
    var q=filter.value.toLowerCase();
    Array.prototype.forEach.call(table.tBodies[0].rows,function(r){
      r.style.display=r.cells[0].textContent.toLowerCase().indexOf(q)<0?'none':'';
    });
  });
})();
"""
