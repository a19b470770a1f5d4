"""Train one head on labelled rows and write it as a new version: ``phrasestream train --data``.

The steps, each in its own module:

1. rows come from ``retrain.train.data`` (a CSV/JSONL file) or from a Kafka replay, already cleaned
   by ``schemas.cleaning.clean`` (the cleaner serving uses);
2. without evaluation rows, a stratified 20% of the rows is held out for evaluation; the
   validation split (model selection, temperature, ``oos`` threshold) always comes out of the
   training rows, never out of the evaluation rows, and a training row whose cleaned text is
   also an evaluation text is dropped;
3. every text is embedded once per embedder version and precision (``retrain.train.features``, on
   disk); the head records both (``embedder_version``, ``embedder_precision``) and is served only
   by an embedder of that version running in that precision;
4. ``retrain.train.recipe.fit`` selects and trains the head;
5. the head is evaluated with the serving code (``models.heads.Head``), scored with
   scikit-learn (``retrain.train.evaluate``), given its drift reference (``retrain.drift.reference``), and
   written as a new version (``retrain.train.artifacts``) with the nearest-example index of its
   training rows (``models.heads.neighbors``, for ``explain``). It is not active unless asked.

``make_trainer(config)`` is the factory: it returns a :class:`Trainer` for a
``retrain.train.config.TrainConfig``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.heads import HeadRef, LabelEncoder, block_columns, new_version
from models.heads.neighbors import NeighborIndex, sentence_columns
from ops.logs import progress as progress_line
from retrain.drift.reference import reference_stats
from retrain.train import recipe
from retrain.train.artifacts import write_head
from retrain.train.config import TrainConfig
from retrain.train.data import Row
from retrain.train.evaluate import Report, summarise
from retrain.train.features import FeatureEmbedder, cached_features, precision_of
from retrain.train.split import stratified_split

log = logging.getLogger("phrasestream.train")


class Embedder(FeatureEmbedder, Protocol):
    """What training needs of the embedder: features, their layout, and the tokenizer's view."""

    @property
    def readout(self) -> tuple[str, ...]: ...

    def unknown_rates(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class TrainedHead:
    """What :meth:`Trainer.train` built: where, and how well it does on the evaluation rows."""

    ref: HeadRef
    path: Path
    metrics: dict[str, Any]
    n_train: int
    n_eval: int
    n_classes: int
    train_seconds: float
    embed_seconds: float
    embedded_now: int
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The one JSON object ``train --json`` prints (figures on the evaluation rows)."""
        ev = self.metrics["eval"]
        out = {
            "version": self.ref.version,
            "ref": str(self.ref),
            "accuracy": ev.get("accuracy"),
            "weighted_f1": ev.get("weighted_f1"),
            "macro_f1": ev.get("macro_f1"),
            "n_train": self.n_train,
            "n_eval": self.n_eval,
            "n_classes": self.n_classes,
            "train_seconds": round(self.train_seconds, 1),
        }
        if "oos_recall" in ev:
            out["oos_recall"] = ev.get("oos_recall")
            out["in_scope_accuracy"] = ev.get("in_scope_accuracy")
        return out


def split_for_training(rows: Sequence[Row], eval_rows: Sequence[Row] | None, config: TrainConfig
                       ) -> tuple[list[Row], list[Row], dict[str, int]]:
    """Return (training rows, evaluation rows, counts) with no evaluation text in training."""
    notes: dict[str, int] = {}
    if eval_rows is None:
        train, held = stratified_split(rows, config.eval_fraction, seed=config.seed)
        notes["held_out_for_eval"] = len(held)
        return list(train), list(held), notes
    eval_texts = {r.clean_text for r in eval_rows}
    train = [r for r in rows if r.clean_text not in eval_texts]
    notes["dropped_training_rows_also_in_eval"] = len(rows) - len(train)
    return train, list(eval_rows), notes


class Trainer:
    """Train heads of one configuration: ``train(rows, eval_rows)`` writes a new version."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def train(
        self,
        models_root: Path | str,
        embedder: Embedder,
        rows: Sequence[Row],
        eval_rows: Sequence[Row] | None = None,
        *,
        progress: bool = True,
        version: str | None = None,
        extra_metadata: dict[str, Any] | None = None,
        data_summary: dict[str, Any] | None = None,
    ) -> TrainedHead:
        cfg = self.config
        t0 = time.perf_counter()
        train_rows, ev_rows, notes = split_for_training(rows, eval_rows, cfg)
        if len({r.label for r in train_rows}) < 2:
            raise ValueError("fewer than 2 classes are left for training after holding out the evaluation rows")
        if not ev_rows:
            raise ValueError("no evaluation rows: give --eval, or more rows per class")
        labels = sorted({r.label for r in train_rows})
        unseen = sorted({r.label for r in ev_rows} - set(labels))
        if unseen:
            notes["eval_rows_with_labels_not_in_training"] = sum(r.label in unseen for r in ev_rows)
            progress_line(log, f"warning: {notes['eval_rows_with_labels_not_in_training']} evaluation rows have "
                               f"labels the training rows lack ({unseen[:10]}); they count as errors", progress)
        encoder = LabelEncoder(tuple(labels))

        texts = list(dict.fromkeys([r.clean_text for r in train_rows] + [r.clean_text for r in ev_rows]))
        e0 = time.perf_counter()
        feats, embedded_now = cached_features(embedder, texts, models_root, progress=progress)
        embed_seconds = time.perf_counter() - e0
        progress_line(log, f"features of {len(texts)} distinct texts in {embed_seconds:.1f}s "
                           f"({embedded_now} embedded now, the rest from the cache)", progress)
        index = {t: i for i, t in enumerate(texts)}

        train_set = recipe.TrainSet([r.clean_text for r in train_rows],
                                    feats[[index[r.clean_text] for r in train_rows]],
                                    encoder.encode([r.label for r in train_rows]))
        _, val_rows = stratified_split(train_rows, cfg.selection.val_fraction, seed=cfg.seed + 1)
        val_ids = {id(r) for r in val_rows}
        val_idx = np.array([i for i, r in enumerate(train_rows) if id(r) in val_ids], dtype=np.int64)
        if not len(val_idx):
            raise ValueError("no validation rows can be held out: every class has a single training example "
                             "(or one distinct text); give more examples per class")
        f0 = time.perf_counter()
        fitted = recipe.fit(train_set, encoder, embedder.readout, cfg.head, cfg.selection, cfg.oos,
                            val_idx=val_idx, progress=progress)
        fit_seconds = time.perf_counter() - f0

        ref = HeadRef(cfg.region, cfg.model, version or new_version())
        head = fitted.head(encoder, ref)
        ev_texts = [r.clean_text for r in ev_rows]
        ev_feats = feats[[index[t] for t in ev_texts]]
        ev_probs = head.predict_proba(ev_feats, ev_texts)
        ev_pred, ev_conf = head.decide(ev_probs)
        ev_labels = encoder.decode(ev_pred)
        tr_pred, _ = head.decide(head.predict_proba(train_set.features, train_set.texts))
        classes = list(labels) + unseen
        reports: dict[str, Report] = {
            "train": summarise([r.label for r in train_rows], encoder.decode(tr_pred), classes),
            "eval": summarise([r.label for r in ev_rows], ev_labels, classes),
        }
        oos_label = cfg.oos.label if cfg.oos.label in labels else None
        oos_scores = None
        if oos_label is not None:
            oi = encoder.labels.index(oos_label)
            oos_scores = np.delete(ev_probs, oi, axis=1).max(axis=1)
            oos_scores = np.where(ev_probs.argmax(axis=1) == oi, 0.0, oos_scores)
        # the confidences as the evaluation file holds them (6 decimals), so that the reference is
        # computed again from that file exactly, to the last digit of its percentiles
        written_conf = np.array([round(float(c), 6) for c in ev_conf])
        reference = reference_stats(
            classes=list(labels), y_pred=ev_labels, confidence=written_conf, texts=ev_texts,
            unk_rate=embedder.unknown_rates(ev_texts), embeddings=ev_feats[:, block_columns(embedder.readout, ["mean6"])],
            oos_label=oos_label, oos_threshold=head.oos_threshold)
        top = np.argsort(-ev_probs, axis=1)[:, :3]
        eval_rows_out = (
            {"text": r.text, "clean_text": r.clean_text, "label": r.label, "pred": p, "confidence": float(c),
             "oos_score": None if oos_scores is None else round(float(oos_scores[i]), 6),
             "top_k": [[encoder.labels[j], round(float(ev_probs[i, j]), 6)] for j in top[i]]}
            for i, (r, p, c) in enumerate(zip(ev_rows, ev_labels, written_conf)))
        val_set = {id(r) for r in val_rows}
        data_rows = [
            *({"text": r.text, "label": r.label, "split": "val" if id(r) in val_set else "train",
               **({"ts": r.ts} if r.ts else {}), **({"region": r.region} if r.region else {})} for r in train_rows),
            *({"text": r.text, "label": r.label, "split": "eval",
               **({"ts": r.ts} if r.ts else {}), **({"region": r.region} if r.region else {})} for r in ev_rows),
        ]
        sentence = feats[:, sentence_columns(embedder.readout)]
        neighbors = NeighborIndex.build(sentence[[index[r.clean_text] for r in train_rows]],
                                        [r.text for r in train_rows], [r.label for r in train_rows],
                                        keys=[r.clean_text for r in train_rows])
        train_seconds = time.perf_counter() - t0
        path = write_head(
            models_root, ref, encoder=encoder, config=fitted.config, arrays=fitted.arrays, reports=reports,
            reference=reference, eval_rows=eval_rows_out, data_rows=data_rows, neighbors=neighbors,
            metadata={
                "embedder_version": embedder.version,
                "embedder_precision": precision_of(embedder),
                "readout": list(embedder.readout),
                "config": cfg.model_dump(mode="json"),
                "training": {"n_train": len(train_rows), "n_val": len(val_rows), "n_eval": len(ev_rows),
                             "selection": fitted.selection, "fit_seconds": round(fit_seconds, 1),
                             "embed_seconds": round(embed_seconds, 1), "train_seconds": round(train_seconds, 1),
                             "oos_threshold": head.oos_threshold, **fitted.config.get("training", {}), **notes},
                "data": data_summary or {},
                "extra": extra_metadata or {},
            },
        )
        return TrainedHead(ref, path, {k: r.summary for k, r in reports.items()}, len(train_rows), len(ev_rows),
                           len(classes), train_seconds, embed_seconds, embedded_now, notes)


def make_trainer(config: TrainConfig) -> Trainer:
    """Return the trainer for ``config`` (one kind today: the recipe of ``retrain.train.recipe``)."""
    return Trainer(config)
