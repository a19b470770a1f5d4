"""The agents' batch step (streams.worker.Step, through Cleaner): holes served first, inputs acked only
once the broker has every output of their batch, in batch order, bad input dead-lettered. A stand-in
Faust consumer and producer, no broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import faust
from fakes import FakeProducer
from faust.types import TP
from faust.types.tuples import Message

from schemas.messages import CleanedPhrase, DeadLetter, ErrorKind
from schemas.settings import Settings
from streams.decode import Limits
from streams.heads import HeadSet
from streams.kafka.continuity import OffsetGuard, lag_and_committed, read_hole
from streams.kafka.faust_compat import direct_event
from streams.kafka.outbox import Outbox
from streams.metrics import WorkerMetrics
from streams.state.cache import cache_key
from streams.worker import Cleaner

SETTINGS = Settings(_env_file=None)
IN = TP(SETTINGS.topic_in, 0)
CLEANED = "worker-phrases.cleaned"


class Consumer:
    """Faust's consumer as the step uses it; every call goes to ``journal``."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.committed: list[set[TP]] = []
        self.gaps: list[tuple[TP, int, int]] = []

    def assignment(self) -> set[TP]:
        return {IN}

    def ack(self, message: Message) -> bool:
        return True

    async def commit(self, tps: set[TP]) -> bool:
        self.journal.append("commit")
        self.committed.append(set(tps))
        return True

    async def _add_gap(self, tp: TP, first: int, last: int) -> None:
        self.journal.append("gap")
        self.gaps.append((tp, first, last))


class App:
    rebalancing = False

    def __init__(self, journal: list[str]) -> None:
        self.consumer = Consumer(journal)


def raw(text: str, pid: str) -> bytes:
    return json.dumps({"id": pid, "text": text, "region": "global", "models": ["intent"]}).encode()


def events(app: App, *offsets_and_values: tuple[int, bytes]) -> list[faust.Event]:
    return [faust.Event(app, None, value, None, Message(IN.topic, IN.partition, offset, 0.0, 0, None, None, value,
                                                        None, tp=IN))
            for offset, value in offsets_and_values]


def cleaner(app: App, producer: FakeProducer, topic_holds: dict[int, bytes]) -> Cleaner:
    """A Cleaner whose offload answers the guard's broker questions from ``topic_holds`` (offset -> value)."""

    async def offload(fn: Callable[..., Any], *args: Any) -> Any:
        if fn is lag_and_committed:  # a new assignment: nothing committed yet, the topic ends after its last offset
            return {tp: (max(topic_holds) + 1, 0) for tp in args[2]}
        if fn is read_hole:
            hole = args[1]
            return [direct_event(hole.tp, o, topic_holds[o]) for o in range(hole.start, hole.end)]
        return fn(*args)

    heads = HeadSet(SETTINGS, "e1")
    heads.heads = {"global": {"intent": object()}}  # only the names are read
    return Cleaner(app=app, settings=SETTINGS, guard=OffsetGuard("validate_and_clean", IN.topic),
                   outbox=Outbox(SETTINGS, "clean", producer=producer, threaded=False), metrics=WorkerMetrics(process=False),
                   offload=offload, heads=heads, limits=Limits(), cleaned_topic=CLEANED, embedder_version="e1")


def run(step: Cleaner, batch: list[faust.Event]) -> None:
    asyncio.run(step.run(batch))


def acked(batch: list[faust.Event]) -> list[bool]:
    return [event.message.acked for event in batch]


def test_a_batch_is_cleaned_or_dead_lettered_and_its_inputs_acked_only_once_the_broker_has_every_output() -> None:
    journal: list[str] = []
    app, producer = App(journal), FakeProducer(journal=journal)
    batch = events(app, (0, raw("What is my balance?", "a")), (1, b"{not json"))
    step = cleaner(app, producer, {0: batch[0].value, 1: batch[1].value})
    run(step, batch)
    assert len(producer.produced) == 2 and not producer.delivered, "the step does not wait for the broker"
    assert acked(batch) == [False, False]
    step.outbox.poll(0)  # the broker acknowledges the first output only
    assert acked(batch) == [False, False], "no input is acked while an output of its batch is in flight"
    step.outbox.poll(0)
    assert acked(batch) == [True, True]
    [(topic, key, value), (dlq, _, letter)] = producer.delivered
    phrase = CleanedPhrase.from_bytes(value)
    assert (topic, phrase.id, key) == (CLEANED, "a", cache_key("e1", phrase.clean_text).encode())
    assert dlq == SETTINGS.topic_dlq and DeadLetter.model_validate_json(letter).error_kind == ErrorKind.INVALID_JSON
    assert step.outbox.in_flight == 0


def test_the_next_batch_is_taken_while_the_last_ones_outputs_are_in_flight_and_inputs_are_acked_in_order() -> None:
    journal: list[str] = []
    app, producer = App(journal), FakeProducer(journal=journal)
    holds = {o: raw(f"phrase number {o}", f"p{o}") for o in range(4)}
    step = cleaner(app, producer, holds)
    first, second = events(app, (0, holds[0]), (1, holds[1])), events(app, (2, holds[2]), (3, holds[3]))
    run(step, first)
    run(step, second)
    assert len(producer.produced) == 4 and step.outbox.in_flight == 4
    producer.queue.reverse()  # the broker acknowledges the second batch's outputs first
    step.outbox.poll(0)
    step.outbox.poll(0)
    assert acked(first) + acked(second) == [False] * 4, "a later batch waits for the earlier one"
    step.outbox.poll(0)
    step.outbox.poll(0)
    assert acked(first) + acked(second) == [True] * 4


def test_a_hole_is_read_and_served_first_and_marked_done_before_the_batch_is_produced() -> None:
    journal: list[str] = []
    app, producer = App(journal), FakeProducer(journal=journal)
    holds = {o: raw(f"phrase number {o}", f"p{o}") for o in range(7)}
    step = cleaner(app, producer, holds)
    run(step, events(app, (0, holds[0]), (1, holds[1])))
    later = events(app, (5, holds[5]), (6, holds[6]))  # offsets 2..4 never came
    run(step, later)
    step.outbox.flush()
    served = [CleanedPhrase.from_bytes(value).id for _, _, value in producer.delivered]
    assert served == ["p0", "p1", "p2", "p3", "p4", "p5", "p6"], "every message once, the hole's first"
    assert app.consumer.gaps == [(IN, 2, 4)]
    assert journal == ["gap", "flush"], "the gap is recorded before the batch's outputs are produced"
    assert acked(later) == [True, True] and step.guard.holes == 1


def test_messages_delivered_again_in_one_assignment_are_not_served_twice_but_acked_with_their_batch() -> None:
    journal: list[str] = []
    app, producer = App(journal), FakeProducer(journal=journal)
    holds = {o: raw(f"phrase number {o}", f"p{o}") for o in range(4)}
    step = cleaner(app, producer, holds)
    run(step, events(app, (0, holds[0]), (1, holds[1]), (2, holds[2])))
    again = events(app, (1, holds[1]), (2, holds[2]), (3, holds[3]))  # sought back to 1 (a table recovery)
    run(step, again)
    step.outbox.flush()
    served = [CleanedPhrase.from_bytes(value).id for _, _, value in producer.delivered]
    assert served == ["p0", "p1", "p2", "p3"], "each message once"
    assert acked(again) == [True, True, True], "the repeated copies are acked, so the commit passes them"
