"""The review page's access: parsing the reviewers, the generated reviewers file, basic auth, CSRF, same origin."""

import base64
import stat

import pytest

from streams.review.security import (
    Csrf,
    ReviewersError,
    check_basic,
    load_reviewers,
    parse_users,
    same_origin,
)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_users_parse_with_colons_in_passwords_and_blank_entries_ignored():
    assert parse_users("ann:pw1, ben:a:b:c ,") == {"ann": "pw1", "ben": "a:b:c"}


@pytest.mark.parametrize(("text", "match"), [
    ("ann", "no password"), ("ann:", "no password"), ("an n:SECRET", "is not 1-64"),
    ("ann:SECRET,ann:SECRET2", "listed twice"),
])
def test_bad_users_are_refused_without_showing_a_password(text, match):
    with pytest.raises(ReviewersError, match=match) as err:
        parse_users(text)
    assert "SECRET" not in str(err.value)


def test_empty_setting_generates_one_reviewer_in_a_0600_file_once(tmp_path):
    users, path = load_reviewers("", tmp_path)
    assert path == tmp_path / "review-users" and list(users) == ["reviewer"] and len(users["reviewer"]) >= 20
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_reviewers("", tmp_path) == (users, path)  # the same file next time


def test_the_setting_wins_over_the_file(tmp_path):
    assert load_reviewers("ann:pw", tmp_path) == ({"ann": "pw"}, None)
    assert not (tmp_path / "review-users").exists()


def test_basic_auth_names_the_reviewer_only_with_the_right_password():
    users = {"ann": "pw-a", "ben": "pw-b"}
    assert check_basic(_basic("ann", "pw-a"), users) == "ann"
    assert check_basic(_basic("ann", "pw-b"), users) is None
    assert check_basic(_basic("zed", "pw-a"), users) is None
    assert check_basic("Basic not-base64!", users) is None
    assert check_basic("Bearer x", users) is None and check_basic(None, users) is None


def test_csrf_token_is_per_reviewer_and_per_process():
    one, two = Csrf(), Csrf()
    assert one.check("ann", one.token("ann"))
    assert not one.check("ben", one.token("ann"))
    assert not two.check("ann", one.token("ann"))  # a restart makes old pages stale
    assert not one.check("ann", "") and not one.check("ann", None)


@pytest.mark.parametrize(("origin", "referer", "ok"), [
    (None, None, True), ("http://127.0.0.1:8080", None, True), ("http://evil.example", None, False),
    (None, "http://127.0.0.1:8080/items/x", True), (None, "http://evil.example/page", False), ("null", None, False),
])
def test_origin_or_referer_must_be_the_page_itself(origin, referer, ok):
    assert same_origin(origin, referer, "127.0.0.1:8080") is ok


def test_the_command_refuses_a_bad_port_or_reviewers_list_with_exit_2_and_one_error_line(capsys, tmp_path):
    from argparse import Namespace

    from pydantic import SecretStr

    from schemas.settings import Settings
    from streams.review.server import review_command

    assert review_command(Settings(home=tmp_path), Namespace(port=70000, host=None)) == 2
    assert capsys.readouterr().err.startswith("error: --port must be 0 to 65535")
    settings = Settings(home=tmp_path, review_users=SecretStr("ann:SECRET,ann:SECRET"))
    assert review_command(settings, Namespace(port=None, host=None)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reviewers: reviewer 'ann' is listed twice") and len(err.splitlines()) == 1
    assert "SECRET" not in err
