"""Split labelled rows by class: ``stratified_split`` holds out part of each label, never all of it.

The trainer uses it twice: to hold out evaluation rows when none are given, and to take the
validation rows (model selection, temperature, ``oos`` threshold) out of the training rows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from retrain.train.data import DataError, Row


def stratified_split(rows: Sequence[Row], fraction: float, seed: int = 0) -> tuple[list[Row], list[Row]]:
    """Split ``rows`` into ``(kept, held_out)`` with about ``fraction`` of each label held out.

    Deterministic for a given ``seed`` and set of rows (input order does not change which rows
    are held out). Per label of ``n`` rows the target is ``round(fraction * n)`` (half to even), at least 1
    and at most ``n - 1`` when ``n >= 2``: a class never goes entirely to the held-out part,
    and a single-example class stays in ``kept``.

    Rows are split by groups of identical ``clean_text`` within a label, so the same cleaned
    text never lands on both sides (no leakage from duplicates). As a consequence a label
    whose rows all share one cleaned text stays entirely in ``kept``, and a group larger than
    the target may make the held-out count differ from it (when no group fits, the smallest is
    held out). Both parts keep the input order. ``fraction`` must be strictly between 0 and 1.
    """
    if not 0 < fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1 (exclusive), got {fraction}")
    groups: dict[str, dict[str, list[int]]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.label, {}).setdefault(row.clean_text, []).append(index)
    held: set[int] = set()
    for label, by_text in groups.items():
        held.update(_held_out_indices(label, by_text, fraction, seed))
    kept = [row for index, row in enumerate(rows) if index not in held]
    held_out = [row for index, row in enumerate(rows) if index in held]
    return kept, held_out


def _held_out_indices(label: str, by_text: dict[str, list[int]], fraction: float, seed: int) -> list[int]:
    n = sum(len(indices) for indices in by_text.values())
    if n < 2 or len(by_text) < 2:
        return []
    target = min(max(round(fraction * n), 1), n - 1)
    texts = sorted(by_text)
    random.Random(f"{seed}:{label}").shuffle(texts)  # a str seed is hashed with sha512: stable across runs
    chosen: list[str] = []
    taken = 0
    for text in texts:
        size = len(by_text[text])
        if taken + size <= target:
            chosen.append(text)
            taken += size
            if taken == target:
                break
    if not chosen:  # every group is larger than the target: hold out the smallest, never all
        chosen = [min(texts, key=lambda text: len(by_text[text]))]
    return [index for text in chosen for index in by_text[text]]
