"""OffsetGuard: a jump in a partition's offsets is reported as a hole, once."""

from __future__ import annotations

from types import SimpleNamespace

from streams.continuity import Hole, OffsetGuard


def events(tp: str, *offsets: int) -> list:
    return [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o)) for o in offsets]


def test_contiguous_offsets_show_no_hole() -> None:
    guard = OffsetGuard("t")
    assert guard.check(events("p0", 5, 6, 7) + events("p1", 100, 101)) == []
    assert guard.check(events("p0", 8, 9)) == []
    assert guard.holes == 0


def test_a_jump_is_reported_once_with_the_skipped_range() -> None:
    guard = OffsetGuard("t")
    assert guard.check(events("p2", *range(368, 378))) == []
    assert guard.check(events("p2", 412, 413) + events("p1", 7)) == [Hole("p2", 378, 412)]
    assert guard.check(events("p2", 414, 415)) == []  # goes on from after the jump
    assert guard.holes == 1


def test_repeated_offsets_are_no_hole() -> None:
    guard = OffsetGuard("t")
    guard.check(events("p0", 1, 2, 3))
    assert guard.check(events("p0", 2, 3, 4)) == []


def test_reset_forgets_the_offsets_of_an_old_assignment() -> None:
    guard = OffsetGuard("t")
    guard.check(events("p0", 1, 2))
    guard.reset()
    assert guard.check(events("p0", 50)) == []  # a new assignment starts where the commits were
