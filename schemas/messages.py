"""The messages on phrasestream's topics, as pydantic v2 models.

Each message carries ``schema_version``; a reader refuses a version it does not know.

- ``phrases.in``: :class:`PhraseIn`, produced by users.
- ``<app_id>-phrases.cleaned`` (internal): :class:`CleanedPhrase`, a plain dataclass in a compact format of ours.
- ``predictions.out``: :class:`Prediction`, one per (phrase, model).
- ``phrases.dlq``: :class:`DeadLetter`, every message that could not be served.
- ``phrases.labeled``: :class:`LabeledPhrase`, labelled examples for retraining.
- ``models.registry``: :class:`RegistryPointer`, the live version of each head (compacted).
- ``drift.alerts`` and ``serving.rollups``: ``schemas.observations``.
- ``phrases.review`` and ``predictions.shadow``: ``schemas.review`` (the expert loop).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

import orjson
from pydantic import AwareDatetime, BeforeValidator, Field, StrictBool, StrictStr

from schemas.base import Message, Name, utcnow
from schemas.review import ReviewRule, ShadowSpec


def _id_to_str(value: Any) -> Any:
    # An integer idempotency key is common ("id": 42); keep it as its decimal string.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


PhraseId = Annotated[
    StrictStr, BeforeValidator(_id_to_str), Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
]
"""A client id: 1-200 characters, no control characters (PostgreSQL text cannot hold NUL)."""


_Message = Message


class PhraseIn(_Message):
    """A phrase to classify, as produced to ``phrases.in``.

    ``id`` is the client's idempotency key; when absent, the worker uses the message's
    ``topic/partition/offset``, so a replay of the same message keeps its id. ``models``
    defaults to every active head of the region.

    >>> PhraseIn.model_validate({"id": "42", "text": "how do I reset my PIN?", "region": "global"}).models is None
    True
    """

    schema_version: Literal[1] = 1
    id: PhraseId = Field(default_factory=lambda: uuid.uuid4().hex)
    text: StrictStr
    region: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    models: list[Annotated[StrictStr, Field(min_length=1, max_length=64)]] | None = Field(default=None, min_length=1, max_length=32)
    ts: AwareDatetime | None = None
    metadata: dict[str, Any] | None = None
    explain: StrictBool | None = None
    """Ask for evidence: each prediction of this phrase then carries ``evidence`` (off by default; see docs/explain.md)."""


CLEANED_FORMAT = 2
"""The format of the internal topic's messages (:class:`CleanedPhrase`); format 1 was a pydantic JSON object."""


class CleanedFormatError(ValueError):
    """Bytes on the internal topic that are not a :class:`CleanedPhrase`; the message says why."""


@dataclass(frozen=True, slots=True)
class CleanedPhrase:
    """A valid phrase after cleaning, passed from the clean agent to the embed agent.

    A plain dataclass, not a pydantic model: only our own worker writes the internal topic
    ``<app_id>-phrases.cleaned``, so reading it back needs a shape check, not a validation.
    On the topic it is a compact JSON array, ``[2, id, region, models, clean_text,
    received_at, ts]`` (:data:`CLEANED_FORMAT` first; datetimes in ISO 8601, ``ts`` null
    when absent), with an eighth element ``{"explain": true}`` only when the phrase asked for
    evidence (so the usual message is unchanged). :meth:`from_bytes` also reads format 1 (the JSON object of older workers),
    so phrases in flight at an upgrade are served.

    >>> p = CleanedPhrase("42", "global", ["intent"], "hi", datetime(2026, 1, 2, tzinfo=UTC))
    >>> CleanedPhrase.from_bytes(p.to_bytes()) == p
    True
    """

    id: str
    region: str
    models: list[str]
    clean_text: str
    received_at: datetime
    ts: datetime | None = None
    explain: bool = False

    def to_bytes(self) -> bytes:
        """Serialise in :data:`CLEANED_FORMAT`."""
        row: list[Any] = [CLEANED_FORMAT, self.id, self.region, self.models, self.clean_text, self.received_at, self.ts]
        if self.explain:
            row.append({"explain": True})
        return orjson.dumps(row, option=orjson.OPT_UTC_Z)

    @classmethod
    def from_bytes(cls, raw: bytes) -> CleanedPhrase:
        """Read a cleaned phrase; raise :class:`CleanedFormatError` with the reason when ``raw`` is not one."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CleanedFormatError(f"invalid JSON ({exc})") from None
        if isinstance(value, dict) and value.get("schema_version") == 1:  # format 1, from an older worker
            value = [1, *(value.get(k) for k in ("id", "region", "models", "clean_text", "received_at", "ts"))]
        flags: Any = {}
        if isinstance(value, list) and len(value) == 8 and value[0] == CLEANED_FORMAT:
            *value, flags = value
        if not (isinstance(value, list) and len(value) == 7 and value[0] in (1, CLEANED_FORMAT)) or not isinstance(flags, dict):
            raise CleanedFormatError(f"expected [{CLEANED_FORMAT}, id, region, models, clean_text, received_at, ts] "
                                     f"(format {CLEANED_FORMAT}) or a format 1 object, got {str(value)[:80]}")
        _, phrase_id, region, models, clean_text, received_at, ts = value
        for name, text in (("id", phrase_id), ("region", region), ("clean_text", clean_text)):
            if not isinstance(text, str):
                raise CleanedFormatError(f"{name} must be a string, got {text!r:.80}")
        if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)):
            raise CleanedFormatError(f"models must be a non-empty list of strings, got {models!r:.80}")
        return cls(phrase_id, region, models, clean_text, _aware("received_at", received_at),
                   None if ts is None else _aware("ts", ts), flags.get("explain") is True)


def _aware(name: str, value: Any) -> datetime:
    """Return the timezone-aware datetime in ISO 8601 text ``value``; raise :class:`CleanedFormatError` if it is not one."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise CleanedFormatError(f"{name} must be an ISO 8601 date and time, got {value!r:.80}") from None
    if parsed.tzinfo is None:
        raise CleanedFormatError(f"{name} has no timezone: {value!r:.80}")
    return parsed


class Prediction(_Message):
    """One head's answer for one phrase, as published to ``predictions.out``.

    ``top_k`` holds (label, probability) pairs, most likely first; ``latency_ms`` runs from
    the moment the worker read the phrase to the moment this prediction was made.
    """

    schema_version: Literal[1] = 1
    id: str
    region: str
    model: str
    model_version: str
    label: str
    probability: float
    top_k: list[tuple[str, float]]
    clean_text: str
    embedder_version: str
    cache_hit: bool
    latency_ms: float
    received_at: AwareDatetime
    predicted_at: AwareDatetime
    ts: AwareDatetime | None = None
    evidence: dict[str, Any] | None = None
    """Why this label, when the phrase asked for it (``"explain": true``): ``models.heads.explain.evidence``."""


class ShadowPrediction(Prediction):
    """A shadow head's answer, on ``predictions.shadow`` only: ``model_version`` is the shadow's
    version, ``live_version`` the version served to users beside it."""

    live_version: str
    live_label: str | None = None
    """The live head's label for the same phrase (None when the live head gave none)."""
    head_ms: float | None = None
    """The shadow head's own time per phrase in its batch, milliseconds (its serving cost)."""
    live_head_ms: float | None = None
    """The live head's time per phrase in the same batch, milliseconds."""


def prediction_bytes(
    id: str, region: str, model: str, model_version: str, label: str, probability: float,
    top_k: list[tuple[str, float]], clean_text: str, embedder_version: str, cache_hit: bool,
    latency_ms: float, received_at: datetime, predicted_at: datetime, ts: datetime | None,
    evidence: dict[str, Any] | None = None,
) -> bytes:
    """Return the bytes of ``Prediction(...).to_bytes()`` for these fields, without building the model.

    The serving hot path writes one per (phrase, head). orjson writes what pydantic writes
    (shortest round-trip floats, ``Z`` for UTC, UTF-8 unescaped): tests/unit/test_messages.py
    compares the two byte for byte over generated cases. The arguments must already have
    the field types (``probability`` and ``latency_ms`` floats): nothing is validated here.
    """
    fields = {"schema_version": 1, "id": id, "region": region, "model": model, "model_version": model_version,
              "label": label, "probability": probability, "top_k": top_k, "clean_text": clean_text,
              "embedder_version": embedder_version, "cache_hit": cache_hit, "latency_ms": latency_ms,
              "received_at": received_at, "predicted_at": predicted_at}
    if ts is not None:
        fields["ts"] = ts
    if evidence is not None:
        fields["evidence"] = evidence
    return orjson.dumps(fields, option=orjson.OPT_UTC_Z)


class ErrorKind(str, Enum):
    """Why a message went to the dead-letter topic."""

    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MESSAGE_TOO_LARGE = "message_too_large"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    EMPTY_AFTER_CLEANING = "empty_after_cleaning"
    UNKNOWN_REGION = "unknown_region"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    REJECTED_BY_DATABASE = "rejected_by_database"
    INTERNAL = "internal"


MAX_ORIGINAL_BYTES = 512 * 1024
"""The most original bytes a dead letter carries (base64 makes them 4/3 as large)."""


class DeadLetter(_Message):
    """A message that could not be served, with its reason and its original bytes."""

    schema_version: Literal[1] = 1
    error_kind: ErrorKind
    reason: str
    original_b64: str
    original_size: int | None = None
    original_sha256: str | None = None
    original_truncated: bool = False
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    id: str | None = None
    failed_at: AwareDatetime = Field(default_factory=utcnow)

    @classmethod
    def of(
        cls,
        kind: ErrorKind,
        reason: str,
        raw: bytes | None,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
        id: str | None = None,
    ) -> DeadLetter:
        """Return the dead letter of ``raw`` read from ``topic`` (at ``partition``/``offset``).

        The original bytes travel whole up to :data:`MAX_ORIGINAL_BYTES`; a larger message
        keeps its first bytes, its size and its sha256 (the whole message stays on its source
        topic at that offset), so that the letter itself fits in a Kafka message.
        """
        raw = raw or b""
        return cls(
            error_kind=kind,
            reason=reason,
            original_b64=cls.encode_original(raw[:MAX_ORIGINAL_BYTES]),
            original_size=len(raw),
            original_sha256=hashlib.sha256(raw).hexdigest(),
            original_truncated=len(raw) > MAX_ORIGINAL_BYTES,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            id=id,
        )

    @staticmethod
    def encode_original(raw: bytes | None) -> str:
        """Return ``raw`` as base64 text (empty for a message without value)."""
        return base64.b64encode(raw or b"").decode("ascii")

    def original(self) -> bytes:
        """Return the original message bytes."""
        return base64.b64decode(self.original_b64)


class LabeledPhrase(_Message):
    """A labelled example on ``phrases.labeled``, for retraining."""

    schema_version: Literal[1] = 1
    text: StrictStr = Field(min_length=1)
    label: StrictStr = Field(min_length=1)
    region: Name
    model: Name
    ts: AwareDatetime = Field(default_factory=utcnow)
    # Provenance, set by the review page (``source: "review"``); absent on examples users produce.
    source: StrictStr | None = Field(default=None, max_length=64)
    reviewer: StrictStr | None = Field(default=None, max_length=200)
    item_id: StrictStr | None = Field(default=None, max_length=200)
    reason: StrictStr | None = Field(default=None, max_length=200, description="the routing reason(s), comma-separated")
    sampling_weight: float | None = Field(default=None, gt=0)
    head_version: StrictStr | None = Field(default=None, max_length=128)
    label_set_version: int | None = Field(default=None, ge=0)


RegistryAction = Literal["activate", "promote", "rollback", "retrain", "shadow", "configure"]


class RegistryPointer(_Message):
    """The live version of one (region, model), on the compacted topic ``models.registry``.

    The key is ``region/model``; compaction keeps the newest pointer of each key. Workers
    fetch the version's bundle (``bundle_sha256``, ``bundle_bytes``) from PostgreSQL when
    their models folder lacks it. ``stack`` lists the versions that were live before, oldest
    first: a plain rollback returns to its last entry. ``seq`` counts the changes of the key.
    """

    schema_version: Literal[1] = 1
    region: Name
    model: Name
    version: StrictStr = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    action: RegistryAction
    from_version: StrictStr | None = None
    reason: StrictStr | None = Field(default=None, max_length=2000)
    at: AwareDatetime = Field(default_factory=utcnow)
    seq: int = Field(ge=1)
    bundle_sha256: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    bundle_bytes: int = Field(ge=1)
    embedder_version: StrictStr | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    stack: list[StrictStr] = Field(default_factory=list, max_length=100)
    shadow: ShadowSpec | None = None
    """A candidate every worker runs beside ``version`` (``promote --shadow``); None: no shadow."""
    review: ReviewRule | None = None
    """The review rule in force, when changed since training (``review-rule``); None: the head's own."""

    @property
    def key(self) -> bytes:
        """Return the topic key, ``region/model``."""
        return f"{self.region}/{self.model}".encode()
