"""The agents' producer: a batch's outputs go out while the agent takes the next batch.

An agent hands each batch's outputs to its :class:`Outbox` and goes on at once; it does not
wait for the broker (the pipelined cycle). The outbox knows, per batch, when the broker has
acknowledged every message of it, from librdkafka's delivery reports. It then *settles* the
batch: it runs the batch's ``on_settled`` (the agent acks the batch's input events there, so
Faust's commit may pass them). Batches settle in the order they were opened, so input events
are acked in offset order, and a commit never passes an input whose outputs the broker does
not have: at-least-once, as with a wait per batch, without the wait.

How many messages may be in flight is bounded (``max_in_flight``): past it, :meth:`Outbox.room`
makes the agent wait, so a broker that is away holds the stream instead of filling memory.
It says so once, and again when the broker is back.

Delivery reports are served by a thread of the outbox's own (``producer.poll``); a batch
that is complete is handed back to the event loop (``call_soon_threadsafe``) to settle, since
Faust's acks belong to the loop. A message whose delivery failed is produced again, in the
same batch (idempotent producer, ``acks=all``, no message timeout). Why not Faust's
``topic.send``: it awaits every message through Faust's producer buffer (which blocks all
streams beyond 100 waiting messages) and aiokafka; librdkafka queues a message in about a
microsecond and batches it in its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ops.kafka.clients import client_config
from schemas.settings import Settings

log = logging.getLogger("phrasestream.worker")

FLUSH_WAIT_S = 5.0
"""How long one wait for the broker lasts before the outbox looks again (and says it waits)."""
POLL_S = 0.05
"""The longest a delivery report waits for the reporting thread (it wakes at once for a report)."""


class Batch:
    """The outputs of one input batch: how many were produced, how many the broker acknowledged."""

    __slots__ = ("complete", "delivered", "on_settled", "outbox", "sealed", "size")

    def __init__(self, outbox: Outbox, on_settled: Callable[[], None]) -> None:
        self.outbox = outbox
        self.on_settled = on_settled
        self.size = 0  # messages produced (written by the agent's thread)
        self.delivered = 0  # messages acknowledged (written by the reporting thread)
        self.sealed = False  # no more messages will be added
        self.complete = False  # every message acknowledged (set on the event loop)

    def report(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report for one message of this batch (the reporting thread)."""
        if err is not None:
            self.outbox.failed(self, msg)
            return
        self.delivered += 1
        if self.sealed and self.delivered == self.size:
            self.outbox.notify(self)


class Outbox:
    """Produce the agents' outputs in batches; settle each batch once the broker has all of it.

    ``open(on_settled)`` starts a batch, ``put`` adds messages to it, ``seal`` ends it.
    ``threaded=False`` serves no reports by itself: the caller calls :meth:`poll` (tests).
    :meth:`flush` and :meth:`drain` wait for everything in flight (at stop).
    """

    def __init__(self, settings: Settings, name: str, producer: Any | None = None, *,
                 max_in_flight: int | None = None, threaded: bool = True) -> None:
        self.name = name
        self.max_in_flight = max_in_flight if max_in_flight is not None else settings.max_in_flight
        self._threaded = threaded
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer(client_config(settings, {
                "client.id": f"{settings.app_id}-{name}",
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 1,  # a batch arrives at once; a short linger fills Kafka batches
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 500000,
                "message.timeout.ms": 0,  # never give a message up; the stream waits for the broker
                # the Java clients' (and aiokafka's, so Faust's table's) partitioner: murmur2 of the key
                "partitioner": "murmur2_random",
            }))
        self._producer = producer
        self._open: deque[Batch] = deque()  # batches not settled yet, in the order they were opened
        self._current: Batch | None = None
        self._retry: list[tuple[Batch, str, bytes | None, bytes]] = []  # failed deliveries, to produce again
        self.in_flight = 0  # messages of batches not settled yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- the agent's side (the event loop's thread) ---------------------------------------

    def open(self, on_settled: Callable[[], None]) -> Batch:
        """Start a batch; ``on_settled`` runs on this thread once the broker has all of it."""
        if self._threaded and self._thread is None:
            try:
                self._start(asyncio.get_running_loop())
            except RuntimeError:  # no event loop here (a tool): the caller flushes
                pass
        batch = Batch(self, on_settled)
        self._open.append(batch)
        self._current = batch
        return batch

    def put(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Produce one message of the open batch (blocks only while librdkafka's own queue is full)."""
        batch = self._current
        if batch is None:  # outside a batch (a tool, a test): a batch of its own that settles silently
            batch = self.open(lambda: None)
            batch.sealed = True  # settled by its reports; flush waits for it
            self._current = None
        batch.size += 1
        self.in_flight += 1
        self._produce(batch, topic, key, value)

    def seal(self) -> None:
        """End the open batch: it settles once every message of it is acknowledged (maybe now)."""
        batch, self._current = self._current, None
        if batch is None:
            return
        batch.sealed = True
        if batch.delivered == batch.size:
            self.notify(batch)

    async def room(self) -> None:
        """Wait while more than ``max_in_flight`` messages wait for the broker; say so when it lasts."""
        if self.in_flight <= self.max_in_flight:
            return
        if self._room is None:
            self._room = asyncio.Event()
        waited = 0.0
        while self.in_flight > self.max_in_flight:
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), FLUSH_WAIT_S)
            except TimeoutError:
                if not waited:
                    log.warning("%s: %d message(s) wait for the broker; the stream waits with them", self.name,
                                self.in_flight)
                waited += FLUSH_WAIT_S
        if waited:
            log.info("%s: the broker took the waiting messages after %.0f s", self.name, waited)

    def notify(self, batch: Batch) -> None:
        """A batch is complete: settle it on the event loop (from any thread)."""
        if self._loop is not None and self._thread is not None and threading.current_thread() is self._thread:
            self._loop.call_soon_threadsafe(self._complete, batch)
        else:
            self._complete(batch)

    def _complete(self, batch: Batch) -> None:
        if batch.complete:  # both the report and the seal may see the last delivery
            return
        batch.complete = True
        while self._open and self._open[0].complete:
            done = self._open.popleft()
            self.in_flight -= done.size
            try:
                done.on_settled()
            except Exception:  # a bookkeeping bug must not stop the settling of later batches
                log.exception("%s: settling a batch failed", self.name)
        if self._room is not None and self.in_flight <= self.max_in_flight:
            self._room.set()

    # --- delivery reports ------------------------------------------------------------------

    def failed(self, batch: Batch, msg: Any) -> None:
        """A message failed to reach the broker: keep it to produce again (the reporting thread)."""
        self._retry.append((batch, msg.topic(), msg.key(), msg.value()))

    def poll(self, timeout: float) -> None:
        """Serve delivery reports for up to ``timeout`` s, and produce failed messages again."""
        self._producer.poll(timeout)
        if self._retry:
            retry, self._retry = self._retry, []
            log.warning("%s: %d message(s) failed to reach the broker; producing them again", self.name, len(retry))
            for batch, topic, key, value in retry:
                self._produce(batch, topic, key, value)

    def _produce(self, batch: Batch, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=batch.report)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries make room
                if self._thread is None:
                    self._producer.poll(0.05)
                else:
                    time.sleep(0.005)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve_reports, name=f"outbox-{self.name}", daemon=True)
        self._thread.start()

    def _serve_reports(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll(POLL_S)
            except Exception:  # a report handler's bug must not end the reporting
                log.exception("%s: serving delivery reports failed", self.name)

    # --- the end ---------------------------------------------------------------------------

    def flush(self) -> None:
        """Block until every message is acknowledged, producing failed ones again; settle every batch."""
        self._stop_thread()
        waited = 0.0
        while True:
            left = self._producer.flush(FLUSH_WAIT_S)
            if self._retry:
                self.poll(0)  # produces the failed messages again
                continue
            if left == 0:
                if waited:
                    log.info("%s: the broker took the waiting messages after %.0f s", self.name, waited)
                return
            if not waited:
                log.warning("%s: %d message(s) wait for the broker; the stream waits with them", self.name, left)
            waited += FLUSH_WAIT_S

    def drain(self, timeout: float) -> int:
        """At stop: wait up to ``timeout`` s for what is in flight and settle what came; return what is left."""
        self._stop_thread()
        deadline = time.monotonic() + timeout
        left = len(self._producer)
        while (left or self._retry) and time.monotonic() < deadline:
            left = self._producer.flush(min(1.0, max(0.0, deadline - time.monotonic())))
            self.poll(0)
        if left:
            log.warning("%s: %d message(s) were not acknowledged at stop; their inputs are not committed and "
                        "will be served again", self.name, left)
        return left

    def _stop_thread(self) -> None:
        """Stop the reporting thread; from now on reports are served, and batches settled, by the caller."""
        thread = self._thread
        if thread is not None:
            self._stopping.set()
            thread.join()
            self._thread = None
            for batch in list(self._open):  # its last reports went to the loop, which may not run them now
                if batch.sealed and batch.delivered == batch.size:
                    self._complete(batch)
