"""A live worker follows a shadow in the registry pointer: it runs the candidate beside the live
head on the share of phrases the pointer names, publishes its answers to predictions.shadow
only (never to predictions.out), and stops when the pointer names no shadow any more."""

from __future__ import annotations

import json
import uuid

import pytest

from models.registry.pointers import publish, read_all
from streams.app import READY_LINE
from streams.shadows import in_shadow
from streams.tools.bench.features import shadow_candidate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PERCENT = 50.0
TEXTS = ["what is my bank balance", "transfer 100 dollars to savings", "book a flight to paris", "tell me a joke",
         "set an alarm for 7", "play some music", "what time is it", "order a pizza", "my card was stolen",
         "how do I say hello in french", "what is the weather tomorrow", "reset my password", "find my phone",
         "how many calories in an apple", "roll a dice", "flip a coin"]


def phrases(run: str) -> tuple[list[str], list[bytes]]:
    ids = [f"{run}-{i}" for i in range(len(TEXTS))]
    return ids, [json.dumps({"id": pid, "text": t, "region": "global", "models": ["intent"]}).encode()
                 for pid, t in zip(ids, TEXTS)]


def test_a_worker_runs_the_pointers_shadow_beside_the_live_head_and_publishes_it_only_to_the_shadow_topic(stack) -> None:  # type: ignore[no-untyped-def]
    settings = stack.settings
    live = read_all(settings)[("global", "intent")]
    spec, remove = shadow_candidate(settings, "global", "intent", uuid.uuid4().hex[:6])
    try:
        stack.start("worker", READY_LINE)
        shadow = spec.model_copy(update={"percent": PERCENT})
        publish(settings, live.model_copy(update={"seq": live.seq + 1, "shadow": shadow}))  # promote --shadow
        stack.wait_log("worker", f"shadow head global/intent:{spec.version} runs beside {live.version}")

        ids, values = phrases(uuid.uuid4().hex[:8])
        stack.produce(*values)
        predictions = stack.read(settings.topic_out, len(ids))
        assert sorted(p["id"] for p in predictions) == sorted(ids), stack.tails()
        stack.wait_worker_caught_up()  # the shadow answers of those batches are on the broker
        picked = [pid for pid in ids if in_shadow(pid, PERCENT)]
        assert 0 < len(picked) < len(ids), "every phrase or none is picked: choose other ids"
        shadows = stack.read(settings.topic_shadow, len(picked))
        assert sorted(s["id"] for s in shadows) == sorted(picked)
        live_label = {p["id"]: p["label"] for p in predictions}
        for s in shadows:
            assert (s["model_version"], s["live_version"]) == (spec.version, live.version)
            assert s["live_label"] == live_label[s["id"]]
            assert s["head_ms"] >= 0 and s["live_head_ms"] >= 0
        assert {p["model_version"] for p in predictions} == {live.version}  # never to predictions.out

        publish(settings, live.model_copy(update={"seq": live.seq + 2, "shadow": None}))  # promote --shadow --stop
        stack.wait_log("worker", f"shadow head global/intent:{spec.version} ended")
        more, values = phrases(uuid.uuid4().hex[:8])
        stack.produce(*values)
        assert len(stack.read(settings.topic_out, len(ids) + len(more))) == len(ids) + len(more)
        stack.wait_worker_caught_up()
        after = stack.read(settings.topic_shadow, len(picked) + 1, timeout=5)  # a bound, not a wait: all is committed
        assert sorted(s["id"] for s in after) == sorted(picked)
    finally:
        remove()
