"""Shadow heads: a candidate version run beside the live one on the same batches, never served.

``phrasestream promote --shadow`` puts a :class:`~schemas.review.ShadowSpec` in the head's
registry pointer; every worker's ``streams.heads.HeadSet`` loads that version (the same
fetch, checks and embedder checks as a live one). For each batch, the shadow head runs on the
features and texts the live head got (the embedding is shared, so its cost is its own head
only), for the rows whose phrase id hashes below ``percent`` (:func:`in_shadow`: the same
phrases on every worker and on a replay). Its answers go to ``predictions.shadow`` keyed by
phrase id as ``schemas.messages.ShadowPrediction``, with the live version and label beside
them and each head's time per row of the batch, never to ``predictions.out``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import orjson

from schemas.messages import CleanedPhrase
from schemas.review import ShadowSpec


def unit_hash(*parts: str) -> float:
    """Map ``parts`` to a number in [0, 1), the same on every machine and run (blake2b, 64 bits)."""
    digest = hashlib.blake2b("\x00".join(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0


def in_shadow(phrase_id: str, percent: float) -> bool:
    """Say whether the shadow head runs on this phrase, at ``percent`` of the phrases."""
    return percent >= 100 or unit_hash("shadow", phrase_id) * 100.0 < percent


class ShadowRun(NamedTuple):
    """What a shadow head gave for one head run: its version, its label per row index, its messages."""

    version: str
    labels: dict[int, str]
    payloads: list[tuple[bytes, bytes]]


def shadow_bytes(phrase: CleanedPhrase, region: str, model: str, version: str, answer: Any, top_k: int,
                 embedder_version: str, cache_hit: bool, predicted_at: datetime, live_version: str,
                 live_label: str | None, head_ms: float, live_head_ms: float) -> bytes:
    """Return the bytes of ``ShadowPrediction(...).to_bytes()`` for one answer, without building the model."""
    fields: dict[str, Any] = {
        "schema_version": 1, "id": phrase.id, "region": region, "model": model, "model_version": version,
        "label": answer.label, "probability": round(float(answer.probability), 6),
        "top_k": [(label, round(float(p), 6)) for label, p in answer.top_k[:top_k]],
        "clean_text": phrase.clean_text, "embedder_version": embedder_version, "cache_hit": cache_hit,
        "latency_ms": round((predicted_at - phrase.received_at).total_seconds() * 1000.0, 3),
        "received_at": phrase.received_at, "predicted_at": predicted_at}
    if phrase.ts is not None:
        fields["ts"] = phrase.ts
    fields["live_version"] = live_version
    if live_label is not None:
        fields["live_label"] = live_label
    fields["head_ms"] = round(head_ms, 4)
    fields["live_head_ms"] = round(live_head_ms, 4)
    return orjson.dumps(fields, option=orjson.OPT_UTC_Z)


def run_shadow(head: Any, spec: ShadowSpec, live_version: str, rows: Sequence[int],
               phrases: Sequence[CleanedPhrase], vectors: np.ndarray, answers: Sequence[Any], live_seconds: float,
               top_k: int, cache_hits: Sequence[bool], embedder_version: str, predicted_at: datetime,
               memo: Any = None) -> ShadowRun:
    """Run the shadow ``head`` on the rows of ``rows`` its ``spec.percent`` picks; return its answers.

    ``answers`` are the live head's for ``rows`` (in order) and ``live_seconds`` its time on
    them. Through ``memo`` (``streams.state.memos.AnswerMemo``) when given: it keys answers by
    head version, so the shadow's never mix with the live head's.
    """
    chosen = [j for j, r in enumerate(rows) if in_shadow(phrases[r].id, spec.percent)]
    if not chosen:
        return ShadowRun(spec.version, {}, [])
    picked = [rows[j] for j in chosen]
    texts = [phrases[r].clean_text for r in picked]
    start = time.perf_counter()
    if memo is None:
        found = head.predict(vectors[picked], top_k, texts=texts)
    else:
        found = memo.answer(head, vectors[picked], texts, top_k)
    head_ms = (time.perf_counter() - start) * 1000.0 / len(picked)
    live_ms = live_seconds * 1000.0 / max(1, len(rows))
    region, model = head.ref.region, head.ref.model
    labels: dict[int, str] = {}
    payloads: list[tuple[bytes, bytes]] = []
    for j, r, answer in zip(chosen, picked, found):
        phrase = phrases[r]
        labels[j] = answer.label
        payloads.append((phrase.id.encode(), shadow_bytes(
            phrase, region, model, spec.version, answer, top_k, embedder_version, cache_hits[r], predicted_at,
            live_version, answers[j].label, head_ms, live_ms)))
    return ShadowRun(spec.version, labels, payloads)
