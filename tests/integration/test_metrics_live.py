"""A real worker and sink serve /metrics whose counters equal what was produced; logs as JSON lines."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from bounds import BOUND_S, POLL_S
from prometheus_client.parser import text_string_to_metric_families

from models.registry.lifecycle import active_heads
from streams.app import READY_LINE

pytestmark = pytest.mark.integration

SINK_READY = "sink started"
NATIVE_TF_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} \d\d:\d\d:\d)")
"""A line of TensorFlow's native logging: ``I0000 00:00:1795855909.603252 6405 port.cc:153] ...``."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics: {(sample name, sorted labels): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_until(port: int, done: Callable[[dict], bool], timeout: float = BOUND_S) -> dict:
    """Scrape until ``done(samples)`` (the counters move after the broker acknowledged a batch)."""
    deadline = time.monotonic() + timeout
    got = scrape(port)
    while not done(got) and time.monotonic() < deadline:
        time.sleep(POLL_S)
        got = scrape(port)
    return got


def get(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


VALID = [
    {"id": "m1", "text": "how do I reset my PIN?", "region": "global"},
    {"id": "m2", "text": "what's my balance", "region": "global", "models": ["intent"]},
    {"id": "m3", "text": "book a table for two", "region": "global"},
]
INVALID = {
    b'{"text": "unterminated': "invalid_json",
    b"[1, 2": "invalid_json",
    json.dumps({"text": "   ", "region": "global"}).encode(): "empty_text",
    json.dumps({"text": "hello", "region": "atlantis"}).encode(): "unknown_region",
}


def test_worker_and_sink_metrics_count_what_was_produced_predicted_dead_lettered_and_stored(stack):
    heads = active_heads(stack.settings)
    assert heads.get("global"), "no live heads of region global: run `make train`"
    worker_port, sink_port = free_port(), free_port()
    stack.start("worker", READY_LINE, PHRASESTREAM_WORKER_METRICS_PORT=str(worker_port))
    stack.start("sink", SINK_READY, PHRASESTREAM_SINK_METRICS_PORT=str(sink_port))
    stack.produce(*[json.dumps(p).encode() for p in VALID], *INVALID)

    per_head = {m: sum(1 for p in VALID if m in p.get("models", heads["global"])) for m in heads["global"]}
    n_predictions = sum(per_head.values())
    predictions = stack.read(stack.settings.topic_out, n_predictions)
    letters = stack.read(stack.settings.topic_dlq, len(INVALID))
    assert len(predictions) == n_predictions and len(letters) == len(INVALID)
    rows = stack.wait_rows(n_predictions)
    assert len(rows) == n_predictions

    produced = len(VALID) + len(INVALID)
    w = scrape_until(worker_port, lambda s: get(s, "phrasestream_latency_seconds_count") == n_predictions
                     and get(s, "phrasestream_phrases_in_total") == produced)
    assert get(w, "phrasestream_phrases_in_total") == produced
    for model, count in per_head.items():
        assert get(w, "phrasestream_predictions_total", region="global", model=model) == count, model
    kinds = {kind: list(INVALID.values()).count(kind) for kind in set(INVALID.values())}
    for kind, count in kinds.items():
        assert get(w, "phrasestream_dead_letters_total", kind=kind) == count, kind
    assert get(w, "phrasestream_dead_letters_total", kind="text_too_long") == 0
    assert get(w, "phrasestream_cache_hits_total") + get(w, "phrasestream_cache_misses_total") == len(VALID)
    assert get(w, "phrasestream_latency_seconds_count") == n_predictions
    assert get(w, "phrasestream_batch_size_sum") == len(VALID)
    assert get(w, "phrasestream_embed_seconds_count") >= 1
    for p in predictions:  # the version that served is the live one
        assert get(w, "phrasestream_head_info", region="global", model=p["model"], version=p["model_version"]) == 1
        assert get(w, "phrasestream_head_seconds_count", region="global", model=p["model"]) >= 1

    s = scrape_until(sink_port, lambda s: get(s, "phrasestream_sink_rows_written_total") == n_predictions)
    assert get(s, "phrasestream_sink_rows_written_total") == n_predictions
    assert get(s, "phrasestream_sink_dead_letters_total", kind="wrong_type") == 0
    assert get(s, "phrasestream_sink_write_seconds_count") >= 1
    # librdkafka's statistics come every 5 s, so the lag gauge follows the commits by up to 5 s: once the
    # sink has committed everything (the signal), the gauge must come down to 0 at a later statistics tick
    stack.wait_sink_caught_up()

    def lags(samples: dict) -> dict[str, float]:
        return {dict(k[1])["partition"]: v for k, v in samples.items() if k[0] == "phrasestream_sink_consumer_lag"}

    s = scrape_until(sink_port, lambda s: bool(lags(s)) and sum(lags(s).values()) == 0)
    assert lags(s) and all(dict(k[1])["topic"] == stack.settings.topic_out
                           for k in s if k[0] == "phrasestream_sink_consumer_lag")
    assert sum(lags(s).values()) == 0, lags(s)


@dataclass
class JsonRun:
    """What one worker did: logging JSON, with its /metrics port held by another socket."""

    predictions: list[dict]
    letters: list[dict]
    alive_after_serving: bool
    log: str


@pytest.fixture(scope="module")
def json_run(module_stack) -> JsonRun:  # type: ignore[no-untyped-def]
    """Start a worker with JSON logs on a metrics port another socket holds; send it a phrase and a
    broken message, read the answers, then stop it (Faust logs its shutdown too). The two tests
    below read this one run: a worker's start is most of either test's cost."""
    st = module_stack
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        st.start("worker", READY_LINE, PHRASESTREAM_WORKER_METRICS_PORT=str(port), PHRASESTREAM_LOG_FORMAT="json")
        st.produce(json.dumps(VALID[1]).encode(), b'{"broken')
        predictions = st.read(st.settings.topic_out, 1)
        letters = st.read(st.settings.topic_dlq, 1)
    alive = st.procs["worker"].poll() is None
    st.stop("worker")
    return JsonRun(predictions, letters, alive, (st.logs / "worker.log").read_text(errors="replace"))


def test_a_second_worker_on_a_taken_metrics_port_says_so_once_and_serves(json_run):
    assert len(json_run.predictions) == 1
    assert json_run.alive_after_serving
    said = [line for line in json_run.log.splitlines() if "going on without /metrics" in line]
    assert len(said) == 1 and json.loads(said[0])["level"] == "warning"


def test_json_logs_carry_the_workers_and_fausts_lines_one_object_each(json_run):
    assert len(json_run.letters) == 1
    text = json_run.log
    assert "\x1b[" not in text  # no terminal codes (Faust's spinner)
    # TensorFlow's C++ runtime (absl) writes a few lines straight to file descriptor 2 while it
    # loads, before any Python logging: those are the only lines allowed not to be JSON.
    lines = [line for line in text.splitlines() if line.strip() and not NATIVE_TF_LINE.match(line)]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line[:300]!r}")
    assert all({"timestamp", "level", "logger", "event"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert any(name.startswith(("faust", "mode")) for name in loggers), sorted(loggers)
    assert any(r["event"] == READY_LINE for r in records)
    assert any(r["logger"] == "phrasestream.worker" and r["event"].startswith("dead letter invalid_json")
               for r in records)
