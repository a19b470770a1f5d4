"""Unit tests of models.heads, models.registry, models.datasets, retrain.train.artifacts and retrain.train.demo_heads.

They use a fake embedder (hash-seeded random vectors per word) and tiny heads: no MiniLM here.
The numpy ``Head`` is also tested on hand-made arrays, with no training at all.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fakes import ReadoutEmbedder as FakeEmbedder

from models.checksums import sha256_file
from models.datasets import OOS, SPLITS, load_clinc150, load_domain_lists
from models.embedder import READOUT
from models.heads import (
    BLOCK_DIM,
    FORMAT_VERSION,
    ChecksumMismatch,
    EmbedderMismatch,
    Head,
    HeadError,
    HeadPrediction,
    HeadRef,
    LabelEncoder,
    TextFeatures,
    block_columns,
    load_head,
    new_version,
)
from models.registry.mirror import Registry, RegistryError
from retrain.train import artifacts
from retrain.train.artifacts import read_jsonl_gz
from retrain.train.config import HeadConfig, SelectionConfig, TextFeatureConfig, TrainConfig
from retrain.train.data import Row
from retrain.train.trainer import make_trainer
from schemas.cleaning import clean

DIM = BLOCK_DIM


WORDS = {
    "greet": ["hello", "hi", "morning", "hey", "greetings"],
    "bye": ["goodbye", "farewell", "later", "ciao", "night"],
    "thanks": ["thanks", "grateful", "cheers", "appreciate", "kind"],
}
FILLERS = ["so", "very", "you", "all", "there", "and", "my", "friend"]


def pairs(n_per_class: int, seed: int, labels: dict[str, list[str]] = WORDS, oos: int = 0) -> list[tuple[str, str]]:
    """(text, label) pairs: two topic words and two fillers, plus ``oos`` rows of fillers and noise."""
    rng = np.random.default_rng(seed)
    out = []
    for label, words in labels.items():
        for j in range(n_per_class):
            picked = [str(w) for w in rng.choice(words, 2)] + [str(w) for w in rng.choice(FILLERS, 2)]
            out.append((" ".join(picked) + f" s{seed}n{j}", label))
    for j in range(oos):
        out.append((" ".join(str(w) for w in rng.choice(FILLERS, 3)) + f" qq{rng.integers(10**6)} s{seed}o{j}", OOS))
    return out


def rows(items: list[tuple[str, str]]) -> list[Row]:
    return [Row(text=t, clean_text=clean(t), label=label, line=i + 1) for i, (t, label) in enumerate(items)]


TINY = HeadConfig(max_epochs=6, patience=2, batch_size=32, learning_rate=5e-3)


def tiny_config(region: str = "global", model: str = "intent") -> TrainConfig:
    return TrainConfig(region=region, model=model, head=TINY, selection=SelectionConfig(candidates=[{}], val_fraction=0.2))


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
    with pytest.raises(ValueError):
        LabelEncoder(())
    with pytest.raises(ValueError):
        LabelEncoder.from_json('{"a": 1}')


# ---------------------------------------------------------------------------------- the numpy Head on hand-made arrays


def softmax64(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def make_head(labels, members, arrays, *, readout=("mean6",), blocks=("mean6",), oos_threshold=None,
              text_features=None) -> Head:  # type: ignore[no-untyped-def]
    config = {"readout": list(readout), "blocks": list(blocks), "members": members,
              "oos_threshold": oos_threshold, "text_features": text_features or {}}
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    return Head(HeadRef("t", "m", "v1"), LabelEncoder(tuple(labels)), config, arrays, {"embedder_version": "e"},
                Path("."))


def linear(name: str = "m0", **kw) -> dict:  # type: ignore[no-untyped-def]
    return {"name": name, "kind": "linear", "text_features": [], "temperature": 1.0, "weight": 1.0, **kw}


def rand(shape, seed: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def prob_head(labels, probs: np.ndarray, **kw) -> tuple[Head, np.ndarray]:  # type: ignore[no-untyped-def]
    """A linear head whose row ``i`` of the returned features gets exactly ``probs[i]``.

    Row i of the features is the unit vector e_i and row i of W is log(probs[i]).
    """
    n, k = probs.shape
    W = np.zeros((DIM, k))
    W[:n] = np.log(probs)
    head = make_head(labels, [linear()], {"m0.W": W, "m0.b": np.zeros(k)}, **kw)
    return head, np.eye(n, DIM, dtype=np.float32)


def test_block_columns_picks_blocks_in_the_order_asked():
    cols = block_columns(("mean6", "mean5", "max6"), ["max6", "mean6"])
    assert cols.tolist() == list(range(2 * DIM, 3 * DIM)) + list(range(DIM))
    with pytest.raises(HeadError, match="mean2"):
        block_columns(("mean6",), ["mean2"])


def test_linear_member_is_softmax_of_xw_plus_b_on_its_blocks():
    k = 4
    W, b = rand((DIM, k), 1) * 0.1, rand(k, 2)
    head = make_head("abcd", [linear()], {"m0.W": W, "m0.b": b}, readout=("mean6", "mean5"), blocks=("mean5",))
    x = rand((5, 2 * DIM), 3)
    expected = softmax64(x[:, DIM:].astype(np.float64) @ W + b)
    np.testing.assert_allclose(head.predict_proba(x), expected, rtol=1e-5, atol=1e-7)
    assert head.feature_dim == 2 * DIM and not head.needs_texts
    # one 1-d row is a batch of one
    np.testing.assert_allclose(head.predict_proba(x[0]), expected[:1], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=str(2 * DIM)):
        head.predict_proba(np.zeros((2, DIM), dtype=np.float32))


def test_dense_features_are_standardised_with_mean_and_scale():
    k = 3
    W, b = rand((DIM, k), 4) * 0.1, rand(k, 5)
    mean, scale = rand(DIM, 6) * 0.1, np.abs(rand(DIM, 7)) + 0.5
    head = make_head("abc", [linear()], {"m0.W": W, "m0.b": b, "dense.mean": mean, "dense.scale": scale})
    x = rand((3, DIM), 8)
    expected = softmax64(((x - mean) / scale).astype(np.float64) @ W + b)
    np.testing.assert_allclose(head.predict_proba(x), expected, rtol=1e-5, atol=1e-7)


def test_mlp_member_is_relu_then_linear():
    k, hidden = 3, 5
    W1, b1, W2, b2 = rand((DIM, hidden), 9) * 0.2, rand(hidden, 10), rand((hidden, k), 11), rand(k, 12)
    member = {"name": "m0", "kind": "mlp", "temperature": 1.0, "weight": 1.0}
    head = make_head("abc", [member], {"m0.W1": W1, "m0.b1": b1, "m0.W2": W2, "m0.b2": b2})
    x = rand((4, DIM), 13)
    h = np.maximum(x.astype(np.float64) @ W1 + b1, 0.0)
    assert (h == 0).any(), "the test should exercise the ReLU"
    np.testing.assert_allclose(head.predict_proba(x), softmax64(h @ W2 + b2), rtol=1e-5, atol=1e-7)


def test_two_members_are_averaged_with_their_weights():
    k = 3
    arrays = {"a.W": rand((DIM, k), 14) * 0.1, "a.b": rand(k, 15), "b.W": rand((DIM, k), 16) * 0.1, "b.b": rand(k, 17)}
    head = make_head("abc", [linear("a", weight=1.0), linear("b", weight=3.0)], arrays)
    x = rand((4, DIM), 18).astype(np.float64)
    pa = softmax64(x @ arrays["a.W"] + arrays["a.b"])
    pb = softmax64(x @ arrays["b.W"] + arrays["b.b"])
    got = head.predict_proba(x)
    np.testing.assert_allclose(got, 0.25 * pa + 0.75 * pb, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_temperature_divides_the_logits():
    k = 3
    W, b = rand((DIM, k), 19) * 0.3, rand(k, 20)
    x = rand((4, DIM), 21)
    z = x.astype(np.float64) @ W + b
    hot = make_head("abc", [linear(temperature=2.5)], {"m0.W": W, "m0.b": b})
    plain = make_head("abc", [linear()], {"m0.W": W, "m0.b": b})
    np.testing.assert_allclose(hot.predict_proba(x), softmax64(z / 2.5), rtol=1e-5, atol=1e-7)
    # a temperature above 1 flattens the distribution but keeps the ranking
    assert (hot.predict_proba(x).max(axis=1) < plain.predict_proba(x).max(axis=1)).all()
    assert (hot.predict_proba(x).argmax(axis=1) == plain.predict_proba(x).argmax(axis=1)).all()


def test_oos_is_predicted_when_it_is_the_top_class_or_the_best_in_scope_probability_is_low():
    # oos is in the middle, so mapping the in-scope argmax back to a column is exercised
    labels = ("a", OOS, "z")
    head, _ = prob_head(labels, np.full((1, 3), 1 / 3), oos_threshold=0.4)
    probs = np.array([
        [0.50, 0.30, 0.20],  # best in-scope 0.5 >= 0.4: a
        [0.30, 0.60, 0.10],  # oos is the top class: oos, with its own probability
        [0.45, 0.50, 0.05],  # oos is the top class: oos with its own probability
        [0.05, 0.45, 0.50],  # in-scope argmax is z, the column after oos
        [0.10, 0.40, 0.50],  # z
        [0.35, 0.30, 0.35],  # best in-scope 0.35 < 0.4: oos with 0.65
    ])
    pred, conf = head.decide(probs)
    assert [labels[i] for i in pred] == ["a", OOS, OOS, "z", "z", OOS]
    np.testing.assert_allclose(conf, [0.50, 0.60, 0.50, 0.50, 0.50, 0.65])


def test_oos_threshold_is_strict_and_off_without_threshold_or_oos_label():
    probs = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]])
    at, _ = prob_head(("a", "b", OOS), probs, oos_threshold=0.5)
    pred, conf = at.decide(probs)
    assert pred.tolist() == [0, 1] and conf.tolist() == [0.5, 0.5]  # exactly at the threshold: kept
    strict = np.array([[0.25, 0.25, 0.5]])
    pred, conf = at.decide(strict)
    assert pred.tolist() == [2] and conf.tolist() == [0.5]  # oos on top: its own probability
    low = np.array([[0.3, 0.45, 0.25]])  # b on top but below the threshold: oos with 1 - 0.45
    pred, conf = at.decide(low)
    assert pred.tolist() == [2] and conf.tolist() == pytest.approx([0.55])
    # no threshold: plain argmax, oos included
    off, _ = prob_head(("a", "b", OOS), probs)
    assert off.decide(strict)[0].tolist() == [2] and off.decide(strict)[1].tolist() == [0.5]
    # a threshold but no oos label: plain argmax
    no_oos, _ = prob_head(("a", "b", "c"), probs, oos_threshold=0.9)
    pred, conf = no_oos.decide(probs)
    assert pred.tolist() == [0, 1] and conf.tolist() == [0.5, 0.5]
    # an empty batch
    pred, conf = at.decide(np.zeros((0, 3)))
    assert pred.shape == (0,) and conf.shape == (0,)


def test_predict_labels_come_from_decide_and_top_k_from_the_probabilities():
    labels = ("a", "b", OOS, "d")
    probs = np.array([
        [0.10, 0.20, 0.30, 0.40],
        [0.25, 0.25, 0.40, 0.10],  # oos is the top class
        [0.35, 0.05, 0.55, 0.05],  # oos is the top class
        [0.30, 0.30, 0.10, 0.30],  # ties: stable, lowest column first
    ])
    head, x = prob_head(labels, probs, oos_threshold=0.3)
    answers = head.predict(x, top_k=2)
    assert all(isinstance(a, HeadPrediction) for a in answers)
    assert [a.label for a in answers] == ["d", OOS, OOS, "a"]
    assert [a.probability for a in answers] == pytest.approx([0.40, 0.40, 0.55, 0.30], abs=1e-6)
    assert [[label for label, _ in a.top_k] for a in answers] == [["d", OOS], [OOS, "a"], [OOS, "a"], ["a", "b"]]
    assert answers[0].top_k == [("d", pytest.approx(0.4, abs=1e-6)), (OOS, pytest.approx(0.3, abs=1e-6))]
    assert all(isinstance(p, float) for a in answers for _, p in a.top_k)
    # top_k is clamped to [1, number of classes]
    assert len(head.predict(x[:1], top_k=10)[0].top_k) == 4
    assert len(head.predict(x[:1], top_k=0)[0].top_k) == 1
    assert head.predict(x[:0], top_k=3) == []


# ---------------------------------------------------------------------------------- TF-IDF features


TEXTS = ["hello there my friend", "goodbye my friend", "hello hello again", "thanks a lot friend",
         "see you later", "hello and goodbye"]


@pytest.mark.parametrize("cfg", [TextFeatureConfig(analyzer="word", ngram_range=(1, 2), min_df=1),
                                 TextFeatureConfig(analyzer="char_wb", ngram_range=(2, 4), min_df=2),
                                 TextFeatureConfig(analyzer="word", ngram_range=(1, 1), min_df=1,
                                                   sublinear_tf=False, max_features=5)])
def test_text_features_rebuilt_from_json_equal_sklearn(cfg):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from retrain.train.recipe import fit_text_features

    spec = json.loads(json.dumps(fit_text_features({"t": cfg}, TEXTS)))["t"]
    ours = TextFeatures(spec)
    words = {"token_pattern": cfg.token_pattern} if cfg.analyzer == "word" else {}
    ref = TfidfVectorizer(analyzer=cfg.analyzer, ngram_range=cfg.ngram_range, min_df=cfg.min_df,
                          max_features=cfg.max_features, sublinear_tf=cfg.sublinear_tf, lowercase=False,
                          norm="l2", **words).fit(TEXTS)
    assert ours.dim == len(ref.vocabulary_)
    unseen = ["hello stranger", "", "friend friend friend"]
    for texts in (TEXTS, unseen):
        got = ours.transform(texts)
        assert got.shape == (len(texts), ours.dim) and got.dtype == np.float32
        # same columns by term
        terms = sorted(ref.vocabulary_, key=ref.vocabulary_.get)
        order = [ours.vectorizer.vocabulary_[t] for t in terms]
        np.testing.assert_allclose(got.toarray()[:, order], ref.transform(texts).toarray(), rtol=1e-6, atol=1e-7)


def test_a_member_with_a_text_block_adds_tfidf_times_its_weights():
    from retrain.train.recipe import fit_text_features

    spec = fit_text_features({"word": TextFeatureConfig(analyzer="word", ngram_range=(1, 1), min_df=1)}, TEXTS)
    k, v = 3, len(spec["word"]["vocabulary"])
    W, b, Wt = rand((DIM, k), 22) * 0.1, rand(k, 23), rand((v, k), 24)
    head = make_head("abc", [linear(text_features=["word"])], {"m0.W": W, "m0.b": b, "m0.W_word": Wt},
                     text_features=spec)
    assert head.needs_texts
    x = rand((len(TEXTS), DIM), 25)
    tfidf = TextFeatures(spec["word"]).transform(TEXTS).toarray().astype(np.float64)
    expected = softmax64(x.astype(np.float64) @ W + b + tfidf @ Wt)
    np.testing.assert_allclose(head.predict_proba(x, TEXTS), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="cleaned texts"):
        head.predict_proba(x)
    with pytest.raises(ValueError, match="cleaned texts"):
        head.predict_proba(x, TEXTS[:2])


# ---------------------------------------------------------------------------------- a trained head's folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("models")
    embedder = FakeEmbedder()
    trained = make_trainer(tiny_config()).train(root, embedder, rows(pairs(16, seed=1, oos=16)),
                                                rows(pairs(4, seed=2, oos=4)), progress=False)
    return root, trained, embedder


HEAD_FILES = {
    "head.json", "weights.safetensors", "labels.json", "reference.json", "eval_predictions.jsonl.gz",
    "report_train.csv", "report_eval.csv", "train_data.jsonl.gz", "code.zip", "metadata.json",
    "neighbors.safetensors", "neighbors.json",
}


def test_artifact_layout_and_metadata(built):  # type: ignore[no-untyped-def]
    root, trained, _ = built
    path = trained.path
    assert path == trained.ref.path(root)
    assert path.parent == root / "heads" / "global" / "intent"
    names = {p.name for p in path.iterdir()}
    assert names == HEAD_FILES
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["format"] == FORMAT_VERSION == 2
    assert meta["ref"] == str(trained.ref)
    assert meta["embedder_version"] == "fake-v1"
    assert meta["readout"] == list(READOUT)
    assert meta["n_classes"] == 4
    assert "+00:00" in meta["created_at"]
    assert meta["config"]["head"]["max_epochs"] == TINY.max_epochs
    assert set(meta["files"]) == names - {"metadata.json"}
    for name, digest in meta["files"].items():
        assert digest == sha256_file(path / name), name
    assert set(meta["metrics"]) == {"train", "eval"}
    assert 0.0 <= meta["metrics"]["eval"]["weighted_f1"] <= 1.0
    assert meta["metrics"]["eval"]["n"] == 16
    assert meta["metrics"]["eval"]["accuracy"] > 0.8, meta["metrics"]["eval"]
    assert json.loads((path / "labels.json").read_text()) == ["bye", "greet", "oos", "thanks"]
    data = read_jsonl_gz(path / "train_data.jsonl.gz")
    assert len(data) == 64 + 16
    assert data[0].keys() == {"text", "label", "split"}
    assert {r["split"] for r in data} == {"train", "val", "eval"}
    assert len(read_jsonl_gz(path / "eval_predictions.jsonl.gz")) == 16
    with zipfile.ZipFile(path / "code.zip") as zf:
        zipped = set(zf.namelist())
    assert {"models/heads/__init__.py", "models/heads/ref.py", "models/heads/artifact.py", "models/heads/serve.py",
            "models/registry/mirror.py", "retrain/train/trainer.py", "retrain/train/demo_heads.py",
            "retrain/replay/reader.py", "retrain/drift/report.py", "schemas/settings.py"} <= zipped
    assert zipped == set(meta["code_files"])
    assert all(n.endswith(".py") for n in zipped)
    report = (path / "report_eval.csv").read_text().splitlines()
    assert report[0] == "label,precision,recall,f1,support"
    assert [line.split(",")[0] for line in report[1:5]] == ["bye", "greet", "oos", "thanks"]


def test_save_load_round_trip(built):  # type: ignore[no-untyped-def]
    _, trained, embedder = built
    head = load_head(trained.path, embedder_version="fake-v1")
    assert head.ref == trained.ref
    assert head.labels == ("bye", "greet", "oos", "thanks")
    assert head.embedder_version == "fake-v1" and head.needs_texts
    evald = read_jsonl_gz(trained.path / "eval_predictions.jsonl.gz")
    texts = [r["clean_text"] for r in evald]
    feats = embedder.features_batch(texts)
    preds = head.predict(feats, top_k=2, texts=texts)
    assert len(preds) == 16 and all(isinstance(p, HeadPrediction) for p in preds)
    assert [p.label for p in preds] == [r["pred"] for r in evald]
    acc = np.mean([p.label == r["label"] for p, r in zip(preds, evald)])
    assert acc == pytest.approx(trained.metrics["eval"]["accuracy"])
    for p in preds:
        assert len(p.top_k) == 2 and p.top_k[0][1] >= p.top_k[1][1]
        assert isinstance(p.probability, float)
    # one 1-d vector works; probabilities over every class sum to 1
    one = head.predict(feats[0], top_k=10, texts=texts[:1])
    assert len(one) == 1 and len(one[0].top_k) == 4
    assert sum(pr for _, pr in one[0].top_k) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        head.predict(np.zeros((2, 10), dtype=np.float32), top_k=1, texts=["a", "b"])
    with pytest.raises(ValueError):
        head.predict(feats[:2], top_k=1)  # this head uses TF-IDF: texts are required


def test_an_empty_batch_gives_no_predictions_on_a_tfidf_head(built):  # type: ignore[no-untyped-def]
    _, trained, embedder = built
    head = load_head(trained.path)
    assert head.needs_texts
    assert head.predict(np.zeros((0, embedder.feature_dim), dtype=np.float32), top_k=3, texts=[]) == []


def test_embedder_version_mismatch(built):  # type: ignore[no-untyped-def]
    _, trained, _ = built
    with pytest.raises(EmbedderMismatch, match="fake-v1"):
        load_head(trained.path, embedder_version="other-v2")
    assert load_head(trained.path).ref == trained.ref  # no version given: no check


def _copy_head(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", ["labels.json", "weights.safetensors", "head.json", "report_eval.csv", "code.zip"])
def test_tampered_file_raises(built, tmp_path, name):  # type: ignore[no-untyped-def]
    _, trained, _ = built
    path = _copy_head(trained.path, tmp_path / "h")
    with open(path / name, "ab") as f:
        f.write(b"\n")
    with pytest.raises(ChecksumMismatch, match=name):
        load_head(path)


def test_missing_or_extra_file_raises(built, tmp_path):  # type: ignore[no-untyped-def]
    _, trained, _ = built
    path = _copy_head(trained.path, tmp_path / "h1")
    (path / "report_train.csv").unlink()
    with pytest.raises(ChecksumMismatch, match="missing"):
        load_head(path)
    path = _copy_head(trained.path, tmp_path / "h2")
    (path / "evil.py").write_text("print('hi')\n")
    with pytest.raises(ChecksumMismatch, match="evil.py"):
        load_head(path)
    with pytest.raises(HeadError, match="not a head folder"):
        load_head(tmp_path)


def test_format_1_metadata_is_refused_with_a_clear_message(built, tmp_path):  # type: ignore[no-untyped-def]
    _, trained, _ = built
    path = _copy_head(trained.path, tmp_path / "old")
    meta = json.loads((path / "metadata.json").read_text())
    meta["format"] = 1
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(HeadError, match=r"format 1; this version reads format 2: train it again"):
        load_head(path)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifacts, "write_code_zip", boom)  # after every other file is written
    with pytest.raises(RuntimeError, match="disk full"):
        make_trainer(tiny_config("eu")).train(tmp_path, FakeEmbedder(), rows(pairs(6, seed=3)),
                                              rows(pairs(2, seed=4)), progress=False)
    assert list((tmp_path / "heads" / "eu" / "intent").iterdir()) == []
    assert Registry(tmp_path).versions("eu", "intent") == []


def test_feature_cache_embeds_each_text_once(tmp_path):  # type: ignore[no-untyped-def]
    from retrain.train.features import cache_dir, cached_features

    emb = FakeEmbedder()
    a, now = cached_features(emb, ["a", "b", "c", "a"], tmp_path, progress=False)
    assert now == 3 and emb.calls == [["a", "b", "c"]]
    b, now = cached_features(emb, ["c", "a", "b"], tmp_path, progress=False)
    assert now == 0 and len(emb.calls) == 1
    np.testing.assert_array_equal(b, a[[2, 0, 1]])
    _, now = cached_features(emb, ["a", "d"], tmp_path, progress=False)
    assert now == 1 and emb.calls[-1] == ["d"]
    assert len(list(cache_dir(tmp_path, "fake-v1").glob("shard-*.npy"))) == 2
    other = FakeEmbedder("fake-v2")
    cached_features(other, ["a"], tmp_path, progress=False)
    assert other.calls == [["a"]], "another embedder version does not share the cache"


# ---------------------------------------------------------------------------------- registry


def test_registry_activate_active_history(built):  # type: ignore[no-untyped-def]
    root, trained, _ = built
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


def test_registry_bad_file(tmp_path):  # type: ignore[no-untyped-def]
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


DOMAINS = {"social": WORDS["greet"] + WORDS["bye"], "manners": WORDS["thanks"]}


def small_demo_data(spec):  # type: ignore[no-untyped-def]
    """A few rows per class instead of CLINC150 (domain heads get two domains)."""
    from retrain.train.demo_heads import DemoData

    labels = WORDS if spec.target == "intent" else DOMAINS
    seed = 10 if spec.variant == "full" else 20
    return DemoData(train=pairs(8, seed, labels, oos=8), test=pairs(3, seed + 1, labels, oos=3))


def test_demo_heads_with_fake_embedder(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    from retrain.train import demo_heads as demo
    from schemas.settings import Settings

    monkeypatch.setattr(demo, "demo_data", small_demo_data)
    configs = {(s.region, s.model): tiny_config(s.region, s.model) for s in demo.DEMO_HEADS}
    settings = Settings(models_dir=tmp_path)
    emb = FakeEmbedder()
    assert not demo.demo_heads_current(settings, emb.version)
    run = demo.build_demo_heads(settings, emb, progress=False, configs=configs)
    assert not run.skipped and len(run.trained) == 4
    assert [(r.region, r.model) for r in run.refs] == [
        ("global", "intent"),
        ("global", "domain"),
        ("eu", "intent"),
        ("eu", "domain"),
    ]
    reg = Registry(tmp_path)
    assert reg.regions() == ["eu", "global"]
    assert {(region, model): ref for region, models in reg.active().items() for model, ref in models.items()} == {
        r.key: r for r in run.refs}
    loaded = reg.load_active(embedder_version=emb.version)
    assert loaded["global"]["intent"].labels == ("bye", "greet", "oos", "thanks")
    assert loaded["eu"]["domain"].labels == ("manners", "oos", "social")
    meta = json.loads((run.refs[1].path(tmp_path) / "metadata.json").read_text())
    assert meta["extra"]["target"] == "domain" and "CLINC150 data_full" in meta["extra"]["dataset"]
    assert meta["training"]["n_train"] == 2 * 8 + 8 and meta["training"]["n_eval"] == 2 * 3 + 3
    assert meta["config"]["head"]["max_epochs"] == TINY.max_epochs, "the given config was used"
    assert demo.demo_heads_current(settings, emb.version)
    assert not demo.demo_heads_current(settings, "fake-v2")

    # Everything active for this embedder version: no embedding, no training.
    calls = len(emb.calls)
    again = demo.build_demo_heads(settings, emb, progress=False, configs=configs)
    assert again.skipped and again.refs == run.refs and again.trained == []
    assert len(emb.calls) == calls
    assert demo.train_demo_heads(settings, emb, progress=False) == run.refs


def test_text_features_memo_gives_exactly_the_vectorizer_rows_and_identical_specs_share_one_instance():
    from sklearn.feature_extraction.text import TfidfVectorizer

    from models.heads import TextFeatures

    corpus = ["what is my balance", "freeze my card", "transfer money to mom", "card is lost", "balance please"]
    fitted = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), dtype=np.float32).fit(corpus)
    spec = {"analyzer": "char_wb", "ngram_range": [2, 4], "vocabulary": {k: int(v) for k, v in fitted.vocabulary_.items()},
            "idf": fitted.idf_.tolist()}
    memo = TextFeatures(spec, memo_rows=3)
    plain = TextFeatures(spec, memo_rows=0)
    batches = [["freeze my card", "what is my balance", "freeze my card"], ["card is lost", "unknown words here"],
               ["what is my balance", "balance please", "freeze my card", "transfer money to mom"]]
    for batch in batches:  # repeats within a batch, hits, evictions (3 rows kept)
        got, want = memo.transform(batch), plain.transform(batch)
        assert got.shape == want.shape and (got != want).nnz == 0
    assert len(memo._memo) == 3
    assert memo.transform([]).shape == (0, plain.dim)
    a, b = TextFeatures.shared(spec), TextFeatures.shared(json.loads(json.dumps(spec)))
    assert a is b, "heads trained on the same texts share one vectorizer and its memo"
