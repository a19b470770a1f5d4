"""Leave-one-word-out on the readout: a secondary, approximate signal of what the embedding read.

The head's TF-IDF part is explained exactly (``models.heads.explain``); its readout part (the
sentence embedding and the other pools of the encoder) is one number there, because the
encoder is not linear in the words. To see which words moved it, each word of the cleaned
phrase is deleted in turn and the phrase embedded again (``n + 1`` encoder passes, one batch),
while the TF-IDF rows stay those of the whole phrase: the change in the head's probability of
the label is the effect of that word *through the readout alone*.

The caveat, printed with it: a phrase with a word deleted is an input the model never saw
("send money to" is not a phrase anyone writes); its score can move for reasons that have
nothing to do with the word's meaning, so these figures are hints, not an attribution. Each
row also gives the cosine between the full and the shortened phrase's sentence embeddings: a
low cosine says the deletion moved the input far, where the score is least trustworthy.

This runs the embedder, so it is for ``phrasestream explain`` only, never the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from models.heads.neighbors import sentence_columns, unit_rows
from models.heads.serve import Head

CAVEAT = ("leave-one-word-out is a secondary signal: deleting a word makes a phrase the model never saw, "
          "and its score can move for reasons unrelated to the word; read these figures as hints")
MAX_WORDS = 48
"""Phrases longer than this are not occluded (the cost is one encoder pass per word)."""


class Features(Protocol):
    """What occlusion needs of the embedder (``models.embedder.Embedder``)."""

    @property
    def readout(self) -> tuple[str, ...]: ...

    def features_batch(self, texts: Sequence[str]) -> np.ndarray: ...


def variants(clean_text: str) -> list[tuple[str, str]]:
    """Return ``(word, phrase without that word)`` for each word of a cleaned phrase (in order)."""
    words = clean_text.split()
    return [(w, " ".join(words[:i] + words[i + 1:])) for i, w in enumerate(words)]


def leave_one_word_out(head: Head, embedder: Features, clean_text: str, labels: Sequence[str],
                       full_features: np.ndarray | None = None) -> dict[str, Any]:
    """Return ``{"words": [...], "by_label": {label: [[word, delta, cosine], ...]}, "skipped": reason|None}``.

    ``delta`` is the head's probability of the label without the word (deleted from the
    embedder's input only) minus with it: negative means the word supported the label.
    ``cosine`` compares the sentence embeddings of the phrase with and without the word.
    A one-word phrase, or one longer than :data:`MAX_WORDS`, is skipped with its reason.
    """
    pairs = variants(clean_text)
    out: dict[str, Any] = {"words": [w for w, _ in pairs], "by_label": {label: [] for label in labels},
                           "skipped": None, "passes": 0}
    if len(pairs) < 2:
        out["skipped"] = "a one-word phrase: deleting its word leaves nothing to embed"
        return out
    if len(pairs) > MAX_WORDS:
        out["skipped"] = f"{len(pairs)} words, more than {MAX_WORDS}: not occluded"
        return out
    shorter = [p for _, p in pairs]
    if full_features is None:
        feats = np.asarray(embedder.features_batch([clean_text, *shorter]), dtype=np.float32)
        out["passes"] = len(shorter) + 1
    else:
        feats = np.concatenate([np.asarray(full_features, dtype=np.float32).reshape(1, -1),
                                np.asarray(embedder.features_batch(shorter), dtype=np.float32)])
        out["passes"] = len(shorter)
    texts = [clean_text] * len(feats)  # the TF-IDF part stays the whole phrase's
    probs = head.predict_proba(feats, texts if head.needs_texts else None)
    sent = unit_rows(feats[:, sentence_columns(head.readout)])
    cos = sent[1:] @ sent[0]
    for label in labels:
        c = head.labels.index(label)
        out["by_label"][label] = [[w, round(float(probs[i + 1, c] - probs[0, c]), 4), round(float(cos[i]), 4)]
                                  for i, (w, _) in enumerate(pairs)]
    return out
