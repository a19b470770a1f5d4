"""OffsetGuard: a jump in a partition's offsets is reported as a hole, once."""

from __future__ import annotations

from faust.types import TP

from streams.kafka.continuity import Hole, OffsetGuard
from streams.kafka.faust_compat import DirectEvent, direct_event

P0, P1, P2 = TP("topic", 0), TP("topic", 1), TP("topic", 2)


def events(tp: TP, *offsets: int) -> list[DirectEvent]:
    return [direct_event(tp, o, None) for o in offsets]


def test_contiguous_offsets_show_no_hole() -> None:
    guard = OffsetGuard("t")
    assert guard.check(events(P0, 5, 6, 7) + events(P1, 100, 101)) == []
    assert guard.check(events(P0, 8, 9)) == []
    assert guard.holes == 0


def test_a_jump_is_reported_once_with_the_skipped_range() -> None:
    guard = OffsetGuard("t")
    assert guard.check(events(P2, *range(368, 378))) == []
    assert guard.check(events(P2, 412, 413) + events(P1, 7)) == [Hole(P2, 378, 412)]
    assert guard.check(events(P2, 414, 415)) == []  # goes on from after the jump
    assert guard.holes == 1


def test_repeated_offsets_are_no_hole() -> None:
    guard = OffsetGuard("t")
    guard.check(events(P0, 1, 2, 3))
    assert guard.check(events(P0, 2, 3, 4)) == []


def test_offsets_delivered_again_in_one_assignment_are_left_out_of_what_is_served(caplog) -> None:
    guard = OffsetGuard("t")
    guard.split(events(P0, 1, 2, 3) + events(P1, 9))
    again = events(P0, 2, 3, 4) + events(P1, 10)  # Faust sought P0 back to 2
    holes, fresh = guard.split(again)
    assert holes == [] and [(e.message.partition, e.message.offset) for e in fresh] == [(0, 4), (1, 10)]
    assert guard.repeats == 2
    assert "delivered 2 message(s) again (offsets 2..3)" in caplog.text
    guard.reset()  # a new assignment: nothing counts as served before
    assert len(guard.split(events(P0, 2, 3))[1]) == 2


def test_reset_forgets_the_offsets_of_an_old_assignment() -> None:
    guard = OffsetGuard("t")
    guard.check(events(P0, 1, 2))
    guard.reset()
    assert guard.check(events(P0, 50)) == []  # a new assignment starts where the commits were


def test_a_partition_quiet_since_its_assignment_or_last_event_is_found() -> None:
    guard = OffsetGuard("t", "topic")
    guard.follow(frozenset({P0, P1}), now=100.0)
    assert guard.quiet(guard.assignment, now=110.0, after=15.0) == []
    guard.check(events(P0, 1))  # p0 delivers (at the real clock: long after 100)
    assert guard.quiet(guard.assignment, now=116.0, after=15.0) == [P1]
    guard.restarted(P1, now=116.0)
    assert guard.quiet([P1], now=120.0, after=15.0) == []  # given time after its seek
    assert guard.stalls == 1
    guard.follow(frozenset({P0, P1}), now=200.0)  # same assignment: nothing forgotten
    assert guard.next_offset(P0) == 2
    guard.follow(frozenset({P1}), now=300.0)  # a new one: start afresh
    assert guard.next_offset(P0) is None


def test_no_partition_counts_as_quiet_while_the_agent_is_busy_or_just_after_a_long_batch() -> None:
    guard = OffsetGuard("t", "topic")
    guard.follow(frozenset({P0}), now=0.0)
    guard.begin(now=1.0)  # say the broker is away and the outputs wait
    assert guard.quiet(guard.assignment, now=40.0, after=15.0) == []
    guard.end(now=40.0, long=5.0)
    assert guard.quiet(guard.assignment, now=50.0, after=15.0) == []  # it waited for the agent
    assert guard.quiet(guard.assignment, now=56.0, after=15.0) == [P0]


def test_a_hole_at_the_start_of_an_assignment_is_seen_from_the_committed_offset() -> None:
    guard = OffsetGuard("t", "topic")
    assert guard.follow(frozenset({P2}), now=0.0)
    guard.baseline({P2: 284})
    assert guard.check(events(P2, 285, 286)) == [Hole(P2, 284, 285)]
    assert not guard.follow(frozenset({P2}), now=1.0)


def test_a_new_assignment_whose_commits_cannot_be_read_yet_is_based_at_the_next_batch() -> None:
    import asyncio
    from types import SimpleNamespace

    from confluent_kafka import KafkaException

    from schemas.settings import Settings
    from streams.kafka.continuity import follow_assignment

    tp = TP("t", 0)
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: {tp, TP("other", 0)}))
    answers: list[object] = [KafkaException("timed out"), {tp: (50, 40)}]

    async def offload(fn, *args):  # type: ignore[no-untyped-def]
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    guard = OffsetGuard("clean", "t")
    asyncio.run(follow_assignment(app, guard, Settings(), offload, 1.0))  # type: ignore[arg-type]
    assert guard.unbased and guard.next_offset(tp) is None, "the agent goes on; the baseline waits"
    asyncio.run(follow_assignment(app, guard, Settings(), offload, 2.0))  # type: ignore[arg-type]
    assert not guard.unbased and guard.next_offset(tp) == 40
    assert guard.assignment == frozenset({tp})
