"""The heads every batch is served with: the live version of each (region, model), from the registry topic.

Beside them, from the same pointers: each head's review rule (``streams.routing.rule_for``) and
its shadow head, when the pointer names one (``promote --shadow``; ``streams.shadows``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg2
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from models.heads import Head, HeadError, HeadRef, load_head
from models.registry.bundles import BundleError
from models.registry.lifecycle import head_folder
from models.registry.pointers import Follower, read_all
from schemas.messages import RegistryPointer
from schemas.review import ReviewRule, ShadowSpec
from schemas.settings import Settings
from streams.routing import rule_for

log = logging.getLogger("phrasestream.worker")

Key = tuple[str, str]
"""(region, model)."""

Fetch = Callable[[Settings, HeadRef, str | None], Path]
"""Return a local folder with a head's verified files (``models.registry.lifecycle.head_folder``)."""

Load = Callable[[Path, str], Head]
"""Load and check the head in a folder for an embedder version (``models.heads.load_head``; the
default one checks the embedder's precision too)."""

FIRST_PAUSE_S = 2.0
"""The first pause before a head whose bundle the database could not give is fetched again; it doubles."""


def _fetch(settings: Settings, ref: HeadRef, want_sha256: str | None) -> Path:
    return head_folder(settings, ref, want_sha256=want_sha256)


def _loader(embedder_precision: str | None) -> Load:
    """Return the :data:`Load` that refuses a head of another embedder version or ``embedder_precision``."""

    def load(folder: Path, embedder_version: str) -> Head:
        return load_head(folder, embedder_version=embedder_version, embedder_precision=embedder_precision)

    return load


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HeadSet:
    """The heads every batch is served with, following the registry topic ``models.registry``.

    ``heads`` (region -> model -> :class:`Head`) is replaced whole, never changed in place:
    a batch takes it once and is served by one consistent set, and a swap is one assignment.
    New versions are fetched (from PostgreSQL when this machine lacks their files), verified
    and loaded in the registry follower's thread, off the event loop.

    A version that fails to load or fails its checksums, or was trained for another embedder
    version or precision (``embedder_precision``; None checks none), is refused with one log
    line and is not tried again (until it is promoted anew); the previous version keeps serving. A
    version whose bundle cannot be fetched because the database does not answer is fetched
    again in a thread of its own, with tenacity's growing pause (2 s, doubling, at most
    ``registry_retry_seconds``), until it loads, a newer pointer replaces it, or the set
    stops; logged when it starts waiting and when it loads.

    ``shadows`` ((region, model) -> (head, spec)) holds the shadow head of each pointer that
    names one, loaded by the same fetch and checks (a shadow that fails them is refused with one
    log line, and the live head serves on; one whose bundle waits for the database is fetched
    again in a thread of its own until it answers); it goes when the pointer names none, or
    names the live version. ``rules`` holds each head's review rule. Both are replaced whole, like ``heads``.
    """

    def __init__(self, settings: Settings, embedder_version: str, embedder_precision: str | None = None,
                 fetch: Fetch = _fetch, load: Load | None = None) -> None:
        self._settings = settings
        self._embedder_version = embedder_version
        self._fetch = fetch
        self._load_head = load or _loader(embedder_precision)
        # one change at a time (the follower's thread, the fetch threads); start() waits on it too
        self._changing = threading.Condition()
        self._stopping = threading.Event()
        self.heads: dict[str, dict[str, Head]] = {}
        self.pointers: dict[Key, RegistryPointer] = {}
        self.refused: dict[tuple[str, str, int], str] = {}
        self.shadows: dict[Key, tuple[Head, ShadowSpec]] = {}
        self.rules: dict[Key, ReviewRule] = {}
        self._shadow_refused: set[tuple[str, str, str, str]] = set()
        self._waiting: dict[Key, RegistryPointer] = {}  # pointers whose bundle waits for the database
        self._follower: Follower | None = None

    @property
    def known(self) -> dict[str, list[str]]:
        """Map each region to the names of its live heads."""
        return {region: sorted(models) for region, models in self.heads.items()}

    @property
    def waiting(self) -> bool:
        """Say whether a version waits for the database."""
        return bool(self._waiting)

    def start(self, wait_s: float = 60.0) -> None:
        """Load the live version of every head, then follow the registry topic in a thread.

        When no head loads at once because the database does not answer, wait up to
        ``wait_s`` for one to be fetched; raise ``RuntimeError`` if none is.
        """
        for pointer in read_all(self._settings).values():
            self.offer(pointer)
        with self._changing:
            self._changing.wait_for(lambda: bool(self.heads) or not self._waiting, timeout=wait_s)
            if not self.heads:
                self._stopping.set()
                why = "; ".join([*self.refused.values(),
                                 *(f"head {r}/{m} waits for the database" for r, m in self._waiting)])
                raise RuntimeError(f"no live head could be loaded from {self._settings.topic_registry} "
                                   f"({why or 'the registry topic names none'}); "
                                   "run `phrasestream train`, or promote a version")
        self._follower = Follower(self._settings, self.offer)
        self._follower.start()

    def stop(self) -> None:
        """Stop following the registry and fetching waiting heads (the heads keep serving)."""
        self._stopping.set()
        if self._follower is not None:
            self._follower.stop()

    def offer(self, pointer: RegistryPointer) -> bool:
        """Serve ``pointer``'s version if it is new and loads; say whether the heads changed."""
        key = (pointer.region, pointer.model)
        with self._changing:
            current = self.pointers.get(key)
            if current is not None and pointer.seq <= current.seq:
                return False  # a replayed or older pointer
            if (*key, pointer.seq) in self.refused:
                return False
            waiting = self._waiting.pop(key, None)  # a newer pointer replaces one that waited
            if waiting is not None and pointer.seq <= waiting.seq:
                self._waiting[key] = waiting  # the follower replays what start() offered: it waits already
                return False
            if current is not None and current.version == pointer.version:
                self.pointers = {**self.pointers, key: pointer}  # a shadow or a rule changed, maybe
                self._follow_extras(pointer)
                return False
            try:
                return self._load(pointer)
            except psycopg2.Error as exc:
                log.warning("cannot fetch head %s yet: PostgreSQL: %s; %s; trying again every %.0f s at most",
                            HeadRef(*key, pointer.version), _first_line(exc), self._serving(key),
                            self._settings.registry_retry_seconds)
                self._waiting[key] = pointer
                first = exc
            finally:
                self._changing.notify_all()
        threading.Thread(target=self._fetch_when_back, args=(pointer, first), daemon=True,
                         name=f"head-fetch-{pointer.region}-{pointer.model}").start()
        return False

    def _serving(self, key: Key) -> str:
        current = self.pointers.get(key)
        return f"still serving {current.version}" if current else "no version of it is served"

    def _load(self, pointer: RegistryPointer) -> bool:
        """Load ``pointer``'s version and swap it in, or refuse it; raise ``psycopg2.Error`` when the
        database does not answer. Hold ``_changing``."""
        key = (pointer.region, pointer.model)
        ref = HeadRef(pointer.region, pointer.model, pointer.version)
        try:
            head = self._load_head(self._fetch(self._settings, ref, pointer.bundle_sha256), self._embedder_version)
            if head.ref != ref:
                raise HeadError(f"the files of {ref} hold head {head.ref}")
        except (BundleError, HeadError, OSError, ValueError) as exc:
            reason = f"refused head {ref} ({pointer.action} #{pointer.seq}): {exc}"
            self.refused[(*key, pointer.seq)] = reason
            log.error("%s; %s", reason, self._serving(key))
            return False
        # the swap: a new dict, assigned at once; a batch in flight keeps the one it took
        heads = {region: dict(models) for region, models in self.heads.items()}
        heads.setdefault(pointer.region, {})[pointer.model] = head
        previous = self.pointers.get(key)
        self.heads, self.pointers = heads, {**self.pointers, key: pointer}
        log.info("now serving head %s (%s%s%s)", ref, pointer.action,
                 f", was {previous.version}" if previous else "",
                 f": {pointer.reason}" if pointer.reason else "")
        self._follow_extras(pointer)
        return True

    def _follow_extras(self, pointer: RegistryPointer) -> None:
        """Set the head's review rule and load, keep or drop its shadow, as ``pointer`` says. Hold ``_changing``."""
        key = (pointer.region, pointer.model)
        live = self.heads.get(pointer.region, {}).get(pointer.model)
        rule = rule_for(pointer, live)
        if self.rules.get(key) != rule:
            self.rules = {**self.rules, key: rule}
            log.info("review rule of %s/%s: margin < %g, oos %s, shadow disagreement %s, random slice %g "
                     "(at most %d doubtful and %d random items an hour)", *key, rule.margin, rule.oos,
                     rule.shadow_disagreement, rule.random_rate, rule.budget_per_hour, rule.random_budget_per_hour)
        spec = pointer.shadow
        held = self.shadows.get(key)
        if spec is None or spec.version == pointer.version:
            if held is not None:
                self.shadows = {k: v for k, v in self.shadows.items() if k != key}
                log.info("shadow head %s/%s:%s ended (%s)", *key, held[1].version,
                         "now live" if spec is not None else "the pointer names no shadow")
            return
        if held is not None and held[1].version == spec.version:
            if held[1] != spec:  # another share of the phrases
                self.shadows = {**self.shadows, key: (held[0], spec)}
            return
        shadow = self._load_shadow(pointer, spec)
        if shadow is not None:
            self.shadows = {**self.shadows, key: (shadow, spec)}
            log.info("shadow head %s runs beside %s on %g%% of the phrases", shadow.ref, pointer.version, spec.percent)
        elif held is not None:  # the pointer names another shadow: the old one ends either way
            self.shadows = {k: v for k, v in self.shadows.items() if k != key}

    def _load_shadow(self, pointer: RegistryPointer, spec: ShadowSpec) -> Head | None:
        """Fetch, verify and load a shadow version (None, with one log line, when it cannot be).

        When the database does not answer, the shadow is not refused: a thread of its own fetches
        it again (:meth:`_shadow_when_back`), as for a live version.
        """
        try:
            return self._try_shadow(pointer, spec)
        except psycopg2.Error as exc:
            log.warning("cannot fetch shadow head %s/%s:%s yet: PostgreSQL: %s; the live head %s serves without it, "
                        "trying again every %.0f s at most", pointer.region, pointer.model, spec.version,
                        _first_line(exc), pointer.version, self._settings.registry_retry_seconds)
            threading.Thread(target=self._shadow_when_back, args=(pointer, spec), daemon=True,
                             name=f"shadow-fetch-{pointer.region}-{pointer.model}").start()
            return None

    def _try_shadow(self, pointer: RegistryPointer, spec: ShadowSpec) -> Head | None:
        """Load a shadow version; None (refused, logged once) if it fails its checks; raise ``psycopg2.Error``."""
        ref = HeadRef(pointer.region, pointer.model, spec.version)
        mark = (pointer.region, pointer.model, spec.version, spec.bundle_sha256)
        if mark in self._shadow_refused:
            return None
        try:
            head = self._load_head(self._fetch(self._settings, ref, spec.bundle_sha256), self._embedder_version)
            if head.ref != ref:
                raise HeadError(f"the files of {ref} hold head {head.ref}")
        except (BundleError, HeadError, OSError, ValueError) as exc:
            self._shadow_refused.add(mark)
            log.error("refused shadow head %s (%s #%d): %s; the live head %s serves without it", ref,
                      pointer.action, pointer.seq, _first_line(exc), pointer.version)
            return None
        return head

    def _shadow_when_back(self, pointer: RegistryPointer, spec: ShadowSpec) -> None:
        """Fetch a shadow again, with a growing pause, until it loads, is refused, is no longer asked for, or the set stops."""
        key = (pointer.region, pointer.model)
        pause = FIRST_PAUSE_S
        while not self._stopping.wait(pause):
            with self._changing:
                current = self.pointers.get(key)
                held = self.shadows.get(key)
                if current is None or current.shadow != spec or (held is not None and held[1] == spec):
                    return  # another pointer took over (it loads its own shadow)
                try:
                    head = self._try_shadow(current, spec)
                except psycopg2.Error:
                    pause = min(pause * 2, self._settings.registry_retry_seconds)
                    continue
                if head is not None:
                    self.shadows = {**self.shadows, key: (head, spec)}
                    log.info("shadow head %s runs beside %s on %g%% of the phrases (fetched once the database "
                             "answered)", head.ref, current.version, spec.percent)
                self._changing.notify_all()
                return

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the set stops."""
        self._stopping.wait(seconds)

    def _fetch_when_back(self, pointer: RegistryPointer, first: psycopg2.Error) -> None:
        """Fetch ``pointer``'s version again until it loads or is refused; give up when it no longer waits.

        Runs in a thread of its own. :meth:`offer` made try 1 and got ``first``: tenacity counts
        it, so try 2 comes after the first pause. The pauses end early when the set stops.
        """
        key = (pointer.region, pointer.model)

        def given_up(_: RetryCallState) -> bool:
            return self._stopping.is_set() or self._waiting.get(key) is not pointer

        retrying = Retrying(
            retry=retry_if_exception_type(psycopg2.Error),
            wait=wait_exponential(multiplier=FIRST_PAUSE_S, max=self._settings.registry_retry_seconds),
            stop=given_up,
            sleep=self._pause,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    tries = attempt.retry_state.attempt_number
                    if tries == 1:
                        raise first
                    with self._changing:
                        if given_up(attempt.retry_state):
                            return
                        loaded = self._load(pointer)  # raises psycopg2.Error while the database is away
                        del self._waiting[key]
                        self._changing.notify_all()
        except psycopg2.Error:
            return  # replaced by a newer pointer, or the set stops
        except Exception:  # a bug, not the database: say so, and leave the version to a newer pointer
            log.exception("head %s/%s: fetching version %s failed; not trying it again", *key, pointer.version)
            with self._changing:
                if self._waiting.get(key) is pointer:
                    del self._waiting[key]
                self._changing.notify_all()
            return
        if loaded:
            log.info("head %s/%s: fetched after %d tries", *key, tries)
