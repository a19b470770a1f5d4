"""Classifier heads: how a head is named, stored, verified, loaded and served (training is ``retrain/``).

A head classifies the embedder's readout (``models.embedder.READOUT``: the 384-d sentence
embedding and more pools of the same encoder pass), optionally together with TF-IDF features
of the cleaned text, into the classes of one (region, model). It lives in its own folder::

    <models_root>/heads/<region>/<model>/<version>/
        head.json              how to compute the head: feature blocks, TF-IDF vocabularies and
                               idf, members (linear or one-hidden-layer), temperatures, threshold
        weights.safetensors    its arrays (safetensors: plain tensors, no pickle)
        labels.json            the ordered class labels (column i of the probabilities)
        reference.json         reference statistics of the evaluation data, for drift reports
        eval_predictions.jsonl.gz   every evaluation row with its prediction (for ``report``)
        report_train.csv, report_eval.csv   per-class precision/recall/F1/support
        train_data.jsonl.gz    the rows it was trained on (split train/val) and evaluated on (eval)
        code.zip               the Python sources of models/, retrain/ and schemas/ that built it
        neighbors.safetensors, neighbors.json   the nearest-example index of the training rows
        metadata.json          ref, created_at, embedder_version, embedder_precision, metrics,
                               configuration and the sha256 of every other file in the folder

The folder is written under a temporary name and renamed into place (``retrain.train.artifacts``),
so a reader never sees a half-written head.

One job per module, all re-exported here:

- ``ref``: :class:`HeadRef` (``region/model:version``), :func:`heads_root`, :func:`new_version`;
- ``artifact``: the file names, :func:`read_metadata`, :func:`verify_head` (every checksum),
  :class:`LabelEncoder` and the errors;
- ``serve``: :func:`load_head` and the numpy :class:`Head` it returns (no TensorFlow);
- ``rule``: :func:`review_rule`, the review rule a head's training configuration holds;
- ``explain`` (imported as ``models.heads.explain``): :func:`~models.heads.explain.evidence`,
  why a head gave a label, and ``neighbors``, its nearest training examples.
"""

from models.heads.artifact import (
    CODE_FILE,
    CODE_PACKAGES,
    DEFAULT_PRECISION,
    EVAL_PREDICTIONS_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    LABELS_FILE,
    METADATA_FILE,
    NEIGHBORS_FILE,
    NEIGHBORS_ROWS_FILE,
    REFERENCE_FILE,
    REPORT_EVAL_FILE,
    REPORT_TRAIN_FILE,
    TRAIN_DATA_FILE,
    WEIGHTS_FILE,
    ChecksumMismatch,
    EmbedderMismatch,
    HeadError,
    LabelEncoder,
    embedder_precision_of,
    read_metadata,
    verify_head,
)
from models.heads.ref import HeadRef, heads_root, new_version
from models.heads.rule import review_rule
from models.heads.serve import (
    BLOCK_DIM,
    OOS,
    Head,
    HeadPrediction,
    Member,
    TextFeatures,
    block_columns,
    load_head,
    softmax,
)

__all__ = [
    "BLOCK_DIM",
    "CODE_FILE",
    "CODE_PACKAGES",
    "DEFAULT_PRECISION",
    "EVAL_PREDICTIONS_FILE",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "LABELS_FILE",
    "METADATA_FILE",
    "NEIGHBORS_FILE",
    "NEIGHBORS_ROWS_FILE",
    "OOS",
    "REFERENCE_FILE",
    "REPORT_EVAL_FILE",
    "REPORT_TRAIN_FILE",
    "TRAIN_DATA_FILE",
    "WEIGHTS_FILE",
    "ChecksumMismatch",
    "EmbedderMismatch",
    "Head",
    "HeadError",
    "HeadPrediction",
    "HeadRef",
    "LabelEncoder",
    "Member",
    "TextFeatures",
    "block_columns",
    "embedder_precision_of",
    "heads_root",
    "load_head",
    "new_version",
    "read_metadata",
    "review_rule",
    "softmax",
    "verify_head",
]
