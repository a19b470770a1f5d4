"""`phrasestream retrain` on the live broker: the replay window's edges, the command end to end, the gate.

Each test has its own topics (the ``stack`` fixture) and its own models folder, which shares the
suite's embedder export and feature cache through links (so CLINC150 texts are not embedded
again). Training uses a small configuration: a linear head, one candidate, no refit.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from models.datasets import load_clinc150
from models.registry import lifecycle
from ops.kafka.clients import client_config
from retrain.replay.reader import read_window
from retrain.replay.windows import Window, epoch_ms, from_ms, iso
from schemas.messages import LabeledPhrase

pytestmark = [pytest.mark.integration]

INTENTS = ("balance", "transfer", "freeze_account", "pin_change", "report_fraud")
FAST_CONFIG = {"head": {"max_epochs": 8, "patience": 3, "batch_size": 64, "ensemble": {"hidden": 0}},
               "selection": {"candidates": [{}], "refit": False}, "oos": {"threshold": "off"}}


def clinc_rows(per_intent: int, skip: int = 0) -> list[tuple[str, str]]:
    """CLINC150 training phrases of ``INTENTS``, ``per_intent`` each from position ``skip``, mixed."""
    by_intent: dict[str, list[str]] = {i: [] for i in INTENTS}
    for text, intent in load_clinc150("full").train:
        if intent in by_intent:
            by_intent[intent].append(text)
    rows = [(text, intent) for intent in INTENTS for text in by_intent[intent][skip : skip + per_intent]]
    random.Random(skip).shuffle(rows)
    return rows


def wrong(label: str) -> str:
    """A consistently wrong label: the next intent."""
    return INTENTS[(INTENTS.index(label) + 1) % len(INTENTS)]


def spread(n: int, days: float, now: datetime) -> list[int]:
    """``n`` record timestamps (ms) evenly over the last ``days`` days, oldest first."""
    step = timedelta(days=days) / n
    return [epoch_ms(now - timedelta(days=days) + step * (i + 0.5)) for i in range(n)]


def produce(settings, records: list[tuple[bytes | None, bytes, int, int | None]]) -> None:  # type: ignore[no-untyped-def]
    """Produce (key, value, timestamp ms, partition) records to the labelled topic."""
    producer = Producer(client_config(settings, {"enable.idempotence": True}))
    for key, value, ts, partition in records:
        extra = {} if partition is None else {"partition": partition}
        producer.produce(settings.topic_labeled, key=key, value=value, timestamp=ts, **extra)
    assert producer.flush(30) == 0


def example(text: str, label: str, region: str = "acme", model: str = "intent") -> bytes:
    return LabeledPhrase(text=text, label=label, region=region, model=model).to_bytes()


def partitions(settings) -> list[int]:  # type: ignore[no-untyped-def]
    admin = AdminClient(client_config(settings))
    return sorted(admin.list_topics(settings.topic_labeled, timeout=10).topics[settings.topic_labeled].partitions)


# --------------------------------------------------------------------------------------------
# the Kafka read


def test_the_replay_window_is_exact_at_both_edges_on_every_partition(stack):
    settings = stack.settings
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=1)
    s, e = epoch_ms(start), epoch_ms(end)
    parts = partitions(settings)
    assert len(parts) > 1
    records, expected = [], set()
    for p in parts:
        # offset 0 is older than the window; then timestamps out of order, as a producer may set them
        for ts in (s - 60_000, e + 1, e, s - 1, e - 1, s, s + 1):
            records.append((b"acme/intent", example(f"p{p} at {ts - s}", "a"), ts, p))
            if s <= ts < e:
                expected.add((p, ts))
        records.append((b"acme/other", example(f"p{p} other model", "a", model="other"), s + 10, p))
        records.append((b"acme/intent", b"{not json", s + 10, p))
    produce(settings, records)

    got = read_window(settings, settings.topic_labeled, Window(start, end, "day"), "acme", "intent",
                      progress=False)

    assert {(x.partition, x.timestamp_ms) for x in got.selection.examples} == expected
    assert len(got.selection.examples) == 3 * len(parts)
    assert [plan.start for plan in got.plans] == [1] * len(parts), "offsets_for_times skips the older offset 0"
    sel = got.selection
    assert (sel.n_other_heads, sel.n_invalid, sel.n_outside_window) == (len(parts), len(parts), 3 * len(parts))
    assert len(got.warnings) == 1 and got.warnings[0].startswith(f"skipped {len(parts)} invalid record(s)")


def test_a_window_older_than_the_records_still_held_warns_with_the_real_start(stack):
    settings = stack.settings
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    hours = [epoch_ms(t0 + timedelta(hours=h)) for h in (1, 2, 3)]
    produce(settings, [(b"acme/intent", example(f"p{p} h{i}", "a"), ts, p) for p in (0, 1) for i, ts in enumerate(hours)])
    admin = AdminClient(client_config(settings))
    for future in admin.delete_records([TopicPartition(settings.topic_labeled, 0, 1)]).values():
        future.result(30)  # partition 0 now starts at offset 1 (its record of hour 2)

    got = read_window(settings, settings.topic_labeled, Window(t0, t0 + timedelta(days=1), "day"),
                      "acme", "intent", progress=False)

    assert len(got.selection.examples) == 5
    assert got.first_held_ms == {0: hours[1]}
    assert len(got.warnings) == 1
    assert f"the data read starts at {iso(from_ms(hours[1]))}" in got.warnings[0]
    assert "partition(s) 0 (from offset 1)" in got.warnings[0]


# --------------------------------------------------------------------------------------------
# the command


def test_retrain_since_30d_end_to_end_from_produce_labeled(stack, base_settings, link_models, tmp_path: Path):
    models = link_models(base_settings.models_root.resolve(), tmp_path / "models")
    env = {**stack.env, "PHRASESTREAM_MODELS_DIR": str(models)}
    now = datetime.now(UTC)
    rows = clinc_rows(40)
    data = tmp_path / "labels.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["utterance", "intent", "ts"])
        for (text, intent), ts in zip(rows, spread(len(rows), 20, now)):
            w.writerow([text, intent, iso(from_ms(ts))])
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIG), encoding="utf-8")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, text=True, capture_output=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    res = cli("produce", "--labeled", "--data", str(data), "--text-col", "utterance", "--label-col", "intent",
              "--region", "acme", "--model", "intent")
    assert res.returncode == 0, res.stderr
    res = cli("retrain", "--region", "acme", "--model", "intent", "--since", "30d", "--config", str(config),
              "--json", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])

    assert out["n_read"] == 200 and out["n_invalid"] == 0
    assert out["n_train"] + out["n_test"] + out["n_duplicates"] == 200
    assert out["n_test"] == round(0.2 * (200 - out["n_duplicates"]))
    assert out["window"]["label"] == "30d"
    assert out["candidate"]["weighted_f1"] > 0.8 and 0 < out["candidate"]["accuracy"] <= 1
    assert out["live"] is None and out["decision"] == "promoted" and "no head of acme/intent is live" in out["reason"]
    settings = stack.settings.model_copy(update={"models_dir": models})
    assert lifecycle.live_ref(settings, "acme", "intent").version == out["candidate"]["version"]


@pytest.fixture(scope="module")
def embedder(base_settings):  # type: ignore[no-untyped-def]
    from models.embedder import load_embedder

    return load_embedder(base_settings, warm=False)


def train_live(settings, embedder, rows: list[tuple[str, str]]) -> str:  # type: ignore[no-untyped-def]
    """Train a head on ``rows`` directly and make it live; return its version."""
    from retrain.train.commands import _load_config
    from retrain.train.data import rows_from_records
    from retrain.train.trainer import make_trainer

    config = _load_config(None, {"region": "acme", "model": "intent", "data": {}, **FAST_CONFIG})
    data = rows_from_records([{"text": t, "label": label} for t, label in rows], source="test")
    trained = make_trainer(config).train(settings.models_root, embedder, data.rows, None, progress=False)
    lifecycle.promote(settings, trained.ref, reason="the live head of the test")
    return trained.ref.version


def retrain(settings, embedder, tmp_path: Path, capsys) -> dict:  # type: ignore[no-untyped-def]
    from retrain.replay.command import retrain_command

    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIG), encoding="utf-8")
    code = retrain_command(settings, region="acme", model="intent", since="30d", config_path=str(config),
                           as_json=True, progress=False, embedder=embedder)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out.strip().splitlines()[-1])


def test_a_candidate_trained_on_wrong_labels_is_refused_and_the_live_head_stays(
        stack, base_settings, embedder, link_models, tmp_path: Path, capsys):  # type: ignore[no-untyped-def]
    settings = stack.settings.model_copy(update={"models_dir": link_models(base_settings.models_root.resolve(),
                                                                             tmp_path / "models")})
    live_version = train_live(settings, embedder, clinc_rows(30, skip=60))
    now = datetime.now(UTC)
    # the older 80% carry wrong labels, the newest 20% (the test slice) the right ones
    old, new = clinc_rows(32), clinc_rows(8, skip=40)
    produce(settings, [(b"acme/intent", example(t, wrong(label)), ts, None)
                       for (t, label), ts in zip(old, spread(len(old), 20, now - timedelta(days=4)))]
            + [(b"acme/intent", example(t, label), ts, None) for (t, label), ts in zip(new, spread(len(new), 3, now))])

    out = retrain(settings, embedder, tmp_path, capsys)

    assert out["n_test"] == 40 and out["n_train"] == 160 - out["n_duplicates"]
    assert out["decision"] == "kept_live", out
    assert out["live"]["version"] == live_version and out["live"]["weighted_f1"] > 0.8
    assert out["candidate"]["weighted_f1"] < 0.3
    assert out["reason"].startswith(f"candidate weighted F1 {out['candidate']['weighted_f1']:.4f} < live")
    assert lifecycle.live_ref(settings, "acme", "intent").version == live_version
    assert Path(out["candidate"]["path"]).is_dir(), "the refused candidate stays built"


def test_a_good_candidate_replaces_a_bad_live_head(stack, base_settings, embedder, link_models, tmp_path: Path, capsys):  # type: ignore[no-untyped-def]
    settings = stack.settings.model_copy(update={"models_dir": link_models(base_settings.models_root.resolve(),
                                                                             tmp_path / "models")})
    bad_version = train_live(settings, embedder, [(t, wrong(label)) for t, label in clinc_rows(30, skip=60)])
    rows = clinc_rows(40)
    produce(settings, [(b"acme/intent", example(t, label), ts, None)
                       for (t, label), ts in zip(rows, spread(len(rows), 20, datetime.now(UTC)))])

    out = retrain(settings, embedder, tmp_path, capsys)

    assert out["decision"] == "promoted", out
    assert out["live"]["version"] == bad_version and out["live"]["weighted_f1"] < 0.3
    assert out["candidate"]["weighted_f1"] > 0.8
    assert lifecycle.live_ref(settings, "acme", "intent").version == out["candidate"]["version"]
