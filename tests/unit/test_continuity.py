"""OffsetGuard: a hole in a partition's offsets is read again, once; a real hole is accepted."""

from __future__ import annotations

from types import SimpleNamespace

from streams.continuity import OffsetGuard


def events(tp: str, *offsets: int) -> list:
    return [SimpleNamespace(message=SimpleNamespace(tp=tp, offset=o)) for o in offsets]


def test_contiguous_offsets_ask_for_nothing() -> None:
    guard = OffsetGuard("t")
    assert guard.check(events("p0", 5, 6, 7) + events("p1", 100, 101)) == []
    assert guard.check(events("p0", 8, 9)) == []
    assert guard.holes == 0


def test_a_jump_asks_for_a_seek_to_the_first_skipped_offset_and_once_only() -> None:
    guard = OffsetGuard("t")
    assert guard.check(events("p2", *range(368, 378))) == []
    # 378..411 never came: seek back to 378; the later ones of the same fetch are not checked
    assert guard.check(events("p2", 412, 413) + events("p1", 7)) == [("p2", 378)]
    assert guard.check(events("p2", 414, 415)) == []  # fetched before the seek
    assert guard.check(events("p2", 378, 379)) == []  # the hole, read
    assert guard.check(events("p2", *range(380, 416))) == []  # and on, repeats included
    assert guard.check(events("p2", 416)) == []
    assert guard.holes == 1


def test_a_real_hole_is_sought_once_then_accepted() -> None:
    guard = OffsetGuard("t")
    guard.check(events("p0", 10, 11))
    assert guard.check(events("p0", 14)) == [("p0", 12)]  # offsets 12, 13: commit markers
    assert guard.check(events("p0", 14, 15)) == []  # the seek read past the same hole: real
    assert guard.check(events("p0", 16)) == []
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
