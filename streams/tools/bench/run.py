"""The bench's run: every stage in order, the figures, the cache sweep's table and plot, the command."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from ops.logs import progress as show_progress
from ops.measure import percentile
from schemas.settings import Settings
from streams.tools.bench.faust_ceiling import faust_passthrough
from streams.tools.bench.features import FEATURE_COUNT, feature_costs
from streams.tools.bench.measure import fill_cache_changelog, passthrough, rss_mb, through_worker
from streams.tools.bench.scratch import Scratch

log = logging.getLogger("phrasestream.bench")

SWEEP_SIZES = (1_000, 10_000, 50_000, 200_000)
ST_PHRASES = 1_000
"""The first this many distinct CLINC150 test phrases, for ``embedder_vs_st_bs32``."""
LIGHT_RATE, LIGHT_COUNT = 100, 1_500
"""Light traffic: cached phrases at this rate, this many (15 s), for ``latency_p99_ms_100``."""


def cpu_facts() -> dict[str, Any]:
    """The CPU this ran on, as docs/performance.md's tables name it."""
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


def against_st(embedder: Any, texts: list[str], st_python: str) -> dict[str, Any]:
    """Our embedder and sentence-transformers at batch 32 on ``texts``, alternating, twice each (best of two)."""
    import subprocess

    from models.datasets import DATA_DIR
    from models.embedder import measure_throughput

    script = Path(__file__).with_name("st_reference.py")
    ours, theirs = [], []
    for _ in range(2):
        done = subprocess.run([st_python, str(script), "--data", str(DATA_DIR / "data_full.json.gz"), "--batch", "32",
                               "--n", str(len(texts)), "--threads", str(len(os.sched_getaffinity(0)))],
                              capture_output=True, text=True, timeout=900, check=True)
        theirs.append(json.loads(done.stdout.strip().splitlines()[-1])["phrases_s"])
        ours.append(measure_throughput(embedder, texts, 32))
    return {"st_bs32_phrases_s": round(max(theirs), 1), "embedder_bs32_phrases_s": round(max(ours), 1),
            "embedder_vs_st_bs32": round(max(ours) / max(theirs), 3)}


def run_bench(settings: Settings, *, count: int = 20_000, progress: bool = True,
              st_python: str | None = None) -> dict[str, Any]:
    """Measure everything (see the module doc) and return the figures."""
    from models.datasets import load_clinc150
    from models.embedder import load_embedder, measure_throughput
    from models.registry.lifecycle import live_pointers
    from streams.tools.loadgen import Traffic
    from streams.tools.sink_bench import bench_sink

    def say(msg: str) -> None:
        show_progress(log, msg, show=progress, tag="bench")

    heads_per_phrase = sum(1 for region, _ in live_pointers(settings) if region == "global")
    if heads_per_phrase == 0:
        raise RuntimeError("no live head in region global: run `phrasestream train` first")
    out: dict[str, Any] = {**cpu_facts(), "count": count, "heads_per_phrase": heads_per_phrase}
    zipf = Traffic.make(count, seed=11)
    unique = Traffic.make(count, new_share=1.0, variants=0.0, seed=12)

    say("passthrough (the ceilings: confluent-kafka alone, then a bare Faust agent)")
    out["passthrough_msgs_s"] = round(passthrough(settings, zipf.messages), 1)
    out["faust_passthrough_msgs_s"] = round(faust_passthrough(settings, zipf.messages), 1)

    say("the embedder alone")
    texts = list(dict.fromkeys(t for t, _ in load_clinc150("full").test))[:2048]
    embedder = load_embedder(settings)
    out["embedder_precision"] = getattr(embedder, "precision", "fp32")
    out["embedder_bs1_phrases_s"] = round(measure_throughput(embedder, texts[:256], 1), 1)
    out["embedder_batched_phrases_s"] = round(measure_throughput(embedder, texts, 32), 1)
    if st_python:
        say("the embedder against sentence-transformers (batch 32, alternating)")
        out.update(against_st(embedder, texts[:ST_PHRASES], st_python))
    feature_dim, version = embedder.feature_dim, embedder.features_id
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
            out[f"latency_p{q}_ms"] = percentile(lat.latencies_ms, q)
        # light traffic: 100 cached phrases a second (the miss set again, under new ids)
        light = [(f"{pid}-light", value.replace(pid.encode(), f"{pid}-light".encode(), 1))
                 for pid, value in unique.messages[:LIGHT_COUNT]]
        slow = through_worker(ws, light, heads_per_phrase, rate=LIGHT_RATE)
        for q in (50, 99):
            out[f"latency_p{q}_ms_{LIGHT_RATE}"] = percentile(slow.latencies_ms, q)
        scratch.stop(proc)

        say("the expert loop: explanations, review routing and a shadow head, each against a baseline")
        out.update(feature_costs(settings, scratch, unique.messages[:FEATURE_COUNT], heads_per_phrase, say))

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
    out["hit_path_faust_ratio"] = round(out["hit_path_phrases_s"] / out["faust_passthrough_msgs_s"], 4)
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


def bench_command(settings: Settings, *, count: int, as_json: bool, st_python: str | None = None) -> int:
    """Run the bench; print figures; the last line is one JSON object."""
    try:
        figures = run_bench(settings, count=count, st_python=st_python)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not as_json:
        for key, value in figures.items():
            if key != "sweep":
                print(f"{key:<28} {value}")
    print(json.dumps(figures))
    return 0
