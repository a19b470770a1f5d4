"""A head's folder on disk: its files, its metadata, the checksums that guard them, its labels.

The layout (``models.heads`` describes each file) is written by ``retrain.train.artifacts``
and read here: :func:`read_metadata` reads ``metadata.json``, :func:`verify_head` checks every
other file against the sha256 it records, and :class:`LabelEncoder` is ``labels.json``. Nothing
here is pickled and nothing here computes a prediction (that is ``models.heads.serve``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.checksums import sha256_file

FORMAT_VERSION = 2
"""The folder format this code writes and reads; a head of another format is trained again."""

HEAD_FILE = "head.json"
WEIGHTS_FILE = "weights.safetensors"
LABELS_FILE = "labels.json"
REFERENCE_FILE = "reference.json"
EVAL_PREDICTIONS_FILE = "eval_predictions.jsonl.gz"
REPORT_TRAIN_FILE = "report_train.csv"
REPORT_EVAL_FILE = "report_eval.csv"
TRAIN_DATA_FILE = "train_data.jsonl.gz"
CODE_FILE = "code.zip"
METADATA_FILE = "metadata.json"
NEIGHBORS_FILE = "neighbors.safetensors"
"""The nearest-example index: float16 unit sentence embeddings of the training rows (``models.heads.neighbors``)."""
NEIGHBORS_ROWS_FILE = "neighbors.json"
"""The index's rows, ``[text, label]`` in the order of :data:`NEIGHBORS_FILE`'s vectors."""

CODE_PACKAGES = ("models", "retrain", "schemas")
"""The packages whose sources go into ``code.zip``."""


class HeadError(Exception):
    """A head folder cannot be used."""


class ChecksumMismatch(HeadError):
    """A file of a head folder is missing, unexpected, or differs from its recorded sha256."""


class EmbedderMismatch(HeadError):
    """A head was trained on the output of another embedder version, or precision, than the running one."""


DEFAULT_PRECISION = "fp32"
"""The embedder precision of a head whose metadata names none (heads trained before precisions
were recorded were all trained on float32 features)."""


def embedder_precision_of(metadata: dict) -> str:
    """Return the embedder precision a head's ``metadata.json`` records (:data:`DEFAULT_PRECISION` if none)."""
    return str(metadata.get("embedder_precision") or DEFAULT_PRECISION)


@dataclass(frozen=True)
class LabelEncoder:
    """An ordered list of class labels; index ``i`` is output unit ``i`` of the model."""

    labels: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        if not labels:
            raise ValueError("a label encoder needs at least one label")
        if not all(isinstance(x, str) and x for x in labels):
            raise ValueError("labels are non-empty strings")
        if len(set(labels)) != len(labels):
            raise ValueError("labels has duplicates")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "_index", {label: i for i, label in enumerate(labels)})

    @classmethod
    def fit(cls, y: Sequence[str]) -> LabelEncoder:
        """Return the encoder of the sorted distinct labels of ``y``."""
        return cls(tuple(sorted(set(y))))

    def __len__(self) -> int:
        return len(self.labels)

    def encode(self, y: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self._index[label] for label in y], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"label {e.args[0]!r} is not one of the {len(self)} known labels") from None

    def decode(self, idx: Sequence[int] | np.ndarray) -> list[str]:
        return [self.labels[int(i)] for i in idx]

    def to_json(self) -> str:
        return json.dumps(list(self.labels), ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabelEncoder:
        raw = json.loads(text)
        if not isinstance(raw, list):
            raise ValueError("labels.json holds a JSON list of strings")
        return cls(tuple(raw))


def read_metadata(path: Path | str) -> dict[str, Any]:
    """Read a head folder's ``metadata.json`` (no checksum verification)."""
    path = Path(path)
    try:
        meta = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadError(f"{path} is not a head folder: it has no {METADATA_FILE}") from None
    except json.JSONDecodeError as e:
        raise HeadError(f"{path / METADATA_FILE} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise HeadError(f"{path / METADATA_FILE} has no 'files' checksums")
    return meta


def verify_head(path: Path | str) -> dict[str, Any]:
    """Check every file of a head folder against ``metadata.json``; return the metadata.

    Raise :class:`ChecksumMismatch` for a changed, missing or unlisted file.
    """
    path = Path(path)
    meta = read_metadata(path)
    expected: dict[str, str] = meta["files"]
    present = {p.name for p in path.iterdir() if p.name != METADATA_FILE}
    missing = sorted(set(expected) - present)
    if missing:
        raise ChecksumMismatch(f"head {path}: file(s) {missing} listed in {METADATA_FILE} are missing")
    unlisted = sorted(present - set(expected))
    if unlisted:
        raise ChecksumMismatch(f"head {path}: file(s) {unlisted} are not listed in {METADATA_FILE}")
    for name, want in sorted(expected.items()):
        got = sha256_file(path / name)
        if got != want:
            raise ChecksumMismatch(
                f"head {path}: {name} has sha256 {got}, but {METADATA_FILE} records {want}; "
                "the file was changed or corrupted after the head was built"
            )
    return meta
