"""Label sets: parsing renames, composing versions, mapping old answers to the newest names, and retrain's use of them."""

import pytest

from models.labelsets import LabelSet, LabelSetError, LabelSets, compose, parse_renames
from retrain.replay.select import Example, deduplicate, relabel


def _sets(*renames: dict[str, str]) -> LabelSets:
    sets = LabelSets("eu", "intent")
    for r in renames:
        sets = LabelSets("eu", "intent", [*sets.versions, sets.next(r)])
    return sets


def test_renames_parse_and_bad_ones_are_refused():
    assert parse_renames(["a=b", " c = d ", "a=b"]) == {"a": "b", "c": "d"}
    for bad, match in ((["a"], "not OLD=NEW"), (["=b"], "not OLD=NEW"), (["a=a"], "to itself"),
                       (["a=b", "a=c"], "renamed twice"), ([], "at least one")):
        with pytest.raises(LabelSetError, match=match):
            parse_renames(bad)


def test_versions_compose_so_a_chain_of_renames_maps_the_oldest_name_to_the_newest():
    sets = _sets({"a": "b"}, {"b": "c"})
    assert sets.current == 2 and sets.mapping == {"a": "c", "b": "c"}
    assert sets.relabel("a") == "c" and sets.relabel("b", 1) == "c" and sets.relabel("c", 2) == "c"


def test_a_merge_maps_several_labels_to_one_and_names_lists_it_once():
    sets = _sets({"card_lost": "card_problem", "card_stolen": "card_problem"})
    assert sets.names(["card_lost", "card_stolen", "balance"]) == ["balance", "card_problem"]


def test_a_name_reused_later_keeps_its_new_meaning_for_answers_given_after():
    sets = _sets({"a": "b"}, {"x": "a"})  # a became b; later x took the name a
    assert sets.mapping == {"a": "b", "x": "a"}
    assert sets.relabel("a", 0) == "b"  # an old answer "a" meant today's b
    assert sets.relabel("a", 2) == "a"  # an answer "a" given under version 2 is today's a
    assert sets.relabel("x", 1) == "a"


def test_renaming_a_name_that_is_gone_is_refused_with_its_new_name():
    with pytest.raises(LabelSetError, match="rename 'b' instead"):
        compose({"a": "b"}, {"a": "c"})


def test_a_rename_back_to_the_old_name_drops_the_identity():
    assert compose({"a": "b"}, {"b": "a"}) == {"b": "a"}


def test_the_json_shows_the_map_and_every_version():
    data = _sets({"a": "b"}).to_json()
    assert data["current"] == 1 and data["mapping"] == {"a": "b"}
    assert data["versions"][0]["renames"] == {"a": "b"} and data["versions"][0]["version"] == 1
    assert LabelSet(1, {}, {}).to_json()["created_at"] is None


def _ex(text: str, label: str, ts: int, version: int | None = None) -> Example:
    return Example(text, text, label, ts, 0, ts, version)


def test_retrain_relabels_every_replayed_example_before_deduplication_and_a_changed_answer_wins():
    sets = _sets({"old": "new"})
    examples = [_ex("card lost", "old", 1), _ex("hello", "greeting", 2), _ex("card lost", "other", 3, 1),
                _ex("freeze", "old", 4, 0)]
    mapped, changed = relabel(examples, sets.relabel)
    assert changed == 2 and [e.label for e in mapped] == ["new", "greeting", "other", "new"]
    kept = deduplicate(mapped).examples
    assert {(e.clean_text, e.label) for e in kept} == {("card lost", "other"), ("hello", "greeting"),
                                                       ("freeze", "new")}


def _replay(examples):  # type: ignore[no-untyped-def]
    from retrain.replay.reader import Replay
    from retrain.replay.select import Selection

    return Replay(window=None, topic="t", selection=Selection(examples=list(examples)), plans=[])  # type: ignore[arg-type]


def test_retrain_applies_the_newest_map_and_reports_it(monkeypatch):
    import models.labelsets as labelsets
    from retrain.replay import command

    monkeypatch.setattr(labelsets, "read_label_sets", lambda s, r, m: _sets({"old": "new"}))
    replay = _replay([_ex("card lost", "old", 1), _ex("hi", "greeting", 2)])
    applied = command._apply_label_map(None, "eu", "intent", replay)
    assert applied == {"version": 1, "mapping": {"old": "new"}, "n_relabelled": 1}
    assert [e.label for e in replay.selection.examples] == ["new", "greeting"]


def test_retrain_warns_and_keeps_the_labels_when_the_label_sets_cannot_be_read(monkeypatch, capsys):
    import psycopg2

    import models.labelsets as labelsets
    from retrain.replay import command

    def unreachable(*_a):  # type: ignore[no-untyped-def]
        raise psycopg2.OperationalError("connection refused")

    monkeypatch.setattr(labelsets, "read_label_sets", unreachable)
    replay = _replay([_ex("card lost", "old", 1)])
    assert command._apply_label_map(None, "eu", "intent", replay)["version"] is None
    assert replay.selection.examples[0].label == "old" and "labels are used as produced" in replay.warnings[0]
    assert capsys.readouterr().err.startswith("warning: the label sets of eu/intent cannot be read")
