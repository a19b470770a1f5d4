"""One bench run's scratch topics, app id and worker processes, and their removal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.kafka.clients import client_config
from schemas.settings import Settings

log = logging.getLogger("phrasestream.bench")


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
            # and out of the review queue and the shadow answers (the default rule routes some)
            "PHRASESTREAM_TOPIC_REVIEW": f"bench-{self.tag}-{app}.phrases.review",
            "PHRASESTREAM_TOPIC_SHADOW": f"bench-{self.tag}-{app}.predictions.shadow",
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
                            (settings.topic_dlq, 1), (settings.topic_rollups, 1), (settings.topic_review, 1),
                            (settings.topic_shadow, settings.partitions_out)):
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


def delete_topics(settings: Settings, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    for fut in AdminClient(client_config(settings)).delete_topics(names).values():
        try:
            fut.result(60)
        except Exception:  # noqa: BLE001, S110 - a leftover scratch topic is harmless
            pass
