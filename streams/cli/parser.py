"""The ``phrasestream`` command: one entry point with subcommands.

    phrasestream up              start (or reuse) Kafka and PostgreSQL, create topics, migrate
    phrasestream train           build the embedder and train the demo heads if none are active
    phrasestream train --data F  train a head on your own labelled phrases (CSV or JSONL)
    phrasestream report          write the error-analysis page of a head (HTML)
    phrasestream models          the built head versions, their metrics, which one is live
    phrasestream promote|rollback  change which version is live (workers follow within 10 s)
    phrasestream retrain         retrain a head on a window of phrases.labeled; promote it if no worse
    phrasestream explain         why a head gives a label (terms, readout, nearest training examples)
    phrasestream review          the review page for domain experts; review-rule, label-map: its rules and labels
    phrasestream promote --shadow  run a candidate beside the live head; shadow-report compares them
    phrasestream drift-report    compare a window of stored inferences with the head's reference (HTML, JSON)
    phrasestream drift-watch     the drift report of every live head on a schedule; alerts to drift.alerts
    phrasestream worker          run the stream worker (foreground)
    phrasestream sink            run the PostgreSQL sink (foreground)
    phrasestream start [--workers N] [--no-sink]   set up, then the sink and N workers in the background
    phrasestream run             start (one worker), a demo feed, a live table; Ctrl-C stops worker and sink
    phrasestream demo --count N  a bounded demo run; last line: one JSON object of figures
    phrasestream demo --drift    the same, with the label mix shifted halfway (a few domains only)
    phrasestream produce         produce phrases (JSON lines on stdin, or --text/--region)
    phrasestream consume         print predictions (or another topic) as a table or JSON
    phrasestream status | stop   services and daemons of this app id; stop them (and the services)
"""

from __future__ import annotations

import argparse

from schemas.settings import Settings
from streams.cli.bench import cmd_bench
from streams.cli.drift import cmd_drift_report, cmd_drift_watch
from streams.cli.expert import add_expert_commands
from streams.cli.services import cmd_clean, cmd_status, cmd_stop, cmd_up
from streams.cli.stream import (
    cmd_consume,
    cmd_demo,
    cmd_loadgen,
    cmd_produce,
    cmd_run,
    cmd_sink,
    cmd_start,
    cmd_worker,
)
from streams.cli.training import cmd_models, cmd_promote, cmd_report, cmd_retrain, cmd_rollback, cmd_train


def main(argv: list[str] | None = None) -> int:
    """Run the ``phrasestream`` command."""
    from models.embedder.tfenv import prepare_tensorflow  # stdlib only; importing streams.cli loads no models

    prepare_tensorflow()  # before anything imports TensorFlow: quiet logs, no CUDA probe without a GPU
    args = build_parser().parse_args(argv)
    settings = Settings()
    _setup_logging(settings)  # every command, the worker too (Faust keeps our handler)
    return int(args.func(settings, args) or 0)


def _setup_logging(settings: Settings) -> None:
    from ops.logs import configure_logging

    configure_logging(settings)  # text or JSON lines (PHRASESTREAM_LOG_FORMAT), secrets redacted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phrasestream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start or reuse Kafka and PostgreSQL").set_defaults(func=cmd_up)
    p = sub.add_parser("train", help="train a head on your labelled phrases (--data), or the demo heads",
                       description="Without --data: build the embedder and train the four demo heads unless "
                       "they are active. With --data: train one head of --region/--model on a CSV (with a "
                       "header) or JSON Lines file and write it as a new version (active with --activate).")
    p.add_argument("--data", help="labelled phrases: CSV with a header, or JSONL")
    p.add_argument("--eval", help="evaluation phrases (same columns); default: a stratified 20%% of --data")
    p.add_argument("--text-col", help="column of the text (default: text)")
    p.add_argument("--label-col", help="column of the label (default: label)")
    p.add_argument("--region", help="region of the head")
    p.add_argument("--model", help="model name of the head")
    p.add_argument("--config", help="training configuration (JSON of retrain.train.config.TrainConfig)")
    p.add_argument("--activate", action="store_true", help="make the new version the active one")
    p.add_argument("--json", action="store_true", help="last line: one JSON object of figures")
    p.add_argument("--force", action="store_true", help="demo heads: train new versions even if active")
    p.add_argument("--quiet", action="store_true", help="no progress on standard error")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("report", help="write the error-analysis page (HTML) of a head")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", help="default: the live version (else the newest)")
    p.add_argument("--out", required=True, help="folder to write index.html into")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("models", help="the built head versions, their metrics, and which is live")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="a JSON list, one object per version")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("promote", help="make a built version live (workers follow within 10 s), or run it in shadow")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", help="the version (required unless --shadow --stop)")
    p.add_argument("--reason", help="why, kept in the history")
    p.add_argument("--shadow", action="store_true", help="run the version beside the live one on every worker; its "
                   "answers go to predictions.shadow only")
    p.add_argument("--percent", type=float, help="with --shadow: the share of phrases it runs on (default 100)")
    p.add_argument("--stop", action="store_true", help="with --shadow: end the shadow")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="make the previous live version (or --to V) live again")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--to", help="the version to go back to (default: the one live before)")
    p.add_argument("--reason", help="why, kept in the history")
    p.set_defaults(func=cmd_rollback)
    add_expert_commands(sub)
    p = sub.add_parser("retrain", help="retrain a head on a window of phrases.labeled; promote it if it is no worse",
                       description="Replay the labelled examples of --region/--model from phrases.labeled over a "
                       "window [start, end) of record timestamps, drop duplicate texts (the newest label wins), test "
                       "on the newest --test-fraction, train a candidate on the rest, score it and the live head on "
                       "the same test slice, and promote the candidate if its weighted F1 >= the live one's - "
                       "--tolerance. Dates are ISO 8601; without an offset they are UTC.")
    p.add_argument("--region", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--since", metavar="DURATION", help="history length ending now: 90d, 12w, 1y, 48h, or all")
    p.add_argument("--from", dest="date_from", metavar="DATE", help="window start (included), e.g. 2026-01-01 or 2026-01-01T08:00Z")
    p.add_argument("--to", dest="date_to", metavar="DATE", help="window end (excluded); default: now")
    p.add_argument("--compare-windows", metavar="LIST", help="e.g. 30d,90d,1y,all: one candidate per window, one test slice; "
                   "promotes nothing")
    p.add_argument("--tolerance", type=float, default=0.005, metavar="F1",
                   help="how much lower the candidate's weighted F1 may be (default 0.005)")
    p.add_argument("--test-fraction", type=float, default=0.2, metavar="SHARE",
                   help="the newest share of the examples to test on (default 0.2)")
    p.add_argument("--config", help="training configuration (JSON of retrain.train.config.TrainConfig)")
    p.add_argument("--reason", help="why, kept in the history with the promotion")
    p.add_argument("--no-promote", action="store_true", help="build, score and gate the candidate but never promote "
                   "it (try it first with `promote --shadow`)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object of figures")
    p.add_argument("--quiet", action="store_true", help="no progress on standard error (warnings stay)")
    p.set_defaults(func=cmd_retrain)
    p = sub.add_parser("drift-report", help="compare a window of stored inferences with a reference: HTML and JSON",
                       description="Compute, in PostgreSQL, the predicted-label mix, confidence, text length, "
                       "unknown word pieces, embedding centroid, out-of-scope rate and operations figures of "
                       "--region/--model over the last --current, compare them with the live head's training "
                       "reference (or the window of length --reference just before), flag drift per metric, and "
                       "write report.html and summary.json into --out. Exit 2: empty window, unknown head or bad "
                       "flags; 1: services down.")
    p.add_argument("--region")
    p.add_argument("--model")
    p.add_argument("--current", metavar="DURATION", help="the window ending now: 7d, 12h, 2w")
    p.add_argument("--reference", default="training", metavar="training|DURATION",
                   help="the live head's training reference (default), or the window of this length before --current")
    p.add_argument("--out", metavar="DIR", help="folder for report.html and summary.json")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    p.add_argument("--bench-rows", type=int, metavar="N",
                   help="time the report on N synthetic rows in a scratch schema (dropped after); prints JSON")
    p.set_defaults(func=cmd_drift_report)
    p = sub.add_parser("drift-watch", help="the drift report of every live head on a schedule; alerts to drift.alerts",
                       description="Every --every, build the drift report of each live head over the last --current "
                       "(against --reference), write it under --out/<region>/<model>/<time>/, and publish one "
                       "message to drift.alerts per metric whose flag tripped. --once: one round, then exit "
                       "(for cron or a Kubernetes CronJob); exit 1 if that round could not reach the services.")
    p.add_argument("--every", default="1h", metavar="DURATION", help="time between rounds (default 1h)")
    p.add_argument("--current", default="24h", metavar="DURATION", help="the window ending now (default 24h)")
    p.add_argument("--reference", default="training", metavar="training|DURATION",
                   help="the live head's training reference (default), or the window of this length before")
    p.add_argument("--out", metavar="DIR", help="where reports are written (default <home>/drift)")
    p.add_argument("--once", action="store_true", help="one round, then exit")
    p.add_argument("--json", action="store_true", help="one JSON line of figures per round")
    p.set_defaults(func=cmd_drift_watch)
    for name, func in (("worker", cmd_worker), ("sink", cmd_sink)):
        p = sub.add_parser(name, help=f"run the {name} in the foreground")
        p.add_argument("--daemon-id", help=argparse.SUPPRESS)
        p.set_defaults(func=func)
    p = sub.add_parser("start", help="set up, then run the sink and N workers in the background",
                       description="Do the set-up `run` does (services, embedder, demo heads if none), then bring "
                       "this app id to --workers workers (worker-1..worker-N, each with PHRASESTREAM_WORKER_INDEX) "
                       "and a sink, in the background: missing ones are started, running ones left alone, workers "
                       "above N stopped. Waits until every worker is ready. Logs: <home>/logs/<app_id>/<name>.log.")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="how many workers (default 1)")
    p.add_argument("--no-sink", action="store_true", help="start no sink")
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("run", help="start everything, feed a short demo stream, show predictions")
    p.add_argument("--count", type=int, default=40)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="a bounded demo run that prints its figures")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--json", action="store_true", help="print only the JSON figures")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for answers")
    p.add_argument("--seed", type=int, default=7,
                   help="which test phrases (the same seed repeats phrases, so the cache answers)")
    p.add_argument("--drift", action="store_true",
                   help="shift the label mix halfway: the second half only from a few CLINC150 domains")
    p.add_argument("--drift-domains", metavar="D1,D2,...",
                   help="the CLINC150 domains of the shifted half (implies --drift; default: travel,"
                   "kitchen_and_dining,small_talk)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("produce", help="produce phrases: JSON lines on stdin, or --text; --labeled: examples")
    p.add_argument("--text")
    p.add_argument("--region", default="global")
    p.add_argument("--id")
    p.add_argument("--topic")
    p.add_argument("--labeled", action="store_true",
                   help="produce labelled examples from --data (CSV or JSONL) to phrases.labeled, for retraining")
    p.add_argument("--data", help="with --labeled: the labelled phrases")
    p.add_argument("--model", help="with --labeled: the model the labels are for")
    p.add_argument("--text-col", help="with --labeled: column of the text (default: text)")
    p.add_argument("--label-col", help="with --labeled: column of the label (default: label)")
    p.set_defaults(func=cmd_produce)
    p = sub.add_parser("consume", help="print predictions (or --topic) as they arrive")
    p.add_argument("--topic")
    p.add_argument("--group")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max", type=int)
    p.add_argument("--timeout", type=float)
    p.set_defaults(func=cmd_consume)
    p = sub.add_parser("loadgen", help="send realistic, bounded benchmark traffic to phrases.in",
                       description="Send phrases drawn with Zipf popularity from the CLINC150 test split, with "
                       "variants the cleaner folds together and a share of never-seen phrases, to phrases.in (or "
                       "--topic) on a local broker. Stops after --count messages or --duration seconds, whichever "
                       "comes first; prints what it sent and the cache hit rate to expect.")
    p.add_argument("--count", type=int, default=10_000, help="most messages to send (default 10000, at most 5000000)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="most seconds to send (default 60, at most 3600)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="R", help="messages per second, paced (catches up when behind)")
    pace.add_argument("--max-rate", action="store_true", help="as fast as possible (the default without --rate)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of phrase popularity (default 1.1)")
    p.add_argument("--new-share", type=float, default=0.03, metavar="SHARE",
                   help="share of never-seen phrases (default 0.03)")
    p.add_argument("--variants", type=float, default=0.3, metavar="SHARE",
                   help="share of pool draws sent as a case/punctuation/space variant (default 0.3)")
    p.add_argument("--region", default="global")
    p.add_argument("--seed", type=int, default=7, help="same seed, same messages and ids lg-<seed>-<i> (default 7)")
    p.add_argument("--cache-size", type=int, metavar="N",
                   help="LRU size for the expected hit rate (default: PHRASESTREAM_CACHE_MAX_ENTRIES)")
    p.add_argument("--topic", help="default: phrases.in (PHRASESTREAM_TOPIC_IN)")
    p.add_argument("--allow-remote", action="store_true", help="allow a broker that is not 127.0.0.1/localhost")
    p.add_argument("--json", action="store_true", help="print only the JSON figures (one line)")
    p.set_defaults(func=cmd_loadgen)
    p = sub.add_parser("bench", help="measure every speed figure in one run (the last line is JSON)")
    p.add_argument("--count", type=int, default=20_000, help="phrases per traffic burst")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--st-python", help="a throwaway virtualenv's python with sentence-transformers: also measure "
                   "embedder_vs_st_bs32 (see streams/tools/bench/st_reference.py)")
    p.set_defaults(func=cmd_bench)
    sub.add_parser("status", help="the services, and each worker and sink of this app id").set_defaults(func=cmd_status)
    p = sub.add_parser("stop", help="stop the workers and the sink of this app id, then Kafka and PostgreSQL")
    p.add_argument("--keep-services", action="store_true", help="stop only the workers and the sink")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("clean", help="stop everything and delete the broker's and the database's data")
    p.add_argument("--all", action="store_true",
                   help="also delete the embedder export, the trained heads and the cached Kafka jars")
    p.set_defaults(func=cmd_clean)
    return parser
