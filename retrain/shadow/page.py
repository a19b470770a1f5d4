"""The shadow report's page: agreement, the confusion table, confidence shift, latency and scores, in one HTML file.

The confidence-shift histogram is drawn with matplotlib on a bare ``Figure`` (no pyplot, no
display) and inlined as a PNG, so the page opens from disk; the confusion table is an HTML
table shaded by count. Every label is HTML-escaped. The figures come from
``retrain.shadow.command.build_report``; nothing here touches a service.
"""

from __future__ import annotations

import itertools
from html import escape
from typing import Any

from retrain.drift.page import _CSS, _PAGE, _figure
from retrain.reports.page import png_img


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _shift_plot(hist: dict[str, Any]) -> str:
    fig = _figure(9.0, 3.0)
    ax = fig.add_subplot()
    edges, counts = hist["edges"], hist["counts"]
    centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    ax.bar(centres, counts, width=0.09, color=["#d9822b" if c >= 0 else "#9bb7d4" for c in centres])
    ax.axvline(0, color="#444", linewidth=0.8)
    ax.set_xlabel("shadow probability − live probability (each head's own label)")
    ax.set_ylabel("phrases")
    ax.set_title("confidence shift")
    return png_img(fig, "confidence shift")


def _confusion_table(conf: dict[str, Any]) -> str:
    peak = max((max(row) for row in conf["cells"] if row), default=0) or 1
    head = "".join(f"<th>{escape(c)}</th>" for c in conf["columns"])
    body = []
    for name, row in zip(conf["rows"], conf["cells"], strict=True):
        cells = []
        for col, n in zip(conf["columns"], row, strict=True):
            alpha = 0.08 + 0.6 * n / peak if n else 0
            colour = "46,125,50" if col == name else "217,130,43"
            cells.append(f'<td class="n" style="background:rgba({colour},{alpha:.2f})">{n}</td>')
        body.append(f"<tr><th>{escape(name)}</th>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>live ↓ / shadow →</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p>Green: both heads gave the same label; orange: they differ. Labels past the most frequent are folded "
            "into <code>(other)</code>.</p>")


def _scores_rows(lab: dict[str, Any]) -> str:
    names = {"all": "every labelled phrase", "random_slice": "random slice (weighted: unbiased live estimate)",
             "doubtful": "doubtful review answers (biased by design)", "outside_review": "labelled outside the review"}
    out = []
    for key, title in names.items():
        part = lab[key]
        live, shadow = part["live"], part["shadow"]
        ci = ""
        if live.get("accuracy_ci95"):
            ci = (f"live {_pct(live['accuracy_ci95'][0])}–{_pct(live['accuracy_ci95'][1])}, shadow "
                  f"{_pct(shadow['accuracy_ci95'][0])}–{_pct(shadow['accuracy_ci95'][1])} "
                  f"(effective n {_num(part.get('effective_n'), 1)})")
        out.append(f"<tr><td>{escape(title)}</td><td class='n'>{part['n']}</td><td class='n'>{_pct(live['accuracy'])}</td>"
                   f"<td class='n'>{_pct(shadow['accuracy'])}</td><td class='n'>{_num(live['weighted_f1'])}</td>"
                   f"<td class='n'>{_num(shadow['weighted_f1'])}</td><td>{escape(ci)}</td></tr>")
    return "".join(out)


def render_html(summary: dict[str, Any]) -> str:
    """Return the report page of a shadow-report summary."""
    s = summary
    title = f"Shadow report {s['region']}/{s['model']}: {s['shadow_version']}"
    ag, cs, ms, lab = s["agreement"], s["confidence_shift"], s["head_ms"], s["labelled"]
    quantiles = "".join(f"<tr><td>{escape(q)}</td><td class='n'>{_num(v)}</td></tr>" for q, v in cs["quantiles"].items())
    disagreements = "".join(f"<tr><td>{escape(d['live'])}</td><td>{escape(d['shadow'])}</td><td class='n'>{d['n']}</td></tr>"
                            for d in s["confusion"]["disagreements"])
    others = ", ".join(f"{escape(v['version'])} ({v['rows']} rows)" for v in s["shadow_versions_seen"][1:])
    warnings = "".join(f"<p class='verdict drift'>{escape(w)}</p>" for w in s["warnings"])
    body = f"""
{warnings}
<table class="summary">
<tr><th>window</th><td>{escape(s['window']['start'])} .. {escape(s['window']['end'])}</td></tr>
<tr><th>shadow version</th><td>{escape(s['shadow_version'])}{' (also seen: ' + others + ')' if others else ''}</td></tr>
<tr><th>live version(s)</th><td>{escape(', '.join(s['live_versions']))}</td></tr>
<tr><th>rows</th><td>{s['rows']['live']} live, {s['rows']['shadow']} shadow, {s['rows']['paired']} paired</td></tr>
<tr><th>agreement</th><td><strong>{_pct(ag['rate'])}</strong> ({ag['agreeing']} of {ag['paired']} pairs)</td></tr>
</table>
<h2>Live against shadow</h2>
{_confusion_table(s['confusion'])}
<h3>Largest disagreements</h3>
<table><thead><tr><th>live</th><th>shadow</th><th>phrases</th></tr></thead><tbody>{disagreements or
    '<tr><td colspan=3>none: the heads agree on every phrase</td></tr>'}</tbody></table>
<h2>Confidence shift</h2>
<p>Mean shift {_num(cs['mean'])} (live mean probability {_num(cs['live_mean'])}, shadow {_num(cs['shadow_mean'])}).</p>
{_shift_plot(cs['histogram'])}
<table><thead><tr><th>quantile</th><th>shift</th></tr></thead><tbody>{quantiles}</tbody></table>
<h2>Latency cost: each head's time per phrase</h2>
<table><thead><tr><th>head</th><th>phrases</th><th>mean ms</th><th>p50 ms</th><th>p99 ms</th></tr></thead><tbody>
<tr><td>shadow</td><td class="n">{ms['shadow']['n']}</td><td class="n">{_num(ms['shadow']['mean'])}</td>
<td class="n">{_num(ms['shadow']['p50'])}</td><td class="n">{_num(ms['shadow']['p99'])}</td></tr>
<tr><td>live</td><td class="n">{ms['live']['n']}</td><td class="n">{_num(ms['live']['mean'])}</td>
<td class="n">{_num(ms['live']['p50'])}</td><td class="n">{_num(ms['live']['p99'])}</td></tr></tbody></table>
<p>The embedding is shared: the shadow's cost is its head's time.</p>
<h2>On labelled phrases</h2>
<p>{lab['examples_in_window']} phrases labelled since the window start ({escape(s['window']['start'])}); both heads
answered {lab['matched']} of them. The random slice is weighted by its sampling weight (1 / rate) with a 95% Wilson
interval; the doubtful answers were chosen because a head was unsure, so their accuracy is low by design.</p>
<table><thead><tr><th>slice</th><th>n</th><th>accuracy live</th><th>accuracy shadow</th><th>weighted F1 live</th>
<th>weighted F1 shadow</th><th>95% interval (random slice)</th></tr></thead><tbody>{_scores_rows(lab)}</tbody></table>
"""
    return _PAGE.format(title=escape(title), css=_CSS, body=body)
