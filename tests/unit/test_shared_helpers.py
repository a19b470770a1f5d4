"""The one-per-job helpers: percentiles, produce with retry, progress lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ops.kafka.produce import produce_retrying
from ops.logs import progress
from ops.measure import percentile


def test_percentile_interpolates_linearly_and_says_none_for_no_values() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0], 99) == 10.0
    assert percentile([0.0, 100.0], 99) == 99.0
    assert percentile([], 50) is None


class FullOnce:
    """A producer whose local queue is full for the first ``full`` produce calls."""

    def __init__(self, full: int) -> None:
        self.full, self.polls, self.sent = full, 0, []

    def produce(self, topic, value, key=None, **kwargs) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.sent.append((topic, value, key, kwargs))

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


def test_produce_retrying_polls_while_the_queue_is_full_then_sends_once() -> None:
    producer = FullOnce(full=3)
    produce_retrying(producer, "t", b"v", b"k", on_delivery=print)
    assert producer.polls == 3
    assert producer.sent == [("t", b"v", b"k", {"on_delivery": print})]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def logged(name: str, level: int) -> Iterator[tuple[logging.Logger, list[str]]]:
    """A logger of its own that does not propagate, and the lines it logs at ``level`` or above.

    Handlers other tests left on the root logger (configure_logging writes to stderr) must not
    mix their lines into what a test reads.
    """
    log = logging.getLogger(name)
    lines = Lines()
    log.addHandler(lines)
    log.setLevel(level)
    log.propagate = False
    try:
        yield log, lines.lines
    finally:
        log.removeHandler(lines)


def test_progress_prints_when_shown_and_logs_every_line_once(capsys: pytest.CaptureFixture[str]) -> None:
    with logged("phrasestream.test.progress", logging.DEBUG) as (log, lines):
        progress(log, "quiet line", show=False)
        progress(log, "loud line", show=True, tag="train")
    assert lines == ["quiet line", "loud line"]
    assert capsys.readouterr().err == "[train] loud line\n"


def test_progress_lines_stay_off_a_terminal_at_info_level() -> None:
    with logged("phrasestream.test.progress-levels", logging.INFO) as (log, lines):
        progress(log, "shown", show=True)
        progress(log, "quiet", show=False)
    assert lines == []
