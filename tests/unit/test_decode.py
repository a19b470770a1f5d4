"""Unit tests of streams.decode: every error kind, limits, ids, models and provenance."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.messages import CleanedPhrase, DeadLetter, ErrorKind
from streams.decode import Limits, Source, decode_phrase

KNOWN = {"global": ["banking", "intent", "oos"], "eu": ["intent"]}
SOURCE = Source("phrases.in", partition=3, offset=1234)
RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def raw(**fields: Any) -> bytes:
    return json.dumps(fields).encode("utf-8")


def ok(data: bytes, limits: Limits = Limits()) -> CleanedPhrase:
    result = decode_phrase(data, KNOWN, SOURCE, limits, received_at=RECEIVED)
    assert isinstance(result, CleanedPhrase), result
    return result


def rejected(data: bytes | None, kind: ErrorKind, limits: Limits = Limits()) -> DeadLetter:
    result = decode_phrase(data, KNOWN, SOURCE, limits)
    assert isinstance(result, DeadLetter), result
    assert result.error_kind is kind, result.reason
    assert result.reason
    return result


# --- valid phrases ----------------------------------------------------------------------


def test_valid_phrase_is_cleaned() -> None:
    phrase = ok(raw(id="p1", text="  How do I <b>reset</b> my PIN???", region="global"))
    assert phrase.id == "p1"
    assert phrase.region == "global"
    assert phrase.clean_text == "how do i reset my pin?"
    assert phrase.received_at == RECEIVED
    assert phrase.ts is None


def test_explain_is_carried_to_the_cleaned_phrase_and_off_by_default() -> None:
    asked = ok(raw(id="p1", text="reset my pin", region="global", explain=True))
    assert asked.explain and CleanedPhrase.from_bytes(asked.to_bytes()).explain
    assert not ok(raw(id="p2", text="reset my pin", region="global")).explain
    assert not ok(raw(id="p3", text="reset my pin", region="global", explain=False)).explain
    rejected(raw(id="p4", text="reset my pin", region="global", explain="yes"), ErrorKind.WRONG_TYPE)


def test_received_at_defaults_to_now_utc() -> None:
    before = datetime.now(UTC)
    result = decode_phrase(raw(text="hi", region="eu"), KNOWN, SOURCE)
    assert isinstance(result, CleanedPhrase)
    assert before <= result.received_at <= datetime.now(UTC)
    assert result.received_at.utcoffset() == timedelta(0)


def test_int_id_accepted_as_string() -> None:
    assert ok(raw(id=42, text="hi", region="global")).id == "42"


def test_absent_id_is_the_source_position_so_a_replay_keeps_it() -> None:
    body = raw(text="hi", region="global")
    first = decode_phrase(body, KNOWN, Source("phrases.in", 3, 17))
    again = decode_phrase(body, KNOWN, Source("phrases.in", 3, 17))
    other = decode_phrase(body, KNOWN, Source("phrases.in", 3, 18))
    assert first.id == again.id == "phrases.in/3/17"
    assert other.id == "phrases.in/3/18"


def test_absent_id_without_a_source_position_is_generated() -> None:
    first = decode_phrase(raw(text="hi", region="global"), KNOWN, Source("phrases.in")).id
    second = decode_phrase(raw(text="hi", region="global"), KNOWN, Source("phrases.in")).id
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != second


@pytest.mark.parametrize("bad_id", ["a\x00b", "line\nbreak", "bell\x07"])
def test_an_id_with_control_characters_is_rejected(bad_id: str) -> None:
    body = json.dumps({"id": bad_id, "text": "hi", "region": "global"}).encode()
    letter = decode_phrase(body, KNOWN, Source("phrases.in", 0, 1))
    assert isinstance(letter, DeadLetter)
    assert letter.error_kind is ErrorKind.WRONG_TYPE
    assert "id" in letter.reason


def test_models_default_to_all_heads_of_region() -> None:
    assert ok(raw(text="hi", region="global")).models == ["banking", "intent", "oos"]
    assert ok(raw(text="hi", region="eu")).models == ["intent"]


def test_models_null_means_all_heads() -> None:
    assert ok(raw(text="hi", region="global", models=None)).models == ["banking", "intent", "oos"]


def test_explicit_model_subset_kept_in_order() -> None:
    assert ok(raw(text="hi", region="global", models=["oos", "banking"])).models == ["oos", "banking"]


def test_duplicate_models_removed() -> None:
    assert ok(raw(text="hi", region="global", models=["intent", "oos", "intent", "oos"])).models == ["intent", "oos"]


def test_extra_fields_ignored() -> None:
    assert ok(raw(text="hi", region="global", colour="blue", metadata={"a": 1})).clean_text == "hi"


def test_aware_ts_accepted() -> None:
    phrase = ok(raw(text="hi", region="global", ts="2026-01-02T03:04:05+02:00"))
    assert phrase.ts == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)


def test_ts_with_z_suffix_accepted() -> None:
    assert ok(raw(text="hi", region="global", ts="2026-01-02T03:04:05Z")).ts == datetime(
        2026, 1, 2, 3, 4, 5, tzinfo=UTC
    )


def test_schema_version_1_accepted() -> None:
    assert ok(raw(schema_version=1, text="hi", region="global")).clean_text == "hi"


def test_text_exactly_at_limit_accepted() -> None:
    assert ok(raw(text="a" * 10, region="global"), Limits(max_text_chars=10)).clean_text == "a" * 10


def test_text_limit_counts_characters_not_bytes() -> None:
    assert ok(raw(text="\u00e9" * 10, region="global"), Limits(max_text_chars=10)).clean_text == "\u00e9" * 10


def test_message_exactly_at_byte_limit_accepted() -> None:
    data = raw(text="hi", region="global")
    assert ok(data, Limits(max_message_bytes=len(data))).clean_text == "hi"


# --- dead letters, one per error kind ---------------------------------------------------


def test_empty_message_is_invalid_json() -> None:
    assert "empty message" in rejected(b"", ErrorKind.INVALID_JSON).reason


def test_missing_value_is_invalid_json() -> None:
    letter = rejected(None, ErrorKind.INVALID_JSON)
    assert "empty message" in letter.reason
    assert letter.original() == b""


def test_non_utf8() -> None:
    letter = rejected(b'{"text": "caf\xe9", "region": "global"}', ErrorKind.NOT_UTF8)
    assert "UTF-8" in letter.reason and "byte 13" in letter.reason


def test_invalid_json() -> None:
    letter = rejected(b'{"text": "hi", "region": }', ErrorKind.INVALID_JSON)
    assert "invalid JSON at line 1 column 26" in letter.reason


def test_json_with_utf8_bom_is_invalid_json() -> None:
    assert "BOM" in rejected(b'\xef\xbb\xbf{"text": "hi", "region": "global"}', ErrorKind.INVALID_JSON).reason


def test_deeply_nested_json_is_invalid_json_not_an_exception() -> None:
    data = b'{"text": "hi", "region": "global", "metadata": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert "nested too deeply" in rejected(data, ErrorKind.INVALID_JSON).reason


def test_huge_integer_is_invalid_json_not_an_exception() -> None:
    data = b'{"id": 1' + b"0" * 5000 + b', "text": "hi", "region": "global"}'
    assert "digits" in rejected(data, ErrorKind.INVALID_JSON).reason


@pytest.mark.parametrize(("data", "name"), [(b"[1, 2]", "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "NoneType")])
def test_not_an_object(data: bytes, name: str) -> None:
    assert rejected(data, ErrorKind.NOT_AN_OBJECT).reason == f"expected a JSON object, got {name}"


def test_message_too_large() -> None:
    data = raw(text="hi", region="global")
    letter = rejected(data, ErrorKind.MESSAGE_TOO_LARGE, Limits(max_message_bytes=len(data) - 1))
    assert letter.reason == (
        f"message is {len(data)} bytes; the limit is {len(data) - 1} (PHRASESTREAM_MAX_MESSAGE_BYTES)"
    )


def test_message_too_large_checked_before_utf8() -> None:
    rejected(b"\xff" * 11, ErrorKind.MESSAGE_TOO_LARGE, Limits(max_message_bytes=10))


@pytest.mark.parametrize("field", ["text", "region"])
def test_missing_field(field: str) -> None:
    fields = {"id": "m1", "text": "hi", "region": "global"}
    del fields[field]
    letter = rejected(raw(**fields), ErrorKind.MISSING_FIELD)
    assert letter.reason == f"field {field!r} is required"
    assert letter.id == "m1"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"text": 42, "region": "global"}, "text"),
        ({"text": ["hi"], "region": "global"}, "text"),
        ({"text": "hi", "region": 7}, "region"),
        ({"text": "hi", "region": ""}, "region"),
        ({"text": "hi", "region": "global", "models": "intent"}, "models"),
        ({"text": "hi", "region": "global", "models": []}, "models"),
        ({"text": "hi", "region": "global", "models": [1]}, "models.0"),
        ({"id": 1.5, "text": "hi", "region": "global"}, "id"),
        ({"id": "", "text": "hi", "region": "global"}, "id"),
        ({"text": "hi", "region": "global", "metadata": [1]}, "metadata"),
        ({"text": "hi", "region": "global", "ts": "yesterday"}, "ts"),
    ],
)
def test_wrong_type(fields: dict[str, Any], where: str) -> None:
    assert rejected(raw(**fields), ErrorKind.WRONG_TYPE).reason.startswith(f"field {where!r}: ")


def test_wrong_type_reason_shows_the_input_truncated() -> None:
    letter = rejected(raw(text=["x" * 500], region="global"), ErrorKind.WRONG_TYPE)
    assert "(got ['xxx" in letter.reason
    assert len(letter.reason) < 200


def test_bool_id_is_wrong_type_and_not_used_as_key() -> None:
    letter = rejected(raw(id=True, text="hi", region="global"), ErrorKind.WRONG_TYPE)
    assert letter.reason.startswith("field 'id': ")
    assert letter.id is None


def test_lone_surrogate_id_is_rejected_and_serialisable() -> None:
    letter = rejected(b'{"id": "\\ud800", "text": "hi", "region": "global"}', ErrorKind.WRONG_TYPE)
    assert "surrogate" in letter.reason and letter.id is None
    assert DeadLetter.model_validate_json(letter.to_bytes()).original() == letter.original()


def test_lone_surrogate_in_text_is_dropped_by_cleaning() -> None:
    assert ok(b'{"text": "a\\ud800b", "region": "global"}').to_bytes()


def test_naive_ts_rejected() -> None:
    letter = rejected(raw(text="hi", region="global", ts="2026-01-02T03:04:05"), ErrorKind.WRONG_TYPE)
    assert letter.reason.startswith("field 'ts': ") and "timezone" in letter.reason


@pytest.mark.parametrize("text", ["", "   ", "\t\n\u00a0"])
def test_empty_text(text: str) -> None:
    letter = rejected(raw(id="e1", text=text, region="global"), ErrorKind.EMPTY_TEXT)
    assert letter.reason == "text is empty or only white space"
    assert letter.id == "e1"


def test_text_too_long() -> None:
    letter = rejected(raw(text="a" * 11, region="global"), ErrorKind.TEXT_TOO_LONG, Limits(max_text_chars=10))
    assert letter.reason == "text has 11 characters; the limit is 10 (PHRASESTREAM_MAX_TEXT_CHARS)"


@pytest.mark.parametrize("text", ["<br>", "<p></p>", "\u200b\ufeff", "<!-- hidden -->", "&nbsp;"])
def test_empty_after_cleaning(text: str) -> None:
    letter = rejected(raw(text=text, region="global"), ErrorKind.EMPTY_AFTER_CLEANING)
    assert "empty after cleaning" in letter.reason


def test_unknown_region_lists_known_regions() -> None:
    letter = rejected(raw(text="hi", region="mars"), ErrorKind.UNKNOWN_REGION)
    assert letter.reason == "unknown region 'mars'; known regions: ['eu', 'global']"


def test_unknown_model_rejected() -> None:
    letter = rejected(raw(text="hi", region="eu", models=["intent", "banking"]), ErrorKind.UNKNOWN_MODEL)
    assert letter.reason == "unknown model(s) ['banking'] for region 'eu'; known: ['intent']"


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_unsupported_schema_version(version: Any) -> None:
    letter = rejected(raw(schema_version=version, text="hi", region="global"), ErrorKind.UNSUPPORTED_SCHEMA_VERSION)
    assert letter.reason == f"schema_version must be 1, got {version!r}"


def test_schema_version_2_wins_over_other_errors() -> None:
    rejected(raw(schema_version=2, texts=["hi"], region="global"), ErrorKind.UNSUPPORTED_SCHEMA_VERSION)


def test_every_input_error_kind_is_reachable_from_decode() -> None:
    produced = {
        rejected(data, kind, limits).error_kind
        for data, kind, limits in [
            (b"\xff", ErrorKind.NOT_UTF8, Limits()),
            (b"{", ErrorKind.INVALID_JSON, Limits()),
            (b"[]", ErrorKind.NOT_AN_OBJECT, Limits()),
            (raw(text="hi", region="global"), ErrorKind.MESSAGE_TOO_LARGE, Limits(max_message_bytes=5)),
            (raw(region="global"), ErrorKind.MISSING_FIELD, Limits()),
            (raw(text=1, region="global"), ErrorKind.WRONG_TYPE, Limits()),
            (raw(text=" ", region="global"), ErrorKind.EMPTY_TEXT, Limits()),
            (raw(text="abc", region="global"), ErrorKind.TEXT_TOO_LONG, Limits(max_text_chars=2)),
            (raw(text="<br>", region="global"), ErrorKind.EMPTY_AFTER_CLEANING, Limits()),
            (raw(text="hi", region="x"), ErrorKind.UNKNOWN_REGION, Limits()),
            (raw(text="hi", region="eu", models=["x"]), ErrorKind.UNKNOWN_MODEL, Limits()),
            (raw(schema_version=2, text="hi", region="eu"), ErrorKind.UNSUPPORTED_SCHEMA_VERSION, Limits()),
        ]
    }
    assert produced == set(ErrorKind) - {ErrorKind.INTERNAL, ErrorKind.REJECTED_BY_DATABASE}  # the sink's kind


# --- provenance -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"\xff\xfe\x00binary", b"not json", raw(id="r1", text="hi", region="mars"), raw(text=" ", region="eu")]
)
def test_original_bytes_round_trip(data: bytes) -> None:
    letter = decode_phrase(data, KNOWN, SOURCE)
    assert isinstance(letter, DeadLetter)
    assert letter.original() == data
    assert DeadLetter.model_validate_json(letter.to_bytes()).original() == data


def test_source_topic_partition_offset_carried() -> None:
    letter = rejected(b"nope", ErrorKind.INVALID_JSON)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("phrases.in", 3, 1234)


def test_source_without_partition_and_offset() -> None:
    letter = decode_phrase(b"nope", KNOWN, Source("t"))
    assert isinstance(letter, DeadLetter)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("t", None, None)


def test_dead_letter_carries_int_id_as_string() -> None:
    assert rejected(raw(id=7, text="hi", region="mars"), ErrorKind.UNKNOWN_REGION).id == "7"


def test_dead_letter_without_id_when_message_unreadable() -> None:
    assert rejected(b"{", ErrorKind.INVALID_JSON).id is None


def test_dead_letter_failed_at_is_aware() -> None:
    assert rejected(b"{", ErrorKind.INVALID_JSON).failed_at.tzinfo is not None
