"""Read a user's labelled phrases for ``phrasestream train`` and split them.

``read_labeled(path)`` reads ``phrasestream train --data PATH [--eval PATH] [--text-col text]
[--label-col label]`` input; ``rows_from_records`` applies the same rules to rows that come
from elsewhere (``phrases.labeled`` on Kafka). Holding out part of each class is
``retrain.train.split``.

Formats (chosen by extension, then by content):

- ``.jsonl``, ``.ndjson``, ``.json``: JSON Lines, one object per line; blank lines are skipped.
  A line that is not a JSON object is an error naming its line number.
- ``.csv``, ``.tsv`` and anything else whose first character is not ``{``: CSV with a header
  row. ``.tsv`` is tab-separated; otherwise the delimiter is the first of ``, ; tab |`` that
  splits the header into the asked columns (failing that, into the most columns). Header
  names are stripped of surrounding white space; fields beyond the header are ignored and
  missing trailing fields count as empty.

The file is decoded strictly as UTF-8 (a leading BOM is allowed and dropped). Every text is
cleaned with ``schemas.cleaning.clean``, the cleaner the stream worker uses. Rows whose text is
empty (or empty once cleaned) or whose label is empty are dropped and counted, never an error;
classes with a single example are kept and listed. Bad input raises ``DataError`` with a
one-line message that says what to do; the CLI prints it and exits 2.

No TensorFlow and no pandas here, and nothing from ``streams/``.

>>> ds = rows_from_records([{"text": "Hi <b>there</b>", "label": "greet"},
...                         {"text": "bye", "label": " leave "}], source="example")
>>> [(r.clean_text, r.label, r.line) for r in ds.rows]
[('hi there', 'greet', 1), ('bye', 'leave', 2)]
>>> ds.singletons
['greet', 'leave']
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.cleaning import clean

JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
"""File extensions read as JSON Lines."""

CSV_DELIMITERS = (",", ";", "\t", "|")
"""Delimiters tried, in order, on a CSV header (``.tsv`` is always tab)."""

OPTIONAL_COLUMNS = ("ts", "region")
"""Columns kept on each ``Row`` when present (as given, as strings)."""

SINGLETONS_SHOWN = 20
"""How many singleton labels ``Dataset.summary()`` names."""

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class DataError(ValueError):
    """Bad training input. str(exc) is ONE line that says what is wrong and what to do; the CLI prints it and exits 2."""


@dataclass(frozen=True)
class Row:
    """Hold one labelled phrase: the text as given, its cleaned form and its label.

    ``label`` is stripped of surrounding white space; ``ts`` and ``region`` are the optional
    columns of the same names, as given (``None`` when absent or empty). ``line`` is the
    1-based line in the file where the row starts (CSV: counting the header line; JSON Lines:
    the line of the object); for ``rows_from_records`` it is the record's 1-based position.
    """

    text: str
    clean_text: str
    label: str
    ts: str | None = None
    region: str | None = None
    line: int = 0


@dataclass
class Dataset:
    """Hold the rows read from one source and what was dropped or is worth a warning.

    ``n_read`` counts data rows read (blank lines excluded); ``n_empty_text`` counts the rows
    dropped for an empty text (also: empty once cleaned) or an empty label, so
    ``n_read == len(rows) + n_empty_text``. ``singletons`` are the labels with exactly one
    example, sorted; they are kept in ``rows``.
    """

    rows: list[Row]
    source: str
    columns: list[str]
    n_read: int
    n_empty_text: int
    singletons: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        """Return the distinct labels, sorted."""
        return sorted({row.label for row in self.rows})

    def class_counts(self) -> dict[str, int]:
        """Return the number of rows of each label, keyed in sorted label order."""
        counts = Counter(row.label for row in self.rows)
        return {label: counts[label] for label in sorted(counts)}

    def summary(self) -> dict[str, Any]:
        """Return a JSON-able summary: counts, classes, and up to 20 singleton labels by name.

        Keys: ``source``, ``n_read``, ``n_rows``, ``n_empty_text``, ``n_classes``,
        ``n_singletons`` and ``singletons`` (the first ``SINGLETONS_SHOWN`` names, sorted).
        """
        return {
            "source": self.source,
            "n_read": self.n_read,
            "n_rows": len(self.rows),
            "n_empty_text": self.n_empty_text,
            "n_classes": len({row.label for row in self.rows}),
            "n_singletons": len(self.singletons),
            "singletons": self.singletons[:SINGLETONS_SHOWN],
        }


# --------------------------------------------------------------------------------------------
# Public entry points


def read_labeled(
    path: str | Path,
    text_col: str = "text",
    label_col: str = "label",
    *,
    min_classes: int = 2,
) -> Dataset:
    """Read labelled phrases from a CSV or JSON Lines file; raise ``DataError`` on bad input.

    ``text_col`` and ``label_col`` name the columns (CLI: ``--text-col``, ``--label-col``).
    Errors: the file is missing or a folder, is empty or has only a header, is not UTF-8
    (the message gives the byte offset), lacks an asked column (the message lists the columns
    found), has a JSON Lines line that is not an object, or has fewer than ``min_classes``
    distinct labels once empty rows are dropped. ``Dataset.source`` is ``path`` as given.
    """
    source = str(path)
    text = _decode(_read_bytes(Path(path), source), source)
    if not text.strip():
        raise DataError(f"{source} has no data rows: the file is empty")
    if _is_json_lines(Path(path), text):
        numbered = list(_json_lines(text, source))
        columns = _keys(record for _, record in numbered)
        no_rows = f"{source} has no data rows: it has only blank lines"
    else:
        delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else _pick_delimiter(text, (text_col, label_col))
        columns, numbered = _csv_records(text, source, delimiter, (text_col, label_col, *OPTIONAL_COLUMNS))
        no_rows = f"{source} has no data rows: only the header line ({', '.join(columns)})"
    return _collect(numbered, source, columns, text_col, label_col, min_classes, no_rows)


def rows_from_records(
    records: Iterable[Mapping[str, Any]],
    source: str,
    text_col: str = "text",
    label_col: str = "label",
    min_classes: int = 2,
) -> Dataset:
    """Validate and clean labelled records from elsewhere (e.g. Kafka) as ``read_labeled`` does.

    ``source`` names the origin in messages and in ``Dataset.source``. Each record is a mapping;
    ``Row.line`` is its 1-based position. A column is missing only if no record has it; a record
    without it counts as empty. Values that are not strings (numbers) are converted with
    ``str()``; ``None`` counts as empty.
    """
    numbered: list[tuple[int, Mapping[str, Any]]] = []
    for position, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            msg = f"{source} record {position} is a {type(record).__name__}, not a mapping of column to value"
            raise DataError(msg)
        numbered.append((position, record))
    columns = _keys(record for _, record in numbered)
    return _collect(numbered, source, columns, text_col, label_col, min_classes, f"{source} has no data rows")


# --------------------------------------------------------------------------------------------
# Reading a file


def _read_bytes(path: Path, source: str) -> bytes:
    if path.is_dir():
        raise DataError(f"cannot read {source}: no such file (it is a folder; give a .csv or .jsonl file)")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"cannot read {source}: no such file; check the path") from None
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror or exc}") from None


def _decode(data: bytes, source: str) -> str:
    start = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        line = data.count(b"\n", 0, offset) + 1
        hint = " (it looks like UTF-16)" if data[:2] in _UTF16_BOMS else ""
        msg = (
            f"{source} is not UTF-8{hint}: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) "
            "cannot be decoded; save the file as UTF-8 and retry"
        )
        raise DataError(msg) from None


def _is_json_lines(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return True
    if suffix in (".csv", ".tsv"):
        return False
    return text.lstrip().startswith("{")


def _json_lines(text: str, source: str) -> Iterable[tuple[int, dict[str, Any]]]:
    hint = 'give one JSON object per line, like {"text": "...", "label": "..."}'
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source} line {number} is not JSON ({exc.msg}, column {exc.colno}); {hint}") from None
        if not isinstance(value, dict):
            raise DataError(f"{source} line {number} is a JSON {_json_type(value)}, not an object; {hint}")
        yield number, value


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def _pick_delimiter(text: str, wanted: tuple[str, ...]) -> str:
    header = next((line for line in io.StringIO(text[:65536], newline="") if line.strip()), "")
    best, best_width = CSV_DELIMITERS[0], 0
    for delimiter in CSV_DELIMITERS:
        names = [name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])]
        if all(name in names for name in wanted):
            return delimiter
        if len(names) > best_width:
            best, best_width = delimiter, len(names)
    return best


def _csv_records(
    text: str, source: str, delimiter: str, wanted: tuple[str, ...]
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Return the header and ``(line, {column: value})`` for the columns in ``wanted``."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    where: dict[str, int] = {}
    records: list[tuple[int, dict[str, str]]] = []
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{source} line {start}: {exc}; look there for a quote that is never closed") from None
        if fields and not (len(fields) == 1 and not fields[0].strip()):
            if header is None:
                header = [name.strip() for name in fields]
                for index in range(len(header) - 1, -1, -1):  # the first of duplicate names wins
                    if header[index] in wanted:
                        where[header[index]] = index
            else:
                records.append((start, {name: fields[i] for name, i in where.items() if i < len(fields)}))
        start = reader.line_num + 1
    return header or [], records


# --------------------------------------------------------------------------------------------
# Validation shared by files and records


def _keys(records: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            seen.setdefault(str(key), None)
    return list(seen)


def _as_text(value: Any) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _optional(value: Any) -> str | None:
    if value is None:
        return None
    return _as_text(value) or None


def _collect(
    numbered: Iterable[tuple[int, Mapping[str, Any]]],
    source: str,
    columns: list[str],
    text_col: str,
    label_col: str,
    min_classes: int,
    no_rows: str,
) -> Dataset:
    numbered = list(numbered)
    if not numbered:
        raise DataError(no_rows)
    _require_columns(source, columns, text_col, label_col)
    rows: list[Row] = []
    n_empty = 0
    cleaned: dict[str, str] = {}  # repeated texts are cleaned once
    for line, record in numbered:
        text = _as_text(record.get(text_col))
        label = _as_text(record.get(label_col)).strip()
        clean_text = cleaned.get(text)
        if clean_text is None:
            clean_text = cleaned[text] = clean(text) if text.strip() else ""
        if not clean_text or not label:
            n_empty += 1
            continue
        rows.append(Row(text, clean_text, label, _optional(record.get("ts")), _optional(record.get("region")), line))
    counts = Counter(row.label for row in rows)
    if len(counts) < min_classes:
        found = ", ".join(repr(label) for label in sorted(counts)[:5]) or "none"
        msg = (
            f"{source} has {len(counts)} distinct label(s) ({found}) after dropping {n_empty} row(s) with empty "
            f"text or label; training needs at least {min_classes}: add examples of other classes or check "
            f"--label-col (now {label_col!r})"
        )
        raise DataError(msg)
    singletons = sorted(label for label, count in counts.items() if count == 1)
    return Dataset(rows, source, columns, len(numbered), n_empty, singletons)


def _require_columns(source: str, columns: list[str], text_col: str, label_col: str) -> None:
    missing = [
        f"no column {name!r} (set it with {flag})"
        for name, flag in ((text_col, "--text-col"), (label_col, "--label-col"))
        if name not in columns
    ]
    if missing:
        found = ", ".join(repr(name) for name in columns) or "none"
        raise DataError(f"{source} has {' and '.join(missing)}; columns found: {found}")
