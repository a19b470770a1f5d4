"""The load generator against the live broker: what it sends arrives, once each, as valid phrases."""

from __future__ import annotations

import json

import pytest
from bounds import BOUND_S

from ops.kafka.clients import client_config
from ops.kafka.offsets import end_offsets
from schemas.messages import PhraseIn
from streams.tools.loadgen import Traffic, send

pytestmark = pytest.mark.integration


def test_loadgen_sends_2000_messages_at_max_rate_each_once_with_ts(stack) -> None:
    traffic = Traffic.make(2000, seed=21)
    # the duration only bounds a hang: the count must be what stops it, however busy the machine
    figures = send(stack.settings, traffic.messages, rate=None, duration=BOUND_S)
    assert figures["sent"] == figures["delivered"] == 2000
    assert figures["failed"] == 0 and figures["stopped_by"] == "count"

    assert sum(end_offsets(client_config(stack.settings), stack.settings.topic_in).values()) == 2000
    bodies = stack.read(stack.settings.topic_in, 2000)
    assert len(bodies) == 2000
    ids = [b["id"] for b in bodies]
    assert len(set(ids)) == 2000
    assert set(ids) == {mid for mid, _ in traffic.messages}
    for body in bodies:
        phrase = PhraseIn.model_validate_json(json.dumps(body))
        assert phrase.ts is not None and phrase.region == "global"
    sent_text = dict(zip((mid for mid, _ in traffic.messages), traffic.texts, strict=True))
    assert all(body["text"] == sent_text[body["id"]] for body in bodies)
