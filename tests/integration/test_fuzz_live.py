"""Fuzz a live worker: 3,000 seeded random payloads in (10,000 with ``--stress``), every one answered once, no crash.

The payloads (:func:`fuzz_cases`) cover random bytes and invalid UTF-8, JSON of the wrong shape
and types, nested and huge objects, control characters, right-to-left marks and zero-width
characters, 64 KiB strings, text that looks like SQL or HTML, and valid phrases. Each case says
what must come of it: the dead-letter kind of an invalid payload, or the heads that must answer
a valid one. The test matches dead letters by their original bytes (every payload is distinct)
and predictions by id, and prints the counts per kind as one JSON line.

``PHRASESTREAM_FUZZ_COUNT`` (default 3000, or 10000 with ``--stress`` / ``PHRASESTREAM_STRESS=1``)
and ``PHRASESTREAM_FUZZ_SEED`` (default 10) set the size and the seed; the same seed gives the
same payloads::

    PHRASESTREAM_HOME=$PWD/.local PHRASESTREAM_FUZZ_COUNT=2000 \\
        .venv/bin/python -m pytest tests/integration/test_fuzz_live.py -s
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from bounds import BOUND_S, FAULT_BOUND_S, POLL_S
from confluent_kafka import Consumer, Producer, TopicPartition
from faults import size

from models.registry.lifecycle import active_heads
from ops.kafka.clients import client_config
from ops.kafka.offsets import end_offsets
from ops.kafka.produce import produce_retrying
from schemas.settings import Settings
from streams.app import READY_LINE

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.integration

# 3,000 in the suite (every input kind shows up by 600), 10,000 at full size (--stress)
COUNT = int(os.environ.get("PHRASESTREAM_FUZZ_COUNT") or size(3_000, 10_000))
SEED = int(os.environ.get("PHRASESTREAM_FUZZ_SEED", "10"))

# A small vocabulary, so that most valid phrases clean to a text the worker has embedded before.
PHRASES = [
    "how do I reset my PIN", "what is my balance", "freeze my card please", "send 20 dollars to my brother",
    "book a table for two tonight", "what's the weather like tomorrow", "set an alarm for 7 am",
    "report a stolen card", "how much do I owe on my credit card", "change my account password",
    "where is my package", "tell me a joke", "what time is it in tokyo", "add milk to my shopping list",
    "cancel my reservation", "what is the exchange rate for euros", "play some jazz", "how many calories in an apple",
    "transfer money to savings", "is there a fee for international transfers", "order a pizza", "who are you",
    "translate hello into spanish", "when is my next payday", "find a flight to paris",
]
INVISIBLES = ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202e", "\u2066", "\u2067",
              "\u2069", "\ufeff", "\u00ad", "\x00", "\x01", "\x07", "\x1b", "\x7f"]
SQL = ["'; DROP TABLE inferences; --", "' OR '1'='1", "1; SELECT pg_sleep(10)", "\" UNION SELECT * FROM users --"]
HTML = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<b>", "</div>", "<!-- comment -->", "&lt;b&gt;"]
EXTRAS = [" \U0001f600", " \u65e5\u672c\u8a9e", " caf\u00e9", " \u0645\u0631\u062d\u0628\u0627", " \uff21\uff22\uff23"]


KINDS = ["not_utf8", "invalid_json", "not_an_object", "message_too_large", "missing_field", "wrong_type", "empty_text",
         "text_too_long", "empty_after_cleaning", "unknown_region", "unknown_model", "unsupported_schema_version"]
KIND_WEIGHTS = {"message_too_large": 0.3, "wrong_type": 2.0}
"""Relative frequency of each invalid kind (1 unless named): 64 KiB payloads are kept to a few hundred."""


@dataclass(frozen=True)
class Case:
    """One payload, and what must come of it: a dead letter of ``kind``, or predictions by ``models``."""

    raw: bytes
    kind: str | None = None
    id: str | None = None
    models: tuple[str, ...] = ()


def _json(value: object) -> bytes:
    """UTF-8 JSON; with ``\\u`` escapes when the value holds a lone surrogate (no UTF-8 can carry it)."""
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")


def _sprinkle(rng: random.Random, text: str, marks: Sequence[str], n: int) -> str:
    chars = list(text)
    for _ in range(n):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(marks))
    return "".join(chars)


def _valid_text(rng: random.Random) -> str:
    """A vocabulary phrase, disguised in ways the cleaner undoes (or in a few fixed ways it keeps)."""
    text = rng.choice(PHRASES)
    way = rng.randrange(7)
    if way == 1:
        text = _sprinkle(rng, text, INVISIBLES, rng.randint(1, 6))  # zero-width, bidi and control marks
    elif way == 2:
        text = f"<b>{text}</b><br>"
    elif way == 3:
        text = text + rng.choice(SQL)
    elif way == 4:
        text = rng.choice(HTML) + text
    elif way == 5:
        text = text.upper() + rng.choice(EXTRAS)
    elif way == 6:
        text = "\u202e" + text + "\u202c  \t\n"
    return text


def _nested(depth: int) -> object:
    value: object = "leaf"
    for i in range(depth):
        value = {f"k{i}": value} if i % 2 else [value]
    return value


def fuzz_cases(count: int, seed: int, heads: dict[str, list[str]], max_text_chars: int,
               max_message_bytes: int) -> list[Case]:
    """Return ``count`` distinct payloads, about 40% of them valid, each with what must come of it."""
    rng = random.Random(seed)
    regions = sorted(heads)
    cases: list[Case] = []
    seen: set[bytes] = set()
    for i in range(count * 2):
        if len(cases) == count:
            break
        case = _one_case(rng, i, seed, regions, heads, max_text_chars, max_message_bytes)
        if case.raw not in seen:  # matched by bytes: each payload once
            seen.add(case.raw)
            cases.append(case)
    assert len(cases) == count
    return cases


def _one_case(rng: random.Random, i: int, seed: int, regions: list[str], heads: dict[str, list[str]],
              max_text_chars: int, max_message_bytes: int) -> Case:
    pid = f"fz{seed}-{i}"
    region = rng.choice(regions)
    body: dict[str, object] = {"id": pid, "text": rng.choice(PHRASES), "region": region}
    roll = rng.random()
    if roll < 0.40:
        return _valid_case(rng, i, pid, region, heads, max_text_chars)
    kind = rng.choices(KINDS, weights=[KIND_WEIGHTS.get(k, 1.0) for k in KINDS])[0]
    nonce = f"{pid}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}"
    if kind == "not_utf8":
        way = rng.randrange(4)
        if way == 0:  # random bytes, with at least one byte that never starts UTF-8
            noise = bytearray(rng.randbytes(rng.randint(0, 300)))
            noise.insert(rng.randrange(len(noise) + 1), rng.choice([0xFF, 0xFE, 0xC0, 0xC1, 0xF8]))
            raw = bytes(noise) + nonce.encode()
        elif way == 1:  # a Latin-1 byte inside a JSON string
            raw = json.dumps({**body, "text": "caf__"}).encode().replace(b"__", b"\xe9" + nonce.encode())
        elif way == 2:  # an encoded surrogate, or an overlong encoding
            raw = json.dumps(body).encode()[:-1] + b', "x": "' + rng.choice([b"\xed\xa0\x80", b"\xc0\xaf"]) + b'"}'
        else:  # truncated in the middle of a multi-byte character
            raw = f'{{"id": "{pid}", "text": "{body["text"]} '.encode() + "\u20ac".encode()[:2]
        return Case(raw, kind)
    if kind == "invalid_json":
        way = rng.randrange(7)
        if way == 0:
            whole = json.dumps({**body, "n": nonce}).encode()
            raw = whole[: rng.randrange(1, len(whole))]  # a proper prefix of an object is never JSON
        elif way == 1:
            raw = f"{{'id': '{pid}', 'text': 'single quotes', 'region': '{region}'}}".encode()
        elif way == 2:
            raw = json.dumps(body).encode()[:-1] + b",}"
        elif way == 3:
            raw = f"hello {nonce} <b>not json</b> ' OR 1=1 --".encode()
        elif way == 4:
            raw = b"\xef\xbb\xbf" + json.dumps(body).encode()  # a UTF-8 BOM
        elif way == 5:  # nested deeper than any parser's stack
            depth = rng.randint(5_000, 20_000)
            raw = f'{{"id": "{pid}", "metadata": '.encode() + b"[" * depth + b"]" * depth + b"}"
        else:  # an integer longer than Python converts
            raw = f'{{"id": 1{"0" * rng.randint(4400, 6000)}, "n": "{nonce}"}}'.encode()
        return Case(raw, kind)
    if kind == "not_an_object":
        value = rng.choice([[nonce, 1, None], nonce, rng.randint(-10**12, 10**12), [{"text": nonce, "region": region}]])
        return Case(_json(value), kind)
    if kind == "message_too_large":
        way = rng.randrange(3)
        if way == 0:  # a 64 KiB string
            raw = _json({**body, "text": "a" * 65_536})
        elif way == 1:  # a huge object
            raw = _json({**body, "metadata": {f"key{n}": "v" * 100 for n in range(rng.randint(700, 1200))}})
        else:  # just over the limit, of bytes that are no UTF-8 either
            raw = nonce.encode() + b"\xff" * (max_message_bytes + 1)
        assert len(raw) > max_message_bytes
        return Case(raw, kind)
    if kind == "missing_field":
        drop = rng.choice(["text", "region", "both", "renamed"])
        fields = dict(body)
        if drop in ("text", "both"):
            del fields["text"]
        if drop in ("region", "both"):
            del fields["region"]
        if drop == "renamed":
            fields["Text"] = fields.pop("text")
        return Case(_json(fields), kind, pid)
    if kind == "wrong_type":
        field, value = rng.choice([
            ("text", 42), ("text", 4.2), ("text", ["a", "list"]), ("text", {"nested": "object"}), ("text", None),
            ("text", True), ("text", float("nan")), ("region", 7), ("region", ""), ("region", "r" * 65),
            ("region", ["global"]), ("models", "intent"), ("models", []), ("models", [1]), ("models", [""]),
            ("models", ["intent"] * 33), ("id", 1.5), ("id", True), ("id", ["x"]), ("id", ""), ("id", "a\x00b"),
            ("id", "line\nbreak"), ("id", "i" * 201), ("id", "\ud800"), ("ts", "yesterday"),
            ("ts", "2026-01-02T03:04:05"), ("metadata", [1, 2]), ("metadata", "text"),
        ])
        fields = {**body, field: value}
        if field != "id":
            fields["nonce"] = nonce
        usable_id = pid if field != "id" else None
        return Case(_json(fields), kind, usable_id)
    if kind == "empty_text":
        return Case(_json({**body, "text": rng.choice(["", " ", "\t\n", "\u00a0\u3000", "\r\n \u2003"])}), kind, pid)
    if kind == "text_too_long":
        n = rng.randint(max_text_chars + 1, max_text_chars * (60 if rng.random() < 0.1 else 3))
        char = rng.choice(["a", "\u00e9", "\u65e5"])
        n = min(n, (max_message_bytes - 200) // len(char.encode()))
        return Case(_json({**body, "text": char * n}), kind, pid)
    if kind == "empty_after_cleaning":
        text = rng.choice(["<br>", "<p></p>", "<!-- nothing -->", "&nbsp;&nbsp;", "<script></script>", "<div><br/></div>",
                           "".join(rng.choices(INVISIBLES, k=rng.randint(1, 12)))])
        return Case(_json({**body, "text": text}), kind, pid)
    if kind == "unknown_region":
        other = rng.choice([f"{region}'; DROP TABLE inferences; --", f"<b>{region}</b>", region.upper(),
                            f"{region}\u200b", "mars", f"\u202e{region}", "r" * 64])
        return Case(_json({**body, "region": other}), kind, pid)
    if kind == "unknown_model":
        models = rng.choice([["nope"], [*heads[region], "nope"], [heads[region][0].upper()], ["intent\u200b"]])
        return Case(_json({**body, "models": models}), kind, pid)
    version = rng.choice([2, 0, "1", None, "v1", [1]])
    return Case(_json({**body, "schema_version": version}), "unsupported_schema_version", pid)


def _valid_case(rng: random.Random, i: int, pid: str, region: str, heads: dict[str, list[str]],
                max_text_chars: int) -> Case:
    fields: dict[str, object] = {"id": pid, "text": _valid_text(rng), "region": region}
    models = list(heads[region])
    way = rng.randrange(8)
    if way == 1:  # a subset, with duplicates
        models = rng.sample(heads[region], rng.randint(1, len(heads[region])))
        fields["models"] = models + models[:1]
    elif way == 2:  # an integer id
        fields["id"] = 10_000_000 + i
    elif way == 3:
        fields.update(ts="2026-11-28T10:00:00+01:00", schema_version=1, colour="blue", models=None)
    elif way == 4:  # nested objects the worker carries without looking
        fields["metadata"] = {"deep": _nested(rng.randint(10, 200)), "sql": rng.choice(SQL), "html": rng.choice(HTML)}
    elif way == 5:  # a huge object that still fits
        fields["metadata"] = {f"key{n}": "v" * 100 for n in range(rng.choice([20, 50, 100, 500]))}
    elif way == 6:  # an id that looks like SQL and HTML
        fields["id"] = f"{pid}{rng.choice(SQL)}{rng.choice(HTML)}"
    elif way == 7 and rng.random() < 0.8:  # exactly at the length limit
        fields["text"] = (str(fields["text"]) + " " + "x" * max_text_chars)[:max_text_chars]
    elif way == 7:  # at the limit, of U+FDFA: one character that NFKC makes eighteen (few distinct texts:
        # each costs the embedder and the TF-IDF analyzers about 40 times a short one)
        fields["text"] = (rng.choice(PHRASES[:3]) + " " + "\ufdfa" * max_text_chars)[:max_text_chars]
    return Case(_json(fields), None, str(fields["id"]), tuple(dict.fromkeys(models)))


def _read_all(stack: Stack) -> tuple[list[dict], list[dict]]:
    """Return every dead letter and prediction the worker made, once it has handled every payload.

    The signal is the worker group's commits: it commits a batch only once the broker has the
    batch's outputs, so when its commits reach the end of the input and the cleaned topics,
    every answer is on its topic. Both topics are then read to their ends, duplicates included.
    """
    settings = stack.settings
    stack.wait_worker_caught_up(timeout=FAULT_BOUND_S)
    config = client_config(settings)
    ends = {(topic, p): end for topic in (settings.topic_dlq, settings.topic_out)
            for p, end in end_offsets(config, topic).items() if end}
    consumer = Consumer(client_config(settings, {"group.id": f"fuzz-{uuid.uuid4().hex}", "enable.auto.commit": False,
                                                 "fetch.max.bytes": 64 * 1024 * 1024}))
    consumer.assign([TopicPartition(topic, p, 0) for topic, p in ends])
    got: dict[str, list[dict]] = {settings.topic_dlq: [], settings.topic_out: []}
    start = time.monotonic()
    try:
        while ends and time.monotonic() - start < BOUND_S:
            for msg in consumer.consume(1000, POLL_S):
                where, offset, value = (msg.topic(), msg.partition()), msg.offset(), msg.value()
                if msg.error() is not None or where not in ends or offset is None:
                    continue
                if value is not None:
                    got[str(where[0])].append(json.loads(value))
                if offset + 1 >= ends[where]:
                    del ends[where]
    finally:
        consumer.close()
    assert not ends, f"could not read {settings.topic_dlq} and {settings.topic_out} to their ends: {ends}"
    return got[settings.topic_dlq], got[settings.topic_out]


def _produce(settings: Settings, cases: Sequence[Case]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap, "linger.ms": 20, "acks": "all",
                         "message.max.bytes": 2 * 1024 * 1024})
    for case in cases:
        produce_retrying(producer, settings.topic_in, case.raw, wait_s=0.1)
        producer.poll(0)
    assert producer.flush(BOUND_S) == 0


def test_fuzzed_payloads_are_each_answered_once_and_the_worker_survives(stack: Stack) -> None:
    heads = active_heads(stack.settings)
    assert heads, "no active heads: run `make train` (the test set-up does)"
    settings = stack.settings
    cases = fuzz_cases(COUNT, SEED, heads, settings.max_text_chars, settings.max_message_bytes)
    invalid = [c for c in cases if c.kind is not None]
    valid = [c for c in cases if c.kind is None]
    assert len({c.id for c in valid}) == len(valid), "valid payloads have unique ids"
    wanted = Counter((c.id, m) for c in valid for m in c.models)

    worker = stack.start("worker", READY_LINE)
    started = time.monotonic()
    _produce(settings, cases)
    letters, predictions = _read_all(stack)
    seconds = time.monotonic() - started

    # zero crashes
    log = (stack.logs / "worker.log").read_text(errors="replace")
    assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{log[-3000:]}"
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:4000]

    # every invalid payload on the DLQ once, with its kind and a reason
    expected_letters = Counter((c.raw, c.kind) for c in invalid)
    got_letters = Counter((base64.b64decode(x["original_b64"]), x["error_kind"]) for x in letters)
    wrong_kind = {raw[:80]: (kind, [k for (r, k) in got_letters if r == raw]) for raw, kind in expected_letters
                  if (raw, kind) not in got_letters}
    assert not wrong_kind, f"{len(wrong_kind)} invalid payload(s) not dead-lettered as expected: {list(wrong_kind.items())[:5]}"
    assert got_letters == expected_letters, f"unexpected dead letters: {list((got_letters - expected_letters).items())[:5]}"
    assert all(x["reason"].strip() and x["source_topic"] == settings.topic_in for x in letters)
    by_raw = {c.raw: c for c in invalid}
    assert all(x.get("id") == by_raw[base64.b64decode(x["original_b64"])].id for x in letters
               if by_raw[base64.b64decode(x["original_b64"])].id is not None), "a letter names its payload's id"

    # every valid payload predicted once by each requested head, and none also dead-lettered
    got = Counter((p["id"], p["model"]) for p in predictions)
    missing = wanted - got
    assert not missing, f"{len(missing)} prediction(s) missing, e.g. {list(missing)[:5]}"
    assert got == wanted, f"unexpected or repeated predictions: {list((got - wanted).items())[:5]}"
    valid_raw = {c.raw for c in valid}
    assert not [x for x in letters if base64.b64decode(x["original_b64"]) in valid_raw], "none both"
    assert not {x.get("id") for x in letters} & {c.id for c in valid}, "none both"

    figures = {
        "payloads": len(cases), "seed": SEED, "valid": len(valid), "predicted": len(valid),
        "predictions": len(predictions), "dead_lettered": len(letters),
        "kinds": dict(sorted(Counter(x["error_kind"] for x in letters).items())),
        "cache_hits": sum(p["cache_hit"] for p in predictions), "seconds": round(seconds, 1), "worker_crashes": 0,
    }
    print(json.dumps({"fuzz": figures}))


def test_the_fuzz_payloads_are_reproducible_and_cover_every_input_kind() -> None:
    heads = {"global": ["domain", "intent"], "eu": ["intent"]}
    first = fuzz_cases(600, 3, heads, 1000, 64_000)
    assert first == fuzz_cases(600, 3, heads, 1000, 64_000)
    assert first != fuzz_cases(600, 4, heads, 1000, 64_000)
    kinds = {c.kind for c in first}
    assert kinds == {None, "not_utf8", "invalid_json", "not_an_object", "message_too_large", "missing_field",
                     "wrong_type", "empty_text", "text_too_long", "empty_after_cleaning", "unknown_region",
                     "unknown_model", "unsupported_schema_version"}
