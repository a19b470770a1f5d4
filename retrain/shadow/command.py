"""``phrasestream shadow-report``: the live head against its shadow, on the phrases both answered.

:func:`build_report` pairs the live predictions (``inferences``) and the shadow's
(``shadow_inferences``) of each phrase id in the window (``retrain.shadow.rows``) and gives:
the agreement rate and a confusion table of live against shadow, the confidence shift (shadow
probability - live probability), the head's latency cost (both heads' time per phrase), and
both heads' accuracy and weighted F1 on the phrases labelled since the window start
(``phrases.labeled`` replayed over the window, review answers included, matched by cleaned
text; the review's random slice weighted and kept apart from the doubtful answers:
``retrain.shadow.figures``). With ``out`` it writes ``report.html`` and ``summary.json``.

Exit codes of the command: 0 written, 1 a service failed, 2 bad flags, an empty window, or a
shadow that received no traffic (Seldon #2225: a shadow can silently get nothing).

Example::

    summary = build_report(Settings(), "global", "intent", since_window("24h", now), Path("out"))
    summary["agreement"]["rate"]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retrain.replay.windows import Window


class ShadowReportError(Exception):
    """The report cannot be made; str(exc) says why."""


class EmptyWindow(ShadowReportError):
    """No paired predictions in the window (exit 2)."""


class NoShadowTraffic(EmptyWindow):
    """Live predictions in the window, but not one shadow prediction (exit 2)."""


class ServicesDown(ShadowReportError):
    """PostgreSQL or Kafka does not answer (exit 1)."""


def _labelled(settings: Any, window: Window, region: str, model: str, warnings: list[str]) -> tuple[list[Any], Any]:
    """Return the window's labelled examples (one per cleaned text, newest label) and the label sets (or None)."""
    import psycopg2

    from models.labelsets import read_label_sets
    from retrain.replay.reader import ReplayError, read_window
    from retrain.replay.select import deduplicate

    try:
        replay = read_window(settings, settings.topic_labeled, window, region, model, progress=False)
    except ReplayError as exc:
        raise ServicesDown(str(exc)) from None
    warnings.extend(replay.warnings)
    try:
        sets = read_label_sets(settings, region, model)
    except psycopg2.Error as exc:
        warnings.append(f"the label sets of {region}/{model} cannot be read ({str(exc).strip()}); labels as produced")
        sets = None
    return deduplicate(replay.selection.examples).examples, sets


def build_report(settings: Any, region: str, model: str, window: Window, out: Path | None = None) -> dict[str, Any]:
    """Compare the live head and its shadow over ``window``; return the summary (and write the page to ``out``).

    Raise :class:`NoShadowTraffic` when the shadow answered nothing while the live head did,
    :class:`EmptyWindow` when no prediction pairs, :class:`ServicesDown` when a service is down.
    """
    import dataclasses

    import psycopg2

    from ops.postgres.db import pg_connect
    from retrain.shadow.figures import agreement, confusion, match_labels, scores
    from retrain.shadow.rows import WindowRows

    head = f"{region}/{model}"
    try:
        conn = pg_connect(settings)
    except psycopg2.Error as exc:
        raise ServicesDown(f"PostgreSQL: {str(exc).strip()} (is it up? `phrasestream up`)") from None
    warnings: list[str] = []
    try:
        with conn:
            rows = WindowRows(conn, settings.pg_schema, region, model, window.start, window.end)
            seen = rows.seen()
            if not seen.shadow_versions:
                if seen.live_rows == 0:
                    raise EmptyWindow(f"no live or shadow predictions of {head} in the {window.describe()}; "
                                      "widen --since, or check the head's name and that the sink runs")
                raise NoShadowTraffic(
                    f"the shadow received no traffic: {seen.live_rows} live predictions of {head} in the "
                    f"{window.describe()}, but no shadow prediction. Is a shadow running (`phrasestream models`, "
                    f"`promote --shadow`)? Do the workers run it (/metrics phrasestream_shadow_predictions_total)? "
                    f"Does the sink store {settings.topic_shadow}?")
            version = seen.shadow_versions[0]["version"]
            counts = rows.confusion_counts(version)
            paired, agree, rate = agreement(counts)
            if paired == 0:
                n = seen.shadow_versions[0]["rows"]
                raise EmptyWindow(f"{n} shadow predictions of {head}:{version} in the {window.describe()}, but none "
                                  "pairs with a stored live prediction of the same phrase; is the sink storing "
                                  f"{settings.topic_out}?")
            stats = rows.pair_stats(version)
            examples, sets = _labelled(settings, window, region, model, warnings)
            answers = rows.answers(version, sorted({ex.clean_text for ex in examples}))
    except psycopg2.Error as exc:
        raise ServicesDown(f"PostgreSQL: {str(exc).strip()}") from None
    finally:
        conn.close()
    labelled = match_labels(examples, answers)
    if sets is not None:
        newest = sets.mapping
        labelled = [dataclasses.replace(x, live=newest.get(x.live, x.live), shadow=newest.get(x.shadow, x.shadow))
                    for x in labelled]
        by_text = {ex.clean_text: ex for ex in examples}
        labelled = [dataclasses.replace(x, truth=sets.relabel(x.truth, by_text[x.clean_text].label_set_version))
                    for x in labelled]
    summary: dict[str, Any] = {
        "region": region, "model": model, "shadow_version": version, "live_versions": seen.live_versions,
        "window": window.to_json(), "shadow_versions_seen": seen.shadow_versions,
        "rows": {"live": seen.live_rows, "shadow": seen.shadow_versions[0]["rows"], "paired": paired},
        "agreement": {"paired": paired, "agreeing": agree, "rate": None if rate is None else round(rate, 6)},
        "confusion": confusion(counts),
        **stats,
        "labelled": {"examples_in_window": len(examples), "matched": len(labelled), **scores(labelled)},
        "warnings": warnings,
    }
    if out is not None:
        from retrain.shadow.page import render_html

        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (out / "report.html").write_text(render_html(summary), encoding="utf-8")
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.3f}{unit}"


def format_summary(summary: dict[str, Any]) -> str:
    """Return the summary as a few lines for a person."""
    s, ag, cs, ms = summary, summary["agreement"], summary["confidence_shift"], summary["head_ms"]
    lines = [
        f"shadow {s['region']}/{s['model']}:{s['shadow_version']} beside {', '.join(s['live_versions'])} "
        f"({s['window']['start']} .. {s['window']['end']})",
        f"  pairs {ag['paired']}: agreement {_pct(ag['rate'])} ({ag['agreeing']} same label)",
        f"  confidence shift (shadow - live): mean {_num(cs['mean'])}, median {_num(cs['quantiles'].get('0.5'))}",
        f"  head time per phrase: shadow {_num(ms['shadow']['mean'], ' ms')} (p99 {_num(ms['shadow']['p99'], ' ms')}), "
        f"live {_num(ms['live']['mean'], ' ms')} (p99 {_num(ms['live']['p99'], ' ms')})",
    ]
    for d in s["confusion"]["disagreements"][:5]:
        lines.append(f"  live {d['live']} -> shadow {d['shadow']}: {d['n']}")
    lab = s["labelled"]
    lines.append(f"  labelled phrases since the window start: {lab['examples_in_window']}, answered by both: {lab['matched']}")
    for name in ("all", "random_slice", "doubtful", "outside_review"):
        part = lab[name]
        if not part["n"]:
            continue
        ci = part["live"].get("accuracy_ci95")
        extra = (f" [95% CI live {_pct(ci[0])}..{_pct(ci[1])}, shadow {_pct(part['shadow']['accuracy_ci95'][0])}.."
                 f"{_pct(part['shadow']['accuracy_ci95'][1])}]") if ci else ""
        lines.append(f"  {name.replace('_', ' ')} (n {part['n']}): accuracy live {_pct(part['live']['accuracy'])} "
                     f"shadow {_pct(part['shadow']['accuracy'])}; weighted F1 live {_num(part['live']['weighted_f1'])} "
                     f"shadow {_num(part['shadow']['weighted_f1'])}{extra}")
    lines.extend(f"  warning: {w}" for w in s["warnings"])
    return "\n".join(lines)


def shadow_report_command(settings: Any, args: argparse.Namespace) -> int:
    """Run ``phrasestream shadow-report`` (exit codes in the module doc)."""
    from models.heads import HeadRef
    from retrain.replay.windows import WindowError, since_window

    def fail(message: object, status: int) -> int:
        print(f"error: {message}", file=sys.stderr)
        return status

    try:
        HeadRef(args.region, args.model, "v1")  # the names' rules
        window = since_window(args.since, datetime.now(UTC))
        summary = build_report(settings, args.region, args.model, window, Path(args.out) if args.out else None)
    except (WindowError, ValueError, EmptyWindow) as exc:
        return fail(exc, 2)
    except ShadowReportError as exc:
        return fail(exc, 1)
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    if args.out and not args.json:
        print(f"wrote {Path(args.out) / 'report.html'} and summary.json", flush=True)
    return 0
