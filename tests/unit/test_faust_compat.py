"""Pin every private Faust / aiokafka call of the worker (streams.kafka.faust_compat) to the installed faust-streaming.

Each test fails when faust-streaming renames, re-signs or drops what the worker relies on, or
when a public way appears (then the shim can go). Run this file first after an upgrade. The
last test keeps such calls in the one module.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaProducer
from faust.exceptions import NotReady
from faust.transport.drivers.aiokafka import Consumer, Producer
from faust.types import TP
from faust.types.tuples import Message
from faust.utils.terminal import Spinner

from streams.kafka import faust_compat

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "phrases.cleaned"
TP0 = TP(TOPIC, 0)


def offline_app() -> faust.App:
    """A Faust app on a broker that is never dialled: its consumer and producer exist, unstarted."""
    return faust.App(f"compat-{id(object())}", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False)


def message(offset: int, value: bytes = b"v") -> Message:
    return Message(TOPIC, 0, offset, 0.0, 0, None, b"k", value, None, tp=TP0)


def committable_after(acked: list[int], gap: tuple[int, int] | None) -> int | None:
    """Ack ``acked`` on a real Faust consumer, add ``gap`` through the shim, return the offset Faust would commit."""
    app = offline_app()
    app.topics.acking_topics.add(TOPIC)  # what subscribing an agent to the topic does
    consumer = app.consumer
    for offset in acked:
        assert consumer.ack(message(offset))
    if gap is not None:
        asyncio.run(faust_compat.add_gap(app, TP0, *gap))
    return consumer._new_offset(TP0)  # what Consumer.commit() commits for the partition


# --- add_gap: Consumer._add_gap --------------------------------------------------------------


def test_consumer_add_gap_keeps_its_signature() -> None:
    method = Consumer._add_gap
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self", "tp", "offset_from", "offset_to"]


def test_a_gap_lets_the_commit_pass_a_hole_its_last_offset_included() -> None:
    assert committable_after([0, 1, 2, 6, 7], None) == 3, "without the gap Faust stops at the hole"
    assert committable_after([0, 1, 2, 6, 7], (3, 5)) == 8, "with it the commit passes the hole"


# --- kafka_producer / changelog_metadata: Producer._ensure_producer ------------------------


def test_producer_ensure_producer_keeps_its_signature() -> None:
    method = Producer._ensure_producer
    assert list(inspect.signature(method).parameters) == ["self"]
    assert inspect.signature(method).return_annotation in (AIOKafkaProducer, "aiokafka.AIOKafkaProducer")
    assert inspect.iscoroutinefunction(AIOKafkaProducer.partitions_for)
    assert list(inspect.signature(AIOKafkaProducer.partitions_for).parameters) == ["self", "topic"]


def test_kafka_producer_raises_not_ready_before_faust_starts_its_producer() -> None:
    with pytest.raises(NotReady):
        faust_compat.kafka_producer(offline_app())


def test_changelog_metadata_asks_the_aiokafka_producer_faust_started() -> None:
    asked: list[str] = []

    class Started:
        async def partitions_for(self, topic: str) -> set[int]:
            asked.append(topic)
            return {0, 1}

    app = offline_app()
    app.producer._producer = Started()  # what Producer.on_start sets
    asyncio.run(faust_compat.changelog_metadata(app, "worker-embedding-cache-changelog"))
    assert asked == ["worker-embedding-cache-changelog"]


# --- set_fetch_wait: Fetcher._fetch_max_wait_ms of Faust's aiokafka consumer ----------------


def test_faust_still_fixes_the_fetch_wait_at_1500_ms_and_aiokafka_reads_it_for_each_fetch() -> None:
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert "fetch_max_wait_ms=1500" in inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer), \
        "Faust changed its fetch wait (a setting now?): check set_fetch_wait"
    assert "self._fetch_max_wait_ms" in inspect.getsource(Fetcher.__init__)
    assert "self._fetch_max_wait_ms" in inspect.getsource(Fetcher._get_actions_per_node), \
        "aiokafka no longer reads the wait per fetch: a change after the start would not count"


def test_the_fetch_wait_is_set_on_the_started_consumers_fetcher_and_not_before() -> None:
    from types import SimpleNamespace

    app = offline_app()
    assert faust_compat.set_fetch_wait(app, 0.02) is False, "no consumer started yet"
    fetcher = SimpleNamespace(_fetch_max_wait_ms=1500)
    app.consumer._thread._consumer = SimpleNamespace(_fetcher=fetcher)  # what AIOKafkaConsumerThread.on_start sets
    assert faust_compat.set_fetch_wait(app, 0.02) is True and fetcher._fetch_max_wait_ms == 20


# --- take_batches: Stream._enable_passive, as Stream.take_events uses it --------------------


def test_take_batches_mirrors_take_events_which_still_fills_its_buffer_the_same_way() -> None:
    """take_batches is take_events without its wait and its acks: the parts it shares must still be Faust's way."""
    source = inspect.getsource(faust.Stream.take_events)
    for part in ("self.add_processor(", "self._enable_passive(", "self.enable_acks = False", "self.current_event",
                 "self.wait_for_stopped("):
        assert part in source, f"Stream.take_events no longer uses {part}: check take_batches against it"
    assert list(inspect.signature(faust.Stream._enable_passive).parameters) == ["self", "channel", "declare"]
    assert "enable_acks" in inspect.signature(faust.Stream.__init__).parameters
    assert "self.current_event = " in inspect.getsource(faust.Stream._set_current_event)


# --- drop_spinner: Worker.spinner --------------------------------------------------------


def test_faust_still_draws_a_spinner_that_may_be_none_and_ours_draws_none() -> None:
    from streams.worker import Worker

    app = offline_app()
    assert isinstance(faust.Worker(app, quiet=True, override_logging=False).spinner, Spinner), \
        "Faust no longer makes a spinner: drop_spinner can go"
    assert "Optional" in str(faust.Worker.__annotations__["spinner"]), "None is no longer a value Faust expects"
    assert Worker(offline_app(), quiet=True, override_logging=False).spinner is None
    bare = faust.Worker(app, quiet=True, override_logging=False)
    faust_compat.drop_spinner(bare)
    assert bare.spinner is None


# --- direct_event: what the agents read of a Faust event ---------------------------------


def test_an_event_read_directly_carries_what_the_agents_read_of_a_faust_event() -> None:
    real = faust.Event(offline_app(), b"k", b"phrase", None, message(41, b"phrase"))
    direct = faust_compat.direct_event(TP0, 41, b"phrase")
    assert direct.value == real.value
    for field in dataclasses.fields(faust_compat.DirectMessage):
        assert getattr(direct.message, field.name) == getattr(real.message, field.name), field.name


# --- one door -----------------------------------------------------------------------------


WORKER_SOURCES = [*ROOT.glob("streams/*.py"), *ROOT.glob("streams/kafka/*.py"), *ROOT.glob("streams/state/*.py")]


def foreign_private_uses(path: Path) -> list[str]:
    """Return the attribute uses in ``path`` that belong in faust_compat: ``x._name`` on anything but
    self/cls, the spinner and SimpleNamespace stand-ins."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            if (private and owner not in ("self", "cls")) or node.attr in ("spinner", "_enable_passive"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id == "SimpleNamespace":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: SimpleNamespace")
    return found


def test_private_faust_calls_live_only_in_faust_compat() -> None:
    compat = Path(faust_compat.__file__).resolve()
    assert compat in WORKER_SOURCES and len(WORKER_SOURCES) > 10
    assert foreign_private_uses(compat), "the scan finds the shims where they are"
    found = [use for path in WORKER_SOURCES if path != compat for use in foreign_private_uses(path)]
    assert found == []
