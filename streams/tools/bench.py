"""``phrasestream bench``: every speed figure of the issue, measured in one run on this machine.

Everything runs against the local broker (127.0.0.1 only), in scratch topics, a scratch Faust
app id and a scratch database schema, all deleted at the end. Stages, in order, each on an
otherwise idle machine (no worker runs while the embedder or the passthrough is measured):

1. ``passthrough_msgs_s``: one Python process, confluent-kafka consume → ``json.loads`` →
   produce of the same messages: the ceiling of a Python stage on this machine.
2. ``embedder_bs1_phrases_s`` / ``embedder_batched_phrases_s``: the embedder alone on unique
   CLINC150 test phrases.
3. A worker (a real ``phrasestream worker`` process on the live demo heads) gets
   ``miss_path_phrases_s`` (every phrase new), then ``hit_path_phrases_s`` (the same phrases
   again), then ``zipf_phrases_s`` and ``zipf_hit_rate`` on loadgen's default traffic, then
   the latency percentiles at half of that rate (from the input's ``ts`` to the moment the
   prediction can be read from ``predictions.out``).
4. A worker with ``CACHE_MAX_ENTRIES=0`` gets ``zipf_nocache_phrases_s``.
5. A worker whose cache changelog was filled to the default bound before it started gives
   ``worker_rss_mb``.
6. The cache sweep (1k, 10k, 50k, 200k entries) on the Zipf traffic: a table and a PNG under
   ``<home>/bench/``.
7. ``sink_rows_s``: the PostgreSQL sink alone (``streams.tools.sink_bench``).

Throughput is phrases answered divided by the time from the first message produced to the
last prediction read; a phrase counts when every head of its region answered it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ops.kafka.clients import client_config
from schemas.settings import Settings

log = logging.getLogger("phrasestream.bench")

SWEEP_SIZES = (1_000, 10_000, 50_000, 200_000)


def cpu_facts() -> dict[str, Any]:
    """The CPU this ran on, as the README's tables name it."""
    model, flags = platform.processor() or "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cpus": len(os.sched_getaffinity(0)),
            "bf16": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})}


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


# --------------------------------------------------------------------------------------------
# scratch topics and worker processes


@dataclass
class Scratch:
    """One bench run's topics, app id and schema, and the worker processes it started."""

    base: Settings
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: list[subprocess.Popen] = field(default_factory=list)
    topics: set[str] = field(default_factory=set)

    def env(self, app: str, **extra: str) -> dict[str, str]:
        overrides = {
            "PHRASESTREAM_TOPIC_IN": f"bench-{self.tag}-{app}.phrases.in",
            "PHRASESTREAM_TOPIC_OUT": f"bench-{self.tag}-{app}.predictions.out",
            "PHRASESTREAM_TOPIC_DLQ": f"bench-{self.tag}-{app}.phrases.dlq",
            # the bench's traffic stays out of the drift data (the real sink stores serving.rollups)
            "PHRASESTREAM_TOPIC_ROLLUPS": f"bench-{self.tag}-{app}.serving.rollups",
            "PHRASESTREAM_APP_ID": f"bench-{self.tag}-{app}",
            "PHRASESTREAM_HOME": str(Path(self.base.home).resolve()),
            **extra,
        }
        return {**os.environ, **overrides}

    def settings(self, env: dict[str, str]) -> Settings:
        # strings, as in the environment: pydantic converts each to its field's type
        fields: dict[str, Any] = {k.removeprefix("PHRASESTREAM_").lower(): v for k, v in env.items()
                                  if k.startswith("PHRASESTREAM_")}
        return Settings(**fields)

    def start_worker(self, app: str, **extra: str) -> tuple[subprocess.Popen, Settings, Path]:
        from ops.kafka.topics import create_topic
        from streams.app import READY_LINE

        env = self.env(app, **extra)
        settings = self.settings(env)
        for name, parts in ((settings.topic_in, settings.partitions_in), (settings.topic_out, settings.partitions_out),
                            (settings.topic_dlq, 1), (settings.topic_rollups, 1)):
            create_topic(settings, name, parts, {"cleanup.policy": "delete", "retention.ms": str(3_600_000)})
            self.topics.add(name)
        logs = Path(self.base.home).resolve() / "bench" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"worker-{self.tag}-{app}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        deadline = time.monotonic() + 600
        while READY_LINE not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bench worker did not start; see {log_path}")
            time.sleep(0.5)
        return proc, settings, log_path

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def cleanup(self) -> None:
        from confluent_kafka.admin import AdminClient

        for proc in self.procs:
            self.stop(proc)
        admin = AdminClient(client_config(self.base))
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"bench-{self.tag}")]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                try:
                    fut.result(60)
                except Exception as exc:  # noqa: BLE001 - a leftover scratch topic is only logged
                    log.warning("could not delete a scratch topic: %s", exc)


# --------------------------------------------------------------------------------------------
# measuring


def passthrough(settings: Settings, messages: list[tuple[str, bytes]]) -> float:
    """Consume → parse → produce ``messages`` in one process; return messages/s."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from ops.kafka.topics import create_topic

    tag = uuid.uuid4().hex[:8]
    src, dst = f"bench-{tag}-pass.in", f"bench-{tag}-pass.out"
    for name in (src, dst):
        create_topic(settings, name, 1, {"retention.ms": str(3_600_000)})
    producer = Producer(client_config(settings, {"linger.ms": 5, "batch.num.messages": 10000,
                                                 "queue.buffering.max.messages": 1_000_000}))
    for _, value in messages:
        producer.produce(src, value)
    producer.flush(60)
    consumer = Consumer(client_config(settings, {"group.id": f"bench-{tag}",
                                                 "enable.auto.commit": False, "fetch.min.bytes": 1}))
    consumer.assign([TopicPartition(src, 0, 0)])
    out = Producer(client_config(settings, {"linger.ms": 5, "batch.num.messages": 10000,
                                            "queue.buffering.max.messages": 1_000_000}))
    done, start = 0, None
    deadline = time.monotonic() + 120
    while done < len(messages) and time.monotonic() < deadline:
        batch = consumer.consume(1000, timeout=1.0)
        if start is None and batch:
            start = time.perf_counter()
        for msg in batch:
            payload = msg.value()
            if msg.error() is None and payload is not None:  # None: a tombstone, which we never write
                body = json.loads(payload)
                out.produce(dst, json.dumps(body).encode(), msg.key())
                done += 1
        out.poll(0)
    out.flush(60)
    seconds = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    _delete_topics(settings, [src, dst])
    return done / seconds if seconds > 0 else 0.0


def _delete_topics(settings: Settings, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    for fut in AdminClient(client_config(settings)).delete_topics(names).values():
        try:
            fut.result(60)
        except Exception:  # noqa: BLE001, S110 - a leftover scratch topic is harmless
            pass


@dataclass
class Run:
    """What one burst of traffic through a worker gave."""

    phrases: int
    seconds: float
    hit_rate: float
    latencies_ms: list[float]

    @property
    def phrases_s(self) -> float:
        return self.phrases / self.seconds if self.seconds > 0 else 0.0


def through_worker(settings: Settings, messages: list[tuple[str, bytes]], heads_per_phrase: int,
                   rate: float | None = None, timeout_s: float = 600.0) -> Run:
    """Send ``messages`` (at ``rate``/s, or as fast as possible) and read every prediction."""
    from datetime import datetime

    from confluent_kafka import Consumer, TopicPartition

    from streams.tools.loadgen import send

    consumer = Consumer(client_config(settings, {"group.id": f"bench-read-{uuid.uuid4().hex}",
                                                 "enable.auto.commit": False}))
    topic = settings.topic_out
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[1])
                     for p in parts])
    ids = {pid for pid, _ in messages}
    seen: dict[str, int] = {}
    hits = total = 0
    latencies: list[float] = []
    figures: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: figures.update(send(settings, messages, rate=rate, duration=timeout_s)))
    start_wall = time.time()
    sender.start()
    complete, last_ms = 0, start_wall * 1000.0
    deadline = time.monotonic() + timeout_s
    while complete < len(ids) and time.monotonic() < deadline:
        # short polls: a consumer that waits to fill its batch would only delay the reading
        for msg in consumer.consume(2000, timeout=0.05):
            value = msg.value()
            if msg.error() is not None or value is None:  # value None: a tombstone, which we never write
                continue
            p = json.loads(value)
            if p["id"] not in ids:
                continue
            published_ms = float(msg.timestamp()[1])  # the record's time: when the worker produced it
            total += 1
            hits += bool(p["cache_hit"])
            if p.get("ts"):
                latencies.append(published_ms - datetime.fromisoformat(p["ts"]).timestamp() * 1000.0)
            seen[p["id"]] = seen.get(p["id"], 0) + 1
            if seen[p["id"]] == heads_per_phrase:
                complete += 1
                last_ms = max(last_ms, published_ms)
    sender.join()
    consumer.close()
    if complete < len(ids):
        raise RuntimeError(f"only {complete} of {len(ids)} phrases were answered within {timeout_s:.0f} s")
    return Run(complete, last_ms / 1000.0 - start_wall, hits / total if total else 0.0, latencies)


def fill_cache_changelog(settings: Settings, embedder_version: str, dim: int, entries: int) -> None:
    """Write ``entries`` cache entries to the app's changelog before its worker starts."""
    from confluent_kafka import Producer

    from ops.kafka.topics import create_topic

    topic = f"{settings.app_id}-embedding-cache-changelog"
    create_topic(settings, topic, settings.partitions_in, {"cleanup.policy": "compact"})
    producer = Producer(client_config(settings, {"linger.ms": 20, "partitioner": "murmur2_random",
                                                 "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576}))
    rng = np.random.default_rng(7)
    vector = rng.standard_normal(dim).astype(np.float16).tobytes()
    for i in range(entries):
        key = f"{embedder_version}:{i:032x}".encode()
        while True:
            try:
                producer.produce(topic, vector, key)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(300)


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


# --------------------------------------------------------------------------------------------
# the run


def run_bench(settings: Settings, *, count: int = 20_000, progress: bool = True) -> dict[str, Any]:
    """Measure everything (see the module doc) and return the figures."""
    from models.datasets import load_clinc150
    from models.embedder import load_embedder, measure_throughput
    from models.registry.lifecycle import live_pointers
    from streams.tools.loadgen import Traffic
    from streams.tools.sink_bench import bench_sink

    def say(msg: str) -> None:
        if progress:
            print(f"bench: {msg}", file=sys.stderr, flush=True)

    heads_per_phrase = sum(1 for region, _ in live_pointers(settings) if region == "global")
    if heads_per_phrase == 0:
        raise RuntimeError("no live head in region global: run `phrasestream train` first")
    out: dict[str, Any] = {**cpu_facts(), "count": count, "heads_per_phrase": heads_per_phrase}
    zipf = Traffic.make(count, seed=11)
    unique = Traffic.make(count, new_share=1.0, variants=0.0, seed=12)

    say("passthrough (the ceiling)")
    out["passthrough_msgs_s"] = round(passthrough(settings, zipf.messages), 1)

    say("the embedder alone")
    texts = list(dict.fromkeys(t for t, _ in load_clinc150("full").test))[:2048]
    embedder = load_embedder(settings)
    out["embedder_precision"] = getattr(embedder, "precision", "fp32")
    out["embedder_bs1_phrases_s"] = round(measure_throughput(embedder, texts[:256], 1), 1)
    out["embedder_batched_phrases_s"] = round(measure_throughput(embedder, texts, 32), 1)
    feature_dim, version = embedder.feature_dim, embedder.version
    del embedder

    scratch = Scratch(settings)
    try:
        say("worker with the default cache: miss path, hit path, Zipf traffic, latency")
        proc, ws, _ = scratch.start_worker("main")
        miss = through_worker(ws, unique.messages, heads_per_phrase)
        out["miss_path_phrases_s"] = round(miss.phrases_s, 1)
        again = [(f"{pid}-again", value.replace(pid.encode(), f"{pid}-again".encode(), 1))
                 for pid, value in unique.messages]
        hit = through_worker(ws, again, heads_per_phrase)
        out["hit_path_phrases_s"] = round(hit.phrases_s, 1)
        out["hit_path_hit_rate"] = round(hit.hit_rate, 4)
        z = through_worker(ws, zipf.messages, heads_per_phrase)
        out["zipf_phrases_s"], out["zipf_hit_rate"] = round(z.phrases_s, 1), round(z.hit_rate, 4)
        half = z.phrases_s / 2
        steady = Traffic.make(int(min(half * 20, count)), seed=13)
        lat = through_worker(ws, steady.messages, heads_per_phrase, rate=half)
        out["latency_rate_phrases_s"] = round(half, 1)
        for q in (50, 95, 99):
            out[f"latency_p{q}_ms"] = _pct(lat.latencies_ms, q)
        scratch.stop(proc)

        say("worker without a cache: Zipf traffic")
        proc, ws, _ = scratch.start_worker("nocache", PHRASESTREAM_CACHE_MAX_ENTRIES="0")
        out["zipf_nocache_phrases_s"] = round(through_worker(ws, zipf.messages, heads_per_phrase).phrases_s, 1)
        scratch.stop(proc)

        say(f"worker memory with a full cache ({settings.cache_max_entries} entries)")
        env = scratch.env("full")
        fill_cache_changelog(scratch.settings(env), version, feature_dim, settings.cache_max_entries)
        proc, ws, _ = scratch.start_worker("full")
        through_worker(ws, zipf.messages[:2000], heads_per_phrase)
        out["worker_rss_mb"] = round(rss_mb(proc.pid), 1)
        out["worker_cache_entries"] = settings.cache_max_entries
        scratch.stop(proc)

        say("cache sweep")
        sweep = []
        for size in SWEEP_SIZES:
            proc, ws, _ = scratch.start_worker(f"sweep{size}", PHRASESTREAM_CACHE_MAX_ENTRIES=str(size))
            run = through_worker(ws, zipf.messages, heads_per_phrase)
            sweep.append({"cache_entries": size, "hit_rate": round(run.hit_rate, 4), "phrases_s": round(run.phrases_s, 1)})
            scratch.stop(proc)
        out["sweep"] = sweep
        out["sweep_files"] = write_sweep(Path(settings.home).resolve() / "bench", sweep, zipf, out)
    finally:
        scratch.cleanup()

    say("the sink alone")
    sink = bench_sink(settings, 100_000, timeout_s=600)
    out["sink_rows_s"] = round(sink["sink_rows_s"], 1)

    predictions_s = out["zipf_phrases_s"] * heads_per_phrase
    out["pipeline_efficiency"] = round(out["miss_path_phrases_s"] / out["embedder_batched_phrases_s"], 3)
    out["hit_path_ratio"] = round(out["hit_path_phrases_s"] / out["passthrough_msgs_s"], 4)
    out["cache_speedup"] = round(out["zipf_phrases_s"] / out["zipf_nocache_phrases_s"], 2)
    out["sink_ratio"] = round(out["sink_rows_s"] / predictions_s, 2) if predictions_s else None
    out["expected_zipf_hit_rate"] = round(_expected(zipf), 4)
    return out


def _expected(traffic: Any) -> float:
    from streams.tools.loadgen import expected_hit_rate

    return expected_hit_rate(list(traffic.keys))


def write_sweep(folder: Path, sweep: list[dict[str, Any]], traffic: Any, figures: dict[str, Any]) -> dict[str, str]:
    """Write the sweep as a Markdown table and a PNG plot; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "cache_sweep.md"
    lines = ["| cache entries | hit rate | phrases/s |", "|---:|---:|---:|"]
    lines += [f"| {r['cache_entries']:,} | {r['hit_rate']:.3f} | {r['phrases_s']:,.0f} |" for r in sweep]
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    xs = [r["cache_entries"] for r in sweep]
    ax1.plot(xs, [r["hit_rate"] for r in sweep], "o-", color="tab:blue", label="hit rate")
    ax1.set_xscale("log")
    ax1.set_xlabel("cache entries")
    ax1.set_ylabel("hit rate", color="tab:blue")
    ax1.set_ylim(0, 1)
    ax2 = ax1.twinx()
    ax2.plot(xs, [r["phrases_s"] for r in sweep], "s--", color="tab:red", label="phrases/s")
    ax2.set_ylabel("phrases/s", color="tab:red")
    ax2.set_ylim(bottom=0)
    ax1.set_title(f"Zipf {traffic.settings.get('zipf', 1.1)} traffic, {len(traffic.messages):,} phrases "
                  f"({figures.get('cpu', '')[:30]})", fontsize=9)
    fig.tight_layout()
    png = folder / "cache_sweep.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return {"table": str(table), "plot": str(png)}


def bench_command(settings: Settings, *, count: int, as_json: bool) -> int:
    """Run the bench; print figures; the last line is one JSON object."""
    try:
        figures = run_bench(settings, count=count)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not as_json:
        for key, value in figures.items():
            if key != "sweep":
                print(f"{key:<28} {value}")
    print(json.dumps(figures))
    return 0
