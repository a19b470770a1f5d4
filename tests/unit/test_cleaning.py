"""Unit tests of schemas.cleaning: one behaviour per test, exact outputs."""

from __future__ import annotations

import pytest

from schemas.cleaning import PunctuationPolicy, clean

# --- HTML -------------------------------------------------------------------------------


def test_docstring_example() -> None:
    assert clean("  How do I <b>reset</b> my PIN???&nbsp;") == "how do i reset my pin?"


def test_named_and_numeric_entities_are_unescaped() -> None:
    assert clean("Tom &amp; Jerry&#39;s &#x263A; caf&eacute;") == "tom & jerry's \u263a café"


def test_inline_tags_are_removed_without_space() -> None:
    assert clean("<b>bo</b>ld <span class='x'>text</span>") == "bold text"


def test_comparison_operators_are_not_tags() -> None:
    assert clean("5 < 6 and 7 > 3") == "5 < 6 and 7 > 3"


def test_escaped_comparison_operators_are_kept() -> None:
    assert clean("5 &lt; 6 and 7 &gt; 3") == "5 < 6 and 7 > 3"


def test_br_becomes_a_space() -> None:
    assert clean("line one<br>line two") == "line one line two"


def test_self_closing_br_becomes_a_space() -> None:
    assert clean("a<br/>b<BR />c") == "a b c"


def test_block_tags_become_a_space() -> None:
    assert clean("<p>first</p><p>second</p><div>third</div><li>fourth</li>") == "first second third fourth"


def test_an_unknown_tag_name_is_text_not_markup() -> None:
    assert clean("a<brand>b") == "a<brand>b"


def test_an_address_in_angle_brackets_is_kept() -> None:
    assert clean("my email is <John@x.com>") == "my email is <john@x.com>"


def test_a_heart_is_not_a_tag() -> None:
    assert clean("I <3 you > them") == "i <3 you > them"


def test_html_comment_is_removed() -> None:
    assert clean("keep<!-- c -->this") == "keepthis"


def test_escaped_markup_is_removed_like_markup() -> None:
    # one pass turns &lt;b&gt; into <b>; clean keeps going until the text is stable
    assert clean("&lt;b&gt;hi&lt;/b&gt;") == "hi"


def test_double_escaped_entity_is_fully_unescaped() -> None:
    assert clean("fish &amp;amp; chips") == "fish & chips"


@pytest.mark.parametrize("markup", ["<br>", "<p></p>", "<!-- only a comment -->", "<b> </b>", "&nbsp;<br/>&#8203;", ""])
def test_markup_only_input_is_empty(markup: str) -> None:
    assert clean(markup) == ""


# --- Unicode ----------------------------------------------------------------------------


def test_nfkc_full_width_letters() -> None:
    assert clean("ＡＢＣ ｄｅｆ １２３") == "abc def 123"


def test_nfkc_ligature_fi() -> None:
    assert clean("\ufb01le") == "file"


def test_nfkc_circled_digit() -> None:
    assert clean("step \u2460") == "step 1"


def test_decomposed_accent_is_composed() -> None:
    assert clean("cafe\u0301") == "caf\u00e9"


@pytest.mark.parametrize(
    "invisible",
    ["\u200b", "\ufeff", "\u00ad", "\u200e", "\u200f", "\u202a", "\u202c", "\u2066", "\u2069", "\u200d", "\x00", "\x07"],
    ids=["zwsp", "bom", "soft-hyphen", "lrm", "rlm", "lre", "pdf", "lri", "pdi", "zwj", "nul", "bel"],
)
def test_invisible_character_is_dropped(invisible: str) -> None:
    assert clean(f"pa{invisible}ss{invisible}word") == "password"


def test_invisible_between_letter_and_accent_still_composes() -> None:
    assert clean("e\u200b\u0301") == "\u00e9"


def test_nbsp_tabs_newlines_collapse_to_one_space() -> None:
    assert clean("a\u00a0\u00a0b\t\tc\r\n\nd\u3000e\u2028f") == "a b c d e f"


def test_leading_and_trailing_space_removed() -> None:
    assert clean(" \t\n hello \u00a0\n") == "hello"


# --- Typography -------------------------------------------------------------------------


def test_curly_double_quotes_become_straight() -> None:
    assert clean("\u201cquoted\u201d \u201elow\u201c \u00abguillemets\u00bb") == '"quoted" "low" "guillemets"'


def test_curly_single_quotes_become_apostrophes() -> None:
    assert clean("can\u2019t \u2018single\u2019") == "can't 'single'"


def test_dashes_and_minus_become_hyphen() -> None:
    assert clean("a\u2013b c\u2014d \u22125 e\u2010f") == "a-b c-d -5 e-f"


def test_ellipsis_character_becomes_three_dots() -> None:
    assert clean("wait\u2026") == "wait..."


# --- Punctuation ------------------------------------------------------------------------


def test_repeated_question_marks_collapse() -> None:
    assert clean("why???") == "why?"


def test_repeated_exclamation_marks_collapse() -> None:
    assert clean("wow!!!!!") == "wow!"


def test_four_or_more_dots_become_an_ellipsis() -> None:
    assert clean("so....") == "so..."
    assert clean("so..........") == "so..."


def test_three_dots_are_kept() -> None:
    assert clean("so...") == "so..."


def test_two_dots_are_kept() -> None:
    assert clean("so..") == "so.."


def test_mixed_punctuation_run_is_not_collapsed() -> None:
    assert clean("really?!?!") == "really?!?!"


def test_repeated_dashes_collapse_after_typography() -> None:
    assert clean("a -\u2013\u2014 b") == "a - b"


def test_policy_keep_leaves_repeats() -> None:
    assert clean("why??? so.... ok!!", PunctuationPolicy.KEEP) == "why??? so.... ok!!"


def test_policy_keep_still_normalises_typography() -> None:
    assert clean("\u201cwait\u2026\u201d", PunctuationPolicy.KEEP) == '"wait..."'


def test_policy_strip_removes_punctuation() -> None:
    assert clean("Hello, world! (ok?) 50% #tag...", PunctuationPolicy.STRIP) == "hello world ok 50 tag"


def test_policy_strip_keeps_apostrophes_inside_words() -> None:
    assert clean("Don\u2019t 'quote' rock'n'roll", PunctuationPolicy.STRIP) == "don't quote rock'n'roll"


def test_policy_strip_keeps_combining_marks_of_words() -> None:
    # Devanagari vowel signs and virama, Arabic harakat, Thai vowels are part of the word
    assert clean("\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e!", PunctuationPolicy.STRIP) == (
        "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e"
    )
    assert clean("\u0645\u064e\u0631\u0652\u062d\u064e\u0628\u064b\u0627\u060c", PunctuationPolicy.STRIP) == (
        "\u0645\u064e\u0631\u0652\u062d\u064e\u0628\u064b\u0627"
    )
    assert clean("\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35", PunctuationPolicy.STRIP) == "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35"


def test_policy_strip_removes_emoji_and_symbols() -> None:
    assert clean("ok \U0001f44d + $5 \u00a9", PunctuationPolicy.STRIP) == "ok 5"


def test_policy_accepts_string_value() -> None:
    assert PunctuationPolicy("strip") is PunctuationPolicy.STRIP
    assert clean("a!", PunctuationPolicy("strip")) == "a"


# --- Case, scripts ----------------------------------------------------------------------


def test_lower_case() -> None:
    assert clean("HeLLo WoRLD") == "hello world"


def test_accented_capitals_are_lowered() -> None:
    assert clean("\u00c9COLE \u00c0 \u00d6STERREICH") == "\u00e9cole \u00e0 \u00f6sterreich"


def test_emoji_are_kept() -> None:
    assert clean("Great \U0001f600\U0001f44d") == "great \U0001f600\U0001f44d"


def test_cjk_is_kept() -> None:
    assert clean("\u6211\u7684\u5bc6\u7801 \u30d1\u30b9\u30ef\u30fc\u30c9 \ud55c\uad6d\uc5b4") == (
        "\u6211\u7684\u5bc6\u7801 \u30d1\u30b9\u30ef\u30fc\u30c9 \ud55c\uad6d\uc5b4"
    )


def test_emoji_with_zwj_sequence_loses_the_joiner() -> None:
    # ZWJ is a format character: the family emoji becomes its three members
    assert clean("\U0001f468\u200d\U0001f469\u200d\U0001f467") == "\U0001f468\U0001f469\U0001f467"


# --- Properties -------------------------------------------------------------------------

TRICKY = [
    "  How do I <b>reset</b> my PIN???&nbsp;",
    "5 < 6 and 7 > 3",
    "5 &lt; 6 and 7 &gt; 3",
    "&lt;b&gt;hi&lt;/b&gt;",
    "&lt;br&gt;x",
    "&lt;!-- x --&gt;y",
    "fish &amp;amp; chips",
    "x&#x3c;y&#x3e;z",
    "\uff1c\uff42\uff1ehi",
    "e\u200b\u0301",
    "cafe\u0301",
    "\ufb01le \u2460 \uff21\uff22\uff23",
    "a\u200bb\ufeffc\u00add\u200ee\u200ff",
    "a\u00a0b\tc\nd",
    "\u201chi\u201d \u2018x\u2019 a\u2013b\u2014c \u22121 wait\u2026",
    "why??? so.... ok!!! ...",
    "..\u2026",
    "- \u2013 -- \u2014",
    "\u00c9COLE \u0130stanbul \u1e9e \u01c5",
    "\U0001f600 \u65e5\u672c\u8a9e",
    "<br>",
    "<<b>>",
    "a<b and c>d",
    "&nbsp;&nbsp;&#8203;",
    "it's \u201ccan\u2019t\u201d!!",
    "\u0928\u092e\u0938\u094d\u0924\u0947!! \u0645\u064e\u0631\u0652\u062d\u064e\u0628\u064b\u0627\u060c \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "rock'n'roll 'quoted' '' ' x'",
    "",
]


@pytest.mark.parametrize("policy", list(PunctuationPolicy))
@pytest.mark.parametrize("text", TRICKY)
def test_idempotent(text: str, policy: PunctuationPolicy) -> None:
    once = clean(text, policy)
    assert clean(once, policy) == once


@pytest.mark.parametrize("text", TRICKY)
def test_deterministic(text: str) -> None:
    assert len({clean(text) for _ in range(5)}) == 1


def test_result_has_no_double_or_edge_spaces() -> None:
    for text in TRICKY:
        out = clean(text)
        assert "  " not in out and out == out.strip(), text


def test_input_is_not_mutated_and_type_is_str() -> None:
    text = "  ABC  "
    out = clean(text)
    assert text == "  ABC  " and type(out) is str and out == "abc"
