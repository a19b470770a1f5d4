"""Live workers follow the registry topic: promote and roll back without a restart, refuse a
corrupted bundle once, and load a promoted head with no shared files.

Two versions of a small head ``acme/intent`` are trained once for the module in an "origin"
models folder (the machine that trains). Every worker here runs with a models folder of its
own that holds no head files: it gets them from the bundles in PostgreSQL. (The embedder
export and feature cache are linked, as the embedder is rebuilt from its package anyway.)
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
from bounds import BOUND_S
from confluent_kafka import Consumer, Producer
from psycopg2 import sql

from models.heads import HeadRef, verify_head
from models.registry import lifecycle
from models.registry.bundles import BundleStore
from ops.kafka.clients import client_config
from streams.app import READY_LINE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTENTS = ("balance", "transfer", "freeze_account", "pin_change", "report_fraud")
FAST_CONFIG = {"head": {"max_epochs": 8, "patience": 3, "batch_size": 64, "ensemble": {"hidden": 0}},
               "selection": {"candidates": [{}], "refit": False}, "oos": {"threshold": "off"}}
PHRASES = ["what is my balance", "send 20 dollars to my brother", "freeze my card please",
           "change the pin of my card", "someone used my card without me, report it"]


@pytest.fixture(scope="module")
def origin(base_settings, link_models, tmp_path_factory) -> tuple[Path, list[HeadRef]]:  # type: ignore[no-untyped-def]
    """Train two versions of acme/intent (different halves of the data) in an origin models folder."""
    from models.datasets import load_clinc150
    from models.embedder import load_embedder
    from retrain.train.commands import _load_config
    from retrain.train.data import rows_from_records
    from retrain.train.trainer import make_trainer

    root = link_models(base_settings.models_root.resolve(), tmp_path_factory.mktemp("origin") / "models")
    settings = base_settings.model_copy(update={"models_dir": root})
    embedder = load_embedder(settings, warm=False)
    pairs = [(t, label) for t, label in load_clinc150("full").train if label in INTENTS]
    config = _load_config(None, {"region": "acme", "model": "intent", "data": {}, **FAST_CONFIG})
    refs = []
    for half in (pairs[0::2], pairs[1::2]):
        data = rows_from_records([{"text": t, "label": label} for t, label in half], source="test")
        refs.append(make_trainer(config).train(root, embedder, data.rows, None, progress=False).ref)
    assert refs[0] != refs[1]
    return root, refs


def at(stack, models: Path):  # type: ignore[no-untyped-def]
    """The stack's settings with ``models`` as the models folder."""
    return stack.settings.model_copy(update={"models_dir": models})


def start_worker(stack, name: str, models: Path):  # type: ignore[no-untyped-def]
    return stack.start("worker", READY_LINE, label=name, PHRASESTREAM_MODELS_DIR=str(models))


class Traffic:
    """Send ``acme`` phrases at a steady pace in a thread; every one has a unique id."""

    def __init__(self, settings, per_second: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        self.settings, self.pause = settings, 1.0 / per_second
        self.sent: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = Producer(client_config(self.settings, {"linger.ms": 5}))
        i = 0
        while not self._stop.is_set() and i < 5000:  # bounded in count, and in time by the test
            pid = f"t{i:05d}"
            producer.produce(self.settings.topic_in, value=json.dumps(
                {"id": pid, "text": PHRASES[i % len(PHRASES)], "region": "acme"}).encode())
            producer.poll(0)
            self.sent.append(pid)
            i += 1
            time.sleep(self.pause)
        assert producer.flush(30) == 0

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


class Predictions:
    """Read ``predictions.out`` from its start, keeping every prediction as it arrives."""

    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        self.consumer = Consumer(client_config(settings, {"group.id": f"t-{uuid.uuid4().hex}",
                                                          "auto.offset.reset": "earliest", "enable.auto.commit": False}))
        self.consumer.subscribe([settings.topic_out])
        self.got: list[dict] = []

    def poll(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg = self.consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                self.got.append(json.loads(msg.value()))

    def wait_for(self, cond, timeout: float) -> bool:  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.poll(0.5)
            if cond(self.got):
                return True
        return False

    def close(self) -> None:
        self.consumer.close()


def promote(settings, ref: HeadRef, reason: str) -> None:  # type: ignore[no-untyped-def]
    lifecycle.promote(settings, ref, reason=reason)


def test_a_live_worker_follows_promote_then_rollback_without_a_restart(bare_stack, origin, link_models, tmp_path: Path):
    root, (v1, v2) = origin
    trainer = at(bare_stack, root)
    promote(trainer, v1, "first")
    worker = start_worker(bare_stack, "worker", link_models(root, tmp_path / "w"))
    preds = Predictions(bare_stack.settings)
    try:
        with Traffic(bare_stack.settings) as traffic:
            assert preds.wait_for(lambda got: len(got) >= 20, BOUND_S), "the worker answers before the promotion"
            t_promote = time.monotonic()
            promote(trainer, v2, "second half of the data")
            assert preds.wait_for(lambda got: any(p["model_version"] == v2.version for p in got), BOUND_S)
            followed_promote_s = time.monotonic() - t_promote
            preds.poll(2.0)
            t_rollback = time.monotonic()
            done = lifecycle.rollback(trainer, "acme", "intent", reason="testing the rollback")
            assert done.ref == v1 and done.before == v2.version
            seen_v2 = len(preds.got)
            assert preds.wait_for(lambda got: any(p["model_version"] == v1.version for p in got[seen_v2:]), BOUND_S)
            followed_rollback_s = time.monotonic() - t_rollback
            preds.poll(2.0)
        sent = list(traffic.sent)
        assert preds.wait_for(lambda got: {p["id"] for p in got} >= set(sent), BOUND_S), "every phrase is answered"
    finally:
        preds.close()
    print(f"followed the promotion in {followed_promote_s:.1f} s and the rollback in {followed_rollback_s:.1f} s; "
          f"{len(sent)} phrases, max latency {max(p['latency_ms'] for p in preds.got):.0f} ms")
    by_id = {}
    for p in preds.got:
        assert p["id"] not in by_id, f"{p['id']} answered twice"
        by_id[p["id"]] = p["model_version"]
    assert set(by_id) == set(sent), "no phrase is dropped"
    # v1, then v2, then v1 again, in the order the worker served them: a batch is served by one
    # version, and a swap happens between batches
    versions = [p["model_version"] for p in sorted(preds.got, key=lambda p: (p["predicted_at"], p["id"]))]
    assert set(versions) == {v1.version, v2.version}
    runs = [k for k, _ in itertools.groupby(versions)]
    assert runs == [v1.version, v2.version, v1.version], runs[:10]
    assert worker.poll() is None, "the worker was never restarted"
    log = (bare_stack.logs / "worker.log").read_text(errors="replace")
    assert log.count(f"now serving head {v2}") == 1 and log.count(f"now serving head {v1}") == 2


def test_a_corrupted_bundle_is_refused_once_and_the_old_head_keeps_serving(bare_stack, origin, link_models, tmp_path: Path):
    root, (v1, v2) = origin
    trainer = at(bare_stack, root)
    promote(trainer, v1, "first")
    BundleStore(trainer).put(v2, v2.path(root))
    with psycopg2.connect(bare_stack.settings.dsn) as conn, conn.cursor() as cur:  # bit rot in storage
        cur.execute(sql.SQL("UPDATE {} SET bundle = overlay(bundle PLACING %s FROM 5000) WHERE version = %s").format(
            sql.Identifier(bare_stack.settings.pg_schema, "model_bundles")), (b"\x00rot\x00", v2.version))
    start_worker(bare_stack, "worker", link_models(root, tmp_path / "w"))
    promote(trainer, v2, "its stored bundle is corrupted")
    bare_stack.wait_log("worker", f"refused head {v2}")  # the worker has seen the promotion and refused it

    preds = Predictions(bare_stack.settings)
    try:
        # then traffic for a while: a refused version must not be tried again meanwhile (the retry timer
        # ticks every 2 s; the old reload period was 10 s). A window of time, not a guess: it can only pass.
        window = time.monotonic() + 15
        i = 0
        while time.monotonic() < window:
            bare_stack.produce(json.dumps({"id": f"c{i}", "text": PHRASES[i % 5], "region": "acme"}).encode())
            i += 1
            preds.poll(1.0)
        assert preds.wait_for(lambda got: len(got) >= i, BOUND_S), bare_stack.tails()
    finally:
        preds.close()
    assert {p["model_version"] for p in preds.got} == {v1.version}, "the old head keeps serving"
    log = (bare_stack.logs / "worker.log").read_text(errors="replace")
    refused = [line for line in log.splitlines() if f"refused head {v2}" in line]
    assert len(refused) == 1, refused
    assert "sha256" in refused[0] and f"still serving {v1.version}" in refused[0]
    assert not v2.path(tmp_path / "w").exists(), "nothing of the corrupted bundle is kept"


def test_a_second_worker_with_its_own_models_folder_gets_the_promoted_head(bare_stack, origin, link_models, tmp_path: Path):
    root, (v1, v2) = origin
    trainer = at(bare_stack, root)
    promote(trainer, v1, "first")
    first, second = link_models(root, tmp_path / "first"), link_models(root, tmp_path / "second")
    start_worker(bare_stack, "worker", first)
    start_worker(bare_stack, "worker-2", second)
    promote(trainer, v2, "both workers follow")
    for name, folder in (("worker", first), ("worker-2", second)):
        bare_stack.wait_log(name, f"now serving head {v2}")
        assert verify_head(v2.path(folder))["ref"] == str(v2), "the files came from the bundle, verified"
        assert not v2.path(folder).is_symlink() and not v1.path(folder).is_symlink()
    # both serve it: every answer after the promotion comes from v2, whichever worker owns the partition
    bare_stack.produce(*[json.dumps({"id": f"s{i}", "text": PHRASES[i % 5], "region": "acme"}).encode()
                         for i in range(40)])
    got = bare_stack.read(bare_stack.settings.topic_out, 40)
    assert len(got) == 40 and {p["model_version"] for p in got} == {v2.version}
