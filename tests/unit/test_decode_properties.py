"""Property tests (hypothesis) of the cleaner and of ``decode_phrase``: bad input is data, never a crash.

What they state, for any input hypothesis can build:

- ``decode_phrase`` never raises; it returns a :class:`CleanedPhrase` or a :class:`DeadLetter`
  with an input error kind, a reason and the original bytes (which survive the letter's own
  serialisation);
- a cleaned phrase's text is non-empty, a fixed point of ``clean``, lower case, single-spaced,
  free of control, format (zero-width, bidi), private-use, surrogate and unassigned characters,
  and its raw text was within ``max_text_chars``;
- ``clean`` is idempotent and deterministic for every punctuation policy.

The example count is kept small (``max_examples`` below) so the file runs in a few seconds;
raise it for a longer hunt with ``--hypothesis-seed`` and the ``HYPOTHESIS_MAX_EXAMPLES``
environment variable.
"""

from __future__ import annotations

import json
import os
import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.cleaning import PunctuationPolicy, clean
from schemas.messages import CleanedPhrase, DeadLetter, ErrorKind
from streams.decode import Limits, Source, decode_phrase

KNOWN = {"global": ["domain", "intent"], "eu": ["intent"]}
SOURCE = Source("phrases.in", partition=0, offset=7)
LIMITS = Limits(max_text_chars=200, max_message_bytes=4_000)
INPUT_KINDS = set(ErrorKind) - {ErrorKind.INTERNAL, ErrorKind.REJECTED_BY_DATABASE}

EXAMPLES = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "150")),
    deadline=None,  # a first call compiles regexes and loads unicodedata tables
    suppress_health_check=[HealthCheck.too_slow],
)

# Text that exercises the cleaner: markup, entities, invisibles, bidi, typography, any code point.
MARKUP = st.sampled_from([
    "<b>", "</b>", "<br>", "<p>", "<script>", "</div>", "<!-- x -->", "&amp;", "&lt;", "&gt;", "&nbsp;", "&#8203;",
    "&amp;amp;", "&", "<", ">", "\u200b", "\u200e", "\u200f", "\u202e", "\u2066", "\ufeff", "\u00ad", "\x00", "\x07",
    "\t", "\n", "\u00a0", "\u2026", "\u201c", "\u2014", "\ufdfa", "\u0130", "\u1e9e", "...", "???", "!!", "'", " ",
    "' OR 1=1; DROP TABLE inferences; --",
])
TEXT = st.lists(st.one_of(st.text(max_size=12), MARKUP), max_size=12).map("".join)

JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
JSON_VALUE = st.recursive(
    JSON_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
# Each field either well formed or anything at all; each may be left out.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.one_of(st.just(1), JSON_VALUE),
    "id": st.one_of(st.text(min_size=1, max_size=30), st.integers(), JSON_VALUE),
    "text": st.one_of(TEXT, st.text(min_size=190, max_size=220), JSON_VALUE),
    "region": st.one_of(st.sampled_from(["global", "eu", "mars", ""]), JSON_VALUE),
    "models": st.one_of(st.none(), st.lists(st.sampled_from(["intent", "domain", "nope"]), max_size=4), JSON_VALUE),
    "ts": st.one_of(st.sampled_from(["2026-01-02T03:04:05Z", "2026-01-02T03:04:05", "yesterday"]), JSON_VALUE),
    "metadata": st.one_of(st.dictionaries(st.text(max_size=5), JSON_VALUE, max_size=3), JSON_VALUE),
    "extra": JSON_VALUE,
}
OBJECTS = st.fixed_dictionaries({}, optional=FIELDS)
PAYLOADS = st.one_of(
    st.binary(max_size=300),
    OBJECTS.map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    OBJECTS.map(lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)


def invisible(ch: str) -> bool:
    """A character the cleaner promises to drop: control (but white space), format, private use,
    surrogate or unassigned."""
    category = unicodedata.category(ch)
    return (category == "Cc" and not ch.isspace()) or category in ("Cf", "Co", "Cs", "Cn")


def check_cleaned(text: str) -> None:
    assert text, "a cleaned phrase is never empty"
    assert clean(text) == text, "the cleaned text is a fixed point of clean"
    assert text == text.strip() and "  " not in text
    assert not any(ch.isspace() and ch != " " for ch in text), "white space is a plain space"
    assert not any(invisible(ch) for ch in text), [hex(ord(c)) for c in text if invisible(c)]
    assert text == text.lower()
    text.encode("utf-8")  # no lone surrogate: every topic can carry it


@EXAMPLES
@given(PAYLOADS)
def test_decode_never_raises_and_answers_with_a_phrase_or_a_dead_letter(raw: bytes) -> None:
    result = decode_phrase(raw, KNOWN, SOURCE, LIMITS)
    if isinstance(result, DeadLetter):
        assert result.error_kind in INPUT_KINDS
        assert result.reason.strip()
        assert result.original() == raw
        again = DeadLetter.model_validate_json(result.to_bytes())
        assert (again.error_kind, again.original(), again.id) == (result.error_kind, raw, result.id)
        return
    assert isinstance(result, CleanedPhrase)
    check_cleaned(result.clean_text)
    body = json.loads(raw)
    assert len(raw) <= LIMITS.max_message_bytes
    assert isinstance(body["text"], str) and len(body["text"]) <= LIMITS.max_text_chars
    assert result.region in KNOWN and result.models and set(result.models) <= set(KNOWN[result.region])
    assert CleanedPhrase.from_bytes(result.to_bytes()) == result


@EXAMPLES
@given(TEXT, st.sampled_from(sorted(KNOWN)))
def test_a_well_formed_phrase_is_cleaned_or_rejected_for_its_text_only(text: str, region: str) -> None:
    raw = json.dumps({"id": "p", "text": text, "region": region}).encode("utf-8", "surrogatepass")
    result = decode_phrase(raw, KNOWN, SOURCE, LIMITS)
    if isinstance(result, CleanedPhrase):
        check_cleaned(result.clean_text)
        assert result.clean_text == clean(text)
        assert result.models == KNOWN[region]
    else:
        assert result.error_kind in {ErrorKind.EMPTY_TEXT, ErrorKind.EMPTY_AFTER_CLEANING, ErrorKind.TEXT_TOO_LONG}
        assert result.id == "p"
        if result.error_kind is ErrorKind.EMPTY_TEXT:
            assert not text.strip()
        elif result.error_kind is ErrorKind.TEXT_TOO_LONG:
            assert len(text) > LIMITS.max_text_chars
        else:
            assert clean(text) == ""


@EXAMPLES
@given(TEXT, st.sampled_from(list(PunctuationPolicy)))
def test_clean_is_idempotent_and_drops_every_invisible_character(text: str, policy: PunctuationPolicy) -> None:
    once = clean(text, policy)
    assert clean(once, policy) == once
    assert clean(text, policy) == once
    assert not any(invisible(ch) for ch in once)
    assert once == once.strip() and "  " not in once


@EXAMPLES
@given(st.text(max_size=60), st.integers(min_value=9, max_value=60))
def test_clean_is_idempotent_however_deeply_markup_is_escaped(inner: str, depth: int) -> None:
    # &amp;amp;...lt;b&gt; and <<<b>b>b> need a pass per level: more levels than a fixed pass count
    escaped = "&" + "amp;" * depth + "lt;b&gt;" + inner
    nested = "<" * depth + "b>" * depth + inner
    for text in (escaped, nested):
        once = clean(text)
        assert clean(once) == once
