"""Unit tests of retrain.train.data: formats, every DataError, dropped rows, and the stratified split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from retrain.train.data import DataError, Dataset, Row, read_labeled, rows_from_records
from retrain.train.split import stratified_split
from schemas.cleaning import clean


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def jsonl(path: Path, *records: dict[str, Any]) -> Path:
    return write(path, "".join(json.dumps(record) + "\n" for record in records))


def error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        read_labeled(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def row(text: str, label: str) -> Row:
    return Row(text=text, clean_text=clean(text), label=label)


# --- formats ------------------------------------------------------------------------------


def test_csv_with_other_column_names_is_read_with_text_col_and_label_col(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "utterance,intent\nHow do I <b>reset</b> my PIN???,pin\nlost my card,card\n")
    ds = read_labeled(path, text_col="utterance", label_col="intent")
    assert ds.rows == [
        Row("How do I <b>reset</b> my PIN???", "how do i reset my pin?", "pin", line=2),
        Row("lost my card", "lost my card", "card", line=3),
    ]
    assert ds.columns == ["utterance", "intent"]
    assert ds.source == str(path)
    assert (ds.n_read, ds.n_empty_text) == (2, 0)


def test_csv_quoted_fields_keep_commas_and_newlines_and_lines_count_from_the_row_start(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\n"a, b",x\n"two\nlines",y\nlast,y\n')
    ds = read_labeled(path)
    assert [(r.text, r.line) for r in ds.rows] == [("a, b", 2), ("two\nlines", 3), ("last", 5)]


def test_semicolon_delimited_csv_is_detected(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text;label\nhello, world;greet\nbye;leave\n")
    ds = read_labeled(path)
    assert [(r.text, r.label) for r in ds.rows] == [("hello, world", "greet"), ("bye", "leave")]


def test_tsv_is_tab_separated(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "text\tlabel\nhello; there, you\tgreet\nbye\tleave\n")
    assert [r.text for r in read_labeled(path).rows] == ["hello; there, you", "bye"]


def test_csv_header_names_are_stripped(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text , label\nhi,greet\nbye,leave\n")
    ds = read_labeled(path)
    assert ds.columns == ["text", "label"]
    assert ds.labels() == ["greet", "leave"]


def test_csv_crlf_line_endings(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\r\nhi,greet\r\nbye,leave\r\n")
    assert [(r.text, r.label, r.line) for r in read_labeled(path).rows] == [("hi", "greet", 2), ("bye", "leave", 3)]


def test_csv_extra_fields_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nhi,greet,extra,more\nbye,leave\n")
    ds = read_labeled(path)
    assert [(r.text, r.label) for r in ds.rows] == [("hi", "greet"), ("bye", "leave")]
    assert ds.n_empty_text == 0




def test_csv_blank_lines_are_skipped_not_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "\ntext,label\n\nhi,greet\n   \nbye,leave\n\n")
    ds = read_labeled(path)
    assert [(r.text, r.line) for r in ds.rows] == [("hi", 4), ("bye", 6)]
    assert (ds.n_read, ds.n_empty_text) == (2, 0)


def test_jsonl_is_read_with_line_numbers_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        '{"text": "Hi there!!!", "label": "greet"}\n\n   \n{"text": "bye", "label": "leave", "other": 1}\n',
    )
    ds = read_labeled(path)
    assert ds.rows == [Row("Hi there!!!", "hi there!", "greet", line=1), Row("bye", "bye", "leave", line=4)]
    assert ds.columns == ["text", "label", "other"]


@pytest.mark.parametrize("suffix", [".ndjson", ".json"])
def test_ndjson_and_json_extensions_are_json_lines(tmp_path: Path, suffix: str) -> None:
    path = jsonl(tmp_path / f"d{suffix}", {"text": "hi", "label": "a"}, {"text": "bye", "label": "b"})
    assert read_labeled(path).labels() == ["a", "b"]


def test_json_lines_without_known_extension_are_recognised_by_content(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.txt", {"text": "hi", "label": "a"}, {"text": "bye", "label": "b"})
    assert [r.text for r in read_labeled(path).rows] == ["hi", "bye"]


def test_jsonl_number_labels_and_texts_become_strings(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"text": 12345, "label": 1}, {"text": "bye", "label": 2})
    ds = read_labeled(path)
    assert [(r.text, r.clean_text, r.label) for r in ds.rows] == [("12345", "12345", "1"), ("bye", "bye", "2")]


def test_jsonl_null_or_missing_text_or_label_is_counted_as_empty(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "d.jsonl",
        {"text": None, "label": "a"},
        {"label": "a"},
        {"text": "hi", "label": None},
        {"text": "hi"},
        {"text": "hi", "label": "a"},
        {"text": "bye", "label": "b"},
    )
    ds = read_labeled(path)
    assert [r.line for r in ds.rows] == [5, 6]
    assert (ds.n_read, ds.n_empty_text) == (6, 4)


def test_utf8_bom_is_accepted_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nhi,greet\nbye,leave\n")
    ds = read_labeled(path)
    assert ds.columns == ["text", "label"]
    assert [r.text for r in ds.rows] == ["hi", "bye"]


def test_utf8_bom_is_accepted_in_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "hi", "label": "a"}\n{"text": "bye", "label": "b"}\n')
    assert read_labeled(path).labels() == ["a", "b"]


def test_non_ascii_text_is_kept_as_given(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nCafé ＡＢＣ 😀,a\nbye,b\n")
    first = read_labeled(path).rows[0]
    assert (first.text, first.clean_text) == ("Café ＡＢＣ 😀", "café abc 😀")


# --- rows kept, dropped, reported ----------------------------------------------------------


@pytest.mark.parametrize(("csv", "counts"), [
    pytest.param("text,label\nhi,greet\nno label here\nbye,leave\n", (3, 1), id="a row with fewer fields"),
    pytest.param('text,label\nhi,greet\n,greet\n"   ",greet\n<br>,greet\nbye,leave\nok,\nfine,  \n', (7, 5),
                 id="empty texts and labels"),
])
def test_rows_without_a_text_or_a_label_are_dropped_and_counted_as_empty(tmp_path: Path, csv: str,
                                                                          counts: tuple[int, int]) -> None:
    ds = read_labeled(write(tmp_path / "d.csv", csv))
    assert [r.text for r in ds.rows] == ["hi", "bye"]
    assert (ds.n_read, ds.n_empty_text) == counts


def test_labels_are_stripped_and_text_is_kept_as_given(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\n"  Hi  THERE ", greet \nbye,leave\n')
    first = read_labeled(path).rows[0]
    assert (first.text, first.clean_text, first.label) == ("  Hi  THERE ", "hi there", "greet")


def test_singletons_are_kept_and_listed(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\na,x\nb,x\nc,lonely\nd,alone\n")
    ds = read_labeled(path)
    assert ds.singletons == ["alone", "lonely"]
    assert ds.class_counts() == {"alone": 1, "lonely": 1, "x": 2}
    assert ds.labels() == ["alone", "lonely", "x"]


def test_ts_and_region_are_kept_as_given(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label,ts,region\nhi,a,2026-01-02T03:04:05Z,eu\nbye,b,,\n")
    ds = read_labeled(path)
    assert [(r.ts, r.region) for r in ds.rows] == [("2026-01-02T03:04:05Z", "eu"), (None, None)]


def test_ts_and_region_absent_are_none_in_json_lines(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"text": "hi", "label": "a", "ts": 1700000000, "region": "eu"}, {"text": "bye", "label": "b"})
    ds = read_labeled(path)
    assert [(r.ts, r.region) for r in ds.rows] == [("1700000000", "eu"), (None, None)]


def test_summary_is_json_and_names_at_most_20_singletons(tmp_path: Path) -> None:
    lines = [f"text {i},label{i:02d}" for i in range(25)] + ["again,label00", "empty,"]
    path = write(tmp_path / "d.csv", "text,label\n" + "\n".join(lines) + "\n")
    summary = read_labeled(path).summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary == {
        "source": str(path),
        "n_read": 27,
        "n_rows": 26,
        "n_empty_text": 1,
        "n_classes": 25,
        "n_singletons": 24,
        "singletons": [f"label{i:02d}" for i in range(1, 21)],
    }


def test_rows_from_records_applies_the_same_rules() -> None:
    ds = rows_from_records(
        [{"utterance": " Hi!!! ", "intent": " greet "}, {"utterance": "", "intent": "x"}, {"utterance": "bye", "intent": 7}],
        source="phrases.labeled",
        text_col="utterance",
        label_col="intent",
    )
    assert ds.rows == [Row(" Hi!!! ", "hi!", "greet", line=1), Row("bye", "bye", "7", line=3)]
    assert (ds.source, ds.n_read, ds.n_empty_text) == ("phrases.labeled", 3, 1)


def test_rows_from_records_rejects_a_record_that_is_not_a_mapping() -> None:
    with pytest.raises(DataError, match=r"^phrases\.labeled record 2 is a list, not a mapping"):
        rows_from_records([{"text": "hi", "label": "a"}, ["bye", "b"]], source="phrases.labeled")  # type: ignore[list-item]


def test_rows_from_records_reports_a_missing_column() -> None:
    with pytest.raises(DataError, match=r"no column 'label' \(set it with --label-col\); columns found: 'text'$"):
        rows_from_records([{"text": "hi"}], source="kafka")


# --- DataError, one line each ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert error(path).startswith(f"cannot read {path}: no such file")


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    message = error(tmp_path)
    assert message.startswith(f"cannot read {tmp_path}: no such file")
    assert "folder" in message


@pytest.mark.parametrize(
    ("name", "content", "detail"),
    [
        ("zero.csv", b"", "the file is empty"),
        ("bom.csv", b"\xef\xbb\xbf", "the file is empty"),
        ("blank.csv", b"\n  \n\r\n", "the file is empty"),
        ("header.csv", b"text,label\n\n", "only the header line (text, label)"),
        ("blank.jsonl", b"\n\n", "the file is empty"),
    ],
)
def test_file_without_data_rows(tmp_path: Path, name: str, content: bytes, detail: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert error(path) == f"{path} has no data rows: {detail}"


def test_not_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ncaf\xe9,a\n")
    message = error(path)
    assert message.startswith(f"{path} is not UTF-8: byte 0xe9 at byte offset 14 (line 2)")
    assert message.endswith("save the file as UTF-8 and retry")


def test_not_utf8_offset_counts_the_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\n\xff,a\n")
    assert "byte 0xff at byte offset 14 (line 2)" in error(path)


def test_utf16_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\nhi,a\n".encode("utf-16"))
    assert error(path).startswith(f"{path} is not UTF-8 (it looks like UTF-16): byte 0xff at byte offset 0 (line 1)")


def test_missing_text_column_names_the_flag_and_the_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "utterance,label\nhi,a\n")
    assert error(path) == f"{path} has no column 'text' (set it with --text-col); columns found: 'utterance', 'label'"


def test_missing_label_column_names_the_flag_and_the_columns_found(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "d.jsonl", {"text": "hi", "intent": "a"})
    assert error(path) == f"{path} has no column 'label' (set it with --label-col); columns found: 'text', 'intent'"


def test_both_columns_missing_are_both_named(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "utterance,intent\nhi,a\n")
    message = error(path, text_col="phrase", label_col="class")
    assert message == (
        f"{path} has no column 'phrase' (set it with --text-col) and no column 'class' (set it with --label-col); "
        "columns found: 'utterance', 'intent'"
    )


def test_jsonl_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "hi", "label": "a"}\n\n{"text": "bye", \n')
    assert error(path).startswith(f"{path} line 3 is not JSON (")


def test_jsonl_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "hi", "label": "a"}\n["bye", "b"]\n')
    assert error(path).startswith(f"{path} line 2 is a JSON array, not an object; give one JSON object per line")


def test_json_array_file_is_rejected_at_line_1(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '[{"text": "hi", "label": "a"}]')
    assert error(path).startswith(f"{path} line 1 is a JSON array, not an object")


def test_fewer_than_min_classes_says_how_many_were_found(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nhi,greet\nhello,greet\n,leave\n")
    message = error(path)
    assert message.startswith(f"{path} has 1 distinct label(s) ('greet') after dropping 1 row(s) with empty text or label")
    assert "needs at least 2" in message
    assert "--label-col" in message


def test_min_classes_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\nhi,a\nbye,b\n")
    assert "needs at least 3" in error(path, min_classes=3)
    assert read_labeled(path, min_classes=1).labels() == ["a", "b"]


def test_all_rows_empty_finds_zero_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "text,label\n,a\n<br>,b\n")
    assert error(path).startswith(f"{path} has 0 distinct label(s) (none) after dropping 2 row(s)")


def test_unclosed_quote_that_overflows_a_field_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\nhi,a\n"oops,b\n' + "x,b\n" * 40_000)
    assert error(path).startswith(f"{path} line 3: field larger than field limit")


# --- stratified split ----------------------------------------------------------------------


def dataset_rows() -> list[Row]:
    rows = [row(f"a text {i}", "a") for i in range(20)]
    rows += [row(f"b text {i}", "b") for i in range(10)]
    rows += [row(f"c text {i}", "c") for i in range(3)]
    rows += [row("d only", "d")]
    rows += [row(f"e text {i}", "e") for i in range(2)]
    return rows


def test_split_is_deterministic_for_a_seed() -> None:
    rows = dataset_rows()
    assert stratified_split(rows, 0.25, seed=7) == stratified_split(rows, 0.25, seed=7)
    assert stratified_split(rows, 0.25, seed=7) != stratified_split(rows, 0.25, seed=8)


def test_split_does_not_depend_on_input_order() -> None:
    rows = dataset_rows()
    _, held = stratified_split(rows, 0.25, seed=3)
    _, held_reversed = stratified_split(rows[::-1], 0.25, seed=3)
    assert sorted(r.text for r in held) == sorted(r.text for r in held_reversed)


def test_split_holds_out_round_fraction_of_each_class_at_least_one_never_all() -> None:
    kept, held = stratified_split(dataset_rows(), 0.25)
    # a: round(5.0)=5; b: round(2.5)=2; c: round(0.75)=1; d: single, stays; e: round(0.5)=0 -> at least 1
    assert Counter(r.label for r in held) == {"a": 5, "b": 2, "c": 1, "e": 1}
    assert Counter(r.label for r in kept) == {"a": 15, "b": 8, "c": 2, "d": 1, "e": 1}


def test_split_never_holds_out_a_whole_class() -> None:
    rows = [row("x one", "x"), row("x two", "x"), row("y one", "y"), row("y two", "y")]
    kept, held = stratified_split(rows, 0.9)
    assert Counter(r.label for r in kept) == {"x": 1, "y": 1}
    assert Counter(r.label for r in held) == {"x": 1, "y": 1}


def test_singleton_stays_in_the_kept_part() -> None:
    rows = [row("alone", "solo"), *(row(f"t {i}", "many") for i in range(10))]
    for seed in range(10):
        kept, held = stratified_split(rows, 0.5, seed=seed)
        assert rows[0] in kept
        assert all(r.label == "many" for r in held)


def test_split_loses_and_duplicates_no_row_and_keeps_input_order() -> None:
    rows = dataset_rows()
    kept, held = stratified_split(rows, 0.3, seed=5)
    assert len(kept) + len(held) == len(rows)
    position = {id(r): i for i, r in enumerate(rows)}
    assert sorted(position[id(r)] for r in kept + held) == list(range(len(rows)))
    assert [position[id(r)] for r in kept] == sorted(position[id(r)] for r in kept)
    assert [position[id(r)] for r in held] == sorted(position[id(r)] for r in held)


def test_same_clean_text_never_lands_on_both_sides() -> None:
    texts = ["Reset PIN", "reset pin!!!", "RESET  PIN", "card lost", "Card lost", "balance", "transfer", "help"]
    rows = [row(text, "x") for text in texts * 3] + [row(f"y {i}", "y") for i in range(6)]
    for seed in range(20):
        kept, held = stratified_split(rows, 0.3, seed=seed)
        assert not {r.clean_text for r in kept} & {r.clean_text for r in held}
        assert len(kept) + len(held) == len(rows)
        assert held and kept


def test_class_with_one_distinct_clean_text_stays_whole_in_kept() -> None:
    rows = [row("Hi", "greet"), row(" hi ", "greet"), row("<b>HI</b>", "greet"), row("bye", "leave"), row("ciao", "leave")]
    kept, held = stratified_split(rows, 0.5)
    assert [r.label for r in kept].count("greet") == 3
    assert [r.label for r in held] == ["leave"]


def test_group_larger_than_the_target_is_held_out_only_if_nothing_smaller_fits() -> None:
    rows = [row("same", "x")] * 3 + [row("other", "x")] * 2 + [row(f"y {i}", "y") for i in range(5)]
    kept, held = stratified_split(rows, 0.2)  # x: target 1, groups of 3 and 2: the smaller one goes
    assert [r.text for r in held if r.label == "x"] == ["other", "other"]
    assert [r.text for r in kept if r.label == "x"] == ["same"] * 3


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(DataError, match="between 0 and 1"):
        stratified_split(dataset_rows(), fraction)


def test_split_of_a_read_dataset(tmp_path: Path) -> None:
    lines = [f"phrase {i},{'ab'[i % 2]}" for i in range(40)]
    ds: Dataset = read_labeled(write(tmp_path / "d.csv", "text,label\n" + "\n".join(lines) + "\n"))
    kept, held = stratified_split(ds.rows, 0.25)
    assert Counter(r.label for r in held) == {"a": 5, "b": 5}
    assert len(kept) == 30
