"""The worker's outputs: produced in batches by the Outbox, partitioned like Faust's table, and
the cleaned topic keyed by the cache key of the cleaned text."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner
from bounds import BOUND_S, POLL_S
from confluent_kafka import Consumer, TopicPartition

from models.embedder.runtime import features_id_for, known_precision
from ops.kafka.clients import client_config
from ops.kafka.offsets import end_offsets
from ops.kafka.topics import create_topic
from streams.app import READY_LINE
from streams.kafka.outbox import Outbox
from streams.state.cache import cache_key

pytestmark = pytest.mark.integration


def read_all(settings, topic: str, count: int, timeout: float = BOUND_S) -> list:  # type: ignore[no-untyped-def]
    consumer = Consumer(client_config(settings, {"group.id": f"t-{uuid.uuid4().hex}",
                                                 "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    got: list = []
    end = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < end:
        got += [m for m in consumer.consume(500, timeout=POLL_S) if m.error() is None]
    consumer.close()
    return got


def test_the_outbox_partitions_keys_as_faust_tables_do_and_flush_waits_for_every_message(stack):
    settings = stack.settings
    topic = f"{settings.topic_out}.outbox"
    create_topic(settings, topic, 4)
    outbox = Outbox(settings, "test")
    keys = [f"v1:{i:032x}".encode() for i in range(400)]
    for key in keys:
        outbox.put(topic, key, b"x")
    outbox.flush()
    assert sum(end_offsets(client_config(settings), topic).values()) == 400, \
        "flush returns once the broker has every message"
    aiokafka = DefaultPartitioner()
    got = read_all(settings, topic, 400)
    assert len(got) == 400
    for msg in got:
        assert msg.partition() == aiokafka(msg.key(), [0, 1, 2, 3], [0, 1, 2, 3]), \
            "a phrase and its cache entry land on the same partition number"


def test_variants_that_clean_alike_share_one_key_on_the_cleaned_topic_and_one_cache_entry(stack):
    stack.start("worker", READY_LINE)
    first = {"id": "v-1", "text": "What is my balance?", "region": "global", "models": ["intent"]}
    stack.produce(json.dumps(first).encode())
    assert stack.read(stack.settings.topic_out, 1)
    stack.produce(json.dumps({**first, "id": "v-2", "text": "WHAT is my   balance???"}).encode())
    preds = {p["id"]: p for p in stack.read(stack.settings.topic_out, 2)}
    assert preds["v-2"]["clean_text"] == preds["v-1"]["clean_text"] == "what is my balance?"
    assert (preds["v-1"]["cache_hit"], preds["v-2"]["cache_hit"]) == (False, True)
    cleaned = read_all(stack.settings, f"{stack.settings.app_id}-phrases.cleaned", 2)
    version = preds["v-1"]["embedder_version"]
    precision = known_precision(stack.settings, version)  # the worker's, as auto chose and remembered it
    assert precision is not None
    want = cache_key(features_id_for(version, precision), "what is my balance?").encode()
    assert [m.key() for m in cleaned] == [want, want]
