"""The in-process embedding cache: a bounded LRU in front of a Faust table.

A cache backend implements ``get`` and ``put`` on bytes; :class:`LRUCache` adds the bound
and the hit accounting once, for every backend. The table backend keeps the vectors in a
Faust table (changelog-backed, so a restarted worker gets its cache back from Kafka); the
dict backend serves unit tests and one-off scripts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, MutableMapping
from typing import Any, Protocol

import numpy as np


class CacheBackend(Protocol):
    """Store cache entries; ``LRUCache`` decides what stays."""

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def keys(self) -> Iterable[str]: ...


class MappingBackend:
    """Keep entries in a mapping: a dict, or a Faust table (``app.Table``).

    With ``bytes_keys`` the mapping is keyed by UTF-8 bytes (a Faust table with raw keys).
    """

    def __init__(self, mapping: MutableMapping[Any, bytes], bytes_keys: bool = False) -> None:
        self._mapping = mapping
        self._bytes_keys = bytes_keys

    def _key(self, key: str) -> Any:
        return key.encode() if self._bytes_keys else key

    def get(self, key: str) -> bytes | None:
        return self._mapping.get(self._key(key))

    def put(self, key: str, value: bytes) -> None:
        self._mapping[self._key(key)] = value

    def delete(self, key: str) -> None:
        self._mapping.pop(self._key(key), None)

    def keys(self) -> Iterable[str]:
        keys = list(self._mapping.keys())
        return [k.decode() for k in keys] if self._bytes_keys else keys


def cache_key(embedder_version: str, clean_text: str) -> str:
    """Return the cache key of ``clean_text`` under one embedder version."""
    digest = hashlib.sha256(clean_text.encode("utf-8")).hexdigest()[:32]
    return f"{embedder_version}:{digest}"


class LRUCache:
    """Keep at most ``max_entries`` feature vectors, least recently used out first.

    Vectors are stored as float16 (half the memory and changelog of float32) and read back as
    float32. The embedder's features are float16-exact (``models.embedder.quantise``), so a hit
    gives exactly the vector a miss computes. ``max_entries=0`` disables the cache: every
    lookup misses and nothing is stored.
    """

    def __init__(self, backend: CacheBackend, embedder_version: str, dim: int, max_entries: int) -> None:
        self._backend = backend
        self._version = embedder_version
        self._dim = dim
        self._max = max_entries
        self._order: OrderedDict[str, None] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, clean_text: str) -> np.ndarray | None:
        """Return the cached vector of ``clean_text``, or None."""
        if self._max == 0:
            self.misses += 1
            return None
        key = cache_key(self._version, clean_text)
        raw = self._backend.get(key)
        if raw is None or len(raw) != self._dim * 2:
            self.misses += 1
            return None
        self.hits += 1
        self._touch(key)
        return np.frombuffer(raw, dtype=np.float16).astype(np.float32)

    def put(self, clean_text: str, vector: np.ndarray) -> None:
        """Store the vector of ``clean_text``, evicting the oldest entry beyond the bound."""
        if self._max == 0:
            return
        key = cache_key(self._version, clean_text)
        self._backend.put(key, np.asarray(vector, dtype=np.float16).tobytes())
        self._touch(key)

    def adopt(self, keys: Iterable[str]) -> int:
        """Track exactly the entries the backend holds (after a recovery or a rebalance).

        Entries the backend no longer holds (their partition moved to another worker) are
        forgotten, so the bound counts only what this worker keeps.

        They count as older than anything used since start, so they are evicted first, and
        entries of another embedder version (never read again by this worker, but maybe by
        another worker of a rolling deploy) go before this version's. Return how many were
        evicted to keep the bound.
        """
        prefix = f"{self._version}:"
        keys = list(keys)
        held = set(keys)
        for gone in [k for k in self._order if k not in held]:  # partitions revoked by a rebalance
            del self._order[gone]
        fresh = [k for k in keys if k not in self._order]
        ours = [k for k in fresh if k.startswith(prefix)]
        others = [k for k in fresh if not k.startswith(prefix)]
        for key in reversed(others + ours):  # the others end up oldest
            self._order[key] = None
            self._order.move_to_end(key, last=False)
        return self._evict()

    def __len__(self) -> int:
        return len(self._order)

    def _touch(self, key: str) -> None:
        self._order[key] = None
        self._order.move_to_end(key)
        self._evict()

    def _evict(self) -> int:
        evicted = 0
        while len(self._order) > self._max:
            old, _ = self._order.popitem(last=False)
            self._backend.delete(old)
            evicted += 1
        return evicted
