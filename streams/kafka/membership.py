"""How a worker joins its consumer group: broker URL, static member id, session and heartbeat."""

from __future__ import annotations

import socket
from typing import Any

from schemas.settings import Settings


def faust_broker_url(bootstrap: str) -> str:
    """Return Faust's broker URL for comma-separated ``host:port`` servers."""
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap.split(",") if server.strip())


def group_instance_id(settings: Settings) -> str | None:
    """Return this worker's static group member id, or None for dynamic membership.

    The id must be unique in the group and the same across restarts of one worker: by
    default ``<app_id>-<host>-<worker_index>`` (``phrasestream start --workers N`` numbers
    its workers 1..N; two machines differ by host name).
    """
    chosen = settings.group_instance_id.strip()
    if chosen.lower() == "none":
        return None
    return chosen or f"{settings.app_id}-{socket.gethostname()}-{settings.worker_index}"


def worker_group_settings(settings: Settings) -> dict[str, Any]:
    """Return the Faust settings for group membership and offset commits.

    - ``consumer_group_instance_id``: static membership (KIP-345). A worker killed and
      started again rejoins as the same member and gets its partitions back without a
      rebalance; before, the group waited for the dead member's session to expire (a minute).
    - ``broker_session_timeout``: how long a silent member keeps its partitions. Short, so
      that a dead worker's partitions move to the others quickly; the price is that a worker
      whose event loop stalls that long is taken out of the group (the embedder runs off the
      loop, so heartbeats go on during a batch). A static member that stops cleanly does not
      leave the group either: its partitions wait this long before they move.
    """
    session = settings.session_timeout_seconds
    return {
        "consumer_group_instance_id": group_instance_id(settings),
        "broker_session_timeout": session,
        "broker_heartbeat_interval": min(3.0, session / 3.0),
    }
