"""The bounds of a load-generator run, checked before anything is generated or sent."""

from __future__ import annotations

import math

MAX_COUNT = 5_000_000
"""Most messages one run may generate or send."""
MAX_DURATION_S = 3600.0
"""Longest one run may send, in seconds."""
MAX_RATE = 1_000_000.0
"""Highest paced rate, messages per second (``rate=None`` sends as fast as possible)."""
MAX_ZIPF = 10.0

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class LoadgenError(ValueError):
    """A load-generator setting is out of bounds, or the target is not allowed."""


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if math.isnan(value) or (value <= low if low_open else value < low) or value > high:
        left = "(" if low_open else "["
        msg = f"{name} must be in {left}{_number(low)}, {_number(high)}], got {value!r}"
        raise LoadgenError(msg)


def check_generation(count: int, zipf: float, new_share: float, variants: float, seed: int, region: str) -> None:
    """Raise :class:`LoadgenError` unless the generation settings are within bounds."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise LoadgenError(f"count must be an integer, got {count!r}")
    _check_range("count", count, 1, MAX_COUNT)
    _check_range("zipf", zipf, 0.0, MAX_ZIPF)
    _check_range("new_share", new_share, 0.0, 1.0)
    _check_range("variants", variants, 0.0, 1.0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LoadgenError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(region, str) or not 1 <= len(region) <= 64:
        raise LoadgenError(f"region must be 1-64 characters (as phrases.in requires), got {region!r}")


def check_sending(rate: float | None, duration: float) -> None:
    """Raise :class:`LoadgenError` unless the rate (None: as fast as possible) and duration are within bounds."""
    if rate is not None:
        _check_range("rate (messages/s)", rate, 0.0, MAX_RATE, low_open=True)
    _check_range("duration (s)", duration, 0.0, MAX_DURATION_S, low_open=True)


def check_bootstrap(bootstrap: str, allow_remote: bool = False) -> None:
    """Refuse a bootstrap list with any host off this machine, unless ``allow_remote``.

    Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) are always allowed.
    """
    if allow_remote:
        return
    remote = [entry for entry in bootstrap.split(",") if entry.strip() and not _is_loopback(_host(entry))]
    if remote or not bootstrap.strip():
        msg = (f"refusing to send load to {bootstrap!r}: only 127.0.0.1/localhost brokers are allowed; "
               "pass --allow-remote (allow_remote=True) to send to another broker on purpose")
        raise LoadgenError(msg)


def _host(entry: str) -> str:
    entry = entry.strip()
    if "://" in entry:
        entry = entry.split("://", 1)[1]
    if entry.startswith("["):  # [::1]:9092
        return entry[1:entry.find("]")] if "]" in entry else entry
    return entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry


def _is_loopback(host: str) -> bool:
    host = host.lower()
    if host in LOOPBACK_HOSTS:
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)
