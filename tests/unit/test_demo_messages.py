"""The demo stream: 5% invalid, every message traceable to its run, test split only."""

import json

import pytest

from models.datasets import load_clinc150
from schemas.messages import PhraseIn
from streams.decode import Source, decode_phrase
from streams.tools.demo_feed import DRIFT_DOMAINS, Shift, demo_messages

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


# --- demo --drift: the label mix shifts halfway --------------------------------------------


def _intents(messages) -> list[str]:
    return [m.intent for m in messages if m.valid]


def test_the_shifted_half_draws_only_from_the_chosen_domains_and_the_first_half_is_unchanged():
    data = load_clinc150("full")
    shift = Shift(("travel", "meta"))
    plain = list(demo_messages("r", 400, HEADS, 1000, seed=3))
    shifted = list(demo_messages("r", 400, HEADS, 1000, seed=3, shift=shift))
    start = shift.start(400)
    assert start == 200
    assert [m.value for m in shifted[:start]] == [m.value for m in plain[:start]], "nothing moves before the shift"
    after = _intents(shifted[start:])
    assert {data.domain_of(i) for i in after} == {"travel", "meta"}
    assert {data.domain_of(i) for i in _intents(plain[start:])} - {"travel", "meta"}, \
        "without the shift the second half still spans the other domains"
    test_texts = {t for t, _ in data.test}
    assert all(PhraseIn.model_validate(json.loads(m.value)).text in test_texts for m in shifted[start:] if m.valid)
    assert [m.valid for m in shifted] == [m.valid for m in plain], "the invalid messages stay where they were"


def test_the_shift_says_where_it_starts_and_which_domains():
    assert Shift().figures(200) == {"starts_at_message": 100, "of": 200, "domains": list(DRIFT_DOMAINS)}
    assert Shift(at=0.25).start(200) == 50


def test_a_shift_to_an_unknown_domain_names_the_known_ones():
    with pytest.raises(ValueError, match="known: .*banking"):
        Shift(("atlantis",))
