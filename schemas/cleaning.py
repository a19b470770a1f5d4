"""Clean incoming text the same way for serving and for training.

``clean(text)`` is deterministic and pure. It is the one cleaner: the stream worker calls
it before embedding and retraining calls it before training, so that a phrase and its
training twin reach the embedder as the same string (and share one cache entry).

Policy, in order:

1. HTML: entities are unescaped (``&amp;`` -> ``&``, ``&#39;`` -> ``'``) and tags removed
   (``<b>hi</b>`` -> ``hi``; ``<br>`` and block tags become a space).
2. Unicode: NFKC normalisation (full-width ``ＡＢＣ`` -> ``ABC``, ligatures, ``①`` -> ``1``);
   accents, CJK and emoji are kept (the embedder's tokenizer handles them).
3. Invisible characters: control and format characters (zero-width space, BOM, soft
   hyphen, bidi marks) are dropped.
4. Typography: curly quotes become straight ones, dashes and minus signs become ``-``,
   the ellipsis ``…`` becomes ``...``.
5. Punctuation (``PunctuationPolicy``): ``collapse`` (default) keeps punctuation but squashes
   a run of the same mark (``???`` -> ``?``, ``!!!`` -> ``!``; ``...`` stays as an ellipsis);
   ``keep`` leaves it; ``strip`` removes everything but apostrophes inside words.
6. Case: lower case (``str.lower``), as the uncased encoder would anyway.
7. Whitespace: every run of Unicode white space (tabs, newlines, NBSP) becomes one space;
   leading and trailing space is removed.

>>> clean("  How do I <b>reset</b> my PIN???&nbsp;")
'how do i reset my pin?'
"""

from __future__ import annotations

import html
import re
import unicodedata
from enum import Enum


class PunctuationPolicy(str, Enum):
    """Say what ``clean`` does with punctuation."""

    KEEP = "keep"
    COLLAPSE = "collapse"
    STRIP = "strip"


_BLOCK_TAG = re.compile(r"<\s*/?\s*(br|p|div|li|ul|ol|tr|td|th|h[1-6]|hr)\b[^>]*>", re.IGNORECASE)
# Only real HTML tags (known names, then attributes) and comments: "<john@x.com>" or
# "a <3 b" are text, not markup.
_HTML_TAGS = (
    "a|abbr|address|article|aside|b|big|blockquote|body|br|button|caption|center|cite|code|col|dd|del|"
    "details|div|dl|dt|em|font|footer|form|h[1-6]|head|header|hr|html|i|iframe|img|input|ins|kbd|label|"
    "li|link|main|mark|meta|nav|ol|option|p|pre|q|s|samp|script|section|select|small|span|strike|strong|"
    "style|sub|summary|sup|table|tbody|td|textarea|tfoot|th|thead|title|tr|tt|u|ul|var|wbr"
)
_ATTRIBUTES = r"""(?:\s+[a-zA-Z_:][-\w:.]*(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)*"""
# The look-ahead makes a "<" that no tag can start at ("<<", "a < b") fail before the ~90 names are tried.
_TAG = re.compile(rf"<(?=[/!a-zA-Z])(?:/?(?:{_HTML_TAGS}){_ATTRIBUTES}\s*/?>|!--.*?-->|!doctype[^<>]*>)",
                  re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")
_TYPOGRAPHY = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "`": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
        "\u2015": "-", "\u2212": "-",
    }
)
# A run of one repeated punctuation mark; dots are handled apart so that "..." survives.
_REPEAT = re.compile(r"([!?,;:'\"\-*~#=_+/\\|^])\1+")
_DOTS = re.compile(r"\.{4,}")
_STRIP = re.compile(r"(?:(?<!\w)'|'(?!\w)|[^\w\s'])")


def _strip_one(match: re.Match[str]) -> str:
    # ``\w`` does not cover combining marks (Devanagari vowel signs, Arabic harakat, the dot of
    # a lowered "İ"): they belong to the word, not to its punctuation.
    mark = match.group()
    return mark if unicodedata.category(mark).startswith("M") else " "


def _is_invisible(ch: str) -> bool:
    category = unicodedata.category(ch)
    if category == "Cc":
        return not ch.isspace()
    return category in ("Cf", "Co", "Cs", "Cn")


def _drop_invisibles(text: str) -> str:
    if text.isprintable():  # the common case, at C speed: no control, format or unassigned character
        return text
    return "".join(ch for ch in text if not _is_invisible(ch))


def _strip_markup(text: str) -> str:
    """Remove tags and unescape entities until none is left: ``&amp;lt;b&amp;gt;`` -> ``<b>`` -> empty."""
    while True:  # each round that changes the text shortens it, so this ends
        stripped = html.unescape(_TAG.sub("", _BLOCK_TAG.sub(" ", text)))
        if stripped == text:
            return text
        text = stripped


# One pass can uncover work for the next (``e<ZWSP><U+0301>`` -> decomposed ``e\u0301``,
# ``<<ZWSP>b>`` -> ``<b>``), so ``clean`` repeats it until nothing changes. Markup nested in
# markup is undone within one pass (``_strip_markup``), so a few passes settle real text; the
# bound of ``len(text)`` passes and a few only guards against a cycle.
# A fixed count of 8 passes once left ``clean(clean(x)) != clean(x)`` for markup escaped nine
# times or more (found by tests/unit/test_decode_properties.py).
_MIN_PASSES = 8


def clean(text: str, policy: PunctuationPolicy = PunctuationPolicy.COLLAPSE) -> str:
    """Return ``text`` cleaned: HTML, unicode, invisibles, typography, punctuation, case, space.

    The result may be empty (for example for ``"<br>"``); callers decide what that means.
    ``clean`` is idempotent: ``clean(clean(x)) == clean(x)``, so text that was cleaned once
    (``clean_text`` on ``predictions.out``) is cleaned to itself again.
    """
    for _ in range(_MIN_PASSES + len(text)):
        cleaned = _clean_once(text, policy)
        if cleaned == text:
            break
        text = cleaned
    return text


def _clean_once(text: str, policy: PunctuationPolicy) -> str:
    text = _strip_markup(text)
    text = unicodedata.normalize("NFKC", text)
    text = _drop_invisibles(text)
    text = text.replace("\u2026", "...").translate(_TYPOGRAPHY)
    if policy is PunctuationPolicy.COLLAPSE:
        text = _REPEAT.sub(r"\1", text)
        text = _DOTS.sub("...", text)
    elif policy is PunctuationPolicy.STRIP:
        text = _STRIP.sub(_strip_one, text)
    text = text.lower()
    return _SPACE.sub(" ", text).strip()
