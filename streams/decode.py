"""Decode, validate and clean one raw ``phrases.in`` message: a valid phrase or a dead letter.

``decode_phrase`` never raises for bad input: it returns a :class:`CleanedPhrase` or a
:class:`DeadLetter` that carries the error kind, a reason a person can act on and the
original bytes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from schemas.cleaning import clean
from schemas.messages import CleanedPhrase, DeadLetter, ErrorKind, PhraseIn, utcnow


@dataclass(frozen=True)
class Source:
    """Where a raw message came from."""

    topic: str
    partition: int | None = None
    offset: int | None = None

    def default_id(self) -> str:
        """Return the id of a phrase that has none: its ``topic/partition/offset``, stable on replay."""
        if self.partition is None or self.offset is None:
            return uuid.uuid4().hex
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class Limits:
    """Input limits (see ``Settings.max_text_chars`` and ``Settings.max_message_bytes``)."""

    max_text_chars: int = 1000
    max_message_bytes: int = 64_000


class _Reject(Exception):
    def __init__(self, kind: ErrorKind, reason: str, phrase_id: str | None = None) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.phrase_id = kind, reason, phrase_id


def _kind_of(error: ValidationError) -> tuple[ErrorKind, str]:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    if first["type"] == "missing":
        return ErrorKind.MISSING_FIELD, f"field {where!r} is required"
    if where == "schema_version":
        return ErrorKind.UNSUPPORTED_SCHEMA_VERSION, f"schema_version must be 1, got {first.get('input')!r}"
    return ErrorKind.WRONG_TYPE, f"field {where!r}: {first['msg']} (got {first.get('input')!r:.80})"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _validate(
    raw: bytes | None, known: Mapping[str, Sequence[str]], limits: Limits, default_id: str
) -> tuple[PhraseIn, str, list[str]]:
    if raw is None or len(raw) == 0:
        raise _Reject(ErrorKind.INVALID_JSON, "empty message: expected a JSON object with 'text' and 'region'")
    if len(raw) > limits.max_message_bytes:
        msg = f"message is {len(raw)} bytes; the limit is {limits.max_message_bytes} (PHRASESTREAM_MAX_MESSAGE_BYTES)"
        raise _Reject(ErrorKind.MESSAGE_TOO_LARGE, msg)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reject(ErrorKind.NOT_UTF8, f"message is not valid UTF-8 at byte {exc.start}: {exc.reason}") from None
    try:
        payload = json.loads(decoded)
    except json.JSONDecodeError as exc:
        raise _Reject(ErrorKind.INVALID_JSON, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _Reject(ErrorKind.INVALID_JSON, "invalid JSON: arrays or objects nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise _Reject(ErrorKind.INVALID_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _Reject(ErrorKind.NOT_AN_OBJECT, f"expected a JSON object, got {type(payload).__name__}")
    raw_id = payload.get("id")
    phrase_id = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else None
    if phrase_id is not None and not _encodable(phrase_id):
        # A JSON escape such as "\ud800" decodes to a lone surrogate, which no topic can carry.
        raise _Reject(ErrorKind.WRONG_TYPE, "field 'id': contains a lone surrogate (not valid Unicode)")
    if "id" not in payload:
        payload = {**payload, "id": default_id}
    try:
        phrase = PhraseIn.model_validate(payload)
    except ValidationError as exc:
        kind, reason = _kind_of(exc)
        raise _Reject(kind, reason, phrase_id) from None
    if not phrase.text.strip():
        raise _Reject(ErrorKind.EMPTY_TEXT, "text is empty or only white space", phrase.id)
    if len(phrase.text) > limits.max_text_chars:
        msg = (
            f"text has {len(phrase.text)} characters; the limit is {limits.max_text_chars} "
            "(PHRASESTREAM_MAX_TEXT_CHARS)"
        )
        raise _Reject(ErrorKind.TEXT_TOO_LONG, msg, phrase.id)
    if phrase.region not in known:
        msg = f"unknown region {phrase.region!r}; known regions: {sorted(known)}"
        raise _Reject(ErrorKind.UNKNOWN_REGION, msg, phrase.id)
    heads = list(known[phrase.region])
    if phrase.models is None:
        models = heads
    else:
        unknown = [m for m in phrase.models if m not in heads]
        if unknown:
            msg = f"unknown model(s) {unknown} for region {phrase.region!r}; known: {sorted(heads)}"
            raise _Reject(ErrorKind.UNKNOWN_MODEL, msg, phrase.id)
        models = list(dict.fromkeys(phrase.models))
    clean_text = clean(phrase.text)
    if not clean_text:
        raise _Reject(ErrorKind.EMPTY_AFTER_CLEANING, "text is empty after cleaning (markup or invisible characters only)", phrase.id)
    return phrase, clean_text, models


def decode_phrase(
    raw: bytes | None,
    known: Mapping[str, Sequence[str]],
    source: Source,
    limits: Limits = Limits(),
    received_at: datetime | None = None,
) -> CleanedPhrase | DeadLetter:
    """Return the cleaned phrase in ``raw``, or the dead letter that says why there is none.

    ``known`` maps each region to the names of its active heads.
    """
    try:
        phrase, clean_text, models = _validate(raw, known, limits, source.default_id())
    except _Reject as rejected:
        return DeadLetter.of(
            rejected.kind, rejected.reason, raw, source.topic, source.partition, source.offset, rejected.phrase_id
        )
    return CleanedPhrase(
        id=phrase.id,
        region=phrase.region,
        models=models,
        clean_text=clean_text,
        received_at=received_at or utcnow(),
        ts=phrase.ts,
        explain=phrase.explain is True,
    )
