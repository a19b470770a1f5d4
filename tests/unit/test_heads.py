"""Unit tests of models.heads, models.registry, models.datasets and retrain.demo.

They use a fake embedder (hash-seeded random unit vectors) and tiny models: no MiniLM here.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from models import heads as heads_mod
from models.datasets import OOS, SPLITS, load_clinc150, load_domain_lists
from models.heads import (
    ChecksumMismatch,
    EmbedderMismatch,
    HeadPrediction,
    HeadRef,
    LabeledVectors,
    LabelEncoder,
    TrainParams,
    class_weights,
    classification_report,
    load_head,
    new_version,
    read_train_data,
    train_head,
)
from models.registry import Registry, RegistryError

DIM = 384
TINY = TrainParams(hidden_units=16, dropout=0.0, max_epochs=4, patience=2, batch_size=32, learning_rate=1e-2)


class FakeEmbedder:
    """Deterministic stand-in for models.embedder.Embedder: a unit vector seeded by the text."""

    def __init__(self, version: str = "fake-v1", dim: int = DIM):
        self.version = version
        self.dim = dim
        self.calls = 0

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            v = np.random.default_rng(zlib.crc32(text.encode("utf-8"))).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def synthetic(n_per_class: int, seed: int, labels=("greet", "bye", OOS)) -> LabeledVectors:
    """Well-separated clusters, one per label, around fixed random centres."""
    centres = np.random.default_rng(0).standard_normal((len(labels), DIM))
    rng = np.random.default_rng(seed)
    texts, ys, vecs = [], [], []
    for c, label in enumerate(labels):
        for j in range(n_per_class):
            v = centres[c] + 0.3 * rng.standard_normal(DIM)
            vecs.append(v / np.linalg.norm(v))
            texts.append(f"{label} phrase {seed}-{j}")
            ys.append(label)
    return LabeledVectors(texts, ys, np.asarray(vecs, dtype=np.float32))


# ---------------------------------------------------------------------------------- HeadRef


def test_headref_round_trip():
    ref = HeadRef.parse("global/intent:20261127T130501Z-abc123")
    assert ref == HeadRef("global", "intent", "20261127T130501Z-abc123")
    assert str(ref) == "global/intent:20261127T130501Z-abc123"
    assert HeadRef.parse(str(ref)) == ref
    assert ref.key == ("global", "intent")
    assert ref.path("/m") == Path("/m/heads/global/intent/20261127T130501Z-abc123")
    v = new_version()
    assert HeadRef("eu", "domain_2", v).version == v
    assert len(v) == len("20261127T130501Z-abc123") and v[8] == "T" and v[15] == "Z"
    assert sorted([HeadRef("a", "b", "2"), HeadRef("a", "b", "1")])[0].version == "1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "global/intent",
        "global:v1",
        "Global/intent:v1",
        "glo bal/intent:v1",
        "global/in/tent:v1",
        "global/intent:",
        "global/intent:../x",
        "global/intent:a/b",
        "/intent:v1",
        "global/:v1",
        "eu.x/intent:v1",
    ],
)
def test_headref_rejects_bad_names(text):
    with pytest.raises(ValueError):
        HeadRef.parse(text)


def test_headref_constructor_validates():
    with pytest.raises(ValueError):
        HeadRef("EU", "intent", "v1")
    with pytest.raises(ValueError):
        HeadRef("eu", "intent", ".hidden")


# ---------------------------------------------------------------------------------- metrics


def test_classification_report_hand_computed():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    r = classification_report(y_true, y_pred, labels=["a", "b", "c", "d"])
    by = {c.label: c for c in r.per_class}
    # a: tp 2, predicted 2, support 3
    assert by["a"].precision == pytest.approx(1.0)
    assert by["a"].recall == pytest.approx(2 / 3)
    assert by["a"].f1 == pytest.approx(0.8)
    assert by["a"].support == 3
    # b: tp 1, predicted 2, support 2
    assert (by["b"].precision, by["b"].recall, by["b"].f1) == pytest.approx((0.5, 0.5, 0.5))
    # c: tp 1, predicted 2, support 1
    assert (by["c"].precision, by["c"].recall, by["c"].f1) == pytest.approx((0.5, 1.0, 2 / 3))
    # d: never true, never predicted: zero division counts as 0
    assert (by["d"].precision, by["d"].recall, by["d"].f1, by["d"].support) == (0.0, 0.0, 0.0, 0)
    assert r.n == 6
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.weighted_f1 == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert r.weighted_recall == pytest.approx(r.accuracy)
    assert r.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3 + 0.0) / 4)
    assert r.in_scope_accuracy is None and r.oos_recall is None


def test_classification_report_oos_and_csv(tmp_path):
    r = classification_report(["x", "x", OOS, OOS], ["x", OOS, OOS, "x"])
    assert r.labels == ["oos", "x"]
    assert r.in_scope_accuracy == pytest.approx(0.5)
    assert r.oos_recall == pytest.approx(0.5)
    assert r.oos_precision == pytest.approx(0.5)
    # in-scope rows: x->x, x->oos: f1 of x = 2*1*0.5/1.5, weight 1 (oos has no in-scope support)
    assert r.in_scope_weighted_f1 == pytest.approx(2 / 3)
    r.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "label,precision,recall,f1,support"
    assert lines[1] == "oos,0.500000,0.500000,0.500000,2"
    assert lines[-3].startswith("accuracy,")
    assert lines[-1].startswith("weighted avg,")
    with pytest.raises(ValueError):
        classification_report(["a"], ["z"], labels=["a"])
    with pytest.raises(ValueError):
        classification_report(["a", "a"], ["a"])


def test_class_weights():
    y = np.array([0, 0, 0, 1])
    assert class_weights(y, 3, "none") is None
    w = class_weights(y, 3, "balanced")
    assert w == pytest.approx({0: 4 / 6, 1: 2.0, 2: 1.0})
    s = class_weights(y, 3, "sqrt")
    assert s[1] == pytest.approx(2.0**0.5)


def test_label_encoder_json():
    enc = LabelEncoder.fit(["b", "a", "b", OOS])
    assert enc.labels == ("a", "b", "oos")
    assert LabelEncoder.from_json(enc.to_json()) == enc
    assert enc.encode(["oos", "a"]).tolist() == [2, 0]
    assert enc.decode([1]) == ["b"]
    with pytest.raises(ValueError):
        enc.encode(["zzz"])
    with pytest.raises(ValueError):
        LabelEncoder(("a", "a"))


# ---------------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    trained = train_head(
        root,
        "global",
        "intent",
        embedder_version="fake-v1",
        train=synthetic(20, seed=1),
        val=synthetic(5, seed=2),
        test=synthetic(5, seed=3),
        params=TINY,
    )
    return root, trained


def test_artifact_layout_and_metadata(built):
    root, trained = built
    path = trained.path
    assert path == trained.ref.path(root)
    assert path.parent == root / "heads" / "global" / "intent"
    names = {p.name for p in path.iterdir()}
    assert names == {
        "model.keras",
        "labels.json",
        "report_train.csv",
        "report_test.csv",
        "train_data.jsonl.gz",
        "code.zip",
        "metadata.json",
    }
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["ref"] == str(trained.ref)
    assert meta["embedder_version"] == "fake-v1"
    assert meta["n_classes"] == 3
    assert set(meta["files"]) == names - {"metadata.json"}
    assert "+00:00" in meta["created_at"]
    assert meta["training"]["params"]["hidden_units"] == 16
    for split in ("train", "val", "test"):
        assert 0.0 <= meta["metrics"][split]["weighted_f1"] <= 1.0
    assert meta["metrics"]["test"]["accuracy"] > 0.9
    assert json.loads((path / "labels.json").read_text()) == ["bye", "greet", "oos"]
    rows = read_train_data(path / "train_data.jsonl.gz")
    assert len(rows) == 60 + 15
    assert rows[0].keys() == {"text", "label", "split"}
    assert {r["split"] for r in rows} == {"train", "val"}
    with zipfile.ZipFile(path / "code.zip") as zf:
        zipped = set(zf.namelist())
    assert {"models/heads.py", "models/registry.py", "retrain/demo.py", "schemas/settings.py"} <= zipped
    assert all(n.endswith(".py") for n in zipped)
    report = (path / "report_test.csv").read_text().splitlines()
    assert report[0] == "label,precision,recall,f1,support" and len(report) == 1 + 3 + 3


def test_save_load_round_trip(built):
    _, trained = built
    head = load_head(trained.path, embedder_version="fake-v1")
    assert head.ref == trained.ref
    assert head.labels == ("bye", "greet", "oos")
    test = synthetic(5, seed=3)
    preds = head.predict(test.vectors, top_k=2)
    assert len(preds) == 15 and all(isinstance(p, HeadPrediction) for p in preds)
    acc = np.mean([p.label == y for p, y in zip(preds, test.labels)])
    assert acc == pytest.approx(trained.metrics["test"]["accuracy"])
    p = preds[0]
    assert len(p.top_k) == 2 and p.top_k[0] == (p.label, p.probability)
    assert p.top_k[0][1] >= p.top_k[1][1]
    assert isinstance(p.probability, float)
    # top_k larger than the classes is clamped; a single 1-d vector works; probabilities sum to 1
    one = head.predict(test.vectors[0], top_k=10)
    assert len(one) == 1 and len(one[0].top_k) == 3
    assert sum(pr for _, pr in one[0].top_k) == pytest.approx(1.0, abs=1e-5)
    assert head.predict(test.vectors[:0], top_k=3) == []
    with pytest.raises(ValueError):
        head.predict(np.zeros((2, 10), dtype=np.float32), top_k=1)


def test_embedder_version_mismatch(built):
    _, trained = built
    with pytest.raises(EmbedderMismatch, match="fake-v1"):
        load_head(trained.path, embedder_version="other-v2")
    assert load_head(trained.path).ref == trained.ref  # no version given: no check


def _copy_head(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", ["labels.json", "model.keras", "report_test.csv", "code.zip"])
def test_tampered_file_raises(built, tmp_path, name):
    _, trained = built
    path = _copy_head(trained.path, tmp_path / "h")
    with open(path / name, "ab") as f:
        f.write(b"\n")
    with pytest.raises(ChecksumMismatch, match=name):
        load_head(path)


def test_missing_or_extra_file_raises(built, tmp_path):
    _, trained = built
    path = _copy_head(trained.path, tmp_path / "h1")
    (path / "report_train.csv").unlink()
    with pytest.raises(ChecksumMismatch, match="missing"):
        load_head(path)
    path = _copy_head(trained.path, tmp_path / "h2")
    (path / "evil.py").write_text("print('hi')\n")
    with pytest.raises(ChecksumMismatch, match="evil.py"):
        load_head(path)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(heads_mod, "write_code_zip", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train_head(
            tmp_path,
            "eu",
            "intent",
            embedder_version="fake-v1",
            train=synthetic(4, 1),
            val=synthetic(2, 2),
            test=synthetic(2, 3),
            params=TrainParams(hidden_units=0, max_epochs=1),
        )
    assert list((tmp_path / "heads" / "eu" / "intent").iterdir()) == []


# ---------------------------------------------------------------------------------- registry


def test_registry_activate_active_history(built):
    root, trained = built
    reg = Registry(root)
    assert reg.active() == {} and reg.regions() == [] and reg.history() == []
    reg.activate(trained.ref)
    assert reg.active() == {"global": {"intent": trained.ref}}
    assert reg.regions() == ["global"]
    assert reg.active_ref("global", "intent") == trained.ref
    assert reg.active_ref("eu", "intent") is None
    reg.activate(str(trained.ref))  # strings work too
    hist = reg.history()
    assert [h["ref"] for h in hist] == [str(trained.ref)] * 2
    assert all("+00:00" in h["activated_at"] for h in hist)
    assert reg.versions("global", "intent") == [trained.ref]
    data = json.loads(reg.path.read_text())
    assert data["active"]["global"]["intent"] == str(trained.ref)
    assert not [p for p in reg.heads_dir.iterdir() if p.name.endswith(".tmp")]

    loaded = reg.load_active(embedder_version="fake-v1")
    assert loaded["global"]["intent"].ref == trained.ref
    with pytest.raises(EmbedderMismatch):
        reg.load_active(embedder_version="other")
    with pytest.raises(RegistryError):
        reg.activate(HeadRef("global", "intent", "20000101T000000Z-000000"))
    with pytest.raises(RegistryError):
        reg.activate(HeadRef("nowhere", "intent", trained.ref.version))


def test_registry_bad_file(tmp_path):
    reg = Registry(tmp_path)
    reg.heads_dir.mkdir(parents=True)
    reg.path.write_text("{not json")
    with pytest.raises(RegistryError):
        reg.active()


# ---------------------------------------------------------------------------------- datasets


def test_datasets_counts():
    full = load_clinc150("full")
    assert len(full.train) == 15000
    assert len(full.val) == 3000
    assert len(full.test) == 4500
    assert len(full.oos_train) == 100 and len(full.oos_val) == 100
    assert len(full.oos_test) == 1000
    assert len(full.intents) == 150
    assert {d for i, d in full.domains.items() if i != OOS} == set(load_domain_lists())
    assert len(load_domain_lists()) == 10
    assert all(len(v) == 15 for v in load_domain_lists().values())
    assert full.domains[OOS] == OOS
    assert set(full.domains) == set(full.intents) | {OOS}
    assert isinstance(full.train[0], tuple) and all(isinstance(x, str) for x in full.train[0])
    assert {i for _, i in full.oos_test} == {OOS}
    assert len(full.with_oos("test")) == 5500
    assert {d for _, d in full.to_domains(full.val)} == set(load_domain_lists())
    assert set(SPLITS) == {"train", "val", "test", "oos_train", "oos_val", "oos_test"}

    imb = load_clinc150("imbalanced")
    assert len(imb.train) == 10525
    assert len(imb.intents) == 150
    assert len(imb.test) == 4500
    with pytest.raises(ValueError):
        load_clinc150("nope")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- demo


def test_demo_heads_with_fake_embedder(tmp_path, monkeypatch):
    from retrain import demo
    from schemas.settings import Settings

    tiny = TrainParams(hidden_units=0, max_epochs=1, batch_size=512, class_weight="none")
    monkeypatch.setattr(demo, "DEMO_PARAMS", {"intent": tiny, "domain": tiny})
    settings = Settings(models_dir=tmp_path)
    emb = FakeEmbedder()
    refs = demo.train_demo_heads(settings, emb, progress=False)
    assert [(r.region, r.model) for r in refs] == [
        ("global", "intent"),
        ("global", "domain"),
        ("eu", "intent"),
        ("eu", "domain"),
    ]
    reg = Registry(tmp_path)
    assert reg.regions() == ["eu", "global"]
    cache = list((tmp_path / "embcache" / "fake-v1").glob("*.npy"))
    assert len(cache) == 1
    arr = np.load(cache[0], allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape[1] == DIM
    meta = json.loads((refs[1].path(tmp_path) / "metadata.json").read_text())
    assert meta["n_classes"] == 11
    assert meta["training"]["n_train"] == 15100 and meta["training"]["n_test"] == 5500
    assert json.loads((refs[0].path(tmp_path) / "metadata.json").read_text())["n_classes"] == 151
    assert json.loads((refs[2].path(tmp_path) / "metadata.json").read_text())["training"]["n_train"] == 10625

    # Everything active for this embedder version: no embedding, no training.
    calls = emb.calls
    assert demo.train_demo_heads(settings, emb, progress=False) == refs
    assert emb.calls == calls
    # Another embedder version: retrained, but the texts are embedded once for all four heads.
    emb2 = FakeEmbedder(version="fake-v2")
    refs2 = demo.train_demo_heads(settings, emb2, progress=False)
    assert refs2 != refs and len(refs2) == 4
    assert emb2.calls == -(-arr.shape[0] // demo.EMBED_CHUNK)
    assert reg.load_active(embedder_version="fake-v2")["eu"]["domain"].ref == refs2[3]


def test_embed_cache_reused(tmp_path):
    from retrain.demo import embed_cached

    emb = FakeEmbedder()
    a = embed_cached(emb, ["a", "b", "c"], tmp_path, progress=False)
    calls = emb.calls
    b = embed_cached(emb, ["a", "b", "c"], tmp_path, progress=False)
    assert emb.calls == calls
    np.testing.assert_array_equal(a, b)
    embed_cached(emb, ["a", "b"], tmp_path, progress=False)
    assert emb.calls == calls + 1
