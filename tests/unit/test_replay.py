"""Retraining by replay without services: windows, selection, dedup, time split, scoring, the gate.

The Kafka read itself and the command on real heads are in tests/integration/test_retrain.py;
here the steps are plain functions on lists, and the command's flag errors exit 2 before
anything is read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes import ReadoutEmbedder as FakeEmbedder

from retrain.replay import command as retrain_command
from retrain.replay.gate import Score, gate, score
from retrain.replay.reader import Replay
from retrain.replay.select import (
    Example,
    KafkaRecord,
    NotEnoughData,
    Selection,
    check_enough,
    deduplicate,
    select,
    time_split,
)
from retrain.replay.windows import (
    EPOCH,
    Window,
    WindowError,
    between_window,
    compare_windows,
    epoch_ms,
    from_ms,
    iso,
    parse_duration,
    parse_instant,
    since_window,
)
from retrain.train.config import HeadConfig, SelectionConfig
from retrain.train.data import Row
from schemas.settings import Settings

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
T0 = epoch_ms(NOW) - 10 * 86_400_000  # ten days ago, ms


def ex(text: str, label: str, ts: int, partition: int = 0, offset: int = 0) -> Example:
    from schemas.cleaning import clean

    return Example(text, clean(text), label, ts, partition, offset)


def labeled(text: str, label: str, region: str = "eu", model: str = "intent") -> bytes:
    return json.dumps({"text": text, "label": label, "region": region, "model": model}).encode()


# --------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize(("text", "length"), [("90d", timedelta(days=90)), ("1y", timedelta(days=365)),
                                              ("48h", timedelta(hours=48)), ("12w", timedelta(weeks=12)),
                                              (" 30D ", timedelta(days=30)), ("all", None)])
def test_a_history_length_is_a_number_and_a_unit_or_all(text: str, length):  # type: ignore[no-untyped-def]
    assert parse_duration(text) == length


@pytest.mark.parametrize("text", ["0d", "3m", "-1d", "1.5d", "d", "", "90", "ninety days"])
def test_a_bad_history_length_is_refused_with_the_units(text: str):
    with pytest.raises(WindowError, match="h \\(hours\\), d \\(days\\), w \\(weeks\\) or y"):
        parse_duration(text)


def test_since_ends_now_and_all_starts_at_the_epoch():
    w = since_window("30d", NOW)
    assert (w.start, w.end, w.label) == (NOW - timedelta(days=30), NOW, "30d")
    assert since_window("all", NOW).start == EPOCH and since_window("all", NOW).start_ms == 0


def test_the_window_holds_its_start_and_not_its_end():
    w = Window(NOW - timedelta(days=1), NOW, "1d")
    assert [w.contains(t) for t in (w.start_ms - 1, w.start_ms, w.end_ms - 1, w.end_ms)] == [False, True, True, False]


def test_a_date_is_its_utc_midnight_and_a_naive_time_is_utc():
    assert parse_instant("2026-01-31", "--from") == datetime(2026, 1, 31, tzinfo=UTC)
    assert parse_instant("2026-01-31T12:30", "--from") == datetime(2026, 1, 31, 12, 30, tzinfo=UTC)
    assert parse_instant("2026-01-31T12:30Z", "--from") == datetime(2026, 1, 31, 12, 30, tzinfo=UTC)
    assert parse_instant("2026-01-31T12:30+01:00", "--to") == datetime(2026, 1, 31, 11, 30, tzinfo=UTC)


def test_from_to_is_a_half_open_window_and_to_defaults_to_now():
    w = between_window("2026-01-01", "2026-02-01", NOW)
    assert (w.start, w.end) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    assert between_window("2026-11-01", None, NOW).end == NOW


@pytest.mark.parametrize(("start", "end", "match"), [("2026-02-01", "2026-01-01", "is not after"),
                                                     ("2026-01-01", "2026-01-01", "is not after"),
                                                     ("31/01/2026", None, "bad --from"),
                                                     ("2026-01-01", "tomorrow", "bad --to")])
def test_a_bad_or_empty_date_window_is_refused(start: str, end: str | None, match: str):
    with pytest.raises(WindowError, match=match):
        between_window(start, end, NOW)


def test_compare_windows_come_narrowest_first_and_refuse_repeats():
    assert [w.label for w in compare_windows("all,30d,1y,90d", NOW)] == ["30d", "90d", "1y", "all"]
    with pytest.raises(WindowError, match="30d twice"):
        compare_windows("30d,90d,30d", NOW)
    with pytest.raises(WindowError, match="the same window"):
        compare_windows("7d,1w", NOW)
    with pytest.raises(WindowError, match="bad history length"):
        compare_windows("30d,3m", NOW)


def test_epoch_ms_is_exact_and_refuses_naive_times():
    t = datetime(2026, 3, 1, 10, 0, 0, 123999, tzinfo=UTC)
    assert epoch_ms(t) == 1772359200123
    assert from_ms(epoch_ms(t)) == t.replace(microsecond=123000)
    with pytest.raises(ValueError, match="no time zone"):
        epoch_ms(datetime(2026, 3, 1))


# --------------------------------------------------------------------------------------------
# selection


def test_select_keeps_this_heads_valid_examples_inside_the_window_by_record_time():
    w = Window(from_ms(T0), from_ms(T0 + 1000), "test")
    key = b"eu/intent"
    records = [
        KafkaRecord(0, 0, T0 + 999, key, labeled("last ms", "a")),
        KafkaRecord(0, 1, T0 - 1, key, labeled("before", "a")),  # out of order: an older record after a newer one
        KafkaRecord(0, 2, T0, key, labeled("first ms", "b")),
        KafkaRecord(0, 3, T0 + 1000, key, labeled("at the end", "a")),
        KafkaRecord(1, 0, T0 + 5, b"eu/other", labeled("other model", "a", model="other")),
        KafkaRecord(1, 1, T0 + 5, None, labeled("unkeyed, ours", "a")),
        KafkaRecord(1, 2, T0 + 5, None, labeled("unkeyed, not ours", "a", region="us")),
        KafkaRecord(1, 3, T0 + 5, key, b"{not json"),
        KafkaRecord(1, 4, T0 + 5, key, json.dumps({"text": "no label", "region": "eu", "model": "intent"}).encode()),
        KafkaRecord(1, 5, T0 + 5, key, labeled("<br>", "a")),
        KafkaRecord(1, 6, None, key, labeled("no timestamp", "a")),
    ]
    sel = select(records, "eu", "intent", w)
    assert [(e.text, e.label, e.partition, e.offset) for e in sel.examples] == [
        ("last ms", "a", 0, 0), ("first ms", "b", 0, 2), ("unkeyed, ours", "a", 1, 1)]
    assert (sel.n_scanned, sel.n_outside_window, sel.n_other_heads, sel.n_invalid) == (11, 2, 2, 4)
    assert sel.invalid_reasons == {"json_invalid": 1, "missing at label": 1, "text empty once cleaned": 1,
                                   "no record timestamp": 1}
    assert sel.invalid_where[0] == "partition 1 offset 3: json_invalid"


# --------------------------------------------------------------------------------------------
# dedup and the time split


def test_the_same_text_with_the_same_label_counts_once():
    d = deduplicate([ex("How do I reset my PIN?", "pin", T0, 0, 1), ex("how do i reset my pin???", "pin", T0 + 5, 2, 7),
                     ex("balance please", "balance", T0 + 1)])
    assert [(e.clean_text, e.label, e.timestamp_ms) for e in d.examples] == [
        ("balance please", "balance", T0 + 1), ("how do i reset my pin?", "pin", T0 + 5)]
    assert (d.n_same_label, d.n_relabelled, d.n_dropped) == (1, 0, 1)


def test_a_relabelled_text_keeps_its_newest_label_whatever_the_read_order():
    d = deduplicate([ex("freeze my card", "freeze", T0 + 100, 0, 9), ex("freeze my card", "report_fraud", T0 + 50, 1, 0)])
    assert [(e.label, e.timestamp_ms) for e in d.examples] == [("freeze", T0 + 100)]
    assert (d.n_same_label, d.n_relabelled) == (0, 1)


def test_equal_timestamps_are_broken_by_partition_then_offset():
    d = deduplicate([ex("t", "by p1 o0", T0, 1, 0), ex("t", "by p0 o5", T0, 0, 5), ex("t", "by p1 o3", T0, 1, 3)])
    assert [e.label for e in d.examples] == ["by p1 o3"]
    assert d.n_relabelled == 2


def test_the_time_split_puts_the_newest_examples_in_the_test_slice():
    examples = [ex(f"text {i}", "a" if i % 2 else "b", T0 + 1000 * ((7 * i) % 10), offset=i) for i in range(10)]
    train, test = time_split(examples, 0.2)
    assert [e.timestamp_ms for e in test] == [T0 + 8000, T0 + 9000]
    assert [e.timestamp_ms for e in train] == [T0 + 1000 * k for k in range(8)]
    assert len(time_split(examples, 0.01)[1]) == 1, "at least one test example"
    with pytest.raises(ValueError, match="between 0 and 1"):
        time_split(examples, 1.0)


def test_too_few_examples_one_training_label_or_no_test_slice_is_not_enough():
    w = since_window("30d", NOW)
    many = [ex(f"t{i}", "a" if i % 2 else "b", T0 + i) for i in range(30)]
    check_enough(30, many[:24], many[24:], w)
    with pytest.raises(NotEnoughData, match="holds 19 labelled example\\(s\\).*at least 20"):
        check_enough(19, many[:15], many[15:19], w)
    with pytest.raises(NotEnoughData, match="training part has 1 label"):
        check_enough(30, [e for e in many if e.label == "a"], many[24:], w)
    with pytest.raises(NotEnoughData, match="test slice is empty"):
        check_enough(30, many, [], w)


# --------------------------------------------------------------------------------------------
# scoring and the gate


class FixedHead:
    """Predict a fixed label per text."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def predict(self, features, top_k=3, texts=None):  # type: ignore[no-untyped-def]
        from models.heads import HeadPrediction

        return [HeadPrediction(self.answers[t], 1.0, [(self.answers[t], 1.0)]) for t in texts]


def test_score_is_sklearns_weighted_f1_and_accuracy_over_the_true_labels():
    from sklearn.metrics import f1_score

    test = [ex("a1", "a", T0), ex("a2", "a", T0), ex("a3", "a", T0), ex("b1", "b", T0)]
    head = FixedHead({"a1": "a", "a2": "a", "a3": "b", "b1": "new"})  # "new" is a label the data lacks
    s = score(head, "v1", None, test)  # type: ignore[arg-type]
    assert s.accuracy == 0.5 and s.n == 4 and s.version == "v1"
    want = f1_score(["a", "a", "a", "b"], ["a", "a", "b", "new"], average="weighted", zero_division=0)
    assert s.weighted_f1 == pytest.approx(want, abs=1e-6)


def test_the_gate_refuses_a_worse_candidate_and_promotes_a_better_or_tolerated_one():
    live = Score("live", 0.900, 0.9, 100)
    assert not gate(Score("cand", 0.890, 0.9, 100), live, 0.005).promote
    refused = gate(Score("cand", 0.8949, 0.9, 100), live, 0.005)
    assert not refused.promote and refused.reason == "candidate weighted F1 0.8949 < live 0.9000 - tolerance 0.005"
    assert gate(Score("cand", 0.895, 0.9, 100), live, 0.005).promote, "exactly at the tolerance passes"
    assert gate(Score("cand", 0.950, 0.9, 100), live, 0.0).promote
    assert not gate(Score("cand", 0.899999, 0.9, 100), live, 0.0).promote


def test_with_no_scored_live_head_the_gate_promotes_and_says_why():
    d = gate(Score("cand", 0.1, 0.1, 10), None, 0.005, "the live head x was built for embedder e1")
    assert d.promote and d.reason.startswith("the live head x was built for embedder e1")


# --------------------------------------------------------------------------------------------
# the produce side: the record timestamp is the example's ts


def test_labeled_messages_carry_each_examples_ts_as_the_record_timestamp():
    from streams.cli.stream import labeled_messages

    rows = [Row("reset my pin", "reset my pin", "pin", ts="2026-03-01T10:00:00+01:00"), Row("hi", "hi", "greet")]
    before = epoch_ms(datetime.now(UTC))
    (v1, t1), (v2, t2) = labeled_messages(rows, "eu", "intent")
    assert t1 == epoch_ms(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    assert json.loads(v1)["ts"].startswith("2026-03-01T10:00:00")
    assert before <= t2 <= epoch_ms(datetime.now(UTC)), "a row without ts gets the produce time"
    assert t2 == epoch_ms(datetime.fromisoformat(json.loads(v2)["ts"])), "the payload's ts and the record's agree"


# --------------------------------------------------------------------------------------------
# the command: flag errors and a too-small window exit 2 with one line; a run with stubs


def run_cmd(capsys, **kw) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    args = {"region": "eu", "model": "intent", "progress": False, **kw}
    code = retrain_command.retrain_command(Settings(), **args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(("flags", "match"), [
    ({}, "give a window"),
    ({"since": "30d", "date_from": "2026-01-01"}, "not both"),
    ({"date_to": "2026-01-01"}, "--to needs --from"),
    ({"compare": "30d,90d", "since": "30d"}, "leave out --since"),
    ({"since": "30x"}, "bad history length"),
    ({"date_from": "01.01.2026"}, "bad --from"),
    ({"since": "30d", "tolerance": -0.1}, "--tolerance"),
    ({"since": "30d", "test_fraction": 1.0}, "--test-fraction"),
    ({"since": "30d", "region": "EU"}, "bad head region"),
])
def test_bad_flags_exit_2_with_one_error_line(capsys, flags, match):  # type: ignore[no-untyped-def]
    code, out, err = run_cmd(capsys, **flags)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and match in err, err


def fake_replay(examples: list[Example], window: Window) -> Replay:
    return Replay(window, "t.labeled", Selection(examples=list(examples)), [])


def test_a_window_with_too_few_examples_exits_2_before_training(capsys, monkeypatch):  # type: ignore[no-untyped-def]
    few = [ex(f"phrase {i}", "a" if i % 2 else "b", T0 + i) for i in range(19)] + [ex("phrase 1", "a", T0 + 50)]
    monkeypatch.setattr(retrain_command, "read_window", lambda *a, **k: fake_replay(few, a[2]))
    code, out, err = run_cmd(capsys, since="30d", now=NOW)
    assert code == 2 and out == ""
    assert err.startswith("error: window 30d") and "holds 19 labelled example(s)" in err and len(err.splitlines()) == 1


TOPICS = {"billing": ["invoice", "charge", "refund", "payment"], "shipping": ["parcel", "delivery", "courier", "tracking"],
          "account": ["password", "login", "username", "profile"]}


def topic_examples(n: int, start_ms: int, wrong: bool = False) -> list[Example]:
    import random

    rng = random.Random(n + start_ms)
    labels = list(TOPICS)
    out = []
    for i in range(n):
        label = labels[i % 3]
        words = [*rng.sample(TOPICS[label], 2), *rng.sample(["please", "my", "the", "help", "now", "again"], 2)]
        rng.shuffle(words)
        shown = labels[(i + 1) % 3] if wrong else label
        out.append(ex(" ".join(words) + f" {i}", shown, start_ms + 60_000 * i, offset=i))
    return out


@pytest.fixture
def stubbed(monkeypatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The command with a fake embedder, a replay from a list, and a lifecycle of one dict."""
    import models.labelsets
    from models.registry import lifecycle

    live: dict[tuple[str, str], object] = {}
    promoted: list[dict] = []
    settings = Settings(models_dir=tmp_path / "models")
    # a unit test talks to no database: no label set was ever made for the head
    monkeypatch.setattr(models.labelsets, "read_label_sets", lambda s, r, m: models.labelsets.LabelSets(r, m))
    monkeypatch.setattr(lifecycle, "live_ref", lambda s, r, m: live.get((r, m)))
    monkeypatch.setattr(lifecycle, "head_folder", lambda s, ref: ref.path(s.models_root))

    def promote(s, ref, *, reason=None, action="promote", metrics=None):  # type: ignore[no-untyped-def]
        promoted.append({"ref": ref, "reason": reason, "action": action, "metrics": metrics})
        live[ref.key] = ref
        return ref

    monkeypatch.setattr(lifecycle, "promote", promote)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"head": HeadConfig(max_epochs=8, patience=3, batch_size=32, learning_rate=5e-3,
                                                     ensemble={"hidden": 0}).model_dump(mode="json"),
                                  "selection": SelectionConfig(candidates=[{}], val_fraction=0.2, refit=False)
                                  .model_dump(mode="json"), "oos": {"threshold": "off"}}))
    return settings, live, promoted, str(config)


def run_stubbed(capsys, monkeypatch, stubbed, examples, **kw):  # type: ignore[no-untyped-def]
    settings, _, _, config = stubbed
    monkeypatch.setattr(retrain_command, "read_window", lambda *a, **k: fake_replay(examples, a[2]))
    args = {"since": "30d", **kw}
    code = retrain_command.retrain_command(settings, region="acme", model="intent", now=NOW, config_path=config,
                                           as_json=True, progress=False, embedder=FakeEmbedder(), **args)
    out = capsys.readouterr()
    return code, json.loads(out.out.strip().splitlines()[-1]) if out.out.strip() else None, out.err


def test_the_command_promotes_the_first_candidate_then_refuses_one_trained_on_wrong_labels(
        capsys, monkeypatch, stubbed):  # type: ignore[no-untyped-def]
    _, live, promoted, _ = stubbed
    good = topic_examples(90, T0)
    code, first, err = run_stubbed(capsys, monkeypatch, stubbed, good)
    assert code == 0, err
    assert first["decision"] == "promoted" and first["live"] is None and first["reason"].startswith("no head of acme/intent")
    assert (first["n_read"], first["n_duplicates"], first["n_train"], first["n_test"]) == (90, 0, 72, 18)
    assert first["candidate"]["weighted_f1"] > 0.8 and promoted[-1]["action"] == "retrain"
    live_version = first["candidate"]["version"]

    # the older 80% relabelled wrongly, the newest 20% right: the candidate learns the wrong labels
    bad = topic_examples(80, T0 - 86_400_000, wrong=True) + good[-20:]
    code, second, err = run_stubbed(capsys, monkeypatch, stubbed, bad)
    assert code == 0, err
    assert second["decision"] == "kept_live" and second["live"]["version"] == live_version
    assert second["candidate"]["weighted_f1"] < second["live"]["weighted_f1"] - second["tolerance"]
    assert live[("acme", "intent")].version == live_version and len(promoted) == 1
    assert set(second) >= {"region", "model", "window", "n_read", "n_duplicates", "n_train", "n_test", "candidate",
                           "live", "tolerance", "decision", "reason", "warnings"}


def test_compare_windows_scores_one_candidate_per_window_on_one_test_slice_and_promotes_nothing(
        capsys, monkeypatch, stubbed):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    _, _, promoted, _ = stubbed
    start = NOW - timedelta(days=400)
    examples = [replace(e, timestamp_ms=epoch_ms(start + timedelta(days=400) * (i + 0.5) / 120))
                for i, e in enumerate(topic_examples(120, T0))]
    code, out, err = run_stubbed(capsys, monkeypatch, stubbed, examples, compare="30d,90d,1y,all", since=None)
    assert code == 0, err
    assert out["n_test"] == 24 and out["test_slice"]["start"] >= iso(NOW - timedelta(days=81))
    rows = {r["window"]: r for r in out["windows"]}
    assert list(rows) == ["30d", "90d", "1y", "all"]
    assert rows["30d"]["n_train"] == 0 and rows["30d"]["note"].startswith("skipped")
    assert rows["1y"]["n_train"] < rows["all"]["n_train"] == 96
    for label in ("1y", "all"):
        assert rows[label]["version"] and rows[label]["weighted_f1"] > 0.5 and rows[label]["note"] is None
    assert rows["1y"]["version"] != rows["all"]["version"]
    assert out["decision"] == "none" and promoted == [] and out["live"] is None

    settings, _, _, config = stubbed
    code = retrain_command.retrain_command(settings, region="acme", model="intent", compare="30d,all", now=NOW,
                                           config_path=config, progress=False, embedder=FakeEmbedder())
    table = capsys.readouterr().out.splitlines()
    assert code == 0 and table[1].split() == ["window", "n_train", "weighted", "F1", "accuracy", "version"]
    assert table[2].split()[:4] == ["30d", "0", "-", "-"] and table[3].split()[:2] == ["all", "96"]


def test_no_promote_gates_the_candidate_and_leaves_the_live_head_alone(capsys, monkeypatch, stubbed):  # type: ignore[no-untyped-def]
    _, live, promoted, _ = stubbed
    code, out, err = run_stubbed(capsys, monkeypatch, stubbed, topic_examples(90, T0), no_promote=True)
    assert code == 0, err
    assert out["decision"] == "not_promoted" and out["gate_passed"] is True
    assert promoted == [] and live == {}, "nothing was promoted although the gate passed"
    assert out["candidate"]["version"] and out["candidate"]["weighted_f1"] > 0.8
