"""Unit tests of streams.state (the embedding cache, the answer memo) and streams.pipeline, with a fake embedder and fake heads."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fakes import FakeHead

from models.heads import HeadRef
from schemas.messages import CleanedPhrase, ErrorKind, utcnow
from streams.pipeline import Embedded, Served, classify, serve_batch
from streams.state.cache import (
    BLOCK,
    EmbeddingCache,
    MappingBackend,
    cache_key,
    decode_entries,
    encode_entries,
    entry_size,
)

DIM = 8
VERSION = "fake-v1"


class FakeEmbedder:
    """Give each distinct text a fixed unit vector as its features; record every call."""

    def __init__(self, version: str = VERSION, dim: int = DIM) -> None:
        self.version, self.dim = version, dim
        self.calls: list[list[str]] = []
        self._rows: dict[str, int] = {}

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]

    def vector(self, text: str) -> np.ndarray:
        row = self._rows.setdefault(text, len(self._rows))
        out = np.zeros(self.dim, dtype=np.float32)
        out[row % self.dim] = 1.0 if row < self.dim else -1.0
        return out

    @property
    def feature_dim(self) -> int:
        return self.dim

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts]).astype(np.float32)


class RecordingBackend(MappingBackend):
    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}
        self.deleted: list[str] = []
        super().__init__(self.store)

    def delete(self, key: str) -> None:
        self.deleted.append(key)
        super().delete(key)


def heads_for(spec: dict[str, list[str]]) -> dict[str, dict[str, FakeHead]]:
    return {
        region: {model: FakeHead(HeadRef(region, model, f"{region}-{model}-v7")) for model in models}
        for region, models in spec.items()
    }


def cache(max_entries: int = 100, version: str = VERSION, backend: MappingBackend | None = None) -> EmbeddingCache:
    return EmbeddingCache(backend or MappingBackend({}), version, DIM, max_entries)


def phrase(pid: str, text: str, models: list[str], region: str = "global", received_at: datetime | None = None) -> CleanedPhrase:
    return CleanedPhrase(
        id=pid, region=region, models=models, clean_text=text, received_at=received_at or utcnow()
    )


def unit(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


# --- cache_key ----------------------------------------------------------------------------


def test_cache_key_differs_across_embedder_versions() -> None:
    assert cache_key("v1", "hello") != cache_key("v2", "hello")


def test_cache_key_is_version_prefixed_and_stable() -> None:
    key = cache_key("v1", "hello")
    assert key == "v1+q8:2cf24dba5fb0a30e26e83b2ac5b9e29e"
    assert cache_key("v1", "hello") == key


def test_cache_key_differs_across_texts() -> None:
    assert cache_key("v1", "hello") != cache_key("v1", "hello ")


# --- EmbeddingCache ---------------------------------------------------------------------


def test_miss_then_hit() -> None:
    c = cache()
    assert c.get("a") is None
    c.put("a", unit(1))
    found = c.get("a")
    assert found is not None and found.dtype == np.float32
    np.testing.assert_array_equal(found, c.rounded(unit(1)[None, :])[0])
    np.testing.assert_allclose(found, unit(1), atol=1e-3)
    assert (c.hits, c.misses) == (1, 1)


def test_put_stores_a_float16_scale_then_int8_under_cache_key() -> None:
    data: dict[str, bytes] = {}
    c = cache(backend=MappingBackend(data))
    c.put("a", np.arange(DIM, dtype=np.float64) - 2.0)  # -2 .. 5: the scale is 5 / 127
    raw = data[cache_key(VERSION, "a")]
    assert len(raw) == entry_size(DIM) == 2 + DIM
    assert np.frombuffer(raw[:2], dtype=np.float16)[0] == np.float16(5 / 127)
    assert np.frombuffer(raw[2:], dtype=np.int8).tolist() == [-51, -25, 0, 25, 51, 76, 102, 127]


def test_an_entry_has_one_scale_per_readout_block() -> None:
    vectors = np.random.default_rng(3).normal(size=(2, 3 * BLOCK)).astype(np.float32)
    vectors[1, BLOCK:] *= 100.0  # blocks of another magnitude keep their own precision
    [first, second] = encode_entries(vectors)
    assert len(first) == len(second) == entry_size(3 * BLOCK) == 6 + 3 * BLOCK
    back = decode_entries(first + second, 3 * BLOCK)
    for row in range(2):
        for b in range(3):
            block = slice(b * BLOCK, (b + 1) * BLOCK)
            step = np.abs(vectors[row, block]).max() / 127
            assert np.abs(back[row, block] - vectors[row, block]).max() <= 0.5 * step * 1.01


def test_an_all_zero_vector_comes_back_as_zeros() -> None:
    np.testing.assert_array_equal(decode_entries(b"".join(encode_entries(np.zeros((1, DIM)))), DIM), np.zeros((1, DIM)))


@pytest.mark.parametrize("raw", [
    np.zeros(DIM - 1, dtype=np.int8).tobytes(),  # too short
    np.zeros(DIM, dtype=np.float16).tobytes(),  # a float16 entry (the format before q8)
    b"",
])
def test_entry_of_wrong_size_is_a_miss(raw: bytes) -> None:
    data = {cache_key(VERSION, "a"): raw}
    c = cache(backend=MappingBackend(data))
    assert c.get("a") is None
    assert (c.hits, c.misses) == (0, 1)
    assert len(c) == 0, "a miss is not tracked"


def test_get_returns_float32_equal_to_the_rounded_input_and_rounding_twice_changes_nothing() -> None:
    c = cache()
    vector = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    c.put("a", vector)
    found = c.get("a")
    assert found is not None and found.dtype == np.float32 and found.shape == (DIM,)
    np.testing.assert_array_equal(found, c.rounded(vector[None, :])[0])
    assert not np.array_equal(found, vector), "rounding to int8 is visible"
    # what a miss is served with (rounded) is stored and comes back exactly
    c.put("b", found)
    np.testing.assert_array_equal(c.get("b"), found)


def test_other_embedder_version_does_not_hit() -> None:
    backend = MappingBackend({})
    cache(version="v1", backend=backend).put("a", unit(0))
    other = cache(version="v2", backend=backend)
    assert other.get("a") is None
    assert cache(version="v1", backend=backend).get("a") is not None


def test_lru_evicts_least_recently_used_and_deletes_from_backend() -> None:
    backend = RecordingBackend()
    c = cache(max_entries=2, backend=backend)
    c.put("a", unit(0))
    c.put("b", unit(1))
    assert c.get("a") is not None  # a is now more recent than b
    c.put("c", unit(2))
    assert backend.deleted == [cache_key(VERSION, "b")]
    assert set(backend.store) == {cache_key(VERSION, "a"), cache_key(VERSION, "c")}
    assert c.get("b") is None
    assert c.get("a") is not None and c.get("c") is not None


def test_lru_put_of_existing_key_refreshes_it_without_eviction() -> None:
    backend = RecordingBackend()
    c = cache(max_entries=2, backend=backend)
    c.put("a", unit(0))
    c.put("b", unit(1))
    c.put("a", unit(3))
    assert backend.deleted == []
    c.put("c", unit(2))
    assert backend.deleted == [cache_key(VERSION, "b")]
    np.testing.assert_array_equal(c.get("a"), c.rounded(unit(3)[None, :])[0])


def test_lru_holds_at_most_max_entries() -> None:
    backend = RecordingBackend()
    c = cache(max_entries=3, backend=backend)
    for i in range(10):
        c.put(f"t{i}", unit(i % DIM))
    assert set(backend.store) == {cache_key(VERSION, f"t{i}") for i in (7, 8, 9)}
    assert backend.deleted == [cache_key(VERSION, f"t{i}") for i in range(7)]


def test_max_entries_zero_disables_cache() -> None:
    backend = RecordingBackend()
    c = cache(max_entries=0, backend=backend)
    c.put("a", unit(0))
    assert backend.store == {}
    assert c.get("a") is None
    assert (c.hits, c.misses) == (0, 1)


def test_max_entries_zero_ignores_existing_backend_entries() -> None:
    backend = MappingBackend({cache_key(VERSION, "a"): encode_entries(unit(0)[None, :])[0]})
    assert cache(max_entries=0, backend=backend).get("a") is None


def test_mapping_backend_get_put_delete() -> None:
    data: dict[str, bytes] = {}
    backend = MappingBackend(data)
    assert backend.get("k") is None
    backend.put("k", b"v")
    assert backend.get("k") == b"v" and data == {"k": b"v"}
    backend.delete("k")
    backend.delete("k")  # deleting a missing key is fine
    assert data == {}


def serve_texts(texts: Sequence[str], embedder: FakeEmbedder, cache: EmbeddingCache | None,
                heads: dict | None = None) -> tuple[Served, list[np.ndarray]]:
    """Serve one batch, one cleaned phrase per text, as the serving agent does (``serve_batch``, no offload).

    Return what it gave and the features the head got for each phrase, in order.
    """
    heads = heads or heads_for({"global": ["intent"]})
    values = [phrase(f"p{i}", text, ["intent"]).to_bytes() for i, text in enumerate(texts)]
    head = heads["global"]["intent"]
    before = len(head.calls)
    served = asyncio.run(serve_batch(values, embedder, cache, heads, top_k=2))
    assert served.failures == []
    return served, [row for call in head.calls[before:] for row in call]


# --- serve_batch: the embedding cache on the serving path ---------------------------------


def test_serving_without_a_cache_embeds_every_text_once() -> None:
    embedder = FakeEmbedder()
    served, features = serve_texts(["a", "b"], embedder, None)
    assert embedder.calls == [["a", "b"]]
    assert [p.cache_hit for p in served.predictions] == [False, False]
    np.testing.assert_array_equal(np.stack(features), np.stack([embedder.vector("a"), embedder.vector("b")]))


def test_a_second_batch_hits_the_cache_and_does_not_call_the_embedder() -> None:
    embedder, c = FakeEmbedder(), cache()
    first, first_features = serve_texts(["hello"], embedder, c)
    second, second_features = serve_texts(["hello"], embedder, c)
    assert embedder.calls == [["hello"]]
    assert [p.cache_hit for p in first.predictions] == [False] and [p.cache_hit for p in second.predictions] == [True]
    np.testing.assert_array_equal(first_features[0], second_features[0])
    assert (c.hits, c.misses) == (1, 1)


def test_duplicate_texts_in_one_batch_are_embedded_once() -> None:
    embedder, c = FakeEmbedder(), cache()
    served, features = serve_texts(["a", "b", "a", "a", "b"], embedder, c)
    assert embedder.calls == [["a", "b"]]
    assert [p.cache_hit for p in served.predictions] == [False] * 5
    np.testing.assert_array_equal(features[0], features[2])
    np.testing.assert_array_equal(features[0], features[3])
    np.testing.assert_array_equal(features[1], features[4])
    assert not np.array_equal(features[0], features[1])


def test_a_mixed_batch_embeds_only_its_misses_in_one_call() -> None:
    embedder, c = FakeEmbedder(), cache()
    serve_texts(["a"], embedder, c)
    served, features = serve_texts(["b", "a", "c", "b"], embedder, c)
    assert embedder.calls == [["a"], ["b", "c"]]
    assert [p.cache_hit for p in served.predictions] == [False, True, False, False]
    expected = c.rounded(np.stack([embedder.vector(t) for t in ["b", "a", "c", "b"]]))
    np.testing.assert_array_equal(np.stack(features), expected)


def test_a_phrase_gets_the_same_features_cached_or_not() -> None:
    embedder, c = FakeEmbedder(), cache()
    _, missed = serve_texts(["a"], embedder, c)
    served, hit = serve_texts(["a"], embedder, c)
    assert [p.cache_hit for p in served.predictions] == [True]
    np.testing.assert_array_equal(missed[0], hit[0])
    assert not np.array_equal(missed[0], embedder.vector("a")), "the miss was served the rounded vector"


def test_a_batch_of_hits_does_not_call_the_embedder() -> None:
    embedder, c = FakeEmbedder(), cache()
    serve_texts(["a", "b"], embedder, c)
    served, _ = serve_texts(["b", "a"], embedder, c)
    assert len(embedder.calls) == 1 and [p.cache_hit for p in served.predictions] == [True, True]


def test_a_disabled_cache_embeds_every_batch() -> None:
    embedder, c = FakeEmbedder(), cache(max_entries=0)
    serve_texts(["a"], embedder, c)
    serve_texts(["a"], embedder, c)
    assert embedder.calls == [["a"], ["a"]]


def test_a_new_embedder_version_misses_the_entries_of_the_old_one() -> None:
    backend = MappingBackend({})
    old, new = FakeEmbedder("v1"), FakeEmbedder("v2")
    serve_texts(["a"], old, cache(version=old.version, backend=backend))
    served, _ = serve_texts(["a"], new, cache(version=new.version, backend=backend))
    assert new.calls == [["a"]] and [p.cache_hit for p in served.predictions] == [False]


def test_an_empty_batch_serves_nothing_and_embeds_nothing() -> None:
    embedder = FakeEmbedder()
    served, features = serve_texts([], embedder, cache())
    assert embedder.calls == [] and features == []
    assert (list(served.predictions), served.payloads, served.embed_seconds) == ([], [], [])


# --- classify -----------------------------------------------------------------------------


def test_classify_one_prediction_per_phrase_and_model() -> None:
    heads = heads_for({"global": ["intent", "oos"], "eu": ["intent"]})
    phrases = [
        phrase("p0", "zero", ["intent", "oos"]),
        phrase("p1", "one", ["oos"]),
        phrase("p2", "two", ["intent"], region="eu"),
    ]
    embedded = Embedded(np.stack([unit(0), unit(1), unit(2)]), [False, True, False])
    predictions, failures = classify(phrases, embedded, heads, VERSION, top_k=2)
    assert failures == []
    assert sorted((p.id, p.region, p.model) for p in predictions) == [
        ("p0", "global", "intent"),
        ("p0", "global", "oos"),
        ("p1", "global", "oos"),
        ("p2", "eu", "intent"),
    ]
    labels = {(p.id, p.model): p.label for p in predictions}
    assert labels == {("p0", "intent"): "intent:0", ("p0", "oos"): "oos:0", ("p1", "oos"): "oos:1", ("p2", "intent"): "intent:2"}


def test_classify_runs_each_head_once_on_its_rows() -> None:
    heads = heads_for({"global": ["intent", "oos"]})
    phrases = [phrase("p0", "a", ["intent"]), phrase("p1", "b", ["oos"]), phrase("p2", "c", ["intent", "oos"])]
    embedded = Embedded(np.stack([unit(0), unit(1), unit(2)]), [False] * 3)
    classify(phrases, embedded, heads, VERSION, top_k=2)
    intent, oos = heads["global"]["intent"], heads["global"]["oos"]
    assert len(intent.calls) == 1 and len(oos.calls) == 1
    np.testing.assert_array_equal(intent.calls[0], np.stack([unit(0), unit(2)]))
    np.testing.assert_array_equal(oos.calls[0], np.stack([unit(1), unit(2)]))


def test_classify_passes_each_rows_clean_text_to_the_head_in_row_order() -> None:
    heads = heads_for({"global": ["intent", "oos"], "eu": ["intent"]})
    phrases = [
        phrase("p0", "first text", ["oos", "intent"]),
        phrase("p1", "second", ["intent"], region="eu"),
        phrase("p2", "third one", ["intent"]),
        phrase("p3", "fourth", ["oos"]),
        phrase("p4", "first text", ["intent"]),
    ]
    embedded = Embedded(np.stack([unit(i) for i in range(5)]), [False] * 5)
    classify(phrases, embedded, heads, VERSION, top_k=2)
    assert heads["global"]["intent"].texts == [["first text", "third one", "first text"]]
    assert heads["global"]["oos"].texts == [["first text", "fourth"]]
    assert heads["eu"]["intent"].texts == [["second"]]
    np.testing.assert_array_equal(heads["global"]["intent"].calls[0], np.stack([unit(0), unit(2), unit(4)]))


def test_classify_fields_come_from_head_ref_phrase_and_embedder() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    p = CleanedPhrase(id="p0", region="global", models=["intent"], clean_text="hi", received_at=utcnow(), ts=ts)
    heads = heads_for({"global": ["intent"]})
    [pred], _ = classify([p], Embedded(np.stack([unit(3)]), [True]), heads, "emb-v9", top_k=2)
    assert pred.model_version == "global-intent-v7"
    assert pred.embedder_version == "emb-v9"
    assert pred.clean_text == "hi"
    assert pred.received_at == p.received_at and pred.ts == ts
    assert pred.probability == 0.9
    assert pred.top_k == [("intent:3", 0.9), ("intent:other", 0.1)]
    assert pred.predicted_at >= pred.received_at


def test_classify_passes_top_k_to_head() -> None:
    heads = heads_for({"global": ["intent"]})
    [pred], _ = classify([phrase("p0", "a", ["intent"])], Embedded(np.stack([unit(0)]), [False]), heads, VERSION, top_k=1)
    assert pred.top_k == [("intent:0", 0.9)]


def test_classify_cache_hit_flags_per_phrase() -> None:
    heads = heads_for({"global": ["intent", "oos"]})
    phrases = [phrase("hit", "a", ["intent", "oos"]), phrase("miss", "b", ["intent", "oos"])]
    predictions, _ = classify(phrases, Embedded(np.stack([unit(0), unit(1)]), [True, False]), heads, VERSION, 2)
    assert {(p.id, p.model): p.cache_hit for p in predictions} == {
        ("hit", "intent"): True,
        ("hit", "oos"): True,
        ("miss", "intent"): False,
        ("miss", "oos"): False,
    }


def test_classify_latency_is_non_negative_and_measured_from_received_at() -> None:
    heads = heads_for({"global": ["intent"]})
    fresh = phrase("fresh", "a", ["intent"])
    old = phrase("old", "b", ["intent"], received_at=utcnow() - timedelta(seconds=2))
    predictions, _ = classify([fresh, old], Embedded(np.stack([unit(0), unit(1)]), [False, False]), heads, VERSION, 2)
    latency = {p.id: p.latency_ms for p in predictions}
    assert latency["fresh"] >= 0
    assert 2000 <= latency["old"] < 60_000


def test_classify_inactive_head_is_a_failure_not_a_prediction() -> None:
    heads = heads_for({"global": ["intent"]})
    ok, gone = phrase("ok", "a", ["intent"]), phrase("gone", "b", ["intent", "retired"])
    predictions, failures = classify([ok, gone], Embedded(np.stack([unit(0), unit(1)]), [False, False]), heads, VERSION, 2)
    assert [(p.id, p.model) for p in predictions] == [("ok", "intent")]
    assert failures == [(gone, "head(s) ['retired'] of region 'global' are no longer active")]
    assert len(heads["global"]["intent"].calls[0]) == 1  # the failed phrase's row is not predicted


def test_classify_region_without_heads_is_a_failure() -> None:
    heads = heads_for({"global": ["intent"]})
    p = phrase("p", "a", ["intent"], region="eu")
    predictions, failures = classify([p], Embedded(np.stack([unit(0)]), [False]), heads, VERSION, 2)
    assert list(predictions) == []
    assert failures == [(p, "head(s) ['intent'] of region 'eu' are no longer active")]


def test_classify_empty_batch() -> None:
    predictions, failures = classify([], Embedded(np.zeros((0, DIM), dtype=np.float32), []), heads_for({"g": ["m"]}), VERSION, 2)
    assert (list(predictions), failures) == ([], [])


def test_a_text_served_twice_is_embedded_once_and_labelled_alike() -> None:
    embedder, c = FakeEmbedder(), cache()
    first, _ = serve_texts(["same", "same"], embedder, c)
    second, _ = serve_texts(["same"], embedder, c)
    assert embedder.calls == [["same"]]
    assert [p.cache_hit for p in first.predictions] == [False, False]
    assert [p.cache_hit for p in second.predictions] == [True]
    assert {p.label for p in [*first.predictions, *second.predictions]} == {"intent:0"}


@pytest.mark.parametrize("max_entries", [1, 2, 5])
def test_the_cache_bound_holds_on_the_serving_path(max_entries: int) -> None:
    backend = RecordingBackend()
    serve_texts([f"t{i}" for i in range(7)], FakeEmbedder(), cache(max_entries, backend=backend))
    assert len(backend.store) == max_entries


# --- entries recovered from the table's changelog ----------------------------------------


def test_adopted_entries_are_evicted_before_entries_used_since_start():
    store: dict = {cache_key("v1", t): encode_entries(np.ones((1, 4)))[0] for t in ("old-a", "old-b")}
    cache = EmbeddingCache(MappingBackend(store), "v1", dim=4, max_entries=3)
    cache.put("new", np.ones(4, np.float32))
    assert cache.adopt(list(store)) == 0
    cache.put("newer", np.ones(4, np.float32))
    assert set(store) == {cache_key("v1", t) for t in ("old-b", "new", "newer")}


def test_adopt_evicts_entries_of_another_embedder_version_first():
    store: dict = {cache_key("v1", "kept"): b"x" * 8, cache_key("v0", "stale"): b"x" * 8}
    cache = EmbeddingCache(MappingBackend(store), "v1", dim=4, max_entries=1)
    assert cache.adopt(list(store)) == 1
    assert list(store) == [cache_key("v1", "kept")]
    assert len(cache) == 1


def test_adopt_evicts_entries_of_the_float16_format_first():
    store: dict = {cache_key("v1", "kept"): b"x" * 6, "v1:2cf24dba5fb0a30e26e83b2ac5b9e29e": b"x" * 8}
    cache = EmbeddingCache(MappingBackend(store), "v1", dim=4, max_entries=1)
    assert cache.adopt(list(store)) == 1
    assert list(store) == [cache_key("v1", "kept")]


def test_adopt_keeps_other_versions_while_under_the_bound():
    store: dict = {cache_key("v0", "other-worker"): b"x" * 8}
    cache = EmbeddingCache(MappingBackend(store), "v1", dim=4, max_entries=5)
    assert cache.adopt(list(store)) == 0
    assert list(store) == [cache_key("v0", "other-worker")]


def test_a_hit_on_an_untracked_entry_keeps_the_bound():
    store: dict = {cache_key("v1", t): encode_entries(np.ones((1, 4)))[0] for t in ("a", "b", "c")}
    cache = EmbeddingCache(MappingBackend(store), "v1", dim=4, max_entries=2)
    for text in ("a", "b", "c"):
        assert cache.get(text) is not None
    assert len(cache) == 2 and len(store) == 2


# --- serve_batch: what the embed agent runs ------------------------------------------------


class PoisonEmbedder(FakeEmbedder):
    """Fail any batch that holds the text "poison"."""

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        if "poison" in texts:
            raise RuntimeError("the embedder choked")
        return super().features_batch(texts)


def serve(values: list[bytes], embedder: FakeEmbedder, heads: dict) -> Served:
    return asyncio.run(serve_batch(values, embedder, cache(), heads, top_k=2))


def test_serve_batch_dead_letters_a_message_that_is_not_a_cleaned_phrase_and_serves_the_rest():
    heads = heads_for({"global": ["intent"]})
    served = serve([b"{not json", phrase("ok", "hello", ["intent"]).to_bytes()], FakeEmbedder(), heads)
    assert [p.id for p in served.predictions] == ["ok"]
    [failure] = served.failures
    assert (failure.kind, failure.raw) == (ErrorKind.WRONG_TYPE, b"{not json")


def test_serve_batch_isolates_the_phrase_that_breaks_its_batch():
    heads = heads_for({"global": ["intent"]})
    values = [phrase(pid, text, ["intent"]).to_bytes() for pid, text in (("a", "fine"), ("b", "poison"), ("c", "good"))]
    served = serve(values, PoisonEmbedder(), heads)
    assert sorted(p.id for p in served.predictions) == ["a", "c"]
    [failure] = served.failures
    assert (failure.kind, failure.id) == (ErrorKind.INTERNAL, "b")
    assert "choked" in failure.reason


def test_serve_batch_reports_a_head_that_is_gone_as_unknown_model():
    heads = heads_for({"global": ["intent"]})
    served = serve([phrase("x", "hello", ["domain"]).to_bytes()], FakeEmbedder(), heads)
    assert list(served.predictions) == []
    assert [(f.kind, f.id) for f in served.failures] == [(ErrorKind.UNKNOWN_MODEL, "x")]


def test_serve_batch_serialises_each_prediction_keyed_by_its_id_through_the_offload():
    heads = heads_for({"global": ["intent", "domain"]})
    calls: list[str] = []

    async def offload(fn, *args):  # type: ignore[no-untyped-def]
        calls.append(fn.__name__)
        return fn(*args)

    values = [phrase(f"p{i}", f"text {i}", ["intent", "domain"]).to_bytes() for i in range(3)]
    served = asyncio.run(serve_batch(values, FakeEmbedder(), cache(), heads, top_k=2, offload=offload))
    assert calls == ["_compute"], "embedding, heads and serialisation run in one offloaded call"
    assert len(served.predictions) == 6
    assert served.payloads == [(p.id.encode(), p.to_bytes()) for p in served.predictions]


def test_adopt_forgets_entries_of_partitions_that_moved_away():
    backend = MappingBackend({})
    lru = EmbeddingCache(backend, "v1", 4, max_entries=10)
    for text in ("a", "b", "c"):
        lru.put(text, np.ones(4, dtype=np.float32))
    held = backend.keys()  # a MappingBackend's keys, not a dict's
    kept = [k for k in held if k != cache_key("v1", "b")]
    backend.delete(cache_key("v1", "b"))  # a rebalance took its partition
    assert lru.adopt(kept) == 0
    assert len(lru) == 2, "the bound counts only what this worker holds"


def test_the_answer_memo_gives_the_heads_answers_and_never_those_of_another_version():
    from streams.state.memos import AnswerMemo

    v7 = FakeHead(HeadRef("global", "intent", "v7"))
    v8 = FakeHead(HeadRef("global", "intent", "v8"))
    memo = AnswerMemo(max_entries=3)
    texts = ["a", "b", "a", "c"]  # serving, a text's features are a function of the text
    vectors = np.eye(DIM, dtype=np.float32)[[0, 1, 0, 2]]
    first = memo.answer(v7, vectors, texts, 2)
    assert first == v7.predict(vectors, 2, texts=texts)
    assert [len(c) for c in v7.calls[:1]] == [4]
    again = memo.answer(v7, vectors[:2], ["a", "b"], 2)
    assert again == first[:2] and memo.hits == 2 and len(v7.calls) == 2, "remembered: the head is not called"
    other = memo.answer(v8, vectors[:1], ["a"], 2)
    assert len(v8.calls) == 1 and other[0].label == first[0].label, "a new version computes its own answers"
    assert len(memo) == 3, "bounded"
    off = AnswerMemo(0)
    off.answer(v7, vectors[:1], ["a"], 2)
    assert len(v7.calls) == 3 and len(off) == 0
