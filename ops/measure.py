"""Summaries of measured values, one definition for every benchmark, demo and fault test."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float, digits: int = 2) -> float | None:
    """Return the ``q``-th percentile (0-100) of ``values``, linearly interpolated (numpy's default), rounded.

    ``None`` for no values, so a JSON report says "not measured" rather than 0.
    """
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=float), q)), digits)
