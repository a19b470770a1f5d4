"""Commit the agents' acked input offsets soon after the broker has their outputs.

The agents ack a batch's input events once the broker has acknowledged every output of it
(``streams.kafka.outbox``). Faust commits acked offsets on its own timer (every 2.8 s), and a
worker killed between two commits serves again everything acked since the last one: at a
few thousand phrases a second, thousands of repeats. So each settled batch asks for a commit
(:meth:`Committer.wake`) and :meth:`Committer.run` commits what is acked, at most every
``interval`` seconds (``PHRASESTREAM_COMMIT_INTERVAL_MS``), never while a commit is on its way
(Faust itself lets one commit run at a time). The agents never wait for a commit.

Faust commits a partition only up to its first offset not acked (a delivered frontier, kept
by Faust per partition), and our acks come in offset order, so a commit never passes an
output the broker does not have. At stop, Faust commits once more after the agents have
drained (``Step.drain``). At a rebalance Faust drops what it had acked of the partitions it
gives up without committing it: at most ``interval`` seconds of acks are served again by
the partitions' next owner.
"""

from __future__ import annotations

import asyncio
import logging

import faust

log = logging.getLogger("phrasestream.worker")


class Committer:
    """Commit acked offsets when asked, at most every ``interval`` seconds; never raise."""

    def __init__(self, app: faust.App, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._wanted = asyncio.Event()
        self.commits = 0  # commits asked of Faust (for the tests)

    def wake(self) -> None:
        """A batch's inputs were acked: commit them soon (the event loop's thread)."""
        self._wanted.set()

    async def run(self) -> None:
        """Commit whenever asked, spaced by ``interval``: the body of an app task."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.app.consumer.commit()
                self.commits += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # a rebalance, a broker away: what is acked is committed next time
                log.warning("committing the acked offsets failed; trying again at the next batch", exc_info=True)
            await asyncio.sleep(self.interval)
