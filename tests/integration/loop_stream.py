"""The expert-loop test's plumbing: the command line, producing, and reading whole topics.

Kept apart from the test so the test reads as the loop's steps. Every wait is on a signal (an
exit, a message, a topic's end); the bounds (``bounds.py``) only turn a hang into a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bounds import BOUND_S, POLL_S
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from sklearn.metrics import f1_score

from ops.kafka.clients import client_config
from ops.kafka.offsets import read_watermarks
from ops.kafka.produce import produce_retrying
from retrain.replay.windows import epoch_ms
from schemas.messages import LabeledPhrase


def cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``phrasestream ARGS`` with ``env``; return the finished process (text output)."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, text=True, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def last_json(res: subprocess.CompletedProcess) -> dict[str, Any]:
    """The JSON object on the last line of a command's standard output (asserting it exited 0)."""
    assert res.returncode == 0, f"exit {res.returncode}: {res.stderr[-3000:]}\n{res.stdout[-2000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def produce_labeled(settings: Any, rows: list[tuple[str, str]], region: str, model: str,
                    stamps: list[datetime]) -> None:
    """Produce ``rows`` (text, label) to ``phrases.labeled``, each with its ts as the record timestamp."""
    producer = Producer(client_config(settings, {"enable.idempotence": True}))
    key = f"{region}/{model}".encode()
    for (text, label), ts in zip(rows, stamps, strict=True):
        value = LabeledPhrase(text=text, label=label, region=region, model=model, ts=ts).to_bytes()
        producer.produce(settings.topic_labeled, key=key, value=value, timestamp=epoch_ms(ts))
    assert producer.flush(BOUND_S) == 0


def spread(n: int, start: datetime, end: datetime) -> list[datetime]:
    """``n`` times evenly inside [start, end), oldest first."""
    step = (end - start) / n
    return [start + step * (i + 0.5) for i in range(n)]


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def send(settings: Any, region: str, phrases: Iterable[tuple[str, str, str]], prefix: str = "") -> list[str]:
    """Send (id, text, _) phrases to ``phrases.in`` as ``prefix + id``; return the ids sent."""
    producer = Producer(client_config(settings))
    ids = []
    for pid, text, _ in phrases:
        ids.append(prefix + pid)
        produce_retrying(producer, settings.topic_in, json.dumps({"id": prefix + pid, "text": text,
                                                                  "region": region}).encode())
    assert producer.flush(BOUND_S) == 0
    return ids


def read_topic(settings: Any, topic: str, until: Callable[[list[dict]], bool] | None = None,
               timeout: float = BOUND_S) -> list[dict]:
    """Read ``topic`` from its start: to its current end, or (``until``) until ``until(found)`` holds.

    With ``until`` the end is asked anew while waiting, so messages still to come are read too;
    the bound only turns a hang into a failure (the caller asserts on what came back).
    """
    consumer = Consumer(client_config(settings, {"group.id": f"loop-reader-{uuid.uuid4().hex}",
                                                 "enable.auto.commit": False, "enable.partition.eof": False}))
    found: list[dict] = []
    start = time.monotonic()
    try:
        parts = sorted(read_watermarks(consumer, topic))
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        while time.monotonic() - start < timeout:
            if until is not None and until(found):
                break
            msg = consumer.poll(POLL_S)
            if msg is not None and msg.error() is None and msg.value() is not None:
                found.append(json.loads(msg.value()))
                continue
            if until is None and msg is None:
                ends = {p: high for p, (_low, high) in read_watermarks(consumer, topic).items()}
                at = {tp.partition: tp.offset for tp in consumer.position([TopicPartition(topic, p) for p in parts])}
                if all(at[p] >= ends[p] or (ends[p] == 0) for p in parts):
                    break
    finally:
        consumer.close()
    return found


def by_id(messages: list[dict], ids: Iterable[str]) -> dict[str, dict]:
    """The newest message of each of ``ids``."""
    wanted = set(ids)
    return {m["id"]: m for m in messages if m.get("id") in wanted}


def predictions_of(settings: Any, topic: str, ids: list[str], version: str | None = None) -> dict[str, dict]:
    """Wait until ``topic`` holds an answer for every id of ``ids`` (by ``version``, when given); return them."""
    wanted = set(ids)

    def answered(found: list[dict]) -> bool:
        return wanted <= {m["id"] for m in found if version is None or m.get("model_version") == version}

    found = read_topic(settings, topic, until=answered)
    got = {m["id"]: m for m in found if m.get("id") in wanted and (version is None or m.get("model_version") == version)}
    missing = wanted - set(got)
    assert not missing, f"{len(missing)} of {len(wanted)} phrases got no answer on {topic} (e.g. {sorted(missing)[:3]})"
    return got


def weighted_f1(truth: dict[str, str], answers: dict[str, dict], key: Callable[[str], str] = lambda i: i) -> float:
    """Weighted F1 (scikit-learn, over the true labels) of the answers' labels against ``truth``."""
    ids = sorted(truth)
    y_true = [truth[i] for i in ids]
    y_pred = [answers[key(i)]["label"] for i in ids]
    return round(float(f1_score(y_true, y_pred, labels=sorted(set(y_true)), average="weighted", zero_division=0)), 4)
