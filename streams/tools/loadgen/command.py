"""``phrasestream loadgen``: generate the traffic, send it, and return the figures."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from schemas.settings import Settings
from streams.tools.loadgen.checks import LoadgenError, check_bootstrap, check_generation, check_sending
from streams.tools.loadgen.pool import make_pool
from streams.tools.loadgen.sending import send
from streams.tools.loadgen.traffic import Traffic


def run(settings: Settings, *, count: int = 10_000, duration: float = 60.0, rate: float | None = None,
        zipf: float = 1.1, new_share: float = 0.03, variants: float = 0.3, region: str = "global", seed: int = 7,
        cache_size: int | None = None, topic: str | None = None, allow_remote: bool = False,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate the traffic, send it, and return the figures of what was sent (``phrasestream loadgen``).

    Checks every bound before generating anything. With a ``rate``, generates no more than
    ``rate * duration`` messages (the rest could not be sent in time). ``cache_size``
    defaults to ``settings.cache_max_entries``, the worker's cache.
    """
    check_generation(count, zipf, new_share, variants, seed, region)
    check_sending(rate, duration)
    check_bootstrap(settings.bootstrap, allow_remote)
    if cache_size is None:
        cache_size = settings.cache_max_entries
    if cache_size < 0:
        raise LoadgenError(f"cache size must be >= 0 (0: no cache), got {cache_size}")
    n = count if rate is None else min(count, math.ceil(rate * duration))
    started = time.perf_counter()
    pool = make_pool()
    pool_s = time.perf_counter() - started
    traffic = Traffic.make(n, zipf=zipf, new_share=new_share, variants=variants, seed=seed, region=region, pool=pool)
    generate_s = time.perf_counter() - started - pool_s
    pace = "as fast as possible" if rate is None else f"{rate:g}/s"
    say(f"pool of {len(pool):,} phrases built in {pool_s:.2f} s; {n:,} messages generated in {generate_s:.2f} s; "
        f"sending to {topic or settings.topic_in} at {settings.bootstrap}, {pace}, for at most {duration:g} s")
    sent = send(settings, traffic.messages, rate=rate, duration=duration, topic=topic, allow_remote=allow_remote)
    if n < count and sent["stopped_by"] == "count":  # rate * duration messages were all it could send
        sent["stopped_by"] = "duration"
    figures = traffic.figures(sent["sent"], cache_size=cache_size)
    del figures["messages"]  # the same as "sent"
    return {"count": sent.pop("delivered"), **sent, **figures, **traffic.settings,
            "pool_s": round(pool_s, 3), "generate_s": round(generate_s, 3)}
