"""The expert loop's messages and rules: the review rule, the shadow in a registry pointer, and a review item.

- :class:`ReviewRule`: which answers of a head go to a human (``phrases.review``), and how many.
  A head's training configuration holds its rule (``TrainConfig.review``); ``phrasestream
  review-rule`` changes it without retraining by writing it into the head's registry pointer.
- :class:`ShadowSpec`: the candidate version every worker runs beside the live one
  (``phrasestream promote --shadow``), held in the head's registry pointer.
- :class:`ReviewItem`: one answer routed for review, on ``phrases.review`` keyed ``region/model``.

Shadow predictions on ``predictions.shadow`` are ``schemas.messages.ShadowPrediction``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import AwareDatetime, Field, StrictBool, StrictStr

from schemas.base import Message, Name, utcnow

ReviewReason = Literal["margin", "oos", "shadow", "random"]
"""Why an answer was routed: a small margin between the two best labels, an ``oos`` answer,
disagreement with the shadow head, or the random slice."""


class ReviewRule(Message):
    """Which answers of one head are routed to ``phrases.review``.

    Doubt is the **margin** between the two best probabilities (margin sampling): an answer
    whose margin is below ``margin`` is doubtful. An ``oos`` answer (``oos``) and an answer the
    shadow head disagrees with (``shadow_disagreement``) are doubtful too. Doubtful answers are
    capped at ``budget_per_hour`` per head and hour; what the cap drops is counted.

    Beside them, a **random slice** of all answers, each kept with probability ``random_rate``
    (decided by a hash of the phrase id and the head, so a replay picks the same ones), capped
    at ``random_budget_per_hour``: weighted by ``1 / random_rate`` it gives an unbiased estimate
    of the head's live accuracy. ``random_rate`` 0 turns the slice off.
    """

    margin: float = Field(default=0.2, ge=0, le=1)
    oos: StrictBool = True
    shadow_disagreement: StrictBool = True
    random_rate: float = Field(default=0.02, ge=0, le=1)
    budget_per_hour: int = Field(default=500, ge=0)
    random_budget_per_hour: int = Field(default=500, ge=0)


class ShadowSpec(Message):
    """A candidate version run beside the live one on every worker; its answers go to ``predictions.shadow`` only.

    ``percent`` of the phrases (chosen by a hash of the phrase id, the same on every worker) are
    run by it; the bundle's checksum and size are the ones a worker fetches it by.
    """

    version: StrictStr = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    percent: float = Field(default=100.0, gt=0, le=100)
    bundle_sha256: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    bundle_bytes: int = Field(ge=1)
    since: AwareDatetime = Field(default_factory=utcnow)


def item_id(region: str, model: str, model_version: str, phrase_id: str) -> str:
    """Return the stable id of one routed answer: the same phrase and head version give the same item."""
    raw = f"{region}/{model}:{model_version}\x00{phrase_id}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


class ReviewItem(Message):
    """One answer routed for a human, on ``phrases.review`` (keyed ``region/model``).

    ``reasons`` says why (see :data:`ReviewReason`); ``random_slice`` whether it is in the random
    slice, whose ``sampling_weight`` is ``1 / random_rate`` (None outside the slice).
    """

    schema_version: Literal[1] = 1
    item_id: StrictStr = Field(min_length=1, max_length=64)
    id: StrictStr = Field(min_length=1, max_length=200)
    region: Name
    model: Name
    model_version: StrictStr = Field(min_length=1, max_length=128)
    clean_text: StrictStr
    label: StrictStr
    probability: float
    top_k: list[tuple[str, float]]
    margin: float
    reasons: list[ReviewReason] = Field(min_length=1)
    random_slice: StrictBool = False
    random_rate: float = Field(ge=0, le=1)
    sampling_weight: float | None = Field(default=None, gt=0)
    evidence: dict[str, Any] | None = None
    shadow_version: StrictStr | None = None
    shadow_label: StrictStr | None = None
    predicted_at: AwareDatetime = Field(default_factory=utcnow)
