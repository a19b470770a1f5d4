"""``phrasestream worker | sink | start | run | demo | produce | consume | loadgen``: the stream itself.

``worker`` and ``sink`` run in the foreground (the daemons of ``start`` are these commands);
``start``, ``run`` and ``demo`` set up first (:func:`_prepare`); the others talk to the broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ops.kafka.clients import client_config
from schemas.settings import Settings
from streams.cli.output import fail, say

if TYPE_CHECKING:
    from retrain.train.data import Row

log = logging.getLogger("phrasestream")


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
        return fail(exc, 2)
    except BrokerUnreachable as exc:
        log.error("%s", exc)
        return fail(exc, 3)
    return 0


def cmd_worker(settings: Settings, _: argparse.Namespace) -> int:
    from streams.app import run_worker

    if status := _broker_refuses(settings):
        return status
    run_worker(settings)  # logging: configured by main(); Faust leaves it alone (see run_worker)
    return 0


def cmd_sink(settings: Settings, _: argparse.Namespace) -> int:
    from streams.sinks.run import run_sink

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
    from ops.kafka.produce import produce_retrying
    from retrain.train.data import DataError, read_labeled

    if not args.data or not args.model:
        return fail("--labeled needs --data PATH, --region R and --model M", 2)
    try:
        HeadRef(args.region, args.model, "v1")
        data = read_labeled(args.data, args.text_col or "text", args.label_col or "label", min_classes=1)
        messages = labeled_messages(data.rows, args.region, args.model)
    except (DataError, ValueError) as exc:
        return fail(exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc, 2)
    producer = Producer(client_config(settings, {"enable.idempotence": True,
                                                 "compression.type": "zstd", "linger.ms": 20}))
    key = f"{args.region}/{args.model}".encode()
    failed: list[str] = []  # the broker refuses, e.g., a timestamp more than message.timestamp.after.max.ms ahead

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.str())

    for value, timestamp_ms in messages:
        produce_retrying(producer, settings.topic_labeled, value, key, wait_s=0.5, timestamp=timestamp_ms,
                         on_delivery=delivered)
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

    show = (lambda line: print(line, file=sys.stderr)) if args.json else print
    try:
        figures = run(settings, count=args.count, duration=args.duration, rate=args.rate, zipf=args.zipf,
                      new_share=args.new_share, variants=args.variants, region=args.region, seed=args.seed,
                      cache_size=args.cache_size, topic=args.topic, allow_remote=args.allow_remote, say=show)
    except LoadgenError as exc:
        return fail(exc, 2)
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
# start, demo, run


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
    start_daemons(settings, workers=workers, sink=sink, say=say)
    return heads


def cmd_start(settings: Settings, args: argparse.Namespace) -> int:
    """Set up as ``run`` does, then bring this app id to ``--workers`` workers and a sink, in the background."""
    from ops.processes import ServiceError

    if args.workers < 0:
        return fail(f"--workers {args.workers}: give 0 or more", 2)
    try:
        heads = _prepare(settings, workers=args.workers, sink=not args.no_sink)
    except ServiceError as exc:
        return fail(exc, 1)
    say(f"serving regions {heads} with {args.workers} worker(s); `phrasestream status` lists them, "
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
            return fail(f"--drift-domains: {exc}", 2)
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

        stop_daemons(settings, say=say)
        say("worker and sink stopped; Kafka and PostgreSQL keep running (make stop ends them).")
    return 0
