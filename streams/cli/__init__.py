"""The ``phrasestream`` command: one entry point with subcommands.

    phrasestream up              start (or reuse) Kafka and PostgreSQL, create topics, migrate
    phrasestream train           build the embedder and train the demo heads if none are active
    phrasestream train --data F  train a head on your own labelled phrases (CSV or JSONL)
    phrasestream report          write the error-analysis page of a head (HTML)
    phrasestream models          the built head versions, their metrics, which one is live
    phrasestream promote|rollback  change which version is live (workers follow within 10 s)
    phrasestream retrain         retrain a head on a window of phrases.labeled; promote it if no worse
    phrasestream drift-report    compare a window of stored inferences with the head's reference (HTML, JSON)
    phrasestream drift-watch     the drift report of every live head on a schedule; alerts to drift.alerts
    phrasestream worker          run the stream worker (foreground)
    phrasestream sink            run the PostgreSQL sink (foreground)
    phrasestream start [--workers N] [--no-sink]   set up, then the sink and N workers in the background
    phrasestream run             start (one worker), a demo feed, a live table; Ctrl-C stops worker and sink
    phrasestream demo --count N  a bounded demo run; last line: one JSON object of figures
    phrasestream demo --drift    the same, with the label mix shifted halfway (a few domains only)
    phrasestream produce         produce phrases (JSON lines on stdin, or --text/--region)
    phrasestream consume         print predictions (or another topic) as a table or JSON
    phrasestream status | stop   services and daemons of this app id; stop them (and the services)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ops.kafka.clients import client_config
from schemas.settings import Settings

if TYPE_CHECKING:
    from retrain.drift.watch import Round
    from retrain.train.data import Row

log = logging.getLogger("phrasestream")

def _settings() -> Settings:
    return Settings()


def _setup_logging(settings: Settings) -> None:
    from ops.logs import configure_logging

    configure_logging(settings)  # text or JSON lines (PHRASESTREAM_LOG_FORMAT), secrets redacted


# ------------------------------------------------------------------------------------------
# set-up


def cmd_up(settings: Settings, _: argparse.Namespace) -> int:
    from ops.services import up

    up(settings)
    return 0


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    if args.data or args.config:
        if not args.data:
            print("error: --config needs --data (the labelled phrases to train on)", file=sys.stderr)
            return 2
        from retrain.train.commands import train_command

        return train_command(settings, data=args.data, eval_path=args.eval, text_col=args.text_col,
                             label_col=args.label_col, region=args.region, model=args.model,
                             config_path=args.config, activate=args.activate, as_json=args.json,
                             progress=not args.quiet)
    given = [f for f in ("eval", "region", "model", "text_col", "label_col") if getattr(args, f)]
    if given or args.activate or args.json:
        flags = ", ".join("--" + f.replace("_", "-") for f in given) or "--activate/--json"
        print(f"error: {flags} only go with --data (without it, train builds the demo heads)", file=sys.stderr)
        return 2
    from models.registry.lifecycle import LifecycleError, active_heads
    from retrain.train.demo_heads import ensure_demo_heads

    try:
        ensure_demo_heads(settings, progress=not args.quiet, force=args.force)
        live = active_heads(settings)
    except LifecycleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for region, models in live.items():
        print(f"active heads of {region}: {', '.join(models)}")
    return 0


def _say(line: str) -> None:
    """Print a status line; a closed terminal or pipe (Ctrl-C through `| tee`) is no error."""
    try:
        print(line, flush=True)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------
# foreground processes


def _broker_refuses(settings: Settings) -> int:
    """Wait for the broker (``ops.kafka.clients.wait_for_broker``); return 0, or the exit status.

    2: the broker refuses our login or TLS handshake (final: librdkafka and aiokafka would
    retry it quietly for ever). 3: no broker answered within PHRASESTREAM_BROKER_WAIT_SECONDS.
    Either way one line on stderr (and in the log) says why, for a person or a supervisor.
    """
    from ops.kafka.clients import BrokerUnreachable, KafkaAuthError, wait_for_broker

    try:
        wait_for_broker(settings)
    except KafkaAuthError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokerUnreachable as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


def cmd_worker(settings: Settings, _: argparse.Namespace) -> int:
    from streams.app import run_worker

    if status := _broker_refuses(settings):
        return status
    run_worker(settings)  # logging: configured by main(); Faust leaves it alone (see run_worker)
    return 0


def cmd_sink(settings: Settings, _: argparse.Namespace) -> int:
    from streams.sinks.postgres import run_sink

    if status := _broker_refuses(settings):
        return status
    run_sink(settings)
    return 0


# ------------------------------------------------------------------------------------------
# produce / consume


def labeled_messages(rows: Iterable[Row], region: str, model: str) -> list[tuple[bytes, int]]:
    """Turn ``retrain.train.data.Row`` rows into ``phrases.labeled`` messages and their record timestamps.

    Each message comes with its ``ts`` in milliseconds since the epoch, the Kafka record
    timestamp it is produced with, so that a replay window (``phrasestream retrain``) selects
    examples by the time they were labelled. A row without ``ts`` gets the time now.
    """
    from retrain.replay.windows import epoch_ms
    from schemas.messages import LabeledPhrase

    out = []
    for row in rows:
        body: dict = {"text": row.text, "label": row.label, "region": region, "model": model}
        if row.ts:
            body["ts"] = row.ts
        msg = LabeledPhrase.model_validate(body)
        out.append((msg.to_bytes(), epoch_ms(msg.ts)))
    return out


def cmd_produce_labeled(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import Producer
    from pydantic import ValidationError

    from models.heads import HeadRef
    from retrain.train.data import DataError, read_labeled

    if not args.data or not args.model:
        print("error: --labeled needs --data PATH, --region R and --model M", file=sys.stderr)
        return 2
    try:
        HeadRef(args.region, args.model, "v1")
        data = read_labeled(args.data, args.text_col or "text", args.label_col or "label", min_classes=1)
        messages = labeled_messages(data.rows, args.region, args.model)
    except (DataError, ValueError) as exc:
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        print(f"error: {reason}", file=sys.stderr)
        return 2
    producer = Producer(client_config(settings, {"enable.idempotence": True,
                                                 "compression.type": "zstd", "linger.ms": 20}))
    key = f"{args.region}/{args.model}".encode()
    failed: list[str] = []  # the broker refuses, e.g., a timestamp more than message.timestamp.after.max.ms ahead

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.str())

    for value, timestamp_ms in messages:
        while True:
            try:
                producer.produce(settings.topic_labeled, key=key, value=value, timestamp=timestamp_ms,
                                 on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.5)
        producer.poll(0)
    left = producer.flush(60)
    print(f"produced {len(messages) - left - len(failed)} labelled example(s) of {args.region}/{args.model} to "
          f"{settings.topic_labeled}" + (f"; dropped {data.n_empty_text} row(s) with an empty text or label"
                                         if data.n_empty_text else ""), file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} example(s) were refused by the broker, the first: {failed[0]} "
              "(a ts far in the future is refused)", file=sys.stderr)
    return 0 if left == 0 and not failed else 1


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    if args.labeled:
        return cmd_produce_labeled(settings, args)

    producer = Producer(client_config(settings, {"enable.idempotence": True}))
    if args.text is not None:
        body = {"text": args.text, "region": args.region}
        if args.id:
            body["id"] = args.id
        lines = [json.dumps(body)]
    else:
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for line in lines:
        producer.produce(args.topic or settings.topic_in, value=line.encode("utf-8"))
        producer.poll(0)
    left = producer.flush(30)
    print(f"produced {len(lines) - left} message(s) to {args.topic or settings.topic_in}", file=sys.stderr)
    return 0 if left == 0 else 1


def cmd_loadgen(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.loadgen import LoadgenError, run

    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        figures = run(settings, count=args.count, duration=args.duration, rate=args.rate, zipf=args.zipf,
                      new_share=args.new_share, variants=args.variants, region=args.region, seed=args.seed,
                      cache_size=args.cache_size, topic=args.topic, allow_remote=args.allow_remote, say=say)
    except LoadgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        for key, value in figures.items():
            print(f"{key:>22}: {value}")
    print(json.dumps(figures), flush=True)
    return 0 if figures["failed"] == 0 else 1


TABLE_HEADER = f"{'id':<22} {'region':<8} {'model':<7} {'label':<26} {'prob':>5} {'ms':>7} {'cache':<5}  text"


def format_row(p: dict) -> str:
    """Return one prediction as a line of the live table."""
    return (
        f"{p['id'][:22]:<22} {p['region'][:8]:<8} {p['model'][:7]:<7} {p['label'][:26]:<26} "
        f"{p['probability']:>5.2f} {p['latency_ms']:>7.1f} {'hit' if p['cache_hit'] else '':<5}  {p['clean_text'][:50]}"
    )


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer

    topic = args.topic or settings.topic_out
    consumer = Consumer(client_config(settings, {
        "group.id": args.group or f"phrasestream-consume-{os.getpid()}",
        "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        "enable.auto.commit": bool(args.group),
    }))
    consumer.subscribe([topic])
    seen = 0
    start = time.monotonic()
    if not args.json and topic == settings.topic_out:
        print(TABLE_HEADER)
    try:
        while (args.max is None or seen < args.max) and (args.timeout is None or time.monotonic() - start < args.timeout):
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            seen += 1
            value = msg.value() or b""
            if args.json or topic != settings.topic_out:
                print(value.decode("utf-8", errors="replace"), flush=True)
            else:
                print(format_row(json.loads(value)), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


# ------------------------------------------------------------------------------------------
# run, demo, status, stop


def _prepare(settings: Settings, quiet: bool = False, workers: int = 1, sink: bool = True) -> dict[str, list[str]]:
    """Start the services, build and train if needed, start the sink and ``workers`` workers; return the heads.

    The order: services first (the heads are published to the registry topic, the sink
    migrates the database), then the heads, then the daemons, which read both.
    """
    from models.registry.lifecycle import active_heads
    from ops.daemons import start_daemons
    from ops.services import up
    from retrain.train.demo_heads import ensure_demo_heads

    up(settings)
    ensure_demo_heads(settings, progress=not quiet)
    heads = active_heads(settings)
    start_daemons(settings, workers=workers, sink=sink, say=_say)
    return heads


def cmd_start(settings: Settings, args: argparse.Namespace) -> int:
    """Set up as ``run`` does, then bring this app id to ``--workers`` workers and a sink, in the background."""
    from ops.processes import ServiceError

    if args.workers < 0:
        print(f"error: --workers {args.workers}: give 0 or more", file=sys.stderr)
        return 2
    try:
        heads = _prepare(settings, workers=args.workers, sink=not args.no_sink)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _say(f"serving regions {heads} with {args.workers} worker(s); `phrasestream status` lists them, "
         "`phrasestream stop` ends them")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.demo_feed import Shift, run_demo

    shift = None
    if args.drift or args.drift_domains:
        try:
            shift = Shift(tuple(d.strip() for d in args.drift_domains.split(",") if d.strip())) \
                if args.drift_domains else Shift()
        except ValueError as exc:
            print(f"error: --drift-domains: {exc}", file=sys.stderr)
            return 2
    heads = _prepare(settings, quiet=args.json)
    figures = run_demo(settings, heads, args.count, timeout_s=args.timeout, seed=args.seed, shift=shift)
    if not args.json:
        for key, value in figures.items():
            print(f"{key:>26}: {value}")
    print(json.dumps(figures), flush=True)
    return 0 if figures["complete"] else 1


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from streams.tools.demo_feed import run_demo

    heads = _prepare(settings)
    print(f"\nphrasestream is serving regions {heads}.")
    print(f"Produce to {settings.topic_in} on {settings.bootstrap}; predictions on {settings.topic_out}.")
    print("A short demo stream follows; press Ctrl-C to stop the worker and the sink.\n")
    print(TABLE_HEADER)
    try:
        figures = run_demo(settings, heads, args.count, on_prediction=lambda p: print(format_row(p), flush=True))
        print(f"\ndemo: {json.dumps(figures)}\n")
        print("Still serving. Try: phrasestream produce --text 'how do I reset my PIN?' --region global\n")
        cmd_consume(settings, argparse.Namespace(topic=None, group=None, from_beginning=False,
                                                 json=False, max=None, timeout=None))
    except KeyboardInterrupt:
        pass
    finally:
        from ops.daemons import stop_daemons

        stop_daemons(settings, say=_say)
        _say("worker and sink stopped; Kafka and PostgreSQL keep running (make stop ends them).")
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import report_command

    return report_command(settings, region=args.region, model=args.model, version=args.version, out=args.out)


def cmd_models(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import models_command

    return models_command(settings, region=args.region, as_json=args.json)


def cmd_promote(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import promote_command

    return promote_command(settings, region=args.region, model=args.model, version=args.version, reason=args.reason)


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.train.commands import rollback_command

    return rollback_command(settings, region=args.region, model=args.model, to=args.to, reason=args.reason)


def cmd_retrain(settings: Settings, args: argparse.Namespace) -> int:
    from retrain.replay.command import retrain_command

    return retrain_command(settings, region=args.region, model=args.model, since=args.since, date_from=args.date_from,
                           date_to=args.date_to, compare=args.compare_windows, tolerance=args.tolerance,
                           test_fraction=args.test_fraction, config_path=args.config, reason=args.reason,
                           as_json=args.json, progress=not args.quiet)


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
        print(f"error: drift-report needs {', '.join(missing)} (or --bench-rows N)", file=sys.stderr)
        return 2
    try:
        from models.heads import HeadRef

        HeadRef(args.region, args.model, "v1")  # the names' rules
        current = parse_duration(args.current)
        if current is None:
            raise WindowError("--current all is not a window: give a length like 7d or 12h")
        summary = build_report(settings, args.region, args.model, current, args.reference, Path(args.out))
    except (EmptyWindow, UnknownHead) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (WindowError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServicesDown as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DriftReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except psycopg2.OperationalError as exc:
        print(f"error: PostgreSQL: {str(exc).strip()} (start it: `phrasestream up`)", file=sys.stderr)
        return 1
    print(json.dumps(figures), flush=True)
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from ops.services import up
    from retrain.train.demo_heads import ensure_demo_heads
    from streams.tools.bench import bench_command

    up(settings)  # the bench starts its own workers, in scratch topics; the demo's worker may idle
    ensure_demo_heads(settings, progress=True)
    return bench_command(settings, count=args.count, as_json=args.json)


def cmd_status(settings: Settings, _: argparse.Namespace) -> int:
    from ops.daemons import daemon_status
    from ops.services import status

    status(settings)
    for daemon in daemon_status(settings):
        print(daemon.line())
    return 0


def cmd_stop(settings: Settings, args: argparse.Namespace) -> int:
    from ops.daemons import stop_daemons
    from ops.services import stop_all

    stop_daemons(settings, say=_say)
    if not args.keep_services:
        stop_all(settings)
    return 0


def cmd_clean(settings: Settings, args: argparse.Namespace) -> int:
    from ops.daemons import stop_daemons
    from ops.processes import ServiceError
    from ops.services import clean

    stop_daemons(settings, say=_say)
    try:
        removed = clean(settings, everything=args.all)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in removed:
        print(f"removed   {path}")
    if not removed:
        print("nothing to remove")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phrasestream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start or reuse Kafka and PostgreSQL").set_defaults(func=cmd_up)
    p = sub.add_parser("train", help="train a head on your labelled phrases (--data), or the demo heads",
                       description="Without --data: build the embedder and train the four demo heads unless "
                       "they are active. With --data: train one head of --region/--model on a CSV (with a "
                       "header) or JSON Lines file and write it as a new version (active with --activate).")
    p.add_argument("--data", help="labelled phrases: CSV with a header, or JSONL")
    p.add_argument("--eval", help="evaluation phrases (same columns); default: a stratified 20%% of --data")
    p.add_argument("--text-col", help="column of the text (default: text)")
    p.add_argument("--label-col", help="column of the label (default: label)")
    p.add_argument("--region", help="region of the head")
    p.add_argument("--model", help="model name of the head")
    p.add_argument("--config", help="training configuration (JSON of retrain.train.config.TrainConfig)")
    p.add_argument("--activate", action="store_true", help="make the new version the active one")
    p.add_argument("--json", action="store_true", help="last line: one JSON object of figures")
    p.add_argument("--force", action="store_true", help="demo heads: train new versions even if active")
    p.add_argument("--quiet", action="store_true", help="no progress on standard error")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("report", help="write the error-analysis page (HTML) of a head")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", help="default: the live version (else the newest)")
    p.add_argument("--out", required=True, help="folder to write index.html into")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("models", help="the built head versions, their metrics, and which is live")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="a JSON list, one object per version")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("promote", help="make a built version live (workers follow within 10 s)")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--reason", help="why, kept in the history")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="make the previous live version (or --to V) live again")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--to", help="the version to go back to (default: the one live before)")
    p.add_argument("--reason", help="why, kept in the history")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("retrain", help="retrain a head on a window of phrases.labeled; promote it if it is no worse",
                       description="Replay the labelled examples of --region/--model from phrases.labeled over a "
                       "window [start, end) of record timestamps, drop duplicate texts (the newest label wins), test "
                       "on the newest --test-fraction, train a candidate on the rest, score it and the live head on "
                       "the same test slice, and promote the candidate if its weighted F1 >= the live one's - "
                       "--tolerance. Dates are ISO 8601; without an offset they are UTC.")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--since", metavar="DURATION", help="history length ending now: 90d, 12w, 1y, 48h, or all")
    p.add_argument("--from", dest="date_from", metavar="DATE", help="window start (included), e.g. 2026-01-01 or 2026-01-01T08:00Z")
    p.add_argument("--to", dest="date_to", metavar="DATE", help="window end (excluded); default: now")
    p.add_argument("--compare-windows", metavar="LIST", help="e.g. 30d,90d,1y,all: one candidate per window, one test slice; "
                   "promotes nothing")
    p.add_argument("--tolerance", type=float, default=0.005, metavar="F1",
                   help="how much lower the candidate's weighted F1 may be (default 0.005)")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="SHARE",
                   help="the newest share of the examples to test on (default 0.2)")
    p.add_argument("--config", help="training configuration (JSON of retrain.train.config.TrainConfig)")
    p.add_argument("--reason", help="why, kept in the history with the promotion")
    p.add_argument("--json", action="store_true", help="last line: one JSON object of figures")
    p.add_argument("--quiet", action="store_true", help="no progress on standard error (warnings stay)")
    p.set_defaults(func=cmd_retrain)
    p = sub.add_parser("drift-report", help="compare a window of stored inferences with a reference: HTML and JSON",
                       description="Compute, in PostgreSQL, the predicted-label mix, confidence, text length, "
                       "unknown word pieces, embedding centroid, out-of-scope rate and operations figures of "
                       "--region/--model over the last --current, compare them with the live head's training "
                       "reference (or the window of length --reference just before), flag drift per metric, and "
                       "write report.html and summary.json into --out. Exit 2: empty window, unknown head or bad "
                       "flags; 1: services down.")
    p.add_argument("--region")
    p.add_argument("--model")
    p.add_argument("--current", metavar="DURATION", help="the window ending now: 7d, 12h, 2w")
    p.add_argument("--reference", default="training", metavar="training|DURATION",
                   help="the live head's training reference (default), or the window of this length before --current")
    p.add_argument("--out", metavar="DIR", help="folder for report.html and summary.json")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument("--bench-rows", type=int, metavar="N",
                   help="time the report on N synthetic rows in a scratch schema (dropped after); prints JSON")
    p.set_defaults(func=cmd_drift_report)
    p = sub.add_parser("drift-watch", help="the drift report of every live head on a schedule; alerts to drift.alerts",
                       description="Every --every, build the drift report of each live head over the last --current "
                       "(against --reference), write it under --out/<region>/<model>/<time>/, and publish one "
                       "message to drift.alerts per metric whose flag tripped. --once: one round, then exit "
                       "(for cron or a Kubernetes CronJob); exit 1 if that round could not reach the services.")
    p.add_argument("--every", default="1h", metavar="DURATION", help="time between rounds (default 1h)")
    p.add_argument("--current", default="24h", metavar="DURATION", help="the window ending now (default 24h)")
    p.add_argument("--reference", default="training", metavar="training|DURATION",
                   help="the live head's training reference (default), or the window of this length before")
    p.add_argument("--out", metavar="DIR", help="where reports are written (default <home>/drift)")
    p.add_argument("--once", action="store_true", help="one round, then exit")
    p.add_argument("--json", action="store_true", help="one JSON line of figures per round")
    p.set_defaults(func=cmd_drift_watch)
    for name, func in (("worker", cmd_worker), ("sink", cmd_sink)):
        p = sub.add_parser(name, help=f"run the {name} in the foreground")
        p.add_argument("--daemon-id", help=argparse.SUPPRESS)
        p.set_defaults(func=func)
    p = sub.add_parser("start", help="set up, then run the sink and N workers in the background",
                       description="Do the set-up `run` does (services, embedder, demo heads if none), then bring "
                       "this app id to --workers workers (worker-1..worker-N, each with PHRASESTREAM_WORKER_INDEX) "
                       "and a sink, in the background: missing ones are started, running ones left alone, workers "
                       "above N stopped. Waits until every worker is ready. Logs: <home>/logs/<app_id>/<name>.log.")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="how many workers (default 1)")
    p.add_argument("--no-sink", action="store_true", help="start no sink")
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("run", help="start everything, feed a short demo stream, show predictions")
    p.add_argument("--count", type=int, default=40)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="a bounded demo run that prints its figures")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--json", action="store_true", help="print only the JSON figures")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for answers")
    p.add_argument("--seed", type=int, default=7,
                   help="which test phrases (the same seed repeats phrases, so the cache answers)")
    p.add_argument("--drift", action="store_true",
                   help="shift the label mix halfway: the second half only from a few CLINC150 domains")
    p.add_argument("--drift-domains", metavar="D1,D2,...",
                   help="the CLINC150 domains of the shifted half (implies --drift; default: travel,"
                   "kitchen_and_dining,small_talk)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("produce", help="produce phrases: JSON lines on stdin, or --text; --labeled: examples")
    p.add_argument("--text")
    p.add_argument("--region", default="global")
    p.add_argument("--id")
    p.add_argument("--topic")
    p.add_argument("--labeled", action="store_true",
                   help="produce labelled examples from --data (CSV or JSONL) to phrases.labeled, for retraining")
    p.add_argument("--data", help="with --labeled: the labelled phrases")
    p.add_argument("--model", help="with --labeled: the model the labels are for")
    p.add_argument("--text-col", help="with --labeled: column of the text (default: text)")
    p.add_argument("--label-col", help="with --labeled: column of the label (default: label)")
    p.set_defaults(func=cmd_produce)
    p = sub.add_parser("consume", help="print predictions (or --topic) as they arrive")
    p.add_argument("--topic")
    p.add_argument("--group")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max", type=int)
    p.add_argument("--timeout", type=float)
    p.set_defaults(func=cmd_consume)
    p = sub.add_parser("loadgen", help="send realistic, bounded benchmark traffic to phrases.in",
                       description="Send phrases drawn with Zipf popularity from the CLINC150 test split, with "
                       "variants the cleaner folds together and a share of never-seen phrases, to phrases.in (or "
                       "--topic) on a local broker. Stops after --count messages or --duration seconds, whichever "
                       "comes first; prints what it sent and the cache hit rate to expect.")
    p.add_argument("--count", type=int, default=10_000, help="most messages to send (default 10000, at most 5000000)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="most seconds to send (default 60, at most 3600)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="R", help="messages per second, paced (catches up when behind)")
    pace.add_argument("--max-rate", action="store_true", help="as fast as possible (the default without --rate)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of phrase popularity (default 1.1)")
    p.add_argument("--new-share", type=float, default=0.03, metavar="SHARE",
                   help="share of never-seen phrases (default 0.03)")
    p.add_argument("--variants", type=float, default=0.3, metavar="SHARE",
                   help="share of pool draws sent as a case/punctuation/space variant (default 0.3)")
    p.add_argument("--region", default="global")
    p.add_argument("--seed", type=int, default=7, help="same seed, same messages and ids lg-<seed>-<i> (default 7)")
    p.add_argument("--cache-size", type=int, metavar="N",
                   help="LRU size for the expected hit rate (default: PHRASESTREAM_CACHE_MAX_ENTRIES)")
    p.add_argument("--topic", help="default: phrases.in (PHRASESTREAM_TOPIC_IN)")
    p.add_argument("--allow-remote", action="store_true", help="allow a broker that is not 127.0.0.1/localhost")
    p.add_argument("--json", action="store_true", help="print only the JSON figures (one line)")
    p.set_defaults(func=cmd_loadgen)
    p = sub.add_parser("bench", help="measure every speed figure in one run (the last line is JSON)")
    p.add_argument("--count", type=int, default=20_000, help="phrases per traffic burst")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=cmd_bench)
    sub.add_parser("status", help="the services, and each worker and sink of this app id").set_defaults(func=cmd_status)
    p = sub.add_parser("stop", help="stop the workers and the sink of this app id, then Kafka and PostgreSQL")
    p.add_argument("--keep-services", action="store_true", help="stop only the workers and the sink")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("clean", help="stop everything and delete the broker's and the database's data")
    p.add_argument("--all", action="store_true",
                   help="also delete the embedder export, the trained heads and the cached Kafka jars")
    p.set_defaults(func=cmd_clean)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``phrasestream`` command."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of logs
    args = build_parser().parse_args(argv)
    settings = _settings()
    _setup_logging(settings)  # every command, the worker too (Faust keeps our handler)
    return int(args.func(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
