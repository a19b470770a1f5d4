"""The demo stream: 5% invalid, every message traceable to its run, test split only."""

import json

from models.datasets import load_clinc150
from schemas.messages import PhraseIn
from streams.decode import Source, decode_phrase
from streams.demo import demo_messages

HEADS = {"global": ["domain", "intent"], "eu": ["domain", "intent"]}


def test_one_message_in_twenty_is_invalid_and_each_is_rejected_by_decode():
    messages = list(demo_messages("demo-x", 400, HEADS, max_chars=1000))
    invalid = [m for m in messages if not m.valid]
    assert len(invalid) == 20
    kinds = {decode_phrase(m.value, HEADS, Source("phrases.in")).error_kind for m in invalid}
    assert len(kinds) == 10


def test_every_message_carries_the_run_id_in_its_bytes():
    assert all(b"demo-x" in m.value for m in demo_messages("demo-x", 200, HEADS, max_chars=1000))


def test_valid_messages_come_from_the_test_split_and_name_their_heads():
    data = load_clinc150("full")
    test_texts = {t for t, _ in data.test + data.oos_test}
    for m in demo_messages("demo-x", 200, HEADS, max_chars=1000):
        if m.valid:
            phrase = PhraseIn.model_validate(json.loads(m.value))
            assert phrase.text in test_texts
            assert set(m.models) <= set(HEADS[m.region])


def test_the_same_seed_gives_the_same_stream_and_another_seed_another():
    first = [m.value for m in demo_messages("r", 50, HEADS, 1000, seed=1)]
    assert first == [m.value for m in demo_messages("r", 50, HEADS, 1000, seed=1)]
    assert first != [m.value for m in demo_messages("r", 50, HEADS, 1000, seed=2)]
