"""ops.kafka.offsets: watermarks are asked again while a partition's leader is being elected."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from ops.kafka.offsets import read_watermarks


class LeaderlessForAWhile:
    """A consumer whose broker answers ``NOT_LEADER_FOR_PARTITION`` ``fails`` times, then the watermarks."""

    def __init__(self, fails: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.fails, self.code, self.asked = fails, code, 0

    def get_watermark_offsets(self, tp, timeout, cached):  # type: ignore[no-untyped-def]
        self.asked += 1
        if self.asked <= self.fails:
            raise KafkaException(KafkaError(self.code))
        return (0, 7 + tp.partition)


def test_a_broker_electing_leaders_is_asked_again_until_it_answers() -> None:
    consumer = LeaderlessForAWhile(fails=2)
    assert read_watermarks(consumer, "t", [0, 1], timeout=5) == {0: (0, 7), 1: (0, 8)}  # type: ignore[arg-type]
    assert consumer.asked == 4


def test_leader_errors_past_the_timeout_and_other_errors_are_raised() -> None:
    with pytest.raises(KafkaException):
        read_watermarks(LeaderlessForAWhile(fails=10**6), "t", [0], timeout=0.3)  # type: ignore[arg-type]
    unknown = LeaderlessForAWhile(fails=1, code=KafkaError.UNKNOWN_TOPIC_OR_PART)
    with pytest.raises(KafkaException):
        read_watermarks(unknown, "t", [0], timeout=5)  # type: ignore[arg-type]
    assert unknown.asked == 1
