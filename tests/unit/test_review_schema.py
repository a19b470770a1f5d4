"""The expert loop's contracts: the explain flag through the internal topic, the rule, the shadow, the item."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.messages import CleanedPhrase, LabeledPhrase, PhraseIn, RegistryPointer, ShadowPrediction
from schemas.review import ReviewItem, ReviewRule, ShadowSpec, item_id

T0 = datetime(2026, 1, 2, tzinfo=UTC)
SHA = "a" * 64


def test_the_explain_flag_crosses_the_internal_topic_and_leaves_other_phrases_unchanged():
    asked = CleanedPhrase("1", "eu", ["intent"], "hi", T0, explain=True)
    assert CleanedPhrase.from_bytes(asked.to_bytes()).explain is True
    plain = CleanedPhrase("1", "eu", ["intent"], "hi", T0)
    assert len(__import__("orjson").loads(plain.to_bytes())) == 7
    assert CleanedPhrase.from_bytes(plain.to_bytes()).explain is False


def test_explain_must_be_a_boolean():
    assert PhraseIn.model_validate({"text": "x", "region": "eu", "explain": True}).explain is True
    with pytest.raises(ValidationError):
        PhraseIn.model_validate({"text": "x", "region": "eu", "explain": "yes"})


def test_a_rule_refuses_rates_and_margins_outside_zero_to_one():
    assert ReviewRule().margin == 0.2
    for bad in ({"margin": 1.5}, {"random_rate": -0.1}, {"budget_per_hour": -1}):
        with pytest.raises(ValidationError):
            ReviewRule(**bad)


def test_a_pointer_carries_a_shadow_and_a_rule_through_its_bytes():
    pointer = RegistryPointer(region="eu", model="intent", version="v1", action="shadow", seq=2, bundle_sha256=SHA,
                              bundle_bytes=10, shadow=ShadowSpec(version="v2", percent=25, bundle_sha256=SHA,
                                                                 bundle_bytes=9), review=ReviewRule(margin=0.1))
    back = RegistryPointer.model_validate_json(pointer.to_bytes())
    assert back.shadow is not None and back.shadow.version == "v2" and back.shadow.percent == 25
    assert back.review == ReviewRule(margin=0.1)
    with pytest.raises(ValidationError):
        ShadowSpec(version="v2", percent=0, bundle_sha256=SHA, bundle_bytes=9)


def test_an_item_id_is_stable_and_names_the_head_version_and_phrase():
    assert item_id("eu", "intent", "v1", "p1") == item_id("eu", "intent", "v1", "p1")
    assert item_id("eu", "intent", "v1", "p1") != item_id("eu", "intent", "v2", "p1")
    item = ReviewItem(item_id=item_id("eu", "intent", "v1", "p1"), id="p1", region="eu", model="intent",
                      model_version="v1", clean_text="hi", label="greet", probability=0.4,
                      top_k=[("greet", 0.4), ("bye", 0.35)], margin=0.05, reasons=["margin"], random_rate=0.02)
    assert ReviewItem.model_validate_json(item.to_bytes()) == item
    with pytest.raises(ValidationError):
        ReviewItem(**{**item.model_dump(), "reasons": []})


def test_labelled_examples_keep_their_review_provenance_and_plain_ones_need_none():
    plain = LabeledPhrase(text="hi", label="greet", region="eu", model="intent")
    assert plain.source is None and b"source" not in plain.to_bytes()
    reviewed = LabeledPhrase(text="hi", label="greet", region="eu", model="intent", source="review", reviewer="ann",
                             item_id="x", reason="margin", sampling_weight=50.0, head_version="v1", label_set_version=0)
    assert LabeledPhrase.model_validate_json(reviewed.to_bytes()) == reviewed


def test_a_shadow_prediction_names_the_live_version():
    p = ShadowPrediction(id="1", region="eu", model="intent", model_version="v2", live_version="v1", label="a",
                         probability=0.9, top_k=[("a", 0.9)], clean_text="hi", embedder_version="e", cache_hit=False,
                         latency_ms=1.0, received_at=T0, predicted_at=T0)
    assert ShadowPrediction.model_validate_json(p.to_bytes()).live_version == "v1"
