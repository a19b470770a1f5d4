"""`phrasestream train --data` on bad input: one clear line on standard error, exit code 2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from streams import cli


@contextmanager
def home_at(path: Path) -> Iterator[None]:
    """Point PHRASESTREAM_HOME at ``path``, and give back whatever it was (or nothing) after."""
    before = os.environ.get("PHRASESTREAM_HOME")
    os.environ["PHRASESTREAM_HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PHRASESTREAM_HOME", None)
        else:
            os.environ["PHRASESTREAM_HOME"] = before


def run(capsys, tmp_path: Path, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    with home_at(tmp_path / "home"):
        code = cli.main(["train", *args, "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_missing_column_names_the_columns_found(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "d.csv"
    data.write_text("utterance,intent\nhello there,greet\nbye now,bye\n", encoding="utf-8")
    code, _, err = run(capsys, tmp_path, "--data", str(data), "--region", "r", "--model", "m")
    line = one_error_line(err)
    assert code == 2
    assert "'text'" in line and "utterance" in line and "intent" in line and "--text-col" in line


def test_fewer_than_two_classes_is_refused(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "d.csv"
    data.write_text("text,label\nhello,greet\nhi,greet\n,bye\n", encoding="utf-8")
    code, _, err = run(capsys, tmp_path, "--data", str(data), "--region", "r", "--model", "m")
    line = one_error_line(err)
    assert code == 2 and "1 distinct label" in line and "at least 2" in line


def test_a_file_that_is_not_utf8_is_refused(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "d.csv"
    data.write_bytes("text,label\ncafé,a\nthé,b\n".encode("latin-1"))
    code, _, err = run(capsys, tmp_path, "--data", str(data), "--region", "r", "--model", "m")
    line = one_error_line(err)
    assert code == 2 and "UTF-8" in line


def test_an_empty_file_is_refused(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "d.csv"
    data.write_bytes(b"")
    code, _, err = run(capsys, tmp_path, "--data", str(data), "--region", "r", "--model", "m")
    line = one_error_line(err)
    assert code == 2 and "no data rows" in line


def test_a_missing_file_is_refused(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, tmp_path, "--data", str(tmp_path / "nope.csv"), "--region", "r", "--model", "m")
    assert code == 2 and "no such file" in one_error_line(err)


@pytest.mark.parametrize("args", [["--region", "r"], ["--model", "m"]])
def test_data_needs_region_and_model(capsys, tmp_path: Path, args: list[str]):  # type: ignore[no-untyped-def]
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    code, _, err = run(capsys, tmp_path, "--data", str(data), *args)
    assert code == 2 and "--region and --model" in one_error_line(err)


def test_a_bad_region_name_is_refused(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    code, _, err = run(capsys, tmp_path, "--data", str(data), "--region", "Bad Region", "--model", "m")
    assert code == 2 and "region" in one_error_line(err)


def test_data_flags_without_data_are_refused(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, tmp_path, "--eval", "x.csv")
    assert code == 2 and "--eval" in one_error_line(err)


def test_report_of_an_unknown_head_is_refused(capsys, tmp_path: Path):  # type: ignore[no-untyped-def]
    with home_at(tmp_path / "home"):
        code = cli.main(["report", "--region", "nowhere", "--model", "m", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "no head nowhere/m" in one_error_line(err)
