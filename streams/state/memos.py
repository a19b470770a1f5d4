"""The worker's memos: answers it gave, evidence it computed, and unknown-word-piece rates, least recently used out first.

All are cachetools ``LRUCache`` s, like the embedding cache's keys (``streams.state.cache``),
bounded by a setting (the evidence memo by a tenth of the answer memo's); a bound of 0 turns
the memo off. :class:`AnswerMemo` and :class:`EvidenceMemo` hold a lock of their own (the heads
run in worker threads); :class:`UnknownRates` is guarded by its owner (``streams.rollups.Rollups``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import cachetools
import numpy as np

if TYPE_CHECKING:
    from streams.pipeline import Head


class AnswerMemo:
    """The last answers of each head for each cleaned text, least recently used out first.

    Serving, a head is a deterministic function of the cleaned text: its features come from
    the text alone (the embedder it was built for, rounded as the cache's entries hold them,
    cached or computed: ``EmbeddingCache.rounded``) and so do its TF-IDF rows. A phrase seen
    before by the same head version (``ref``) gets the remembered answer without the head's
    matrix products, which are most of the cost of a cached phrase. A promoted or rolled-back
    version has another ``ref``, so it is never answered from its predecessor's memo.
    ``max_entries=0`` turns it off.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._answers: cachetools.LRUCache[tuple[str, str, int], Any] = cachetools.LRUCache(max_entries)
        self._lock = threading.Lock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._answers)

    def answer(self, head: Head, features: np.ndarray, texts: Sequence[str], top_k: int) -> list[Any]:
        """Return ``head``'s answers for these rows, from the memo where it has them."""
        if self._max <= 0:
            return head.predict(features, top_k, texts=texts)
        ref = str(head.ref)
        with self._lock:  # a lookup marks the entry as just used
            found = [self._answers.get((ref, t, top_k)) for t in texts]
        todo = [i for i, a in enumerate(found) if a is None]
        self.hits += len(texts) - len(todo)
        if todo:
            fresh = head.predict(features[todo], top_k, texts=[texts[i] for i in todo])
            with self._lock:
                for i, a in zip(todo, fresh):
                    found[i] = a
                    self._answers[(ref, texts[i], top_k)] = a  # beyond the bound, the least recently used goes
        return found


class EvidenceMemo:
    """The evidence (``models.heads.explain.evidence``) of each head version for each cleaned text, LRU.

    Evidence is a function of the head version and the cleaned text, like an answer (see
    :class:`AnswerMemo`), and costs a few milliseconds a row (ten times a cached phrase's
    whole serving): a phrase explained before gets the remembered dict. An entry is about a
    kilobyte, hence the smaller bound. ``max_entries=0`` turns it off.
    """

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._found: cachetools.LRUCache[tuple[str, str], dict[str, Any]] = cachetools.LRUCache(max(1, max_entries))
        self._lock = threading.Lock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._found)

    def evidence(self, head: Any, features: np.ndarray, texts: Sequence[str],
                 compute: Callable[..., list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Return the evidence of ``head`` for these rows, ``compute(head, features, texts)`` for the ones it lacks."""
        if self._max <= 0:
            return compute(head, features, texts)
        ref = str(head.ref)
        with self._lock:
            found = [self._found.get((ref, t)) for t in texts]
        todo = [i for i, e in enumerate(found) if e is None]
        self.hits += len(texts) - len(todo)
        if todo:
            fresh = compute(head, features[todo], [texts[i] for i in todo])
            with self._lock:
                for i, e in zip(todo, fresh):
                    found[i] = e
                    self._found[(ref, texts[i])] = e
        return [e for e in found if e is not None]


class UnknownRates:
    """Unknown-word-piece rates of cleaned texts, remembered for the last ``max_entries`` texts.

    ``compute`` is ``Embedder.unknown_rates``: it runs the export's tokenizer, a TensorFlow
    call. A text's rate never changes for one embedder, so each text is tokenized once while
    it stays in this memo. Measured on this 2-core machine (shared with other test runs, so
    ranges), for a batch of 64 cached CLINC150 phrases served by two heads: the heads' step
    (``streams.pipeline._compute``, answers from the memo) took 1.5-2.6 ms; observing it took
    0.16-0.3 ms with every rate in this memo, and 2.1-2.9 ms when the 64 texts were tokenized
    (``unknown_rates``: 0.7-1.2 ms for one text, 1.8-4.8 ms for 64). Tokenizing on the hit path
    would more than double the cost of a cached batch; the memo keeps it near a tenth.
    Computing the rate only alongside an embedding miss would not do: a hit on an entry the
    table recovered from its changelog has no rate anywhere. The bound is the embedding
    cache's (``PHRASESTREAM_CACHE_MAX_ENTRIES``), so a phrase that skips the embedder usually
    skips the tokenizer too; 100,000 rates take about 20 MB (texts included).
    """

    def __init__(self, compute: Callable[[Sequence[str]], np.ndarray], max_entries: int) -> None:
        self._compute = compute
        self._max = max_entries
        self._rates: cachetools.LRUCache[str, float] = cachetools.LRUCache(max_entries)
        self.computed = 0
        """How many texts were tokenized (memo misses)."""

    def __len__(self) -> int:
        return len(self._rates)

    def rates(self, texts: Sequence[str]) -> np.ndarray:
        """Return the rate of each text; the ones the memo lacks are computed in one call."""
        found = [self._rates.get(t) for t in texts]  # a lookup marks the entry as just used
        missing = list(dict.fromkeys(t for t, r in zip(texts, found) if r is None))
        fresh: dict[str, float] = {}
        if missing:
            fresh = dict(zip(missing, (float(r) for r in self._compute(missing))))
            self.computed += len(missing)
            if self._max > 0:
                self._rates.update(fresh)  # beyond the bound, the least recently used go
        return np.array([fresh[t] if r is None else r for t, r in zip(texts, found)], dtype=np.float64)
