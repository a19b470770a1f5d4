"""The Faust ceiling: what one bare Faust agent passes on this machine, for ``faust_passthrough_msgs_s``.

One agent reads a topic in batches (``take_events(500, within=0.05)``), parses each JSON value
and produces it again with a confluent-kafka producer, without waiting for the broker after a
batch: Faust's own pace with the least work a stream can do. The worker's hit path makes two
such hops (clean, then serve), so ``hit_path_faust_ratio`` = hit path / this, and 0.5 means
the worker's own work costs about as much as Faust's.

Run as its own process (Faust wants its own event loop), by :func:`faust_passthrough`:
``python -m streams.tools.bench.faust_ceiling SRC DST COUNT``. It prints one JSON line,
``{"messages": n, "seconds": s}``, from the first message read to the last one acknowledged,
then exits.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from ops.kafka.clients import client_config, faust_credentials
from schemas.settings import Settings

log = logging.getLogger("phrasestream.bench")

TAKE_MAX, TAKE_WITHIN = 500, 0.05


def faust_passthrough(settings: Settings, messages: list[tuple[str, bytes]], timeout_s: float = 300.0) -> float:
    """Pass ``messages`` through a bare Faust agent in a process of its own; return messages/s."""
    from streams.tools.bench.measure import source_and_sink
    from streams.tools.bench.scratch import delete_topics

    tag, src, dst = source_and_sink(settings, "faust", messages)
    env = {**os.environ, "PHRASESTREAM_APP_ID": f"bench-{tag}-faust", "PHRASESTREAM_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "streams.tools.bench.faust_ceiling", src, dst, str(len(messages))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = _read_line(proc, timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        delete_topics(settings, [src, dst])
    figures = json.loads(line)
    return figures["messages"] / figures["seconds"] if figures["seconds"] > 0 else 0.0


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    import selectors

    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = proc.stdout.readline()
            if '{"messages"' in line:  # after a terminal code or two of Faust's, maybe
                return line[line.index('{"messages"'):]
            if not line:
                break
    raise RuntimeError(f"the bare Faust agent did not finish within {timeout_s:.0f} s")


def main(src: str, dst: str, count: int) -> None:
    import faust
    from confluent_kafka import Producer

    from streams.kafka.faust_compat import drop_spinner
    from streams.kafka.membership import faust_broker_url

    settings = Settings()
    app = faust.App(settings.app_id, broker=faust_broker_url(settings.bootstrap),
                    broker_credentials=faust_credentials(settings), store="memory://", web_enabled=False,
                    consumer_auto_offset_reset="earliest", key_serializer="raw", value_serializer="raw",
                    topic_partitions=1)
    topic = app.topic(src, key_type=bytes, value_type=bytes)
    out = Producer(client_config(settings, {"linger.ms": 1, "batch.num.messages": 10000,
                                            "queue.buffering.max.messages": 1_000_000}))
    state: dict[str, Any] = {"done": 0, "start": None}

    @app.agent(topic)
    async def passthrough(stream: Any) -> None:
        async for events in stream.take_events(TAKE_MAX, within=TAKE_WITHIN):
            if state["start"] is None:
                state["start"] = time.perf_counter()
            for event in events:
                body = json.loads(event.value)
                out.produce(dst, json.dumps(body).encode(), event.key)
            out.poll(0)
            state["done"] += len(events)
            if state["done"] >= count:
                out.flush(60)
                seconds = time.perf_counter() - state["start"]
                print(json.dumps({"messages": state["done"], "seconds": seconds}), flush=True)
                os._exit(0)  # the figure is out; nothing of this scratch app needs a clean stop

    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    drop_spinner(worker)  # no terminal codes on the line the parent reads
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
