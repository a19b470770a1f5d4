"""Lifecycle command errors found before any service is needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PHRASESTREAM_HOME", str(tmp_path))
    return tmp_path


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_produce_labeled_needs_data_region_and_model(capsys, home: Path):  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, "produce", "--labeled", "--region", "eu")
    assert code == 2 and "--labeled needs --data" in err
    data = home / "d.csv"
    data.write_text("text,label,ts\nhello,greet,2026-01-01 10:00\n", encoding="utf-8")
    code, _, err = run(capsys, "produce", "--labeled", "--data", str(data), "--region", "eu", "--model", "m")
    assert code == 2 and "timezone" in err.lower(), "a ts without a time zone is refused before producing"
