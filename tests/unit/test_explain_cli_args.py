"""``phrasestream explain``'s checks that need no service: each bad flag exits 2 with one ``error:`` line.

(The cases that need the registry and the database, an unknown head, version or label, are in
``tests/integration/test_explain_cli.py``.)
"""

from __future__ import annotations

import pytest

from streams.cli.parser import build_parser


@pytest.mark.parametrize(("argv", "message"), [
    (["--text", "<br>"], "error: --text is empty once cleaned: give a phrase with words"),
    (["--text", "   "], "error: --text is empty once cleaned: give a phrase with words"),
    (["--text", "hello", "--label", " "], "error: --label is empty"),
    (["--text", "hello", "--region", "Bad Region!"], "error: "),
    (["--text", "hello", "--model", "no/slash"], "error: "),
])
def test_bad_flags_exit_2_with_one_error_line(argv, message, capsys, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from schemas.settings import Settings
    from streams.cli.explain import explain_command

    monkeypatch.setenv("PHRASESTREAM_HOME", str(tmp_path))
    base = {"--region": "global", "--model": "intent"}
    for flag, value in base.items():
        if flag not in argv:
            argv = [flag, value, *argv]
    args = build_parser().parse_args(["explain", *argv])
    assert explain_command(Settings(), args) == 2
    err = capsys.readouterr()
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), err.err
    assert err.out == ""
