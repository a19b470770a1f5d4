"""HeadSet: swaps heads whole, refuses a bad version once, and fetches a version again while the database is away.

The fetch and the load are stand-ins (no PostgreSQL, no files); the pauses between fetches are
made tiny through ``registry_retry_seconds``. Waits are bounded only so that a bug cannot hang
the run: every assertion is about what happened, never about how long it took.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from models.heads import HeadRef
from models.registry.bundles import BundleError
from schemas.messages import RegistryPointer
from schemas.settings import Settings
from streams import heads as heads_module
from streams.heads import HeadSet

BOUND_S = 60.0  # a hang guard, never a measure


@dataclass(frozen=True)
class FakeHead:
    ref: HeadRef


class Registry:
    """Stand in for the local models folder and the bundles in PostgreSQL."""

    def __init__(self, local: set[str], stored: set[str] = frozenset(), corrupt: set[str] = frozenset()) -> None:
        self.local, self.stored, self.corrupt = set(local), set(stored), set(corrupt)
        self.database_up = threading.Event()
        self.fetched: list[str] = []
        self.failed = 0
        self.failed_thrice = threading.Event()
        self.loaded: dict[str, threading.Event] = {}
        self.broken = False

    def fetch(self, settings: Settings, ref: HeadRef, want_sha256: str | None) -> Path:
        self.fetched.append(ref.version)
        if self.broken:
            raise RuntimeError("a bug in the fetch")
        if ref.version in self.corrupt:
            raise BundleError(f"{ref}: a file fails its checksum")
        if ref.version in self.local:
            return Path(str(ref))
        if not self.database_up.is_set():
            self.failed += 1
            if self.failed >= 3:
                self.failed_thrice.set()
            raise psycopg2.OperationalError("connection refused\nis the server running?")
        if ref.version not in self.stored:
            raise BundleError(f"no bundle of {ref}")
        return Path(str(ref))

    def load(self, folder: Path, embedder_version: str) -> FakeHead:
        ref = HeadRef.parse(str(folder))  # fetch's folder is named after the ref
        self.loaded.setdefault(ref.version, threading.Event()).set()
        return FakeHead(ref)

    def was_loaded(self, version: str) -> threading.Event:
        return self.loaded.setdefault(version, threading.Event())


def pointer(version: str, seq: int, action: str = "promote") -> RegistryPointer:
    return RegistryPointer(region="global", model="intent", version=version, action=action, seq=seq,
                           bundle_sha256="0" * 64, bundle_bytes=1)


def head_set(registry: Registry) -> HeadSet:
    settings = Settings(_env_file=None, registry_retry_seconds=0.01)
    return HeadSet(settings, "emb-v1", fetch=registry.fetch, load=registry.load)


def serving_v1(**registry: set[str]) -> tuple[Registry, HeadSet]:
    """Return a registry holding v1 locally (and ``registry``'s versions), and a head set serving v1."""
    files = Registry(local={"v1"}, **registry)
    heads = head_set(files)
    assert heads.offer(pointer("v1", 1))
    return files, heads


def serving(heads: HeadSet) -> str:
    return str(heads.heads["global"]["intent"].ref.version)


def fetch_thread() -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == "head-fetch-global-intent"), None)


def join_fetch_thread() -> None:
    thread = fetch_thread()
    if thread is not None:
        thread.join(BOUND_S)
        assert not thread.is_alive()


def test_a_new_version_is_swapped_in_as_a_new_dict_and_a_batch_keeps_the_one_it_took() -> None:
    heads = head_set(Registry(local={"v1", "v2"}))
    assert heads.offer(pointer("v1", 1, "activate")) is True
    taken = heads.heads
    assert heads.offer(pointer("v2", 2)) is True
    assert serving(heads) == "v2" and taken["global"]["intent"].ref.version == "v1"
    assert heads.known == {"global": ["intent"]}


def test_an_older_or_replayed_pointer_changes_nothing() -> None:
    registry = Registry(local={"v1", "v2"})
    heads = head_set(registry)
    heads.offer(pointer("v2", 2))
    assert heads.offer(pointer("v1", 1)) is False and heads.offer(pointer("v2", 2)) is False
    assert serving(heads) == "v2" and registry.fetched == ["v2"]


def test_a_refused_version_is_logged_once_never_tried_again_and_the_previous_keeps_serving(caplog) -> None:
    registry, heads = serving_v1(corrupt={"v2"})
    with caplog.at_level(logging.ERROR, "phrasestream.worker"):
        assert heads.offer(pointer("v2", 2)) is False
        assert heads.offer(pointer("v2", 2)) is False
    assert serving(heads) == "v1" and registry.fetched == ["v1", "v2"]
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("refused head global/intent:v2 (promote #2): ") and line.endswith("still serving v1")


def test_a_version_whose_bundle_waits_for_the_database_loads_once_it_answers(caplog) -> None:
    registry, heads = serving_v1(stored={"v2"})
    with caplog.at_level(logging.INFO, "phrasestream.worker"):
        assert heads.offer(pointer("v2", 2)) is False
        assert heads.waiting and serving(heads) == "v1", "the previous version serves meanwhile"
        assert heads.offer(pointer("v2", 2)) is False, "a replay of the waiting pointer (the follower's first read)"
        assert registry.failed_thrice.wait(BOUND_S), "tried again while the database is away"
        registry.database_up.set()
        assert registry.was_loaded("v2").wait(BOUND_S)
        join_fetch_thread()
    assert serving(heads) == "v2" and not heads.waiting
    lines = [r.getMessage() for r in caplog.records]
    waits = [line for line in lines if line.startswith("cannot fetch head")]
    assert waits == ["cannot fetch head global/intent:v2 yet: PostgreSQL: connection refused; still serving v1; "
                     "trying again every 0 s at most"], "said once, when it starts waiting"
    [fetched] = [line for line in lines if line.startswith("head global/intent: fetched after")]
    tries = int(re.fullmatch(r"head global/intent: fetched after (\d+) tries", fetched).group(1))
    assert tries == registry.failed + 1


def test_a_newer_pointer_replaces_a_version_that_waits_for_the_database() -> None:
    registry, heads = serving_v1(stored={"v2"})
    heads.offer(pointer("v2", 2))
    assert heads.waiting
    assert heads.offer(pointer("v1", 3, "rollback")) is False, "back to the version that serves: no load"
    assert not heads.waiting
    registry.database_up.set()
    join_fetch_thread()
    assert serving(heads) == "v1" and heads.pointers[("global", "intent")].seq == 3
    assert not registry.was_loaded("v2").is_set(), "the replaced version is not fetched when the database is back"


def test_stop_ends_the_fetching_of_a_waiting_version() -> None:
    registry, heads = serving_v1(stored={"v2"})
    heads.offer(pointer("v2", 2))
    heads.stop()
    join_fetch_thread()
    registry.database_up.set()
    assert serving(heads) == "v1" and not registry.was_loaded("v2").is_set()


def test_a_fetch_that_fails_for_another_reason_is_logged_and_no_longer_waits(caplog) -> None:
    registry, heads = serving_v1(stored={"v2"})
    heads.offer(pointer("v2", 2))
    registry.broken = True  # the next try, in the fetch thread, meets a bug instead of the database
    with caplog.at_level(logging.ERROR, "phrasestream.worker"):
        join_fetch_thread()
    assert not heads.waiting and serving(heads) == "v1"
    assert any(r.getMessage() == "head global/intent: fetching version v2 failed; not trying it again"
               for r in caplog.records)


class NoFollower:
    def __init__(self, settings: Settings, on_pointer: object) -> None:
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        pass


def test_start_waits_for_the_database_when_no_head_can_load_without_it(monkeypatch) -> None:
    registry = Registry(local=set(), stored={"v1"})
    monkeypatch.setattr(heads_module, "read_all", lambda settings: {("global", "intent"): pointer("v1", 1)})
    monkeypatch.setattr(heads_module, "Follower", NoFollower)
    heads = head_set(registry)
    opened = threading.Thread(target=lambda: registry.failed_thrice.wait(BOUND_S) and registry.database_up.set())
    opened.start()
    heads.start(wait_s=BOUND_S)
    opened.join(BOUND_S)
    assert serving(heads) == "v1" and registry.failed >= 3
    assert heads._follower is not None and heads._follower.started, "then it follows the registry topic"
    heads.stop()


@pytest.mark.parametrize(("pointers", "reason"), [
    ({}, "the registry topic names none"),
    ({("global", "intent"): pointer("v9", 4)}, "refused head global/intent:v9 (promote #4): "),
])
def test_start_refuses_to_run_without_a_head(monkeypatch, pointers, reason: str) -> None:
    monkeypatch.setattr(heads_module, "read_all", lambda settings: pointers)
    monkeypatch.setattr(heads_module, "Follower", NoFollower)
    with pytest.raises(RuntimeError, match=re.escape(reason)):
        head_set(Registry(local=set(), corrupt={"v9"})).start(wait_s=BOUND_S)
