"""Time windows of a replay: ``[start, end)`` in UTC, from ``--since 90d``, ``--from/--to`` or a list.

:func:`since_window`, :func:`between_window` and :func:`compare_windows` turn the flags of
``phrasestream retrain`` (and the lengths of ``drift-report``/``drift-watch``:
:func:`parse_duration`) into :class:`Window` values, the end excluded. Kafka record timestamps
are milliseconds since :data:`EPOCH`: :func:`epoch_ms` and :func:`from_ms` convert exactly.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The start of the ``all`` window (Kafka timestamps are milliseconds since this instant)."""

DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
                  "y": timedelta(days=365)}
"""Units of a history length such as ``90d``: hours, days, weeks, years of 365 days."""

_DURATION = re.compile(r"^(\d+)([hdwy])$")


class WindowError(ValueError):
    """A window flag that cannot be read; str(exc) is one line that says what to write instead."""


def epoch_ms(instant: datetime) -> int:
    """Return a timezone-aware datetime as whole milliseconds since the epoch (Kafka timestamps).

    Exact (integer arithmetic, rounded down), so ``epoch_ms(from_ms(t)) == t``.
    """
    if instant.tzinfo is None:
        raise ValueError(f"{instant.isoformat()} has no time zone; give a timezone-aware datetime")
    return (instant - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    """Return milliseconds since the epoch as a UTC datetime."""
    return EPOCH + timedelta(milliseconds=ms)


def iso(instant: datetime) -> str:
    """Return ``instant`` in UTC as ISO 8601 with a ``Z`` (milliseconds only when not zero)."""
    instant = instant.astimezone(UTC)
    spec = "milliseconds" if instant.microsecond else "seconds"
    return instant.isoformat(timespec=spec).replace("+00:00", "Z")


@dataclass(frozen=True)
class Window:
    """A time window ``[start, end)`` of record timestamps, both UTC; ``label`` is how it was asked.

    >>> w = since_window("30d", now=datetime(2026, 11, 28, tzinfo=UTC))
    >>> (iso(w.start), iso(w.end), w.label)
    ('2026-10-29T00:00:00Z', '2026-11-28T00:00:00Z', '30d')
    """

    start: datetime
    end: datetime
    label: str

    @property
    def start_ms(self) -> int:
        return epoch_ms(self.start)

    @property
    def end_ms(self) -> int:
        return epoch_ms(self.end)

    def contains(self, timestamp_ms: int) -> bool:
        """Say whether a record timestamp (ms) is in ``[start, end)``."""
        return self.start_ms <= timestamp_ms < self.end_ms

    def to_json(self) -> dict[str, str]:
        return {"start": iso(self.start), "end": iso(self.end), "label": self.label}

    def describe(self) -> str:
        """Return ``window 30d (start .. end)``, or ``window start .. end`` when asked by dates."""
        span = f"{iso(self.start)} .. {iso(self.end)}"
        return f"window {span}" if self.label == f"{iso(self.start)}..{iso(self.end)}" else f"window {self.label} ({span})"


def parse_duration(text: str) -> timedelta | None:
    """Return the length of ``90d``-style history (units h, d, w, y = 365 days); None for ``all``.

    Raise :class:`WindowError` for anything else (``0d``, ``3m``, ``-1d``).
    """
    spec = text.strip().lower()
    if spec == "all":
        return None
    match = _DURATION.match(spec)
    if not match or int(match.group(1)) == 0:
        raise WindowError(f"bad history length {text!r}: write a positive number and a unit, "
                          "h (hours), d (days), w (weeks) or y (365 days), like 90d; or 'all'")
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_instant(text: str, flag: str) -> datetime:
    """Return an ISO 8601 date or date-time as an aware UTC datetime.

    A date (``2026-01-01``) is its midnight; a date-time without an offset is read as UTC
    (``2026-01-01T12:00`` is 12:00 UTC); ``Z`` or ``+01:00`` is honoured. ``flag`` names the
    option in the :class:`WindowError` message.
    """
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WindowError(f"bad {flag} {text!r}: write an ISO 8601 date or date-time, like 2026-01-31 or "
                          "2026-01-31T12:00:00Z (no offset means UTC)") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def since_window(since: str, now: datetime) -> Window:
    """Return ``[now - since, now)``; ``all`` starts at the epoch."""
    length = parse_duration(since)
    start = EPOCH if length is None or now - length < EPOCH else now - length
    return Window(start, now, since.strip().lower())


def between_window(date_from: str, date_to: str | None, now: datetime) -> Window:
    """Return ``[date_from, date_to)`` (``date_to`` defaults to ``now``); the start must come first."""
    start = parse_instant(date_from, "--from")
    end = parse_instant(date_to, "--to") if date_to else now
    if start < EPOCH:
        raise WindowError(f"--from {date_from!r} is before 1970-01-01: Kafka timestamps start there")
    if end <= start:
        raise WindowError(f"the window is empty: --to {iso(end)} is not after --from {iso(start)} "
                          "(the end is excluded)")
    return Window(start, end, f"{iso(start)}..{iso(end)}")


def compare_windows(spec: str, now: datetime) -> list[Window]:
    """Return the windows of ``30d,90d,1y,all``, all ending at ``now``, widest last.

    Raise :class:`WindowError` for a bad or repeated entry, or fewer than one.
    """
    labels = [part.strip().lower() for part in spec.split(",") if part.strip()]
    if not labels:
        raise WindowError("--compare-windows needs a comma-separated list of history lengths, like 30d,90d,1y,all")
    repeated = sorted(label for label, n in Counter(labels).items() if n > 1)
    if repeated:
        raise WindowError(f"--compare-windows names {', '.join(repeated)} twice")
    windows = [since_window(label, now) for label in labels]
    starts = Counter(w.start for w in windows)
    same = [w.label for w in windows if starts[w.start] > 1]
    if same:
        raise WindowError(f"--compare-windows: {', '.join(same)} are the same window")
    return sorted(windows, key=lambda w: w.start, reverse=True)
