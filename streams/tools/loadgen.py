"""Generate realistic phrase traffic for benchmarks and produce it to ``phrases.in``.

The traffic looks like users: a pool of phrases (by default the CLINC150 test split, which the
demo heads never trained on, deduplicated by cleaned text) drawn with Zipf popularity, some of
them typed differently (case, repeated punctuation, typographic quotes and dashes, extra
space: variants that :func:`schemas.cleaning.clean` folds back to the original's text, so they
share its cache entry), and a share of never-seen phrases made by recombining pool words.

Because the stream is known in advance, so is the hit rate an embedding cache can reach on
it: :func:`expected_hit_rate` gives it for an unbounded cache or an LRU of N entries, both
starting empty.

Steps, each usable without the CLI (the benchmark calls them directly):

- :func:`make_pool` builds the phrases, their verified variants and the words to recombine;
- :func:`generate` (or :meth:`Traffic.make`, which also keeps what each message is) draws
  ``count`` messages, deterministic for a seed, as ``(id, JSON bytes without ts)``;
- :func:`send` produces them to Kafka (127.0.0.1/localhost only unless ``allow_remote``),
  paced to ``rate`` or as fast as possible, stamping ``ts`` at send time; it stops at the end
  of the messages or at ``duration`` seconds, whichever comes first.

>>> pool = make_pool(["what is my balance?", "how do i reset my pin", "book a table for two"])
>>> traffic = Traffic.make(1000, pool=pool, seed=7)
>>> traffic.messages[0][0]
'lg-7-0'
>>> 0 < traffic.figures()["expected_hit_rate"] < 1
True
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ops.kafka.clients import client_config
from schemas.cleaning import clean
from schemas.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import KafkaError, Message

MAX_COUNT = 5_000_000
"""Most messages one run may generate or send."""
MAX_DURATION_S = 3600.0
"""Longest one run may send, in seconds."""
MAX_RATE = 1_000_000.0
"""Highest paced rate, messages per second (``rate=None`` sends as fast as possible)."""
MAX_ZIPF = 10.0
VARIANTS_PER_PHRASE = 6
"""Verified variants kept per pool phrase; a variant draw picks one of them."""

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# Measured on the local broker (2 cores, 5 x 300,000 messages): no compression with a 20 ms linger
# and 1 MB batches had the best median; lz4 was not faster (the CPU, not the bytes, is the limit).
PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "enable.idempotence": True,
}


class LoadgenError(ValueError):
    """A load-generator setting is out of bounds, or the target is not allowed."""


# ------------------------------------------------------------------------------------------
# bounds


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if math.isnan(value) or (value <= low if low_open else value < low) or value > high:
        left = "(" if low_open else "["
        msg = f"{name} must be in {left}{_number(low)}, {_number(high)}], got {value!r}"
        raise LoadgenError(msg)


def check_generation(count: int, zipf: float, new_share: float, variants: float, seed: int, region: str) -> None:
    """Raise :class:`LoadgenError` unless the generation settings are within bounds."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise LoadgenError(f"count must be an integer, got {count!r}")
    _check_range("count", count, 1, MAX_COUNT)
    _check_range("zipf", zipf, 0.0, MAX_ZIPF)
    _check_range("new_share", new_share, 0.0, 1.0)
    _check_range("variants", variants, 0.0, 1.0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LoadgenError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(region, str) or not 1 <= len(region) <= 64:
        raise LoadgenError(f"region must be 1-64 characters (as phrases.in requires), got {region!r}")


def check_sending(rate: float | None, duration: float) -> None:
    """Raise :class:`LoadgenError` unless the rate (None: as fast as possible) and duration are within bounds."""
    if rate is not None:
        _check_range("rate (messages/s)", rate, 0.0, MAX_RATE, low_open=True)
    _check_range("duration (s)", duration, 0.0, MAX_DURATION_S, low_open=True)


def check_bootstrap(bootstrap: str, allow_remote: bool = False) -> None:
    """Refuse a bootstrap list with any host off this machine, unless ``allow_remote``.

    Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) are always allowed.
    """
    if allow_remote:
        return
    remote = [entry for entry in bootstrap.split(",") if entry.strip() and not _is_loopback(_host(entry))]
    if remote or not bootstrap.strip():
        msg = (f"refusing to send load to {bootstrap!r}: only 127.0.0.1/localhost brokers are allowed; "
               "pass --allow-remote (allow_remote=True) to send to another broker on purpose")
        raise LoadgenError(msg)


def _host(entry: str) -> str:
    entry = entry.strip()
    if "://" in entry:
        entry = entry.split("://", 1)[1]
    if entry.startswith("["):  # [::1]:9092
        return entry[1:entry.find("]")] if "]" in entry else entry
    return entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry


def _is_loopback(host: str) -> bool:
    host = host.lower()
    if host in LOOPBACK_HOSTS:
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


# ------------------------------------------------------------------------------------------
# the pool and its variants


@dataclass(frozen=True)
class Pool:
    """Phrases to draw from, each with variants that clean to the same text.

    ``texts[i]`` is sent as is; ``cleaned[i]`` is ``clean(texts[i])`` (distinct across the
    pool); ``variants[i]`` are other spellings of ``texts[i]`` whose ``clean`` is
    ``cleaned[i]``; ``words`` feed new phrases; ``reserved`` holds the cleaned texts a new
    phrase must not have (the pool's and, for CLINC150, every split's).
    """

    texts: tuple[str, ...]
    cleaned: tuple[str, ...]
    variants: tuple[tuple[str, ...], ...]
    words: tuple[str, ...]
    reserved: frozenset[str]

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def json_texts(self) -> tuple[bytes, ...]:
        """Return each text as a JSON string literal (UTF-8), ready to splice into a message."""
        return tuple(_json_str(t) for t in self.texts)

    @cached_property
    def json_variants(self) -> tuple[tuple[bytes, ...], ...]:
        """Return each text's variants as JSON string literals (UTF-8)."""
        return tuple(tuple(_json_str(v) for v in vs) for vs in self.variants)


def _json_str(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


def _upper(text: str, rng: random.Random) -> str:
    return text.upper()


def _capitalise(text: str, rng: random.Random) -> str:
    return text[:1].upper() + text[1:]


def _title(text: str, rng: random.Random) -> str:
    return text.title()


def _shout_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = words[i].upper()
    return " ".join(words)


def _wide_space(text: str, rng: random.Random) -> str:
    spaces = [m.start() for m in re.finditer(" ", text)]
    if not spaces:
        return " " + text + "  "
    i = rng.choice(spaces)
    return text[:i] + rng.choice(("  ", "   ", "\t", " \u00a0")) + text[i + 1:]


def _pad(text: str, rng: random.Random) -> str:
    return rng.choice(("", " ", "  ")) + text + rng.choice((" ", "  ", "\n", "\t"))


_REPEATABLE = "!?,;:'\"-"
_TYPOGRAPHIC = {"'": "\u2019", '"': "\u201c", "-": "\u2013"}


def _repeat_mark(text: str, rng: random.Random) -> str:
    marks = [i for i, ch in enumerate(text) if ch in _REPEATABLE]
    if not marks:
        return text
    i = rng.choice(marks)
    return text[:i] + text[i] * rng.randint(2, 3) + text[i + 1:]


def _typographic(text: str, rng: random.Random) -> str:
    marks = [i for i, ch in enumerate(text) if ch in _TYPOGRAPHIC]
    if not marks:
        return text
    i = rng.choice(marks)
    return text[:i] + _TYPOGRAPHIC[text[i]] + text[i + 1:]


CASE_CHANGES: tuple[Callable[[str, random.Random], str], ...] = (_upper, _capitalise, _title, _shout_word)
OTHER_CHANGES: tuple[Callable[[str, random.Random], str], ...] = (_wide_space, _pad, _repeat_mark, _typographic)


def make_variants(text: str, k: int = VARIANTS_PER_PHRASE, seed: int = 0) -> tuple[str, ...]:
    """Return up to ``k`` distinct spellings of ``text`` that differ from it but clean to the same text.

    Each variant changes the case and/or adds space, repeats a punctuation mark or makes a
    quote or dash typographic; only those that :func:`clean` folds back are kept. Texts
    without punctuation get case and space variants only (adding a mark changes the text).
    """
    target = clean(text)
    rng = random.Random(f"{seed}:{text}")
    found: dict[str, None] = {}
    for _ in range(6 * k):
        if len(found) >= k:
            break
        candidate = text
        changes = ([rng.choice(CASE_CHANGES)] if rng.random() < 0.8 else []) + rng.sample(OTHER_CHANGES, rng.randint(0, 2))
        for change in changes or [rng.choice(OTHER_CHANGES)]:
            candidate = change(candidate, rng)
        if candidate != text and candidate not in found and clean(candidate) == target:
            found[candidate] = None
    return tuple(found)


def _clinc_texts(splits: Sequence[str]) -> tuple[list[str], list[str]]:
    from models.datasets import SPLITS, load_clinc150

    data = load_clinc150("full")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise LoadgenError(f"unknown CLINC150 split(s) {unknown}; known: {', '.join(SPLITS)}")
    chosen = [text for s in splits for text, _ in data.split(s)]
    every = [text for s in SPLITS for text, _ in data.split(s)]
    return chosen, every


def make_pool(texts: Iterable[str] | None = None, *, splits: Sequence[str] = ("test",),
              variants_per_phrase: int = VARIANTS_PER_PHRASE, seed: int = 0) -> Pool:
    """Build the phrase pool: ``texts``, or the CLINC150 ``splits`` (default: the test split).

    Texts are deduplicated by cleaned text (the first wins) and texts that clean to nothing
    are dropped. With CLINC150, new phrases also avoid every other split's texts, so they are
    new to a cache that saw the demo or the training data. The result is cached per arguments;
    building the default pool takes about a second.
    """
    if texts is None:
        return _cached_pool(None, tuple(splits), variants_per_phrase, seed)
    return _cached_pool(tuple(texts), (), variants_per_phrase, seed)


@lru_cache(maxsize=8)
def _cached_pool(texts: tuple[str, ...] | None, splits: tuple[str, ...], k: int, seed: int) -> Pool:
    extra: list[str] = []
    if texts is None:
        chosen, extra = _clinc_texts(splits)
    else:
        chosen = list(texts)
    originals: list[str] = []
    cleaned: list[str] = []
    seen: set[str] = set()
    for text in chosen:
        c = clean(text)
        if c and c not in seen:
            seen.add(c)
            originals.append(text)
            cleaned.append(c)
    if len(originals) < 2:
        raise LoadgenError(f"the pool needs at least 2 texts that clean to distinct non-empty texts, got {len(originals)}")
    reserved = set(cleaned)
    reserved.update(clean(t) for t in extra)
    words = sorted({w for c in cleaned for w in c.split(" ") if w})
    return Pool(
        texts=tuple(originals),
        cleaned=tuple(cleaned),
        variants=tuple(make_variants(t, k, seed) for t in originals),
        words=tuple(words),
        reserved=frozenset(reserved),
    )


# ------------------------------------------------------------------------------------------
# drawing the traffic


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

        text_json, variant_json, region_json = pool.json_texts, pool.json_variants, _json_str(region)
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
                frag = _json_str(text)
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


# ------------------------------------------------------------------------------------------
# sending


class Stamp:
    """Return the tail ``,"ts":"2026-01-02T03:04:05.678Z"}`` for now (UTC, milliseconds).

    ``value[:-1] + stamp()`` puts the send time into a compact JSON object; the text is
    rebuilt once per millisecond, so stamping costs next to nothing at any rate.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self._ms = -1
        self._tail = b""

    def __call__(self) -> bytes:
        ms = int(self._now() * 1000)
        if ms != self._ms:
            self._ms = ms
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
            self._tail = f',"ts":"{stamp}.{ms % 1000:03d}Z"}}'.encode()
        return self._tail


def pump(messages: Sequence[tuple[str, bytes]], emit: Callable[[bytes], None], rate: float | None, duration: float, *,
         stamp: Callable[[], bytes] | None = None, after_chunk: Callable[[], object] = lambda: None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """Hand each value, stamped with ``ts``, to ``emit``, paced to ``rate``; return how many were handed over.

    ``rate=None``: as fast as possible. Otherwise message i is due ``i / rate`` s after the
    start; when ``emit`` was slow, the messages that fell due meanwhile go out at once (catch
    up), so the average rate holds. Stops after ``duration`` s (checked between chunks: every
    2,048 messages at full speed, every due batch when paced). ``after_chunk`` runs after
    each chunk (the producer's ``poll``).
    """
    stamp = stamp or Stamp()
    total = len(messages)
    start = clock()
    deadline = start + duration
    sent = 0
    while sent < total:
        now = clock()
        if now >= deadline:
            break
        if rate is None:
            due = min(total, sent + 2048)
        else:
            due = min(total, int((now - start) * rate + 1e-6) + 1)  # message i is due at start + i / rate
            if due <= sent:  # ahead of schedule: sleep until the next message is due
                sleep(min(start + sent / rate - now, deadline - now))
                continue
        for _, value in messages[sent:due]:
            emit(value[:-1] + stamp())
        sent = due
        after_chunk()
    return sent


def _connect(producer: Any, bootstrap: str, topic: str) -> None:
    """Fetch the topic's metadata before the clock starts: connects, and fails early on a missing topic."""
    from confluent_kafka import KafkaException

    try:
        found = producer.list_topics(topic, timeout=15).topics.get(topic)
    except KafkaException as exc:
        msg = f"no Kafka broker answers at {bootstrap} ({exc}); start the local one with `phrasestream up`"
        raise LoadgenError(msg) from None
    if found is None or found.error is not None:
        reason = found.error.str() if found is not None and found.error is not None else "not found"
        msg = f"topic {topic!r} is not usable on {bootstrap} ({reason}); `phrasestream up` creates phrases.in"
        raise LoadgenError(msg)


def send(settings: Settings, messages: Sequence[tuple[str, bytes]], rate: float | None = None,
         duration: float = 60.0, *, topic: str | None = None, allow_remote: bool = False,
         producer_config: dict[str, Any] | None = None, flush_timeout: float = 60.0) -> dict[str, Any]:
    """Produce ``messages`` to ``topic`` (default ``settings.topic_in``) and return the figures.

    Each value (compact JSON ending in ``}``) gets ``"ts"`` (ISO 8601 UTC with milliseconds,
    the send time) spliced in. ``rate=None`` sends as fast as possible, else ``rate``
    messages/s with catch-up (:func:`pump`). Sending stops after the last message or after
    ``duration`` seconds, whichever comes first; then the producer is flushed (at most
    ``flush_timeout`` s). Raises :class:`LoadgenError` for a bootstrap off this machine
    (unless ``allow_remote``), or a rate, duration or count out of bounds, before connecting;
    and for a broker that does not answer or a topic it does not have, before sending.

    Figures: ``sent`` (handed to the producer), ``delivered``, ``failed`` (refused or not
    acknowledged within the flush), ``send_s`` (until the last was handed over),
    ``duration_s`` (until all were acknowledged), ``rate`` (delivered / duration_s),
    ``stopped_by`` (``count`` or ``duration``).
    """
    from confluent_kafka import Producer

    check_bootstrap(settings.bootstrap, allow_remote)
    check_sending(rate, duration)
    if len(messages) > MAX_COUNT:
        raise LoadgenError(f"at most {MAX_COUNT:,} messages per run, got {len(messages):,}")
    target = topic or settings.topic_in
    failures: list[str] = []

    def on_failure(err: KafkaError, _msg: Message) -> None:
        failures.append(err.str())

    config = client_config(settings, {**PRODUCER_CONFIG, **(producer_config or {}),
                                      "delivery.report.only.error": True, "on_delivery": on_failure})
    producer = Producer(config)
    _connect(producer, settings.bootstrap, target)
    produce, poll = producer.produce, producer.poll

    def emit(data: bytes) -> None:
        while True:
            try:
                produce(target, data)
                return
            except BufferError:  # the local queue is full: let it drain
                poll(0.01)

    start = time.monotonic()
    sent = pump(messages, emit, rate, duration, after_chunk=lambda: poll(0))
    send_s = time.monotonic() - start
    left = producer.flush(flush_timeout)
    duration_s = time.monotonic() - start
    delivered = sent - left - len(failures)
    return {
        "topic": target,
        "sent": sent,
        "delivered": delivered,
        "failed": len(failures) + left,
        "first_failure": failures[0] if failures else None,
        "send_s": round(send_s, 3),
        "duration_s": round(duration_s, 3),
        "rate": round(delivered / duration_s, 1) if duration_s > 0 else 0.0,
        "target_rate": rate,
        "stopped_by": "count" if sent == len(messages) else "duration",
    }


# ------------------------------------------------------------------------------------------
# the command


def run(settings: Settings, *, count: int = 10_000, duration: float = 60.0, rate: float | None = None,
        zipf: float = 1.1, new_share: float = 0.03, variants: float = 0.3, region: str = "global", seed: int = 7,
        cache_size: int | None = None, topic: str | None = None, allow_remote: bool = False,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate the traffic, send it, and return the figures of what was sent (``phrasestream loadgen``).

    Checks every bound before generating anything. With a ``rate``, generates no more than
    ``rate * duration`` messages (the rest could not be sent in time). ``cache_size``
    defaults to ``settings.cache_max_entries``, the worker's cache.
    """
    check_generation(count, zipf, new_share, variants, seed, region)
    check_sending(rate, duration)
    check_bootstrap(settings.bootstrap, allow_remote)
    if cache_size is None:
        cache_size = settings.cache_max_entries
    if cache_size < 0:
        raise LoadgenError(f"cache size must be >= 0 (0: no cache), got {cache_size}")
    n = count if rate is None else min(count, math.ceil(rate * duration))
    started = time.perf_counter()
    pool = make_pool()
    pool_s = time.perf_counter() - started
    traffic = Traffic.make(n, zipf=zipf, new_share=new_share, variants=variants, seed=seed, region=region, pool=pool)
    generate_s = time.perf_counter() - started - pool_s
    pace = "as fast as possible" if rate is None else f"{rate:g}/s"
    say(f"pool of {len(pool):,} phrases built in {pool_s:.2f} s; {n:,} messages generated in {generate_s:.2f} s; "
        f"sending to {topic or settings.topic_in} at {settings.bootstrap}, {pace}, for at most {duration:g} s")
    sent = send(settings, traffic.messages, rate=rate, duration=duration, topic=topic, allow_remote=allow_remote)
    if n < count and sent["stopped_by"] == "count":  # rate * duration messages were all it could send
        sent["stopped_by"] = "duration"
    figures = traffic.figures(sent["sent"], cache_size=cache_size)
    del figures["messages"]  # the same as "sent"
    return {"count": sent.pop("delivered"), **sent, **figures, **traffic.settings,
            "pool_s": round(pool_s, 3), "generate_s": round(generate_s, 3)}
