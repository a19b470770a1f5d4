"""Draw the traffic: Zipf popularity over the pool, variants, never-seen phrases; and the hit rate to expect.

Because the stream is known in advance, so is the hit rate an embedding cache can reach on it:
:func:`expected_hit_rate` gives it for an unbounded cache or an LRU of N entries, both starting
empty.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.cleaning import clean
from streams.tools.loadgen.checks import LoadgenError, check_generation
from streams.tools.loadgen.pool import Pool, json_str, make_pool


def zipf_shares(n: int, exponent: float) -> np.ndarray:
    """Return the popularity of ranks 1..n under Zipf's law: ``r**-exponent``, normalised."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


class NewPhrases:
    """Make phrases never seen before: the first half of one pool phrase + the second half of another.

    A candidate that cleans to a reserved text (a pool text, or an earlier new phrase) gets
    random pool words appended until it does not; every text made is reserved in turn.
    """

    def __init__(self, pool: Pool, seed: int) -> None:
        self._pool = pool
        self._rng = random.Random(seed)
        self._taken: set[str] = set()

    def __call__(self) -> tuple[str, str]:
        """Return a new ``(text, cleaned text)``."""
        rng, pool = self._rng, self._pool
        first = pool.cleaned[rng.randrange(len(pool))].split(" ")
        second = pool.cleaned[rng.randrange(len(pool))].split(" ")
        words = first[: (len(first) + 1) // 2] + second[len(second) // 2:]
        text = " ".join(words)
        cleaned = clean(text)
        # Each appended word makes the text longer, so this ends: past the longest reserved text.
        while not cleaned or cleaned in pool.reserved or cleaned in self._taken:
            text = f"{text} {rng.choice(pool.words)}"
            cleaned = clean(text)
        self._taken.add(cleaned)
        return text, cleaned


@dataclass
class Traffic:
    """Generated messages and what each one is.

    ``messages[i]`` is ``(id, value)``: ``value`` is the compact JSON of ``{"id", "text",
    "region"}`` without ``ts`` (:func:`send` adds it). ``keys[i]`` identifies the cleaned text
    (equal keys: equal cleaned texts); ``ranks[i]`` is the Zipf rank drawn (0: the most
    popular; -1: a new phrase); ``is_new`` and ``is_variant`` say what was sent.
    """

    messages: list[tuple[str, bytes]]
    keys: np.ndarray
    ranks: np.ndarray
    is_new: np.ndarray
    is_variant: np.ndarray
    texts: list[str]
    """The text of each message, as sent."""
    cleaned_of_key: list[str]
    """Key -> cleaned text: the pool's cleaned texts, then the new phrases' in order."""
    settings: dict[str, Any]

    @classmethod
    def make(cls, count: int, *, zipf: float = 1.1, new_share: float = 0.03, variants: float = 0.3, seed: int = 7,
             region: str = "global", pool: Pool | None = None) -> Traffic:
        """Draw ``count`` messages; the same arguments give the same messages.

        Each message is a never-seen phrase with probability ``new_share``; otherwise a pool
        phrase of Zipf rank r is drawn with probability proportional to ``r**-zipf`` (which
        phrase has which rank is a shuffle by ``seed``), and sent as one of its variants with
        probability ``variants``. Ids are ``lg-<seed>-<i>``. The draws of a longer run start
        with those of a shorter one (the first 100 of 1,000 are the 100 of a 100-message run).
        """
        check_generation(count, zipf, new_share, variants, seed, region)
        pool = pool if pool is not None else make_pool()
        n = len(pool)
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)]
        order = streams[0].permutation(n)
        cdf = np.cumsum(zipf_shares(n, zipf))
        ranks = np.minimum(np.searchsorted(cdf, streams[1].random(count), side="right"), n - 1)
        new = streams[2].random(count) < new_share
        want_variant = streams[3].random(count) < variants
        picks = streams[4].integers(0, 1 << 30, count)

        text_json, variant_json, region_json = pool.json_texts, pool.json_variants, json_str(region)
        make_new = NewPhrases(pool, seed)

        indices = order[ranks]
        has_variants = np.array([len(vs) > 0 for vs in pool.variants], dtype=bool)
        is_variant = want_variant & ~new & has_variants[indices]
        keys = indices.astype(np.int64)
        cleaned_of_key = list(pool.cleaned)
        messages: list[tuple[str, bytes]] = []
        texts: list[str] = []
        template = b'{"id":"%s","text":%s,"region":%s}'
        prefix = f"lg-{seed}-"
        append, append_text = messages.append, texts.append
        rows = zip(indices.tolist(), new.tolist(), is_variant.tolist(), picks.tolist(), strict=True)
        for i, (p, is_new, as_variant, pick) in enumerate(rows):
            mid = f"{prefix}{i}"
            if is_new:
                text, cleaned = make_new()
                keys[i] = len(cleaned_of_key)
                cleaned_of_key.append(cleaned)
                frag = json_str(text)
            elif as_variant:
                j = pick % len(pool.variants[p])
                text, frag = pool.variants[p][j], variant_json[p][j]
            else:
                text, frag = pool.texts[p], text_json[p]
            append((mid, template % (mid.encode(), frag, region_json)))
            append_text(text)
        ranks = np.where(new, -1, ranks)
        settings = {"zipf": zipf, "new_share": new_share, "variants": variants, "seed": seed, "region": region,
                    "pool_size": n}
        return cls(messages, keys, ranks, new, is_variant, texts, cleaned_of_key, settings)

    def __len__(self) -> int:
        return len(self.messages)

    def cleaned_texts(self, n: int | None = None) -> list[str]:
        """Return the cleaned text of the first ``n`` messages (all by default)."""
        return [self.cleaned_of_key[k] for k in self.keys[:n].tolist()]

    def figures(self, n: int | None = None, cache_size: int | None = None) -> dict[str, Any]:
        """Describe the first ``n`` messages (all by default): what they hold and the cache hit rate to expect.

        ``expected_hit_rate`` is that of an unbounded cache starting empty (the share of
        messages whose cleaned text came earlier); with ``cache_size``,
        ``expected_hit_rate_lru`` is that of an LRU of that many entries.
        """
        n = len(self.messages) if n is None else n
        keys = self.keys[:n]
        distinct = int(np.unique(keys).size)
        out: dict[str, Any] = {
            "messages": n,
            "distinct_clean_texts": distinct,
            "share_new": round(float(self.is_new[:n].mean()), 6) if n else 0.0,
            "share_variants": round(float(self.is_variant[:n].mean()), 6) if n else 0.0,
            "expected_hit_rate": round((n - distinct) / n, 6) if n else 0.0,
        }
        if cache_size is not None:
            out["cache_size"] = cache_size
            rate = out["expected_hit_rate"] if cache_size >= distinct else expected_hit_rate(keys.tolist(), cache_size)
            out["expected_hit_rate_lru"] = round(rate, 6)
        return out


def generate(count: int, *, zipf: float = 1.1, new_share: float = 0.03, variants: float = 0.3, seed: int = 7,
             region: str = "global", pool: Pool | None = None) -> list[tuple[str, bytes]]:
    """Return ``count`` messages ``(id, JSON bytes without ts)``; see :meth:`Traffic.make`.

    >>> generate(2, pool=make_pool(["hi there", "good morning"]), variants=0, new_share=0)[0][1][:16]
    b'{"id":"lg-7-0","'
    """
    return Traffic.make(count, zipf=zipf, new_share=new_share, variants=variants, seed=seed, region=region,
                        pool=pool).messages


def expected_hit_rate(cleaned_texts: Iterable[Hashable], cache_size: int | None = None) -> float:
    """Return the hit rate of a cache starting empty on this sequence of cleaned texts.

    ``cache_size=None``: an unbounded cache, so the share of items seen earlier in the
    sequence. ``cache_size=N``: an LRU of N entries (a hit refreshes an entry, a miss inserts
    it and evicts the least recently used beyond N; 0 disables the cache), simulated exactly.
    An empty sequence gives 0.0.

    >>> expected_hit_rate(["a", "b", "a", "c", "b"]), expected_hit_rate(["a", "b", "a", "c", "b"], cache_size=2)
    (0.4, 0.2)
    """
    hits = total = 0
    if cache_size is None:
        seen: set[Hashable] = set()
        for item in cleaned_texts:
            total += 1
            if item in seen:
                hits += 1
            else:
                seen.add(item)
        return hits / total if total else 0.0
    if cache_size < 0:
        raise LoadgenError(f"cache_size must be >= 0 (0: no cache), got {cache_size}")
    lru: OrderedDict[Hashable, None] = OrderedDict()
    for item in cleaned_texts:
        total += 1
        if item in lru:
            hits += 1
            lru.move_to_end(item)
        elif cache_size:
            lru[item] = None
            if len(lru) > cache_size:
                lru.popitem(last=False)
    return hits / total if total else 0.0
