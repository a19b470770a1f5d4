"""What the worker and the drift watcher say about serving, as messages.

- ``drift.alerts``: :class:`DriftAlert`, a drift flag that tripped (``phrasestream drift-watch``).
- ``serving.rollups``: :class:`ServingRollup`, what the worker served per head and hour (for drift).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StrictStr, model_validator

from schemas.base import Message as _Message
from schemas.base import Name, utcnow


class DriftAlert(_Message):
    """One drift flag that tripped, as ``phrasestream drift-watch`` publishes it to ``drift.alerts``.

    The key is ``region/model``. ``value`` crossed ``threshold`` for ``metric`` (a key of the
    report's ``metrics``: e.g. ``label_psi``) over ``[window_start, window_end)`` against
    ``reference`` (``training``: the live head's reference statistics, or a window length such
    as ``30d``: the window just before). ``report_path`` is the HTML page on the watcher's
    machine; ``check_id`` is shared by the alerts of one round.
    """

    schema_version: Literal[1] = 1
    check_id: StrictStr = Field(min_length=1, max_length=100)
    at: AwareDatetime = Field(default_factory=utcnow)
    region: Name
    model: Name
    model_version: StrictStr | None = None
    metric: StrictStr = Field(min_length=1, max_length=100)
    value: float
    threshold: float
    window_start: AwareDatetime
    window_end: AwareDatetime
    window: StrictStr
    reference: StrictStr
    rows: int = Field(ge=0)
    report_path: StrictStr

    @property
    def key(self) -> str:
        """Return the topic key, ``region/model``."""
        return f"{self.region}/{self.model}"


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class ServingRollup(_Message):
    """What one worker served for one (region, model, model_version) in one UTC hour, since its last delta.

    Published to ``serving.rollups`` every ``PHRASESTREAM_ROLLUP_INTERVAL_SECONDS`` and at
    shutdown (see ``streams.rollups``); the sink adds it to the table ``serving_rollups``.
    Deltas add up: the centroid of a window is ``sum(embedding_sum) / sum(n)`` over its rows.
    ``delta_id`` (worker instance uuid, ``-``, sequence number) is unique, so a delta
    delivered twice is stored once. ``n`` counts predictions made (one per phrase and head),
    cache hits included; ``embedding_sum`` is the element-wise sum of their L2-normalised
    384-d sentence embeddings (the ``mean6`` readout block); ``unk_rate_sum`` the sum of their
    unknown-word-piece rates; ``with_unk`` how many had any unknown piece.
    """

    schema_version: Literal[1] = 1
    delta_id: StrictStr = Field(min_length=3, max_length=100, pattern=r"^[0-9a-f]{32}-[0-9]+$")
    region: StrictStr = Field(min_length=1, max_length=64)
    model: StrictStr = Field(min_length=1, max_length=64)
    model_version: StrictStr = Field(min_length=1, max_length=128)
    hour: AwareDatetime
    n: int = Field(ge=1)
    embedding_sum: list[FiniteFloat] = Field(min_length=1, max_length=4096)
    unk_rate_sum: FiniteFloat = Field(ge=0.0)
    with_unk: int = Field(ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> ServingRollup:
        if self.with_unk > self.n:
            raise ValueError(f"with_unk ({self.with_unk}) exceeds n ({self.n})")
        if self.unk_rate_sum > self.n + 1e-6:
            raise ValueError(f"unk_rate_sum ({self.unk_rate_sum}) exceeds n ({self.n}): a rate is at most 1")
        if (self.hour.minute, self.hour.second, self.hour.microsecond) != (0, 0, 0) or self.hour.utcoffset():
            raise ValueError(f"hour must be a whole UTC hour, got {self.hour.isoformat()}")
        return self

    @property
    def id(self) -> str:
        """Return ``delta_id``: the id the sink's dead letters name a record by."""
        return self.delta_id
