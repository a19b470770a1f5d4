"""``phrasestream bench``: every speed figure of the issue, measured in one run on this machine.

Everything runs against the local broker (127.0.0.1 only), in scratch topics, a scratch Faust
app id and a scratch database schema, all deleted at the end. Stages, in order, each on an
otherwise idle machine (no worker runs while the embedder or the passthrough is measured):

1. ``passthrough_msgs_s``: one Python process, confluent-kafka consume → ``json.loads`` →
   produce of the same messages: the ceiling of a Python stage on this machine. Then
   ``faust_passthrough_msgs_s``: one bare Faust agent doing the same in batches
   (``faust_ceiling``): Faust's own pace, the ceiling of one hop of the worker.
2. ``embedder_bs1_phrases_s`` / ``embedder_batched_phrases_s``: the embedder alone on unique
   CLINC150 test phrases.
3. A worker (a real ``phrasestream worker`` process on the live demo heads) gets
   ``miss_path_phrases_s`` (every phrase new), then ``hit_path_phrases_s`` (the same phrases
   again), then ``zipf_phrases_s`` and ``zipf_hit_rate`` on loadgen's default traffic, then
   the latency percentiles at half of that rate (``latency_p99_ms`` and friends: end to end,
   from the input's ``ts`` to the moment this process reads the prediction from
   ``predictions.out``), then the same at 100 cached phrases a second (``latency_p99_ms_100``).
   Its workers route answers by each head's review rule (the default one unless the head or
   ``review-rule`` says otherwise) to a scratch review topic.
4. The expert loop (``features``): one worker, the same cached phrases with explanations on,
   with a review rule, with a shadow head at 100%, against a baseline with none:
   ``hit_path_<baseline|explain|review|shadow>_msgs_s`` and ``latency_p99_ms_100_<...>``.
   Alone: ``python -m streams.tools.bench.features``.
5. A worker with ``CACHE_MAX_ENTRIES=0`` gets ``zipf_nocache_phrases_s``.
6. A worker whose cache changelog was filled to the default bound before it started gives
   ``worker_rss_mb``.
7. The cache sweep (1k, 10k, 50k, 200k entries) on the Zipf traffic: a table and a PNG under
   ``<home>/bench/``.
8. ``sink_rows_s``: the PostgreSQL sink alone (``streams.tools.sink_bench``).

Throughput is phrases answered divided by the time from the first message produced to the
last prediction read; a phrase counts when every head of its region answered it. The ratios:
``hit_path_faust_ratio`` (hit path / the bare Faust agent: the worker makes two hops, so 0.5
is Faust's own pace), ``pipeline_efficiency`` (miss path / the embedder alone),
``cache_speedup`` (Zipf with / without the cache), ``sink_ratio`` (sink rows / predictions of
the Zipf rate) and ``embedder_vs_st_bs32`` (the embedder / sentence-transformers at batch 32,
when ``--st-python`` names a throwaway virtualenv's Python that has sentence-transformers).

The modules: ``scratch`` (the run's topics, app id and worker processes), ``measure`` (one
stage each: the passthrough, a burst through a worker, a filled cache changelog, memory),
``faust_ceiling`` (the bare Faust agent), ``features`` (the expert loop's stage) and
``run`` (the stages in order, the sweep's table and plot, the command).
"""

from streams.tools.bench.run import bench_command, run_bench

__all__ = ["bench_command", "run_bench"]
