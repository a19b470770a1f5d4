"""Store shadow predictions (``predictions.shadow``) in ``<schema>.shadow_inferences``, each once.

A shadow head (``phrasestream promote --shadow``) answers beside the live one on every worker;
its answers (``schemas.messages.ShadowPrediction``) go to ``predictions.shadow`` only. The sink
process stores them with the inferences' own path (``COPY`` into a staging table, then an
insert that skips a row already stored: the key is ``(id, model, model_version)``), under a
:class:`~streams.sinks.base.SinkRunner` of its own (``streams.sinks.run.shadow_runner``): retry,
rewind, commit after store and dead letters are the runner's. ``phrasestream shadow-report``
pairs these rows with the live ones in ``inferences``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from schemas.messages import Prediction, ShadowPrediction
from streams.sinks.postgres import COLUMNS, PostgresSink, row_of

SHADOW_TABLE = "shadow_inferences"

SHADOW_COLUMNS = (*COLUMNS, "live_version", "live_label", "head_ms", "live_head_ms")
"""The columns of ``shadow_inferences`` the sink writes: the inferences' and the live side's."""


def shadow_row(p: ShadowPrediction) -> tuple:
    """Return the ``shadow_inferences`` row of a shadow prediction, in ``SHADOW_COLUMNS`` order.

    A missing value (``live_label``, ``head_ms``, ``live_head_ms``) is an empty unquoted field:
    ``COPY`` reads it as NULL.
    """
    return (*row_of(p), p.live_version, p.live_label, p.head_ms, p.live_head_ms)


def _field(value: object) -> str:
    """Return one CSV field: quoted (so no text reads as NULL), or empty and unquoted for None (NULL)."""
    return "" if value is None else '"' + str(value).replace('"', '""') + '"'


def shadow_copy_csv(batch: Sequence[Prediction]) -> bytes:
    """Return a batch of shadow predictions as UTF-8 CSV for ``COPY ... (FORMAT csv)`` (None: NULL).

    Raises ``ValueError`` for a record that is not a :class:`ShadowPrediction` or text that is not
    valid Unicode (the runner dead-letters it as a row error).
    """
    lines = []
    for p in batch:
        if not isinstance(p, ShadowPrediction):
            raise ValueError(f"{p.id}: not a shadow prediction")
        lines.append(",".join(map(_field, shadow_row(p))) + "\n")
    return "".join(lines).encode("utf-8")


def shadow_sink(dsn: str, schema: str = "public", on_connect: Callable[[], object] | None = None) -> PostgresSink:
    """Return the sink that stores shadow predictions in ``<schema>.shadow_inferences``."""
    return PostgresSink(dsn, schema, on_connect, table=SHADOW_TABLE, columns=SHADOW_COLUMNS, encode=shadow_copy_csv)
