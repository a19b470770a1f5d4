"""``phrasestream drift-report | drift-watch``: compare stored inferences with a head's reference."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.settings import Settings
from streams.cli.output import fail

if TYPE_CHECKING:
    from retrain.drift.watch import Round


def cmd_drift_report(settings: Settings, args: argparse.Namespace) -> int:
    """Write a drift report; exit 2 for an empty window, an unknown head or bad flags, 1 for services down."""
    from retrain.drift.report import (
        DriftReportError,
        EmptyWindow,
        ServicesDown,
        UnknownHead,
        build_report,
        format_summary,
    )
    from retrain.replay.windows import WindowError, parse_duration

    if args.bench_rows is not None:
        return _drift_bench(settings, args)
    missing = [flag for flag, value in (("--region", args.region), ("--model", args.model),
                                        ("--current", args.current), ("--out", args.out)) if not value]
    if missing:
        return fail(f"drift-report needs {', '.join(missing)} (or --bench-rows N)", 2)
    try:
        from models.heads import HeadRef

        HeadRef(args.region, args.model, "v1")  # the names' rules
        current = parse_duration(args.current)
        if current is None:
            raise WindowError("--current all is not a window: give a length like 7d or 12h")
        summary = build_report(settings, args.region, args.model, current, args.reference, Path(args.out))
    except (EmptyWindow, UnknownHead) as exc:
        return fail(exc, 2)
    except (WindowError, ValueError) as exc:
        return fail(exc, 2)
    except ServicesDown as exc:
        return fail(exc, 1)
    except DriftReportError as exc:
        return fail(exc, 1)
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    return 0


def cmd_drift_watch(settings: Settings, args: argparse.Namespace) -> int:
    """Check every live head now and every --every after (or --once); alerts go to drift.alerts."""
    import signal
    import threading

    from retrain.drift.watch import watch
    from retrain.replay.windows import WindowError, parse_duration

    try:
        every, current = parse_duration(args.every), parse_duration(args.current)
        if every is None or current is None:
            raise WindowError("--every and --current need a length like 1h or 24h, not all")
        if args.reference != "training" and parse_duration(args.reference) is None:
            raise WindowError("--reference is training or a length like 30d")
    except (WindowError, ValueError) as exc:
        return fail(exc, 2)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def report(done: Round) -> None:
        if args.json:
            print(json.dumps(done.figures()), flush=True)
        else:
            print(f"drift-watch: {len(done.checked)} checked, {len(done.empty)} with an empty window, "
                  f"{len(done.failed)} failed, {len(done.alerts)} alert(s) to {settings.topic_alerts}", flush=True)

    out = Path(args.out) if args.out else Path(settings.home) / "drift"
    done = watch(settings, every, current, args.reference, out, once=args.once, stop=stop, on_round=report)
    return 1 if "*" in done.failed else 0


def _drift_bench(settings: Settings, args: argparse.Namespace) -> int:
    import tempfile

    import psycopg2

    from retrain.drift.bench import run_bench

    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        out = args.out or tempfile.mkdtemp(prefix="drift-bench-")
        figures = run_bench(settings, args.bench_rows, out, say=say)
    except ValueError as exc:
        return fail(exc, 2)
    except psycopg2.OperationalError as exc:
        return fail(f"PostgreSQL: {str(exc).strip()} (start it: `phrasestream up`)", 1)
    print(json.dumps(figures), flush=True)
    return 0
