"""Unit tests of models.heads.explain and models.heads.neighbors: the exact decomposition of a
linear member's logit, the top terms, the nearest training examples, and the review rule.

A tiny head is trained on the fake embedder (``fakes.ReadoutEmbedder``): no MiniLM here.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fakes import ReadoutEmbedder

from models.heads import (
    NEIGHBORS_FILE,
    NEIGHBORS_ROWS_FILE,
    ChecksumMismatch,
    load_head,
    review_rule,
    verify_head,
)
from models.heads.explain import NO_INDEX_NOTE, decompose, evidence
from models.heads.neighbors import NeighborIndex, index_for, sentence_columns
from retrain.train.config import HeadConfig, SelectionConfig, TrainConfig
from retrain.train.data import Row
from retrain.train.trainer import make_trainer
from schemas.cleaning import clean
from schemas.review import ReviewRule

WORDS = {
    "greet": ["hello", "hi", "morning", "hey", "greetings"],
    "bye": ["goodbye", "farewell", "later", "ciao", "night"],
    "thanks": ["thanks", "grateful", "cheers", "appreciate", "kind"],
}
FILLERS = ["so", "very", "you", "all", "there", "and", "my", "friend"]


def rows(n_per_class: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    out: list[Row] = []
    for label, words in WORDS.items():
        for j in range(n_per_class):
            text = " ".join([*(str(w) for w in rng.choice(words, 2)), *(str(w) for w in rng.choice(FILLERS, 2))])
            text += f" s{seed}n{j}"
            out.append(Row(text=text, clean_text=clean(text), label=label, line=len(out) + 1))
    return out


def config(**review: float) -> TrainConfig:
    head = HeadConfig(max_epochs=6, patience=2, batch_size=32, learning_rate=5e-3)
    return TrainConfig(region="global", model="intent", head=head,
                       selection=SelectionConfig(candidates=[{}], val_fraction=0.2),
                       review=ReviewRule(**review))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("models")
    embedder = ReadoutEmbedder()
    result = make_trainer(config(margin=0.35)).train(root, embedder, rows(16, 1), rows(4, 2), progress=False)
    return load_head(result.path, embedder_version=embedder.version), embedder


def test_review_rule_comes_from_the_training_configuration(trained):  # type: ignore[no-untyped-def]
    head, _ = trained
    assert review_rule(head.metadata) == ReviewRule(margin=0.35)
    assert review_rule({"config": {"region": "eu"}}) == ReviewRule()
    assert review_rule({}) == ReviewRule()


def test_the_parts_sum_to_the_linear_members_logit(trained):  # type: ignore[no-untyped-def]
    head, embedder = trained
    texts = [clean("hello my friend"), clean("goodbye and so very kind"), clean("zzz unseen words")]
    feats = embedder.features_batch(texts)
    member = next(m for m in head.members if m.kind == "linear")
    assert member.text_features, "the tiny head uses TF-IDF"
    dense = head._dense(feats)
    logits = member.logits(dense, {n: head.text[n].transform(texts) for n in member.text_features})
    for c in range(len(head.labels)):
        for i, d in enumerate(decompose(head, feats, texts, [c] * len(texts))):
            assert d is not None
            assert d.total == pytest.approx(float(logits[i, c]), abs=1e-5)
            assert d.logit == pytest.approx(float(logits[i, c]), abs=1e-5)
            assert d.label == head.labels[c]
            assert all(t.startswith(("word:", "char:")) for t, _ in d.terms)


def test_evidence_is_compact_json_with_the_top_terms_and_neighbours(trained):  # type: ignore[no-untyped-def]
    head, embedder = trained
    texts = [clean("hello hi my friend")]
    feats = embedder.features_batch(texts)
    [ev] = evidence(head, feats, texts)
    json.dumps(ev)  # JSON-ready
    assert ev["label"] == head.predict(feats, texts=texts)[0].label == "greet"
    assert ev["runner_up"] != ev["label"]
    assert 1 <= len(ev["terms"]) <= 5
    weights = [abs(c) for _, c in ev["terms"]]
    assert weights == sorted(weights, reverse=True)
    assert "word:hello" in [t for t, _ in ev["terms"]]
    [d] = decompose(head, feats, texts, [head.labels.index("greet")])
    assert d is not None
    assert ev["terms"][0] == [d.terms[0][0], round(d.terms[0][1], 4)]
    assert len(ev["neighbors"]) == 3 and all(n[1] == "greet" for n in ev["neighbors"])
    assert len(ev["neighbors_runner_up"]) == 3 and all(n[1] == ev["runner_up"] for n in ev["neighbors_runner_up"])
    cos = [n[2] for n in ev["neighbors"]]
    assert cos == sorted(cos, reverse=True) and all(-1.0 <= c <= 1.0001 for c in cos)
    assert "note" not in ev


def test_evidence_for_a_given_label(trained):  # type: ignore[no-untyped-def]
    head, embedder = trained
    texts = [clean("hello hi my friend")]
    feats = embedder.features_batch(texts)
    [ev] = evidence(head, feats, texts, ["bye"])
    assert ev["label"] == "bye" and ev["runner_up"] == "greet"
    with pytest.raises(ValueError, match="not labels"):
        evidence(head, feats, texts, ["nope"])


def test_the_index_is_stored_with_the_head_under_its_checksum(trained, tmp_path):  # type: ignore[no-untyped-def]
    head, embedder = trained
    meta = verify_head(head.path)
    assert {NEIGHBORS_FILE, NEIGHBORS_ROWS_FILE} <= set(meta["files"])
    index = NeighborIndex.read(head.path)
    assert index.vectors.dtype == np.float16
    n_train = meta["training"]["n_train"]
    assert len(index) == n_train == 48
    text, label = index.texts[0], index.labels[0]
    vec = embedder.features_batch([clean(text)])[:, sentence_columns(embedder.readout)][0]
    assert index.nearest(vec, label, 1)[0][:2] == [text, label]
    assert index.nearest(vec, label, 1)[0][2] == pytest.approx(1.0, abs=2e-3)
    copy = tmp_path / "copy"
    shutil.copytree(head.path, copy)
    (copy / NEIGHBORS_ROWS_FILE).write_text('{"block": "mean6", "rows": []}')
    with pytest.raises(ChecksumMismatch):
        verify_head(copy)


def test_a_head_without_an_index_says_so_or_builds_it_on_first_use(trained, tmp_path):  # type: ignore[no-untyped-def]
    head, embedder = trained
    old = tmp_path / "old"
    shutil.copytree(head.path, old)
    meta = json.loads((old / "metadata.json").read_text())
    for name in (NEIGHBORS_FILE, NEIGHBORS_ROWS_FILE):
        (old / name).unlink()
        del meta["files"][name]
    (old / "metadata.json").write_text(json.dumps(meta))
    old_head = load_head(old)
    texts = [clean("goodbye later my friend")]
    feats = embedder.features_batch(texts)
    [ev] = evidence(old_head, feats, texts)
    assert ev["neighbors"] is None and ev["neighbors_runner_up"] is None
    assert NO_INDEX_NOTE in ev["note"]
    calls = len(embedder.calls)
    built = index_for(old_head, embedder)
    assert built is not None and built.built == "on first use" and len(built) == 48
    assert len(embedder.calls) > calls
    assert index_for(old_head) is built  # kept in memory with the head
    [ev] = evidence(old_head, feats, texts)
    stored = evidence(head, feats, texts)[0]
    assert [n[:2] for n in ev["neighbors"]] == [n[:2] for n in stored["neighbors"]]


def test_explain_takes_a_raw_phrase_and_explains_the_prediction_and_a_given_label(trained):  # type: ignore[no-untyped-def]
    from models.heads.explain import explain
    from models.heads.occlusion import CAVEAT

    head, embedder = trained
    out = explain(head, embedder, "  Hello, HI my friend!", label="thanks")
    json.dumps(out)
    assert out["clean_text"] == clean("  Hello, HI my friend!")
    assert out["prediction"]["label"] == "greet"
    assert [s["label"] for s in out["explained"]] == ["greet", "thanks"]
    assert [s["why"] for s in out["explained"]] == ["predicted", "asked"]
    assert out["index"]["status"] == "stored at training"
    for sec in out["explained"]:
        assert sec["bias"] + sec["readout"] + sum(v for _, v in sec["terms"]) == pytest.approx(sec["logit"], abs=1e-3)
        assert sec["logit_difference"] == pytest.approx(sec["logit"] - sec["runner_up_logit"], abs=1e-3)
        assert all(n[1] == sec["label"] for n in sec["neighbors"])
        assert all(n[1] == sec["runner_up"] for n in sec["neighbors_runner_up"])
        words = [w for w, _, _ in sec["leave_one_word_out"]]
        assert words == out["clean_text"].split()
    assert out["leave_one_word_out"]["caveat"] == CAVEAT
    assert out["leave_one_word_out"]["passes"] == len(out["clean_text"].split())
    with pytest.raises(ValueError, match="not a label"):
        explain(head, embedder, "hello", label="nope")
    with pytest.raises(ValueError, match="empty"):
        explain(head, embedder, "<br>")


def test_leave_one_word_out_holds_the_tfidf_part_and_deletes_from_the_readout_only(trained):  # type: ignore[no-untyped-def]
    from models.heads.occlusion import leave_one_word_out, variants

    head, embedder = trained
    assert variants("a b c") == [("a", "b c"), ("b", "a c"), ("c", "a b")]
    out = leave_one_word_out(head, embedder, "hello my friend", ["greet"])
    assert out["passes"] == 4 and out["skipped"] is None
    feats = embedder.features_batch(["hello my friend", "my friend"])
    probs = head.predict_proba(feats, ["hello my friend"] * 2)
    c = head.labels.index("greet")
    assert out["by_label"]["greet"][0][:2] == ["hello", round(float(probs[1, c] - probs[0, c]), 4)]
    assert leave_one_word_out(head, embedder, "hello", ["greet"])["skipped"]


def test_evidence_can_compare_with_a_chosen_label(trained):  # type: ignore[no-untyped-def]
    head, embedder = trained
    texts = [clean("hello hi my friend")] * 2
    feats = embedder.features_batch(texts)
    first, second = evidence(head, feats, texts, against=["thanks", "not-a-label"])
    assert first["label"] == "greet" and first["runner_up"] == "thanks"
    assert {n[1] for n in first["neighbors_runner_up"]} == {"thanks"}
    assert second["runner_up"] == evidence(head, feats[:1], texts[:1])[0]["runner_up"]


def test_the_error_analysis_page_shows_the_evidence_of_its_confused_examples(trained, tmp_path):  # type: ignore[no-untyped-def]
    from retrain.reports.error_analysis import EvalRows, write_report
    from retrain.reports.evidence import wrong_row_evidence

    head, embedder = trained
    texts = [clean("hello hi my friend"), clean("goodbye later <friend>")]
    feats = embedder.features_batch(texts)
    y_true, y_pred = ["thanks", "bye"], ["greet", "bye"]
    found = wrong_row_evidence(head, texts, y_true, y_pred, feats)
    assert found[1] is None and found[0] is not None
    assert found[0]["label"] == "greet" and found[0]["runner_up"] == "thanks"
    rows = EvalRows(texts, y_true, y_pred, np.array([0.8, 0.9]), evidence=found)
    html = write_report(tmp_path, title="t", classes=list(head.labels), rows=rows).read_text()
    assert html.count('<details class="evidence">') == 1
    assert "nearest training examples of thanks (the true label)" in html
    assert "&lt;BIAS&gt;" in html and "word:hello" in html


def test_the_command_renders_every_part_for_an_engineer(trained):  # type: ignore[no-untyped-def]
    from models.heads.explain import explain
    from streams.cli.explain import render

    head, embedder = trained
    text = "\n".join(render(explain(head, embedder, "hello hi my friend", label="bye")))
    for part in ("predicted  greet", "== greet (predicted", "== bye (asked", "<BIAS>", "<READOUT>", "logit of greet",
                 "word:hello", "nearest training examples of greet:", "(runner-up)", "leave-one-word-out", "caveat"):
        assert part in text, part
    from streams.cli.explain import _shown

    assert _shown("char: he") == "char:␣he" and _shown("word:a b") == "word:a b"


def test_a_head_without_a_linear_member_says_so_and_a_linear_one_without_text_has_no_terms(tmp_path):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from models.heads import BLOCK_DIM, Head, HeadRef, LabelEncoder

    rng = np.random.default_rng(0)

    def head(members: list[dict], arrays: dict) -> Head:
        config = {"readout": ["mean6"], "blocks": ["mean6"], "members": members, "oos_threshold": None}
        return Head(HeadRef("t", "m", "v1"), LabelEncoder(("a", "b", "c")), config,
                    {k: rng.normal(size=s).astype(np.float32) for k, s in arrays.items()}, {}, Path(tmp_path))

    mlp = head([{"name": "m0", "kind": "mlp", "text_features": []}],
               {"m0.W1": (BLOCK_DIM, 4), "m0.b1": (4,), "m0.W2": (4, 3), "m0.b2": (3,)})
    feats = rng.normal(size=(2, BLOCK_DIM)).astype(np.float32)
    for ev in evidence(mlp, feats, ["x", "y"]):
        assert ev["terms"] is None and ev["neighbors"] is None
        assert "no linear member" in ev["note"] and NO_INDEX_NOTE in ev["note"]
    lin = head([{"name": "m0", "kind": "linear", "text_features": []}], {"m0.W": (BLOCK_DIM, 3), "m0.b": (3,)})
    [ev] = evidence(lin, feats[:1], ["x"])
    assert ev["terms"] == []
    logit = float((feats[0] @ lin.members[0].arrays["W"] + lin.members[0].arrays["b"])[lin.labels.index(ev["label"])])
    assert ev["bias"] + ev["readout"] == pytest.approx(logit, abs=1e-3)
