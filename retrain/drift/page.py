"""The drift report's page: the flags, the moved labels and the plots, as one self-contained HTML file.

Plots are drawn with matplotlib's Agg canvas on a bare ``Figure`` (pyplot is never imported, so
no display is needed and the caller's backend is left alone) and inlined as base64 PNGs, so
the page opens from disk with no server. Every label is HTML-escaped. The figures come from
``retrain.drift.report``; nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from retrain.drift import stats as drift
from retrain.drift.reference import CONFIDENCE_EDGES, TEXT_LENGTH_EDGES
from retrain.reports.page import png_img

if TYPE_CHECKING:
    from retrain.drift.sides import Side


def _figure(width: float = 9.0, height: float = 3.2) -> Any:
    from matplotlib.figure import Figure  # a bare Figure on the Agg canvas: no pyplot, no display

    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def _hist_plot(ref: Sequence[float], cur: Sequence[float], edges: Sequence[float], title: str, xlabel: str,
               labels: Sequence[str] | None = None) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    r, c = drift.shares(ref) if sum(ref) else np.zeros(len(ref)), drift.shares(cur) if sum(cur) else np.zeros(len(cur))
    x = np.arange(len(r))
    ax.bar(x - 0.2, r, width=0.4, label="reference", color="#9bb7d4")
    ax.bar(x + 0.2, c, width=0.4, label="current", color="#d9822b")
    names = labels or [f"{e:g}" for e in edges[:-1]]
    ax.set_xticks(x, names, rotation=60 if len(names) > 12 else 0, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share")
    ax.legend()
    return png_img(fig, title)


def _moved_plot(moved: dict[str, list[dict[str, Any]]]) -> str:
    rows = moved["up"] + moved["down"]
    fig = _figure(9.0, 0.3 * max(len(rows), 4) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [x["before"] for x in rows], height=0.4, label="reference", color="#9bb7d4")
    ax.barh(y + 0.2, [x["after"] for x in rows], height=0.4, label="current", color="#d9822b")
    ax.set_yticks(y, [x["label"] for x in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of predictions")
    ax.set_title("labels that moved most (up, then down)")
    ax.legend()
    return png_img(fig, "labels that moved most")


def _hourly_plots(summary: dict[str, Any], cur: Side, ref: Side) -> str:
    hours = cur.hours
    t = [h["hour"] for h in hours]
    out = []
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(t, [h["oos_rate"] for h in hours], marker=".", color="#d9822b", label="current, per hour")
    if ref.oos is not None and ref.n:
        ax.axhline(ref.oos / ref.n, color="#4a78a8", linestyle="--", label="reference")
    ax.set_title("out-of-scope rate per hour")
    ax.set_ylabel("share predicted oos")
    ax.legend()
    out.append(png_img(fig, "out-of-scope rate per hour"))

    fig = _figure(9.0, 6.0)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    ax1.bar(t, [h["n"] for h in hours], width=1 / 24, align="edge", color="#9bb7d4")
    ax1.set_ylabel("predictions")
    ax1.set_title("volume, cache-hit rate and latency per hour")
    ax2.plot(t, [h["cache_hit_rate"] for h in hours], marker=".", color="#4a78a8")
    ax2.set_ylabel("cache-hit rate")
    ax3.plot(t, [h["p50_ms"] for h in hours], marker=".", label="p50")
    ax3.plot(t, [h["p99_ms"] for h in hours], marker=".", label="p99")
    ax3.set_ylabel("latency, ms")
    ax3.legend()
    out.append(png_img(fig, "volume, cache-hit rate and latency per hour"))

    versions = sorted(cur.versions)
    if versions:
        fig = _figure()
        ax = fig.add_subplot()
        per_hour = {h["hour"]: h["n"] for h in hours}
        for v in versions:
            share = {hr: n / per_hour[hr] for hr, ver, n in cur.version_hours if ver == v}
            ax.plot(t, [share.get(hr, 0.0) for hr in t], marker=".", label=v)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("share of predictions per model version, per hour")
        ax.legend(fontsize=8)
        out.append(png_img(fig, "share of predictions per model version"))
    return "\n".join(out)


def render_html(summary: dict[str, Any], ref: Side, cur: Side) -> str:
    """Return the report page: the flags, the plots (inline PNGs) and the moved labels."""
    title = f"Drift report {summary['region']}/{summary['model']}"
    rows = []
    for name, m in summary["metrics"].items():
        value = "not available" if m["value"] is None else f"{m['value']:.4f}"
        extra = ""
        if "delta" in m:
            extra = f"reference {m['reference']:.4f}, change {m['delta']:+.4f}, z {m['z']}"
        elif "noise_floor" in m:
            extra = f"sampling noise up to {m['noise_floor']:.4f}"
        state = "DRIFT" if m["flag"] else ("n/a" if m.get("available") is False else "ok")
        rows.append(f'<tr class="{"drift" if m["flag"] else ""}"><td>{escape(name)}</td><td class="n">{value}</td>'
                    f'<td class="n">{m["threshold"]}</td><td>{state}</td><td>{escape(extra)}</td></tr>')
    ref_info = summary["reference"]
    ref_text = (f"training reference of version {escape(str(ref_info.get('version')))}"
                if ref_info["kind"] == "training" else f"window {ref_info['start']} .. {ref_info['end']}")
    moved_rows = "".join(
        f"<tr><td>{escape(x['label'])}</td><td class='n'>{x['before']:.4f}</td><td class='n'>{x['after']:.4f}</td>"
        f"<td class='n'>{x['delta']:+.4f}</td></tr>"
        for x in summary["labels_moved"]["up"] + summary["labels_moved"]["down"])
    lower_len = [e for e in TEXT_LENGTH_EDGES[:-1]]
    body = f"""
<p class="verdict {'drift' if summary['drift'] else 'ok'}">{'DRIFT: ' + escape(', '.join(summary['flags']))
    if summary['drift'] else 'No drift flag is up.'}</p>
<table class="summary">
<tr><th>current window</th><td>{summary['window']['start']} .. {summary['window']['end']}
  ({summary['rows']['current']} predictions)</td></tr>
<tr><th>reference</th><td>{ref_text} ({summary['rows']['reference']} rows)</td></tr>
<tr><th>oos threshold</th><td>{summary['oos_threshold']}</td></tr></table>
<h2>Metrics</h2>
<p>A flag needs the value at or above its threshold <em>and</em> above the sampling noise at these row counts
(see <code>retrain/drift/stats.py</code>). Share metrics flag a rise of at least the threshold (in share points) that
is also at least {drift.SHARE_MIN_Z:g} standard errors.</p>
<table><thead><tr><th>metric</th><th>value</th><th>threshold</th><th>flag</th><th></th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>Predicted labels</h2>
{_moved_plot(summary['labels_moved']) if moved_rows else '<p>No label moved.</p>'}
<table><thead><tr><th>label</th><th>before</th><th>after</th><th>change</th></tr></thead><tbody>{moved_rows}</tbody></table>
<h2>Confidence</h2>
{_hist_plot(ref.confidence_counts, cur.confidence_counts, CONFIDENCE_EDGES, 'confidence of the predicted label',
            'confidence (bin lower edge)')}
<h2>Inputs: text length</h2>
{_hist_plot(ref.length_counts, cur.length_counts, TEXT_LENGTH_EDGES, 'text length', 'characters (bin lower edge)',
            labels=[f'{e:g}' for e in lower_len]) if sum(ref.length_counts) and sum(cur.length_counts)
 else '<p>No text lengths.</p>'}
<h2>Out-of-scope rate and operations</h2>
{_hourly_plots(summary, cur, ref)}
"""
    return _PAGE.format(title=escape(title), css=_CSS, body=body)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style></head>
<body><header><h1>{title}</h1></header>
<main>
{body}
</main>
</body></html>
"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;margin:0;background:#fafafa}
header{background:#fff;border-bottom:1px solid #ddd;padding:12px 24px}
h1{font-size:20px;margin:0}h2{font-size:17px;margin:28px 0 6px}
main{padding:4px 24px 40px;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:6px 0}
th,td{border-bottom:1px solid #e6e6e6;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.drift td{background:#fde2df;font-weight:600}
.verdict{font-size:16px;font-weight:700;padding:8px 12px;border-radius:4px}
.verdict.drift{background:#fde2df}.verdict.ok{background:#e3f4e1}
img{max-width:100%;background:#fff;border:1px solid #eee;display:block;margin:6px 0}
code{background:#eee;padding:0 3px;border-radius:3px}
"""
