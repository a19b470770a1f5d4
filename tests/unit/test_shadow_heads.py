"""Shadow heads and explanations on the serving path: the shadow runs on its share of the phrases
and publishes only to the shadow topic's list; a failing shadow costs no live prediction; the
head set loads, changes and drops a shadow as the pointer says; evidence goes only to the
phrases that asked, also when the answer comes from the memo."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from fakes import FakeHead, ReadoutEmbedder

from models.heads import HeadRef
from schemas.messages import CleanedPhrase, RegistryPointer, ShadowPrediction
from schemas.review import ShadowSpec
from schemas.settings import Settings
from streams.heads import HeadSet
from streams.metrics import WorkerMetrics
from streams.pipeline import serve_batch
from streams.routing import OFF_RULE, Expert
from streams.shadows import in_shadow
from streams.state.memos import AnswerMemo, EvidenceMemo

LIVE, CANDIDATE = HeadRef("global", "intent", "v1"), HeadRef("global", "intent", "v2")


def spec(version: str = "v2", percent: float = 100.0) -> ShadowSpec:
    return ShadowSpec(version=version, percent=percent, bundle_sha256="1" * 64, bundle_bytes=1)


@dataclass
class Source:
    rules: dict = field(default_factory=lambda: {("global", "intent"): OFF_RULE})
    shadows: dict = field(default_factory=dict)


class BrokenHead(FakeHead):
    def predict(self, vectors, top_k, texts=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("a shadow bug")


def serve(n: int, source: Source, explain: set[int] = frozenset(), memo: AnswerMemo | None = None,
          calls: list | None = None, evidence_memo: EvidenceMemo | None = None):  # type: ignore[no-untyped-def]
    def evidence(head, features, texts):  # type: ignore[no-untyped-def]
        if calls is not None:
            calls.append(list(texts))
        return [{"why": t} for t in texts]

    now = datetime.now(UTC)
    values = [CleanedPhrase(f"p{i}", "global", ["intent"], f"text {i}", now, explain=i in explain).to_bytes()
              for i in range(n)]
    return asyncio.run(serve_batch(values, ReadoutEmbedder(), None, {"global": {"intent": FakeHead(LIVE)}}, 3,
                                   memo=memo, expert=Expert(source, evidence=evidence, memo=evidence_memo)))


def test_the_shadow_runs_on_the_phrases_its_percent_picks_the_same_ones_every_time() -> None:
    ids = [f"p{i}" for i in range(10_000)]
    picked = [i for i in ids if in_shadow(i, 30.0)]
    assert picked == [i for i in ids if in_shadow(i, 30.0)]
    assert abs(len(picked) - 3000) < 5 * (10_000 * 0.3 * 0.7) ** 0.5
    assert all(in_shadow(i, 100.0) for i in ids[:100])
    assert set(i for i in ids if in_shadow(i, 10.0)) <= set(picked)  # a larger share keeps the smaller one's


def test_shadow_answers_go_to_the_shadow_list_only_with_the_live_answer_beside_them() -> None:
    source = Source(shadows={("global", "intent"): (FakeHead(CANDIDATE), spec(percent=40.0))})
    served = serve(200, source)
    assert {p.model_version for p in served.predictions} == {"v1"} and len(served.predictions) == 200
    shadows = [ShadowPrediction.model_validate_json(v) for _, v in served.extra.shadows]
    assert [s.id for s in shadows] == [f"p{i}" for i in range(200) if in_shadow(f"p{i}", 40.0)]
    assert [k.decode() for k, _ in served.extra.shadows] == [s.id for s in shadows]  # keyed by phrase id
    assert all(s.model_version == "v2" and s.live_version == "v1" and s.live_label == s.label for s in shadows)
    assert all(s.head_ms is not None and s.head_ms >= 0 and s.live_head_ms is not None for s in shadows)
    assert served.extra.shadow_counts == {("global", "intent", "v2"): len(shadows)}


def test_a_failing_shadow_costs_no_live_prediction_and_is_counted_and_logged_once(caplog) -> None:  # type: ignore[no-untyped-def]
    source = Source(shadows={("global", "intent"): (BrokenHead(CANDIDATE), spec())})
    with caplog.at_level(logging.WARNING, "phrasestream.worker"):
        served = serve(20, source)
    assert len(served.predictions) == 20 and not served.failures and served.extra.shadows == []
    assert served.extra.shadow_failures == {("global", "intent", "v2"): 1}
    assert sum("shadow head global/intent:v2 failed" in r.getMessage() for r in caplog.records) == 1
    metrics = WorkerMetrics(process=False)
    metrics.batch_served(20, served)
    assert metrics.registry.get_sample_value("phrasestream_shadow_failures_total",
                                             {"region": "global", "model": "intent", "version": "v2"}) == 1.0


def test_evidence_goes_only_to_the_phrases_that_asked_and_is_computed_only_for_them() -> None:
    calls: list = []
    served = serve(6, Source(), explain={1, 4}, calls=calls)
    assert calls == [["text 1", "text 4"]]
    assert {p.id: p.evidence for p in served.predictions} == {
        "p0": None, "p1": {"why": "text 1"}, "p2": None, "p3": None, "p4": {"why": "text 4"}, "p5": None}
    assert served.extra.evidence_rows == 2
    assert b"evidence" not in served.payloads[0][1]


def test_an_explain_phrase_answered_from_the_memo_still_gets_its_evidence() -> None:
    memo = AnswerMemo(100)
    serve(3, Source(), memo=memo)  # the answers are remembered, without evidence
    served = serve(3, Source(), explain={2}, memo=memo)
    assert memo.hits >= 3
    assert [p.evidence for p in served.predictions] == [None, None, {"why": "text 2"}]


def test_evidence_explained_before_is_remembered_per_head_version_and_text() -> None:
    calls: list = []
    remembered = EvidenceMemo(100)
    serve(4, Source(), explain={0, 1}, calls=calls, evidence_memo=remembered)
    served = serve(4, Source(), explain={1, 2}, calls=calls, evidence_memo=remembered)
    assert calls == [["text 0", "text 1"], ["text 2"]]  # text 1 was explained before
    assert [p.evidence for p in served.predictions] == [None, {"why": "text 1"}, {"why": "text 2"}, None]
    assert remembered.hits == 1


def test_without_explain_rule_or_shadow_nothing_is_added() -> None:
    served = serve(5, Source())
    assert served.extra.reviews == [] and served.extra.shadows == [] and served.extra.evidence_rows == 0


# --- the head set follows the pointer's shadow ------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    ref: HeadRef
    metadata: dict = field(default_factory=dict)


class Files:
    def __init__(self, corrupt: set[str] = frozenset()) -> None:
        self.corrupt, self.loads = set(corrupt), []

    def fetch(self, settings: Settings, ref: HeadRef, want_sha256: str | None) -> Path:
        if ref.version in self.corrupt:
            from models.registry.bundles import BundleError

            raise BundleError(f"{ref}: a file fails its checksum")
        return Path(str(ref))

    def load(self, folder: Path, embedder_version: str) -> Loaded:
        self.loads.append(str(folder))
        return Loaded(HeadRef.parse(str(folder)))


def pointer(version: str, seq: int, shadow: ShadowSpec | None = None) -> RegistryPointer:
    return RegistryPointer(region="global", model="intent", version=version, action="promote", seq=seq,
                           bundle_sha256="0" * 64, bundle_bytes=1, shadow=shadow)


def head_set(files: Files) -> HeadSet:
    return HeadSet(Settings(_env_file=None), "emb-v1", fetch=files.fetch, load=files.load)


def test_the_head_set_loads_a_shadow_from_a_pointer_of_the_same_live_version_and_drops_it() -> None:
    files = Files()
    heads = head_set(files)
    assert heads.offer(pointer("v1", 1))
    assert heads.shadows == {}
    heads.offer(pointer("v1", 2, spec(percent=50.0)))  # same live version: only the shadow changed
    head, held = heads.shadows[("global", "intent")]
    assert head.ref == CANDIDATE and held.percent == 50.0
    heads.offer(pointer("v1", 3, spec(percent=10.0)))  # another share: the loaded head stays
    assert heads.shadows[("global", "intent")][1].percent == 10.0 and files.loads.count("global/intent:v2") == 1
    heads.offer(pointer("v1", 4))  # promote --shadow --stop
    assert heads.shadows == {}
    heads.offer(pointer("v1", 5, spec()))
    assert ("global", "intent") in heads.shadows
    heads.offer(pointer("v2", 6, spec()))  # the candidate is promoted: its shadow ends
    assert heads.shadows == {} and heads.heads["global"]["intent"].ref == CANDIDATE


def test_a_shadow_that_fails_its_checks_is_refused_once_and_the_live_head_serves(caplog) -> None:  # type: ignore[no-untyped-def]
    heads = head_set(Files(corrupt={"v2"}))
    heads.offer(pointer("v1", 1))
    with caplog.at_level(logging.ERROR, "phrasestream.worker"):
        heads.offer(pointer("v1", 2, spec()))
        heads.offer(pointer("v1", 3, spec(percent=20.0)))
    assert heads.shadows == {} and heads.heads["global"]["intent"].ref == LIVE
    assert sum("refused shadow head global/intent:v2" in r.getMessage() for r in caplog.records) == 1


BOUND_S = 60.0  # a hang guard, never a measure


class DatabaseAway(Files):
    """Files whose shadow version comes from the database, which answers only once ``up`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.tried_twice, self.loaded = threading.Event(), threading.Event(), threading.Event()
        self.tries = 0

    def fetch(self, settings: Settings, ref: HeadRef, want_sha256: str | None) -> Path:
        if ref.version == "v2" and not self.up.is_set():
            import psycopg2

            self.tries += 1
            if self.tries >= 2:
                self.tried_twice.set()
            raise psycopg2.OperationalError("connection refused")
        return super().fetch(settings, ref, want_sha256)

    def load(self, folder: Path, embedder_version: str) -> Loaded:
        loaded = super().load(folder, embedder_version)
        if loaded.ref == CANDIDATE:
            self.loaded.set()
        return loaded


def test_a_shadow_whose_bundle_waits_for_the_database_is_fetched_once_it_answers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import streams.heads

    monkeypatch.setattr(streams.heads, "FIRST_PAUSE_S", 0.01)
    files = DatabaseAway()
    heads = HeadSet(Settings(_env_file=None, registry_retry_seconds=0.05), "emb-v1", fetch=files.fetch,
                    load=files.load)
    heads.offer(pointer("v1", 1))
    heads.offer(pointer("v1", 2, spec()))
    assert heads.shadows == {}  # not refused: waiting
    assert files.tried_twice.wait(BOUND_S), "tried again while the database is away"
    files.up.set()
    assert files.loaded.wait(BOUND_S)
    with heads._changing:  # the thread installs the shadow under the lock, after loading it
        assert heads._changing.wait_for(lambda: ("global", "intent") in heads.shadows, BOUND_S)
    assert heads.shadows[("global", "intent")][0].ref == CANDIDATE
    heads.stop()


def test_the_head_set_holds_each_heads_rule_from_the_pointer_or_the_head() -> None:
    heads = head_set(Files())
    heads.offer(pointer("v1", 1))
    assert heads.rules[("global", "intent")].margin == 0.2  # the default: the head records none
    heads.offer(pointer("v1", 2).model_copy(update={"review": OFF_RULE}))  # review-rule, no retraining
    assert heads.rules[("global", "intent")] == OFF_RULE


def test_a_loaded_shadow_shows_in_the_metrics_before_its_first_answer() -> None:
    metrics = WorkerMetrics(process=False)
    metrics.watch(shadows=lambda: {("global", "intent"): (FakeHead(CANDIDATE), spec(percent=5.0))})
    labels = {"region": "global", "model": "intent", "version": "v2"}
    text = metrics.registry.get_sample_value
    assert text("phrasestream_shadow_head_info", {**labels, "percent": "5"}) == 1.0
    assert text("phrasestream_shadow_predictions_total", labels) == 0.0


def test_shadow_bytes_parse_as_a_shadow_prediction() -> None:
    source = Source(shadows={("global", "intent"): (FakeHead(CANDIDATE), spec())})
    served = serve(1, source)
    raw = orjson.loads(served.extra.shadows[0][1])
    assert ShadowPrediction.model_validate(raw).to_bytes() == served.extra.shadows[0][1]
