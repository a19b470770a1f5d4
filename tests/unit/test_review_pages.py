"""The review page's pieces without services: double items, guideline definitions, the HTML and its escaping."""

from datetime import UTC, datetime

from models.heads import HeadRef
from streams.review.guide import Guide, derived_definition
from streams.review.pages import item_page, queue_page
from streams.review.store import Filters, is_double, stale_reason


def test_double_items_are_a_stable_share():
    ids = [f"{n:032x}" for n in range(4000)]
    share = sum(is_double(i, 0.1) for i in ids) / len(ids)
    assert 0.08 < share < 0.12
    assert [is_double(i, 0.1) for i in ids[:50]] == [is_double(i, 0.1) for i in ids[:50]]
    assert not any(is_double(i, 0.0) for i in ids) and all(is_double(i, 1.0) for i in ids)


def test_a_definition_is_derived_from_the_label_name_when_none_is_written():
    assert derived_definition("card_declined") == "Card declined."
    guide = Guide(HeadRef("eu", "intent", "v1"), ("a_b",), {"a_b": "Written."})
    assert guide.definition("a_b") == "Written." and guide.definition("lost-card") == "Lost card."


def _item(**kw):
    return {"item_id": "abc", "region": "eu", "model": "intent", "model_version": "v1",
            "clean_text": "<script>alert(1)</script>", "label": "lost", "probability": 0.42, "margin": 0.05,
            "reasons": ["margin"], "top_k": [["lost", 0.42], ["stolen", 0.37]], "double_review": False,
            "evidence": {"terms": [["card", 0.31], ["lost", 0.2]], "nearest": [{"text": "i lost it", "cos": 0.9}],
                         "note": "x"}, "answers": [], "stored_at": datetime.now(UTC), **kw}


def test_the_item_page_escapes_the_phrase_preselects_the_suggestion_and_numbers_labels_for_digits():
    guide = Guide(HeadRef("eu", "intent", "v1"), ("lost", "stolen", "other"), examples={"lost": ["i lost my card"]})
    html = item_page("ann", _item(), guide, ["lost", "other", "stolen"], "lost", "stolen", 0, "tok", "", None)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "value='lost' checked autofocus data-key=1" in html and "value='stolen' data-key=2" in html
    assert "i lost my card" in html and "Lost." in html and "runner-up: <b>stolen</b>" in html
    assert "i lost it" in html and "card" in html  # the evidence, rendered generically
    for outcome in ("skip", "unsure", "out_of_scope"):
        assert f"name=outcome value={outcome}" in html
    assert "42%" not in html.split("<form")[0].replace("width:42%", "")  # confidence as a bar and words


def test_the_queue_page_lists_items_and_offers_bulk_confirm_with_the_filter():
    html = queue_page("ann", [_item()], [{"region": "eu", "model": "intent", "n": 1}], Filters("eu", "intent"),
                      [("eu", "intent")], ["lost"], "tok", "2026-01-01T00:00:00+00:00")
    assert "action='/bulk-confirm'" in html and "name=region value='eu'" in html and "eu/intent</a>: 1 open" in html


def test_an_item_answered_by_another_reviewer_is_stale_unless_it_is_double():
    answered = _item(answers=[{"reviewer": "ben"}])
    assert stale_reason(answered, "ann") and stale_reason(answered, "ben") is None
    assert stale_reason(_item(answers=[{"reviewer": "ben"}], double_review=True), "ann") is None
    assert stale_reason(_item(answers=[{"reviewer": "ben"}, {"reviewer": "cat"}], double_review=True), "ann")


def test_written_definitions_are_read_anew_when_their_file_changes(tmp_path, monkeypatch):
    import json
    import os

    from schemas.settings import Settings
    from streams.review import guide as guide_mod

    settings = Settings(models_dir=tmp_path)
    ref = HeadRef("eu", "intent", "v1")
    monkeypatch.setattr(guide_mod, "load_guide", lambda s, r: Guide(r, ("a",)))
    guides = guide_mod.Guides(settings)
    assert guides.get(ref).definitions == {}
    path = guide_mod.definitions_path(settings, "eu", "intent")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"new_label": "A label the head never learnt."}))
    assert guides.get(ref).definition("new_label") == "A label the head never learnt."
    path.write_text(json.dumps({"other": "Changed."}))
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9, path.stat().st_mtime_ns + 10**9))
    assert guides.get(ref).definitions == {"other": "Changed."}
