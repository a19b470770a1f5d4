"""A sink consumer that fell out of its group is replaced; one that merely holds no partition is not."""

from __future__ import annotations

from streams.sinks.membership import GroupWatch


def states(*answers: str | None):
    asked: list[str] = []
    queue = list(answers)

    def state_of(group: str) -> str | None:
        asked.append(group)
        return queue.pop(0)

    return state_of, asked


def test_an_assigned_consumer_is_never_questioned() -> None:
    state_of, asked = states()
    watch = GroupWatch("g", state_of, after_s=60)
    assert not any(watch.lost(True, t) for t in range(0, 600, 10))
    assert asked == []


def test_an_unassigned_consumer_of_an_empty_group_is_lost_after_the_bound() -> None:
    state_of, asked = states("EMPTY")
    watch = GroupWatch("g", state_of, after_s=60)
    assert [watch.lost(False, t) for t in (0, 30, 59)] == [False, False, False]
    assert asked == []
    assert watch.lost(False, 60)
    assert asked == ["g"]


def test_a_consumer_without_partitions_in_a_group_with_members_is_left_alone() -> None:
    state_of, asked = states("STABLE", "STABLE")
    watch = GroupWatch("g", state_of, after_s=60)
    watch.lost(False, 0)
    assert not watch.lost(False, 60)
    assert not watch.lost(False, 61)  # asked once per period, not at every poll
    assert not watch.lost(False, 120)
    assert asked == ["g", "g"]


def test_a_partition_regained_resets_the_clock_and_an_unknown_state_changes_nothing() -> None:
    state_of, asked = states(None)
    watch = GroupWatch("g", state_of, after_s=60)
    watch.lost(False, 0)
    assert not watch.lost(True, 50)
    assert not watch.lost(False, 55)
    assert not watch.lost(False, 110)
    assert not watch.lost(False, 115)
    assert asked == ["g"]
