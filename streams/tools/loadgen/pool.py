"""The phrases traffic is drawn from, and their variants: other spellings that clean to the same text.

A variant changes the case and/or adds space, repeats a punctuation mark or makes a quote or
dash typographic; only those that :func:`schemas.cleaning.clean` folds back to the original's
text are kept, so a variant shares the original's cache entry.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

from schemas.cleaning import clean
from streams.tools.loadgen.checks import LoadgenError

VARIANTS_PER_PHRASE = 6
"""Verified variants kept per pool phrase; a variant draw picks one of them."""


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
        return tuple(json_str(t) for t in self.texts)

    @cached_property
    def json_variants(self) -> tuple[tuple[bytes, ...], ...]:
        """Return each text's variants as JSON string literals (UTF-8)."""
        return tuple(tuple(json_str(v) for v in vs) for vs in self.variants)


def json_str(text: str) -> bytes:
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
