"""``phrasestream drift-watch``: the drift report of every live head on a schedule, alerts to Kafka.

Every ``--every`` (default 1 h) the watcher lists the live heads from ``models.registry``,
builds the drift report of each (:func:`retrain.drift.report.build_report`) over the last
``--current`` window against ``--reference``, writes it under ``<out>/<region>/<model>/<UTC
time>/``, and publishes one :class:`schemas.observations.DriftAlert` to ``drift.alerts`` for each
metric whose flag tripped (key ``region/model``). A head with no rows in the window is skipped
with one log line; a head whose report fails is logged and the others go on.

Why a command of its own and not a timer in the sink: a report scans a window of the
inference table (seconds on millions of rows), and the sink must never pause its writes for
that; the watcher can run on any machine that reaches Kafka and PostgreSQL, under a
supervisor, or once from cron or a Kubernetes CronJob (``--once``). Kafka or PostgreSQL being
down makes a round fail with a log line; the next round tries again.

Example::

    phrasestream drift-watch --every 1h --current 24h --out .local/drift
    phrasestream drift-watch --once --current 7d --reference 30d --json
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.observations import DriftAlert

log = logging.getLogger("phrasestream.drift_watch")


@dataclass
class Round:
    """What one round of checks did."""

    checked: list[tuple[str, str]] = field(default_factory=list)
    empty: list[tuple[str, str]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    alerts: list[DriftAlert] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        return {
            "checked": [f"{r}/{m}" for r, m in self.checked],
            "empty": [f"{r}/{m}" for r, m in self.empty],
            "failed": self.failed,
            "alerts": [a.model_dump(mode="json") for a in self.alerts],
        }


def alerts_of(summary: dict[str, Any], check_id: str, at: datetime) -> list[DriftAlert]:
    """Return one alert per metric of a report summary whose flag tripped."""
    out = []
    for name, metric in sorted(summary["metrics"].items()):
        if not metric.get("flag"):
            continue
        reference = summary["reference"]
        out.append(DriftAlert(
            check_id=check_id,
            at=at,
            region=summary["region"],
            model=summary["model"],
            model_version=reference.get("version"),
            metric=name,
            value=float(metric["value"]),
            threshold=float(metric["threshold"]),
            window_start=summary["window"]["start"],
            window_end=summary["window"]["end"],
            window=summary["window"]["length"],
            reference=reference["kind"] if reference["kind"] == "training" else reference.get("label", "window"),
            rows=int(summary["rows"]["current"]),
            report_path=summary["report"],
        ))
    return out


def live_heads(settings: Any) -> list[tuple[str, str]]:
    """The (region, model) of every live head, from the registry topic."""
    from models.registry.lifecycle import live_pointers

    return sorted(live_pointers(settings))


def check_round(settings: Any, current: timedelta, reference: str, out_root: Path,
                heads: Iterable[tuple[str, str]] | None = None, now: datetime | None = None,
                report: Callable[..., dict[str, Any]] | None = None) -> Round:
    """Build the report of each head (all live heads by default); collect the tripped flags as alerts."""
    from retrain.drift.report import EmptyWindow, build_report

    build = report or build_report
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    check_id = f"{stamp}-{uuid.uuid4().hex[:8]}"
    done = Round()
    for region, model in (live_heads(settings) if heads is None else heads):
        out_dir = Path(out_root) / region / model / stamp
        try:
            summary = build(settings, region, model, current, reference, out_dir, now)
        except EmptyWindow as exc:
            log.info("drift-watch %s/%s: %s", region, model, exc)
            done.empty.append((region, model))
            continue
        except Exception as exc:  # noqa: BLE001  one head's failure (no reference, a bug) must not stop the others
            log.warning("drift-watch %s/%s: the report failed: %s", region, model, exc)
            done.failed[f"{region}/{model}"] = str(exc)
            continue
        done.checked.append((region, model))
        alerts = alerts_of(summary, check_id, now)
        done.alerts.extend(alerts)
        if alerts:
            log.warning("drift-watch %s/%s: drift in %s (report %s)", region, model,
                        ", ".join(a.metric for a in alerts), summary["report"])
        else:
            log.info("drift-watch %s/%s: no drift over %s rows", region, model, summary["rows"]["current"])
    return done


def publish_alerts(settings: Any, alerts: list[DriftAlert], timeout: float = 30.0) -> None:
    """Write the alerts to the alerts topic and wait until the broker has every one (acks=all)."""
    if not alerts:
        return
    from ops.kafka.topics import produce_acked

    errors = produce_acked(settings, settings.topic_alerts, [(a.key.encode(), a.to_bytes()) for a in alerts], timeout)
    if errors:
        raise RuntimeError(f"{settings.topic_alerts} did not take {len(errors)} of {len(alerts)} alert(s): {errors[0]}")


def watch(settings: Any, every: timedelta, current: timedelta, reference: str, out_root: Path,
          once: bool = False, stop: threading.Event | None = None,
          on_round: Callable[[Round], None] | None = None) -> Round:
    """Check every live head now, then every ``every`` until ``stop`` is set (or once); return the last round."""
    stop = stop or threading.Event()
    while True:
        try:
            done = check_round(settings, current, reference, out_root)
            publish_alerts(settings, done.alerts)
        except Exception as exc:  # noqa: BLE001  Kafka or PostgreSQL down: say so, try again next round
            log.error("drift-watch: this round failed: %s", exc)
            done = Round(failed={"*": str(exc)})
        if on_round is not None:
            on_round(done)
        if once or stop.wait(every.total_seconds()):
            return done
