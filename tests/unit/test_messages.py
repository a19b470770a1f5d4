"""Unit tests of schemas.messages: wire round trips and exclude_none."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from schemas.messages import (
    CLEANED_FORMAT,
    CleanedFormatError,
    CleanedPhrase,
    DeadLetter,
    ErrorKind,
    LabeledPhrase,
    PhraseIn,
    Prediction,
    prediction_bytes,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
T1 = T0 + timedelta(milliseconds=12.5)


def prediction(**overrides: object) -> Prediction:
    fields: dict[str, object] = dict(
        id="p1",
        region="global",
        model="intent",
        model_version="20260101T000000Z-abc123",
        label="pin_change",
        probability=0.912345,
        top_k=[("pin_change", 0.912345), ("balance", 0.05), ("oos", 0.037655)],
        clean_text="how do i reset my pin?",
        embedder_version="minilm-l6-v2",
        cache_hit=True,
        latency_ms=12.5,
        received_at=T0,
        predicted_at=T1,
    )
    fields.update(overrides)
    return Prediction(**fields)  # type: ignore[arg-type]


def test_to_bytes_is_compact_utf8_json() -> None:
    data = PhraseIn(id="a", text="caf\u00e9 \U0001f600", region="eu").to_bytes()
    assert data == '{"schema_version":1,"id":"a","text":"caf\u00e9 \U0001f600","region":"eu"}'.encode("utf-8")


def test_phrase_in_round_trip() -> None:
    phrase = PhraseIn(
        id="42", text="How do I reset my PIN?", region="global", models=["intent", "oos"], ts=T0, metadata={"k": [1, "v"]}
    )
    assert PhraseIn.model_validate_json(phrase.to_bytes()) == phrase


def test_phrase_in_minimal_round_trip_keeps_generated_id() -> None:
    phrase = PhraseIn(text="hi", region="global")
    back = PhraseIn.model_validate_json(phrase.to_bytes())
    assert back == phrase
    assert back.id == phrase.id and len(phrase.id) == 32
    assert back.models is None and back.ts is None and back.metadata is None


def test_phrase_in_exclude_none_omits_optional_fields() -> None:
    payload = json.loads(PhraseIn(id="x", text="hi", region="global").to_bytes())
    assert payload == {"schema_version": 1, "id": "x", "text": "hi", "region": "global"}


def test_phrase_in_int_id_becomes_string() -> None:
    assert PhraseIn.model_validate({"id": 42, "text": "hi", "region": "g"}).id == "42"


def test_phrase_in_bool_id_rejected() -> None:
    with pytest.raises(ValidationError):
        PhraseIn.model_validate({"id": True, "text": "hi", "region": "g"})


def test_phrase_in_is_frozen() -> None:
    phrase = PhraseIn(text="hi", region="g")
    with pytest.raises(ValidationError):
        phrase.text = "other"  # type: ignore[misc]


def test_cleaned_phrase_round_trip() -> None:
    phrase = CleanedPhrase(id="1", region="eu", models=["intent"], clean_text="hi", received_at=T0, ts=T1)
    assert CleanedPhrase.from_bytes(phrase.to_bytes()) == phrase


def test_cleaned_phrase_is_a_format_2_array_on_the_wire() -> None:
    phrase = CleanedPhrase(id="1", region="eu", models=["intent"], clean_text="caf\u00e9", received_at=T0)
    assert json.loads(phrase.to_bytes()) == [CLEANED_FORMAT, "1", "eu", ["intent"], "caf\u00e9",
                                             "2026-01-02T03:04:05.678901Z", None]


def test_cleaned_phrase_reads_the_format_1_object_of_an_older_worker() -> None:
    old = json.dumps({"schema_version": 1, "id": "1", "region": "eu", "models": ["intent"], "clean_text": "hi",
                      "received_at": "2026-01-02T03:04:05.678901Z", "ts": "2026-01-02T03:04:05.691401+00:00"})
    expected = CleanedPhrase(id="1", region="eu", models=["intent"], clean_text="hi", received_at=T0, ts=T1)
    assert CleanedPhrase.from_bytes(old.encode()) == expected


@pytest.mark.parametrize(("raw", "why"), [
    (b"{not json", "invalid JSON"),
    (b'{"schema_version": 3, "id": "1"}', "format 2"),
    (b'[3, "1", "eu", ["intent"], "hi", "2026-01-02T03:04:05Z", null]', "format 2"),
    (b'[2, 1, "eu", ["intent"], "hi", "2026-01-02T03:04:05Z", null]', "id must be a string"),
    (b'[2, "1", "eu", [], "hi", "2026-01-02T03:04:05Z", null]', "models must be a non-empty list"),
    (b'[2, "1", "eu", ["intent"], "hi", "yesterday", null]', "received_at must be an ISO 8601"),
    (b'[2, "1", "eu", ["intent"], "hi", "2026-01-02T03:04:05", null]', "received_at has no timezone"),
    (b'[2, "1", "eu", ["intent"], "hi", "2026-01-02T03:04:05Z", 5]', "ts must be an ISO 8601"),
])
def test_bytes_that_are_not_a_cleaned_phrase_raise_with_the_reason(raw: bytes, why: str) -> None:
    with pytest.raises(CleanedFormatError, match=why):
        CleanedPhrase.from_bytes(raw)


def _awkward_floats(rng: random.Random) -> list[float]:
    fixed = [0.0, 1.0, 100.0, 1e-5, 5e-6, 1e-7, 0.1, 2.5e-4, 1 / 3, 1e15, 1e16, 1e17, 1e21, 1e22, 123456.789]
    return fixed + [round(rng.random() ** rng.randint(1, 40), 6) for _ in range(200)] + \
        [round(rng.uniform(0, 1e7), 3) for _ in range(100)] + [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(200)]


def test_prediction_bytes_are_byte_for_byte_what_the_model_writes() -> None:
    rng = random.Random(17)
    texts = ["how do i reset my pin?", "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600", 'quote " back\\slash / tab\t nl\n',
             "\x01\x1f\x7f control", "\u2028\u2029 separators", "\ufeff bom", ""]
    zones = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
    floats = _awkward_floats(rng)
    for i, x in enumerate(floats):
        received = T0 + timedelta(microseconds=rng.choice([0, 1, 999_999, rng.randrange(10**9)]))
        ts = None if i % 3 == 0 else (received - timedelta(seconds=rng.random())).astimezone(zones[i % len(zones)])
        fields = dict(id=texts[i % len(texts)] or "x", region="global", model="intent", model_version="v1",
                      label=texts[(i + 1) % len(texts)], probability=x,
                      top_k=[(texts[(i + 2) % len(texts)], x), ("oos", floats[-1 - i])], clean_text=texts[i % len(texts)],
                      embedder_version="e1", cache_hit=bool(i % 2), latency_ms=round(x * 1000, 3),
                      received_at=received, predicted_at=received + timedelta(milliseconds=rng.random() * 1e4), ts=ts)
        assert prediction_bytes(**fields) == Prediction(**fields).to_bytes(), fields  # type: ignore[arg-type]


def test_prediction_round_trip() -> None:
    original = prediction(ts=T0 - timedelta(seconds=1))
    back = Prediction.model_validate_json(original.to_bytes())
    assert back == original
    assert back.received_at == T0 and back.predicted_at == T1


def test_prediction_top_k_survives_as_pairs() -> None:
    back = Prediction.model_validate_json(prediction().to_bytes())
    assert back.top_k == [("pin_change", 0.912345), ("balance", 0.05), ("oos", 0.037655)]
    assert all(type(pair) is tuple and len(pair) == 2 for pair in back.top_k)


def test_prediction_top_k_on_the_wire_is_a_list_of_arrays() -> None:
    payload = json.loads(prediction().to_bytes())
    assert payload["top_k"] == [["pin_change", 0.912345], ["balance", 0.05], ["oos", 0.037655]]


def test_prediction_exclude_none_omits_ts_and_evidence_only() -> None:
    payload = json.loads(prediction().to_bytes())
    assert "ts" not in payload
    assert payload["cache_hit"] is True and payload["latency_ms"] == 12.5
    assert set(payload) == set(Prediction.model_fields) - {"ts", "evidence"}


def test_prediction_rejects_naive_datetime() -> None:
    with pytest.raises(ValidationError):
        prediction(received_at=datetime(2026, 1, 1))


def test_dead_letter_round_trip() -> None:
    letter = DeadLetter(
        error_kind=ErrorKind.UNKNOWN_REGION,
        reason="unknown region 'mars'",
        original_b64=DeadLetter.encode_original(b"\x00\xff raw"),
        source_topic="phrases.in",
        source_partition=2,
        source_offset=99,
        id="p9",
        failed_at=T0,
    )
    back = DeadLetter.model_validate_json(letter.to_bytes())
    assert back == letter
    assert back.error_kind is ErrorKind.UNKNOWN_REGION
    assert back.original() == b"\x00\xff raw"


def test_dead_letter_error_kind_is_its_value_on_the_wire() -> None:
    letter = DeadLetter(error_kind=ErrorKind.NOT_UTF8, reason="r", original_b64="", source_topic="t")
    assert json.loads(letter.to_bytes())["error_kind"] == "not_utf8"


def test_dead_letter_exclude_none_omits_partition_offset_id() -> None:
    letter = DeadLetter(error_kind=ErrorKind.INTERNAL, reason="r", original_b64="", source_topic="t", failed_at=T0)
    payload = json.loads(letter.to_bytes())
    assert set(payload) == {"schema_version", "error_kind", "reason", "original_b64", "original_truncated", "source_topic", "failed_at"}
    back = DeadLetter.model_validate_json(letter.to_bytes())
    assert (back.source_partition, back.source_offset, back.id) == (None, None, None)


def test_dead_letter_exclude_none_keeps_zero_partition_and_offset() -> None:
    letter = DeadLetter(
        error_kind=ErrorKind.INTERNAL, reason="r", original_b64="", source_topic="t", source_partition=0, source_offset=0
    )
    payload = json.loads(letter.to_bytes())
    assert payload["source_partition"] == 0 and payload["source_offset"] == 0


def test_dead_letter_encode_original_of_none_is_empty() -> None:
    assert DeadLetter.encode_original(None) == ""
    assert DeadLetter(error_kind=ErrorKind.INVALID_JSON, reason="r", original_b64="", source_topic="t").original() == b""


def test_dead_letter_failed_at_defaults_to_aware_now() -> None:
    before = datetime.now(UTC)
    letter = DeadLetter(error_kind=ErrorKind.INTERNAL, reason="r", original_b64="", source_topic="t")
    assert before <= letter.failed_at <= datetime.now(UTC)


def test_labeled_phrase_round_trip() -> None:
    labeled = LabeledPhrase(text="How do I reset my PIN?", label="pin_change", region="global", model="intent", ts=T0)
    back = LabeledPhrase.model_validate_json(labeled.to_bytes())
    assert back == labeled


def test_labeled_phrase_ts_defaults_and_survives() -> None:
    labeled = LabeledPhrase(text="t", label="l", region="eu", model="m")
    assert labeled.ts.tzinfo is not None
    assert LabeledPhrase.model_validate_json(labeled.to_bytes()).ts == labeled.ts


@pytest.mark.parametrize("field", ["region", "model"])
@pytest.mark.parametrize("bad", ["Global", "a b", "", "x" * 65, "\u00e9"])
def test_labeled_phrase_names_are_restricted(field: str, bad: str) -> None:
    fields = {"text": "t", "label": "l", "region": "eu", "model": "m", field: bad}
    with pytest.raises(ValidationError):
        LabeledPhrase(**fields)


@pytest.mark.parametrize("field", ["text", "label"])
def test_labeled_phrase_text_and_label_not_empty(field: str) -> None:
    fields = {"text": "t", "label": "l", "region": "eu", "model": "m", field: ""}
    with pytest.raises(ValidationError):
        LabeledPhrase(**fields)


def test_unknown_fields_ignored_on_read() -> None:
    data = b'{"text": "t", "label": "l", "region": "eu", "model": "m", "extra": 1}'
    assert not hasattr(LabeledPhrase.model_validate_json(data), "extra")


def test_other_schema_version_rejected_on_read() -> None:
    with pytest.raises(ValidationError):
        LabeledPhrase.model_validate_json(b'{"schema_version": 2, "text": "t", "label": "l", "region": "eu", "model": "m"}')


def test_a_dead_letter_carries_size_and_checksum_of_its_original() -> None:
    import hashlib

    letter = DeadLetter.of(ErrorKind.INVALID_JSON, "bad", b"{oops", "phrases.in", 1, 2)
    assert letter.original() == b"{oops"
    assert letter.original_size == 5
    assert letter.original_sha256 == hashlib.sha256(b"{oops").hexdigest()
    assert letter.original_truncated is False


def test_a_huge_original_is_cut_so_that_the_letter_fits_in_a_kafka_message() -> None:
    from schemas.messages import MAX_ORIGINAL_BYTES

    raw = b"x" * (2 * 1024 * 1024)
    letter = DeadLetter.of(ErrorKind.MESSAGE_TOO_LARGE, "too large", raw, "phrases.in", 0, 9)
    assert letter.original_truncated is True
    assert letter.original() == raw[:MAX_ORIGINAL_BYTES]
    assert letter.original_size == len(raw)
    assert len(letter.to_bytes()) < 1_000_000
