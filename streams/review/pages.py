"""The review page's HTML: the queue, one item, the progress panel. Plain forms; a little JavaScript.

Every page works without JavaScript (radio buttons, a submit button per outcome, plain links).
The script only adds shortcuts: Enter confirms (the form's first button), digits 1-9 pick the
top labels, ``/`` jumps to the label search box, which hides the labels that do not match.
Every value shown is escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import urlencode

from streams.review.guide import Guide
from streams.review.stats import confidence_words

STYLE = """body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#234;color:#fff;padding:.6em 1em}header a{color:#fff;margin-right:1em}
main{max-width:1100px;margin:1em auto;padding:0 1em}.phrase{font-size:1.5em;margin:.4em 0}
.bar{display:inline-block;width:120px;height:.8em;background:#ddd;vertical-align:middle}
.bar span{display:block;height:100%;background:#3a7}.card{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:.8em 1em;margin:.8em 0}.muted{color:#666}.labels{max-height:18em;overflow:auto;
columns:2}.labels label{display:block}.kbd{border:1px solid #aaa;border-radius:3px;padding:0 .3em;
font-size:.8em}table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #eee;
text-align:left}button{margin:.3em .3em 0 0;padding:.4em .9em}.confirm{background:#3a7;color:#fff;
border:0}.err{background:#fee;border-color:#c66}"""

SCRIPT = """document.addEventListener('keydown',function(e){var s=document.getElementById('search');
if(document.activeElement&&document.activeElement.tagName==='INPUT'&&document.activeElement.type==='text'){
return;}if(e.key==='/'&&s){s.focus();e.preventDefault();return;}
var a=document.activeElement;if(e.key==='Enter'&&(!a||a===document.body)){var c=document.querySelector(
'button.confirm[name=outcome]');if(c){c.click();e.preventDefault();}return;}
if(/^[1-9]$/.test(e.key)){var r=document.querySelector('input[data-key="'+e.key+'"]');if(r){r.checked=true;}}});
var s=document.getElementById('search');if(s){s.addEventListener('input',function(){var q=s.value.toLowerCase();
document.querySelectorAll('.labels label').forEach(function(l){l.style.display=
l.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});s.addEventListener('keydown',function(e){
if(e.key==='Enter'){var v=[].filter.call(document.querySelectorAll('.labels label'),function(l){
return l.style.display!=='none';});if(v.length){v[0].querySelector('input').checked=true;}}});}"""


def page(title: str, body: str, reviewer: str) -> str:
    """Wrap ``body`` in the page frame (header with the reviewer's name and the navigation)."""
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<meta name=viewport content='width=device-width'><style>{STYLE}</style></head><body>"
            f"<header><a href='/queue'>Queue</a><a href='/progress'>Progress</a>"
            f"<span style='float:right'>reviewer: {escape(reviewer)}</span></header><main>{body}</main>"
            f"<script>{SCRIPT}</script></body></html>")


def error_page(status: int, message: str, reviewer: str = "") -> str:
    return page(f"Error {status}", f"<div class='card err'><h2>{status}</h2><p>{escape(message)}</p>"
                f"<p><a href='/queue'>Back to the queue</a></p></div>", reviewer)


def bar(value: float) -> str:
    """A bar of ``value`` in [0, 1], for confidence (no percentage printed)."""
    width = max(0.0, min(1.0, value)) * 100
    return f"<span class=bar title='confidence'><span style='width:{width:.0f}%'></span></span>"


def _select(name: str, value: str | None, options: list[str], blank: str) -> str:
    opts = "".join(f"<option value='{escape(o)}'{' selected' if o == value else ''}>{escape(o)}</option>"
                   for o in options)
    return f"<select name={name}><option value=''>{escape(blank)}</option>{opts}</select>"


def queue_page(reviewer: str, items: list[dict[str, Any]], queues: list[dict[str, Any]], filters: Any,
               heads: list[tuple[str, str]], labels: list[str], csrf: str, seen_until: str) -> str:
    """The queue: one line per head with its open items, the filters, the items, and bulk confirm."""
    qs = "".join(f"<li><a href='/queue?{escape(urlencode({'region': q['region'], 'model': q['model']}))}'>"
                 f"{escape(q['region'])}/{escape(q['model'])}</a>: {q['n']} open</li>" for q in queues)
    regions = sorted({r for r, _ in heads})
    models = sorted({m for _, m in heads})
    form = (f"<form method=get action='/queue' class=card>Head {_select('region', filters.region, regions, 'any region')}"
            f" {_select('model', filters.model, models, 'any model')} Reason "
            f"{_select('reason', filters.reason, ['margin', 'oos', 'shadow', 'random'], 'any reason')} Suggested "
            f"{_select('label', filters.label, labels, 'any label')} Order "
            f"<select name=order><option value=margin>smallest margin first</option><option value=oldest"
            f"{' selected' if filters.order == 'oldest' else ''}>oldest first</option></select> "
            f"<button>Filter</button></form>")
    back = escape(urlencode(filters.query()))
    rows = "".join(
        f"<tr><td><a href='/items/{escape(i['item_id'])}?{back}'>{escape(i['clean_text'])}</a></td>"
        f"<td>{escape(i['label'])}</td><td>{bar(i['probability'])} {confidence_words(i['probability'], i['margin'])}"
        f"</td><td>{escape(', '.join(i['reasons']))}</td><td>{escape(i['region'])}/{escape(i['model'])}</td></tr>"
        for i in items)
    hidden = "".join(f"<input type=hidden name={k} value='{escape(v)}'>" for k, v in filters.query().items())
    bulk = (f"<form method=post action='/bulk-confirm' class=card><input type=hidden name=csrf value='{csrf}'>"
            f"<input type=hidden name=seen_until value='{escape(seen_until)}'>{hidden}"
            f"<button class=confirm>Confirm the suggestion of every item of this filter</button> "
            f"<span class=muted>(only items that were in the queue when this page was made)</span></form>"
            ) if items else ""
    first = (f"<p><a href='/items/{escape(items[0]['item_id'])}?{back}'>Start with the first item</a> "
             f"<span class=muted>(Enter confirms, digits pick a label)</span></p>") if items else ""
    table = (f"<table><tr><th>phrase</th><th>suggestion</th><th>confidence</th><th>why</th><th>head</th></tr>"
             f"{rows}</table>") if items else "<p>Nothing to review here. Well done.</p>"
    return page("Review queue", f"<h1>Review queue</h1><ul>{qs or '<li>no open items</li>'}</ul>{form}{first}"
                f"<div class=card>{table}</div>{bulk}", reviewer)


SHOWN_ABOVE = {"label", "runner_up", "probability", "runner_up_probability"}
TITLES = {"terms": "Words that pushed the score (their contribution)",
          "neighbors": "Nearest training examples of the suggestion (text, label, similarity)",
          "neighbors_runner_up": "Nearest training examples of the runner-up (text, label, similarity)",
          "note": "Note"}


def _evidence(evidence: dict[str, Any] | None) -> str:
    """Render the item's evidence generically: lists as tables, the known keys with a title, numbers tucked away.

    The label, the runner-up and their probabilities are shown above (as words and a bar), so
    they are left out here; scalar numbers (logits, bias) go under "details" for engineers.
    """
    if not evidence:
        return "<p class=muted>No evidence was recorded for this phrase.</p>"
    out, details = [], []
    for key, value in evidence.items():
        if key in SHOWN_ABOVE:
            continue
        title = escape(TITLES.get(key, str(key).replace("_", " ")))
        if isinstance(value, list) and value and all(isinstance(v, (list, tuple)) for v in value):
            cells = "".join("<tr>" + "".join(f"<td>{escape(_fmt(c))}</td>" for c in v) + "</tr>" for v in value[:10])
            out.append(f"<h4>{title}</h4><table>{cells}</table>")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))
            head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
            cells = "".join("<tr>" + "".join(f"<td>{escape(_fmt(v.get(c)))}</td>" for c in cols) + "</tr>"
                            for v in value[:10])
            out.append(f"<h4>{title}</h4><table><tr>{head}</tr>{cells}</table>")
        elif isinstance(value, dict):
            out.append(f"<h4>{title}</h4>{_evidence(value)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            details.append(f"{title} {escape(_fmt(value))}")
        elif value is not None:
            out.append(f"<p><b>{title}</b>: {escape(_fmt(value))}</p>")
    if details:
        out.append(f"<details><summary class=muted>details</summary>{'; '.join(details)}</details>")
    return "".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:+.3f}" if -10 < value < 10 else f"{value:.1f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)[:300]
    return "" if value is None else str(value)


def item_page(reviewer: str, item: dict[str, Any], guide: Guide, labels: list[str], suggestion: str,
              runner_up: str | None, label_set: int, csrf: str, back: str, mine: dict[str, Any] | None) -> str:
    """One item: the phrase, suggestion and runner-up, confidence, evidence, guidelines, and the answer form."""
    top = [suggestion] + ([runner_up] if runner_up else [])
    top += [t for t in (str(x[0]) for x in item.get("top_k") or []) if t in labels and t not in top]
    top += [t for t in labels if t not in top][: max(0, 9 - len(top))] if len(labels) <= 9 else []
    ordered = top + sorted(t for t in labels if t not in top)
    keyed = min(len(top), 9)  # digits pick among the model's top labels, not the alphabet
    chosen = mine["label"] if mine and mine.get("label") in labels else suggestion
    radios = "".join(
        f"<label><input type=radio name=label value='{escape(t)}'{' checked autofocus' if t == chosen else ''}"
        f"{f' data-key={n + 1}' if n < keyed else ''}> {f'<span class=kbd>{n + 1}</span> ' if n < keyed else ''}"
        f"{escape(t)}</label>" for n, t in enumerate(ordered))
    prob = float(item["probability"])
    guideline = "".join(
        f"<div><b>{escape(t)}</b>: {escape(guide.definition(t))}<ul>"
        + "".join(f"<li>{escape(x)}</li>" for x in guide.examples.get(t, [])) + "</ul></div>"
        for t in dict.fromkeys(top[:2]))
    prior = (f"<p class=muted>Your earlier answer: {escape(mine['outcome'])} {escape(mine.get('label') or '')} "
             f"(answering again replaces it)</p>") if mine else ""
    double = "<p class=muted>This item goes to two reviewers (for agreement).</p>" if item["double_review"] else ""
    body = (
        f"<p><a href='/queue?{escape(back)}'>&larr; queue</a></p><div class=card>"
        f"<div class=muted>{escape(item['region'])}/{escape(item['model'])}:{escape(item['model_version'])} "
        f"&middot; why here: {escape(', '.join(item['reasons']))}</div><div class=phrase>{escape(item['clean_text'])}</div>"
        f"<p>The model suggests <b>{escape(suggestion)}</b> {bar(prob)} <i>{confidence_words(prob, item['margin'])}</i>"
        + (f"; runner-up: <b>{escape(runner_up)}</b>" if runner_up else "") + f"</p>{double}{prior}</div>"
        f"<form method=post action='/items/{escape(item['item_id'])}/answer' class=card>"
        f"<input type=hidden name=csrf value='{csrf}'><input type=hidden name=label_set value='{label_set}'>"
        f"<input type=hidden name=next value='/next?{escape(back)}'>"
        f"<button class=confirm name=outcome value=label>Save this label <span class=kbd>Enter</span></button>"
        f"<button name=outcome value=skip>Skip</button><button name=outcome value=unsure>Unsure</button>"
        f"<button name=outcome value=out_of_scope>Not in scope</button>"
        f"<p><input type=text id=search placeholder='search labels (/)' autocomplete=off></p>"
        f"<div class=labels>{radios}</div></form>"
        f"<div class=card><h3>Guidelines</h3>{guideline}"
        + (f"<p class=muted>{escape(guide.problem)}</p>" if guide.problem else "") + "</div>"
        f"<div class=card><h3>Why the model said so</h3>{_evidence(item.get('evidence'))}</div>")
    return page("Review an item", body, reviewer)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def progress_page(reviewer: str, data: dict[str, Any]) -> str:
    """The progress panel: answers per hour, and per head agreement, live accuracy, expert agreement."""
    hours = "".join(f"<tr><td>{escape(h['hour'])}</td><td>{h['n']}</td></tr>" for h in data["answered_per_hour"])
    heads = []
    for h in data["heads"]:
        acc = h["live_accuracy"]
        est = ("not enough random-slice answers yet" if acc["estimate"] is None else
               f"{_pct(acc['estimate'])} (95% interval {_pct(acc['low'])} to {_pct(acc['high'])}; "
               f"{acc['n']} answers, effective n {acc['n_eff']:.1f})")
        reasons = "".join(f"<tr><td>{escape(k)}</td><td>{v['n']}</td><td>{_pct(v['agreement'])}</td></tr>"
                          for k, v in h["by_reason"].items())
        ex = h["experts"]
        kappa = "-" if ex["kappa"] is None else f"{ex['kappa']:.2f}"
        heads.append(
            f"<div class=card><h3>{escape(h['region'])}/{escape(h['model'])}</h3><p>{h['n_answers']} answers "
            f"({escape(', '.join(f'{k} {v}' for k, v in h['outcomes'].items()))}); experts agree with the model on "
            f"{_pct(h['model_agreement']['agreement'])} of {h['model_agreement']['n']} labels</p>"
            f"<table><tr><th>routing reason</th><th>labels</th><th>agreement with the model</th></tr>{reasons}"
            f"</table><p><b>Live accuracy</b> (random slice, weighted): {est}</p><p><b>Experts among themselves"
            f"</b> (double items): {ex['n']} pairs, agreement {_pct(ex['agreement'])}, Cohen's kappa {kappa}</p></div>")
    return page("Review progress", f"<h1>Progress</h1><div class=card><h3>Answers per hour (UTC, last 24 h: "
                f"{data['answered_last_24h']})</h3><table>{hours}</table></div>{''.join(heads)}"
                f"<p class=muted>As JSON: <a href='/api/progress'>/api/progress</a></p>", reviewer)
