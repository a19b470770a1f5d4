"""What every message model shares: the base model, the clock, the name rule."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr


def utcnow() -> datetime:
    """Return the current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


Name = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")]
"""A region or model name: lower-case letters, digits, ``_`` and ``-``."""


class Message(BaseModel):
    """A message on a topic: frozen, unknown fields ignored, compact JSON on the wire."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_bytes(self) -> bytes:
        """Serialise as compact UTF-8 JSON, the wire format of every topic."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")
