"""The load generator: Zipf skew, new phrases, variants, expected hit rates, determinism, bounds."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import numpy as np
import pytest

from schemas.cleaning import clean
from schemas.messages import PhraseIn
from schemas.settings import Settings
from streams import cli
from streams.state.cache import EmbeddingCache, MappingBackend
from streams.tools.loadgen import (
    MAX_COUNT,
    LoadgenError,
    NewPhrases,
    Stamp,
    Traffic,
    check_bootstrap,
    expected_hit_rate,
    generate,
    make_pool,
    make_variants,
    pump,
    send,
    zipf_shares,
)


@pytest.fixture(scope="module")
def clinc_pool():
    return make_pool()


@pytest.fixture(scope="module")
def plain_pool():
    """2,000 distinct phrases without variants: fast to build, for the Zipf draws."""
    return make_pool([f"phrase number {i}" for i in range(2000)], variants_per_phrase=0)


@pytest.mark.parametrize("exponent", [0.8, 1.1, 1.5])
def test_zipf_draw_has_the_configured_skew(plain_pool, exponent: float) -> None:
    n = 200_000
    traffic = Traffic.make(n, zipf=exponent, new_share=0.0, variants=0.0, seed=3, pool=plain_pool)
    counts = np.bincount(traffic.ranks, minlength=len(plain_pool))
    theory = zipf_shares(len(plain_pool), exponent)
    for k in (1, 10, 100):
        assert counts[:k].sum() / n == pytest.approx(theory[:k].sum(), abs=0.01), f"top-{k} share"
    ranks = np.arange(1, 51)
    slope = np.polyfit(np.log(ranks), np.log(counts[:50]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.04)
    # the rank drawn is the popularity of the phrase sent: rank r always sends the same phrase
    assert len({traffic.keys[i] for i in np.flatnonzero(traffic.ranks == 0)}) == 1


def test_new_share_is_as_configured_and_no_new_phrase_cleans_to_a_pool_text(clinc_pool) -> None:
    n = 20_000
    traffic = Traffic.make(n, new_share=0.1, seed=11, pool=clinc_pool)
    new = np.flatnonzero(traffic.is_new)
    assert len(new) / n == pytest.approx(0.1, abs=0.01)
    pool_texts = set(clinc_pool.cleaned)
    cleaned = [clean(traffic.texts[i]) for i in new]
    assert not pool_texts & set(cleaned)
    assert not clinc_pool.reserved & set(cleaned)  # nor any other CLINC150 text
    assert len(set(cleaned)) == len(cleaned)  # nor an earlier new phrase
    assert cleaned == [traffic.cleaned_of_key[traffic.keys[i]] for i in new]
    assert (traffic.ranks[new] == -1).all() and not traffic.is_variant[new].any()


def test_new_phrases_stay_new_when_recombinations_collide() -> None:
    pool = make_pool(["a b", "c d"], variants_per_phrase=0)  # "a b"/"c d" come back half the time
    make_new = NewPhrases(pool, seed=1)
    made = [make_new() for _ in range(200)]
    cleaned = [c for _, c in made]
    assert all(clean(text) == c for text, c in made)
    assert len(set(cleaned)) == 200
    assert not set(cleaned) & {"a b", "c d"}


def test_variants_clean_to_the_same_text_as_their_original(clinc_pool) -> None:
    for text, cleaned, variants in zip(clinc_pool.texts, clinc_pool.cleaned, clinc_pool.variants, strict=True):
        assert variants, text
        for variant in variants:
            assert variant != text and clean(variant) == cleaned
    balance = make_variants("What is my balance?", k=20)
    assert len(balance) == 20
    assert all(clean(v) == "what is my balance?" for v in balance)
    assert any("??" in v for v in balance) and any("  " in v for v in balance) and any(v.isupper() for v in balance)


def test_variant_share_is_as_configured_and_variants_share_the_cleaned_text(clinc_pool) -> None:
    n = 20_000
    traffic = Traffic.make(n, variants=0.3, seed=5, pool=clinc_pool)
    drawn = ~traffic.is_new
    assert traffic.is_variant[drawn].mean() == pytest.approx(0.3, abs=0.015)
    for i in np.flatnonzero(traffic.is_variant)[:2000]:
        key = traffic.keys[i]
        assert traffic.texts[i] != clinc_pool.texts[key]
        assert clean(traffic.texts[i]) == clinc_pool.cleaned[key]
    assert traffic.cleaned_texts() == [clean(t) for t in traffic.texts]


def test_expected_hit_rate_is_exact_on_hand_made_sequences() -> None:
    seq = ["a", "b", "a", "c", "b"]
    assert expected_hit_rate(seq) == pytest.approx(2 / 5)
    assert expected_hit_rate(seq, cache_size=3) == pytest.approx(2 / 5)
    assert expected_hit_rate(seq, cache_size=2) == pytest.approx(1 / 5)  # b is evicted by c
    assert expected_hit_rate(seq, cache_size=1) == 0.0
    assert expected_hit_rate(seq, cache_size=0) == 0.0
    # least recently *used*, not first in: the hit on "a" keeps it over "b"
    assert expected_hit_rate(["a", "b", "a", "c", "a"], cache_size=2) == pytest.approx(2 / 5)
    assert expected_hit_rate(["x"] * 4) == pytest.approx(3 / 4)
    assert expected_hit_rate([]) == 0.0
    with pytest.raises(LoadgenError, match="cache_size must be >= 0"):
        expected_hit_rate(seq, cache_size=-1)


def test_expected_lru_hit_rate_matches_the_workers_cache(plain_pool) -> None:
    traffic = Traffic.make(5000, zipf=0.9, new_share=0.05, seed=2, pool=plain_pool)
    texts = traffic.cleaned_texts()
    for size in (10, 300):
        cache = EmbeddingCache(MappingBackend({}), "e1", dim=1, max_entries=size)
        for text in texts:
            if cache.get(text) is None:
                cache.put(text, np.zeros(1, dtype=np.float32))
        assert expected_hit_rate(texts, cache_size=size) == cache.hits / len(texts)
        assert traffic.figures(cache_size=size)["expected_hit_rate_lru"] == round(cache.hits / len(texts), 6)
    assert traffic.figures()["expected_hit_rate"] == round(expected_hit_rate(texts), 6)


def test_generation_is_deterministic_for_a_seed(plain_pool) -> None:
    first = generate(3000, seed=9, new_share=0.1, variants=0.5, pool=plain_pool)
    assert generate(3000, seed=9, new_share=0.1, variants=0.5, pool=plain_pool) == first
    assert generate(3000, seed=10, new_share=0.1, variants=0.5, pool=plain_pool) != first
    assert generate(500, seed=9, new_share=0.1, variants=0.5, pool=plain_pool) == first[:500]
    assert [mid for mid, _ in first[:3]] == ["lg-9-0", "lg-9-1", "lg-9-2"]


def test_messages_are_valid_phrases_once_stamped(clinc_pool) -> None:
    stamp = Stamp()
    before = datetime.now(UTC)
    for mid, value in generate(500, region="eu", pool=clinc_pool):
        assert b'"ts"' not in value
        data = value[:-1] + stamp()
        body = json.loads(data)
        assert body["id"] == mid and body["region"] == "eu"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["ts"])
        phrase = PhraseIn.model_validate_json(data)
        assert abs((phrase.ts - before).total_seconds()) < 5


class FakeClock:
    """Time that moves only when the code under test sleeps or a message costs time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def _messages(n: int) -> list[tuple[str, bytes]]:
    return [(str(i), b'{"id":"%d"}' % i) for i in range(n)]


def test_pump_paces_to_the_rate() -> None:
    clock, sent_at = FakeClock(), []
    sent = pump(_messages(100), lambda _: sent_at.append(clock.now), rate=50.0, duration=60.0,
                clock=clock, sleep=clock.sleep, stamp=lambda: b"}")
    assert sent == 100
    assert all(t - 100.0 >= i / 50.0 - 1e-9 for i, t in enumerate(sent_at))  # none early
    assert sent_at[-1] - 100.0 == pytest.approx(99 / 50.0, abs=0.03)


def test_pump_catches_up_after_a_stall() -> None:
    clock, sent_at = FakeClock(), []

    def emit(_: bytes) -> None:
        sent_at.append(clock.now)
        if len(sent_at) == 10:
            clock.now += 1.0  # a one-second stall: 100 messages fall due meanwhile

    pump(_messages(300), emit, rate=100.0, duration=60.0, clock=clock, sleep=clock.sleep, stamp=lambda: b"}")
    assert len(sent_at) == 300
    assert sent_at[10] == sent_at[100]  # the backlog goes out at once
    assert sent_at[-1] - 100.0 == pytest.approx(299 / 100.0, abs=0.02)  # and the run ends on schedule


def test_pump_stops_at_the_duration() -> None:
    clock, values = FakeClock(), []
    sent = pump(_messages(10_000), values.append, rate=100.0, duration=2.0, clock=clock, sleep=clock.sleep,
                stamp=lambda: b',"ts":"x"}')
    assert sent == len(values) == pytest.approx(200, abs=2)
    assert values[0] == b'{"id":"0","ts":"x"}'


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, r"count must be in \[1, 5,000,000\], got 0"),
        ({"count": MAX_COUNT + 1}, "count must be in"),
        ({"count": 10.5}, "count must be an integer"),
        ({"zipf": -0.5}, "zipf must be in"),
        ({"new_share": 1.5}, "new_share must be in"),
        ({"variants": -0.1}, "variants must be in"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"region": ""}, "region must be 1-64 characters"),
    ],
)
def test_generation_bounds_are_enforced(plain_pool, kwargs: dict, message: str) -> None:
    args = {"count": 10, **kwargs}
    with pytest.raises(LoadgenError, match=message):
        Traffic.make(pool=plain_pool, **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 0}, r"duration \(s\) must be in \(0, 3,600\]"),
        ({"duration": 3601}, "duration"),
        ({"rate": 0}, r"rate \(messages/s\) must be in"),
        ({"rate": float("nan")}, "rate"),
    ],
)
def test_sending_bounds_are_enforced_before_connecting(kwargs: dict, message: str) -> None:
    with pytest.raises(LoadgenError, match=message):
        send(Settings(kafka_bootstrap=""), _messages(1), **kwargs)


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:19092", "localhost:9092", "127.0.0.2:9092,localhost:9093",
                                       "[::1]:9092", "PLAINTEXT://127.0.0.1:9092"])
def test_loopback_brokers_are_allowed(bootstrap: str) -> None:
    check_bootstrap(bootstrap)


@pytest.mark.parametrize("bootstrap", ["kafka.example.com:9092", "10.0.0.5:9092", "127.0.0.1:9092,broker:9092", ""])
def test_remote_brokers_are_refused_unless_allowed(bootstrap: str) -> None:
    with pytest.raises(LoadgenError, match="--allow-remote"):
        check_bootstrap(bootstrap)
    if bootstrap:
        check_bootstrap(bootstrap, allow_remote=True)


def test_cli_refuses_a_remote_broker_before_generating(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PHRASESTREAM_KAFKA_BOOTSTRAP", "kafka.example.com:9092")
    assert cli.main(["loadgen", "--count", "10"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [(["--count", "0"], "count must be in"),
                                                (["--duration", "7200"], "duration (s) must be in"),
                                                (["--new-share", "2"], "new_share must be in"),
                                                (["--cache-size", "-3"], "cache size must be >= 0")])
def test_cli_rejects_out_of_bound_values(monkeypatch, capsys, argv: list[str], message: str) -> None:
    monkeypatch.delenv("PHRASESTREAM_KAFKA_BOOTSTRAP", raising=False)
    assert cli.main(["loadgen", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_rate_and_max_rate_exclude_each_other() -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["loadgen", "--rate", "10", "--max-rate"])
