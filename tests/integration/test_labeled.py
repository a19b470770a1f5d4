"""Labelled examples: `produce --labeled` on the live broker, and `phrases.labeled` kept for good."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from bounds import BOUND_S

from ops.kafka import topics
from ops.kafka.clients import client_config

pytestmark = pytest.mark.integration


def _topic_config(settings, name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(client_config(settings))
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(30).items()}


def test_produce_labeled_puts_every_row_on_the_topic_with_its_ts(stack, tmp_path: Path):
    data = tmp_path / "feedback.csv"
    rows = [("how do I reset my PIN?", "pin_change", "2026-03-01T10:00:00Z"),
            ("card stolen, freeze it", "freeze_account", ""),
            ("   ", "balance", ""),
            ("what's my balance", "balance", "2026-03-02T11:30:00+01:00")]
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["utterance", "intent", "ts"])
        w.writerows(rows)
    res = subprocess.run([sys.executable, "-m", "streams.cli", "produce", "--labeled", "--data", str(data),
                          "--text-col", "utterance", "--label-col", "intent", "--region", "eu", "--model", "intent"],
                         env=stack.env, capture_output=True, text=True, timeout=BOUND_S)
    assert res.returncode == 0, res.stderr
    assert "produced 3 labelled example(s) of eu/intent" in res.stderr and "dropped 1 row" in res.stderr
    got = sorted(stack.read(stack.settings.topic_labeled, 3), key=lambda m: m["text"])
    assert [(m["text"], m["label"], m["region"], m["model"]) for m in got] == [
        ("card stolen, freeze it", "freeze_account", "eu", "intent"),
        ("how do I reset my PIN?", "pin_change", "eu", "intent"),
        ("what's my balance", "balance", "eu", "intent")]
    assert got[1]["ts"].startswith("2026-03-01T10:00:00") and got[2]["ts"].startswith("2026-03-02T11:30:00")
    assert got[0]["ts"], "a row without ts gets the time it was produced"


def test_the_labeled_topic_keeps_examples_for_good_and_an_older_topic_is_brought_in_line(stack):
    settings = stack.settings
    assert _topic_config(settings, settings.topic_labeled)["retention.ms"] == "-1"
    old = f"{settings.topic_labeled}.old"
    topics.create_topic(settings, old, 1, {"cleanup.policy": "delete", "retention.ms": str(30 * topics.DAY_MS)})
    assert _topic_config(settings, old)["retention.ms"] == str(30 * topics.DAY_MS)
    assert topics.create_topic(settings, old, 1, {"retention.ms": "-1"}) is False
    assert _topic_config(settings, old)["retention.ms"] == "-1"
