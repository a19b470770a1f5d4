"""A head's review rule: the one stored in its training configuration, or the default.

``retrain.train.config.TrainConfig.review`` is written into every head's ``metadata.json``
(``metadata["config"]["review"]``); a head trained before the rule existed gets the default
:class:`schemas.review.ReviewRule`. The registry pointer's ``review`` (``phrasestream
review-rule``) overrides it without retraining; that choice is made by the worker, not here.
"""

from __future__ import annotations

from typing import Any

from schemas.review import ReviewRule


def review_rule(metadata: dict[str, Any]) -> ReviewRule:
    """Return the review rule of a head's ``metadata.json`` (the default rule when it records none).

    A rule that does not validate (written by a newer version, or edited by hand) raises
    ``pydantic.ValidationError``: a head's rule is never silently replaced by the default.
    """
    config = metadata.get("config") if isinstance(metadata, dict) else None
    raw = config.get("review") if isinstance(config, dict) else None
    if raw is None:
        return ReviewRule()
    return ReviewRule.model_validate(raw)
