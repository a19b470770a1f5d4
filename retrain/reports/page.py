"""The error-analysis page: its sections, the page around them, and plots as inline PNGs.

Each section is a function of the evaluation rows (``retrain.reports.rows``) that returns
HTML: the summary, per-class precision/recall/F1 (a table sortable by any column, worst F1
first), the most confused label pairs with example phrases, a confidence histogram of correct
vs wrong predictions and the out-of-scope precision/recall over thresholds. :func:`render_page`
puts them in one self-contained page (inline CSS and JS). Plots are drawn with matplotlib's Agg
canvas on a bare ``Figure`` (pyplot is never imported, so no display is needed and the
caller's matplotlib backend is left alone); :func:`png_img` inlines one, and the drift report's
page (``retrain.drift.page``) uses it too. Every label and text is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_fscore_support

from retrain.drift.reference import CONFIDENCE_EDGES
from retrain.reports.evidence import evidence_html
from retrain.reports.rows import OOS_THRESHOLDS, EvalRows, oos_detection

TOP_PAIRS = 25
"""How many confused (true -> predicted) pairs the report lists."""

EXAMPLES_PER_PAIR = 3


def render_page(title: str, links: list[tuple[str, str]], sections: list[str]) -> str:
    """Return the whole page: ``title``, a navigation bar of ``(anchor, text)`` links, the sections."""
    nav = " &middot; ".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in links)
    return _PAGE.format(title=escape(title), nav=nav, css=_CSS, js=_JS, body="\n".join(sections))


# ----------------------------------------------------------------------------- sections


def summary_section(summary: dict, *, n: int, accuracy: float) -> str:
    """Return the summary table: ``summary`` as given, else the row count and accuracy."""
    items = dict(summary) if summary else {"n_eval": n, "accuracy": accuracy}
    cells = "".join(f"<tr><th>{escape(str(key))}</th><td>{_value(v)}</td></tr>" for key, v in items.items())
    return f'<section id="summary"><table class="summary">{cells}</table></section>'


def per_class_section(rows: EvalRows, classes: list[str], cm: np.ndarray) -> str:
    """Return the per-class table (precision, recall, F1, support), worst F1 first, sortable and filterable."""
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


def confused_section(rows: EvalRows, classes: list[str], t: np.ndarray, p: np.ndarray, cm: np.ndarray) -> str:
    """Return the :data:`TOP_PAIRS` most frequent (true -> predicted) mistakes with example phrases."""
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
        f"with up to {EXAMPLES_PER_PAIR} example phrases each (the predicted label's probability in brackets). "
        "<em>evidence</em> under a phrase says why: the terms that pushed the wrong label (contributions to "
        "the head's linear logit, beside its bias and the readout's part) and the nearest training examples "
        "of the wrong and of the true label (cosine of sentence embeddings).</p>"
        '<table class="pairs"><thead><tr><th>true</th><th></th><th>predicted</th><th>count</th>'
        "<th>of true</th><th>examples</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></section>"
    )


def _example(rows: EvalRows, r: int) -> str:
    text = f'{escape(rows.texts[r])} <span class="conf">({rows.confidence[r]:.2f})</span>'
    if rows.top_k is not None and rows.top_k[r]:
        alts = ", ".join(f"{escape(label)} {prob:.2f}" for label, prob in rows.top_k[r])
        text += f'<div class="topk">top: {alts}</div>'
    ev = rows.evidence[r] if rows.evidence is not None else None
    if ev:
        text += evidence_html(ev, rows.y_true[r])
    return text


def confidence_section(confidence: np.ndarray, correct: np.ndarray) -> str:
    """Return the confidence histograms of correct and wrong predictions, each scaled to its own total."""
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


def oos_section(rows: EvalRows, oos_label: str, threshold: float | None, scores: np.ndarray | None) -> str:
    """Return out-of-scope precision and recall at ``threshold`` and over :data:`OOS_THRESHOLDS`."""
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
details.evidence{font-size:12px;color:#444}details.evidence summary{cursor:pointer;color:#2a7ab0}
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
