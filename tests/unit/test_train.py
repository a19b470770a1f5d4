"""Training a head on a user's data: the trainer, the artifact, the CLI's errors (no services).

A fake embedder stands in for MiniLM (features are fixed random vectors per word, so phrases
of one class share features): what is tested here is the training path and its promises,
not the encoder.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from fakes import ReadoutEmbedder as FakeEmbedder

from models.heads import (
    EVAL_PREDICTIONS_FILE,
    REFERENCE_FILE,
    TRAIN_DATA_FILE,
    ChecksumMismatch,
    load_head,
)
from models.registry.mirror import Registry
from retrain.drift.reference import reference_stats
from retrain.train.artifacts import read_jsonl_gz
from retrain.train.config import HeadConfig, SelectionConfig, TrainConfig
from retrain.train.data import read_labeled
from retrain.train.trainer import make_trainer

DIM = 384


TOPICS = {
    "billing": ["invoice", "charge", "refund", "payment", "bill"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "shipment"],
    "account": ["password", "login", "username", "profile", "email"],
}
FILLERS = ["please", "help", "with", "my", "the", "about", "question", "urgent", "today", "again"]


def make_rows(n_per_class: int, seed: int, oos: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in TOPICS.items():
        for _ in range(n_per_class):
            picked = [str(w) for w in rng.choice(words, 2)] + [str(w) for w in rng.choice(FILLERS, 3)]
            rng.shuffle(picked)
            rows.append({"utterance": " ".join(picked) + f" {rng.integers(1000)}", "intent": label})
    for _ in range(oos):
        picked = [str(w) for w in rng.choice(FILLERS, 4)] + [f"zzz{rng.integers(10**6)}"]
        rows.append({"utterance": " ".join(picked), "intent": "oos"})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["utterance", "intent"])
        w.writeheader()
        w.writerows(rows)
    return path


SMALL = HeadConfig(max_epochs=8, patience=3, batch_size=32, learning_rate=5e-3)


def small_config(**kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    return TrainConfig(region="acme", model="intent", head=SMALL,
                       selection=SelectionConfig(candidates=[{}], val_fraction=0.2), **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("models")
    data = tmp_path_factory.mktemp("data")
    train_csv = write_csv(data / "train.csv", make_rows(40, seed=1, oos=20))
    eval_csv = write_csv(data / "eval.csv", make_rows(10, seed=2, oos=8))
    train = read_labeled(train_csv, "utterance", "intent")
    evald = read_labeled(eval_csv, "utterance", "intent", min_classes=1)
    embedder = FakeEmbedder()
    head = make_trainer(small_config()).train(root, embedder, train.rows, evald.rows, progress=False)
    return root, head, embedder, evald


def test_training_writes_a_version_that_is_not_active(trained):  # type: ignore[no-untyped-def]
    root, head, _, _ = trained
    assert head.path.is_dir() and head.path == head.ref.path(root)
    assert Registry(root).active_ref("acme", "intent") is None, "train without --activate activates nothing"
    s = head.summary()
    assert set(s) >= {"version", "accuracy", "weighted_f1", "macro_f1", "n_train", "n_eval", "n_classes",
                      "train_seconds", "oos_recall"}
    assert s["n_classes"] == 4 and s["n_eval"] == 38
    assert s["accuracy"] > 0.8, s


def test_training_never_sees_evaluation_rows(trained):  # type: ignore[no-untyped-def]
    _, head, _, evald = trained
    snapshot = read_jsonl_gz(head.path / TRAIN_DATA_FILE)
    trained_on = {r["text"] for r in snapshot if r["split"] in ("train", "val")}
    evaluated = {r["text"] for r in snapshot if r["split"] == "eval"}
    assert evaluated == {r.text for r in evald.rows}
    assert not trained_on & evaluated
    assert {r["split"] for r in snapshot} == {"train", "val", "eval"}


def test_an_evaluation_text_in_the_training_file_is_dropped_from_training(tmp_path: Path):
    rows = make_rows(30, seed=5)
    train = read_labeled(write_csv(tmp_path / "t.csv", rows), "utterance", "intent")
    evald = read_labeled(write_csv(tmp_path / "e.csv", rows[:5] + make_rows(5, seed=6)), "utterance", "intent")
    head = make_trainer(small_config()).train(tmp_path / "m", FakeEmbedder(), train.rows, evald.rows,
                                              progress=False)
    assert head.notes["dropped_training_rows_also_in_eval"] == 5
    snapshot = read_jsonl_gz(head.path / TRAIN_DATA_FILE)
    assert not {r["text"] for r in snapshot if r["split"] != "eval"} & {r["utterance"] for r in rows[:5]}


def test_without_eval_data_a_stratified_fifth_is_held_out(tmp_path: Path):
    train = read_labeled(write_csv(tmp_path / "t.csv", make_rows(30, seed=7)), "utterance", "intent")
    head = make_trainer(small_config()).train(tmp_path / "m", FakeEmbedder(), train.rows, None, progress=False)
    assert head.n_eval == 18 and head.n_train == 72
    snapshot = read_jsonl_gz(head.path / TRAIN_DATA_FILE)
    per_class = {}
    for r in snapshot:
        if r["split"] == "eval":
            per_class[r["label"]] = per_class.get(r["label"], 0) + 1
    assert per_class == {"account": 6, "billing": 6, "shipping": 6}


def test_saved_head_loads_verified_and_predicts_what_it_predicted_at_training(trained):  # type: ignore[no-untyped-def]
    _, head, embedder, _ = trained
    loaded = load_head(head.path, embedder_version=embedder.version)
    rows = read_jsonl_gz(head.path / EVAL_PREDICTIONS_FILE)
    texts = [r["clean_text"] for r in rows]
    answers = loaded.predict(embedder.features_batch(texts), top_k=3, texts=texts)
    assert [a.label for a in answers] == [r["pred"] for r in rows]
    np.testing.assert_allclose([a.probability for a in answers], [r["confidence"] for r in rows], atol=1e-6)


def test_a_changed_weights_file_is_refused(trained, tmp_path: Path):  # type: ignore[no-untyped-def]
    import shutil

    _, head, _, _ = trained
    copy = tmp_path / head.path.name
    shutil.copytree(head.path, copy)
    raw = bytearray((copy / "weights.safetensors").read_bytes())
    raw[-1] ^= 0x01
    (copy / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatch, match="weights.safetensors"):
        load_head(copy)


def test_reference_statistics_match_a_recomputation_from_the_evaluation_data(trained):  # type: ignore[no-untyped-def]
    _, head, embedder, _ = trained
    stored = json.loads((head.path / REFERENCE_FILE).read_text())
    rows = read_jsonl_gz(head.path / EVAL_PREDICTIONS_FILE)
    texts = [r["clean_text"] for r in rows]
    loaded = load_head(head.path)
    again = reference_stats(
        classes=list(loaded.labels), y_pred=[r["pred"] for r in rows],
        confidence=np.array([r["confidence"] for r in rows]), texts=texts,
        unk_rate=embedder.unknown_rates(texts), embeddings=embedder.features_batch(texts)[:, :DIM],
        oos_label="oos", oos_threshold=loaded.oos_threshold)
    assert stored == json.loads(json.dumps(again))
    assert stored["n"] == len(rows) and abs(sum(stored["label_distribution"].values()) - 1) < 1e-5


def test_second_run_on_the_same_texts_embeds_nothing(tmp_path: Path):
    train = read_labeled(write_csv(tmp_path / "t.csv", make_rows(20, seed=3)), "utterance", "intent")
    embedder = FakeEmbedder()
    first = make_trainer(small_config()).train(tmp_path / "m", embedder, train.rows, None, progress=False)
    second = make_trainer(small_config()).train(tmp_path / "m", embedder, train.rows, None, progress=False)
    assert first.embedded_now == 60 and second.embedded_now == 0
    assert sum(len(c) for c in embedder.calls) == 60


def test_the_snapshot_keeps_ts_and_region(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    rows = make_rows(15, seed=4)
    path.write_text("\n".join(json.dumps({"text": r["utterance"], "label": r["intent"], "ts": "2026-01-02T03:04:05Z",
                                          "region": "eu"}) for r in rows), encoding="utf-8")
    train = read_labeled(path)
    head = make_trainer(small_config()).train(tmp_path / "m", FakeEmbedder(), train.rows, None, progress=False)
    with gzip.open(head.path / TRAIN_DATA_FILE, "rt") as fh:
        first = json.loads(fh.readline())
    assert first["ts"] == "2026-01-02T03:04:05Z" and first["region"] == "eu"


def test_training_rows_with_only_single_examples_are_refused(tmp_path: Path):
    rows = [{"utterance": f"phrase number {i}", "intent": f"class{i}"} for i in range(6)]
    train = read_labeled(write_csv(tmp_path / "t.csv", rows), "utterance", "intent")
    evald = read_labeled(write_csv(tmp_path / "e.csv", rows[:2]), "utterance", "intent")
    with pytest.raises(ValueError, match="single training example"):
        make_trainer(small_config()).train(tmp_path / "m", FakeEmbedder(), train.rows[2:], evald.rows,
                                           progress=False)
