"""Shadow runs and review rules in the registry pointer: what every change carries, and the flags refused
before any service is asked (no services: the registry's live side is in tests/integration/test_shadow_lifecycle.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from models.registry.lifecycle import KEEP, carried
from schemas.messages import RegistryPointer
from schemas.review import ReviewRule, ShadowSpec
from streams import cli

SHA = "ab" * 32


def pointer(version: str = "v1", shadow: str | None = None, review: ReviewRule | None = None) -> RegistryPointer:
    spec = ShadowSpec(version=shadow, percent=50, bundle_sha256=SHA, bundle_bytes=10) if shadow else None
    return RegistryPointer(region="eu", model="m", version=version, action="promote", seq=3, bundle_sha256=SHA,
                           bundle_bytes=10, at=datetime(2026, 12, 1, tzinfo=UTC), shadow=spec, review=review)


def test_a_promotion_of_another_version_carries_the_shadow_and_the_review_rule():
    rule = ReviewRule(margin=0.3)
    shadow, review = carried(pointer("v1", "v2", rule), "v3", KEEP, KEEP)
    assert shadow is not None and shadow.version == "v2" and shadow.percent == 50
    assert review == rule


def test_a_rollback_to_an_older_version_carries_the_shadow():
    shadow, review = carried(pointer("v3", "v2"), "v1", KEEP, KEEP)
    assert shadow is not None and shadow.version == "v2" and review is None


def test_promoting_the_shadow_version_ends_the_shadow_and_keeps_the_rule():
    rule = ReviewRule(random_rate=0.1)
    shadow, review = carried(pointer("v1", "v2", rule), "v2", KEEP, KEEP)
    assert shadow is None and review == rule


def test_a_first_pointer_has_neither_shadow_nor_rule():
    assert carried(None, "v1", KEEP, KEEP) == (None, None)


def test_given_values_replace_the_old_ones():
    new = ShadowSpec(version="v4", bundle_sha256=SHA, bundle_bytes=1)
    shadow, review = carried(pointer("v1", "v2", ReviewRule()), "v1", new, None)
    assert shadow == new and review is None


@pytest.fixture
def home(tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PHRASESTREAM_HOME", str(tmp_path))
    # no service is reachable: a check that asked one would fail with exit 1, not 2
    monkeypatch.setenv("PHRASESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("PHRASESTREAM_PG_PORT", "1")
    return tmp_path


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


HEAD = ("--region", "eu", "--model", "m")


@pytest.mark.parametrize("args, message", [
    (["--version", "v2", "--percent", "50"], "--percent only go with --shadow"),
    (["--stop"], "--stop only go with --shadow"),
    (["--shadow"], "promote --shadow needs --version"),
    (["--shadow", "--version", "v2", "--percent", "0"], "--percent must be in (0, 100]"),
    (["--shadow", "--version", "v2", "--percent", "100.5"], "--percent must be in (0, 100]"),
    (["--shadow", "--version", "v2", "--percent", "-3"], "--percent must be in (0, 100]"),
    (["--shadow", "--stop", "--version", "v2"], "takes no --version or --percent"),
    (["--shadow", "--stop", "--percent", "5"], "takes no --version or --percent"),
    (["--shadow", "--version", "bad/name"], "version"),
])
def test_bad_shadow_flags_exit_2_with_one_error_line(capsys, home: Path, args: list[str], message: str):  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, "promote", *HEAD, *args)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert out == ""


@pytest.mark.parametrize("args, message", [
    (["--margin", "1.5"], "margin"),
    (["--margin", "-0.1"], "margin"),
    (["--random-rate", "2"], "random_rate"),
    (["--budget", "-1"], "budget_per_hour"),
    (["--random-budget", "-5"], "random_budget_per_hour"),
    (["--reset", "--margin", "0.1"], "--reset goes alone"),
])
def test_bad_review_rule_values_exit_2_before_any_service(capsys, home: Path, args: list[str], message: str):  # type: ignore[no-untyped-def]
    code, _out, err = run(capsys, "review-rule", *HEAD, *args)
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_review_rule_flags_become_rule_fields():
    import argparse

    from streams.review.rules import changed_rule, changes_of

    args = argparse.Namespace(margin=0.3, random_rate=None, budget=10, random_budget=None, oos="off",
                              shadow_disagreement="on")
    changes = changes_of(args)
    assert changes == {"margin": 0.3, "budget_per_hour": 10, "oos": False, "shadow_disagreement": True}
    rule = changed_rule(ReviewRule(random_rate=0.05), changes)
    assert rule == ReviewRule(margin=0.3, budget_per_hour=10, oos=False, shadow_disagreement=True, random_rate=0.05)
