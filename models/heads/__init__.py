"""Classifier heads: how a head is stored, verified, loaded and served (training is ``retrain/``).

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
        metadata.json          ref, created_at, embedder_version, metrics, configuration and the
                               sha256 of every other file in the folder

The folder is written under a temporary name and renamed into place (``retrain.train.artifacts``),
so a reader never sees a half-written head. :func:`load_head` verifies every checksum before it
reads anything else. The forward pass is numpy (and a scipy sparse product for TF-IDF): no
TensorFlow, cheap enough to run beside the event loop.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.checksums import sha256_file

FORMAT_VERSION = 2
OOS = "oos"

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

CODE_PACKAGES = ("models", "retrain", "schemas")
"""The packages whose sources go into ``code.zip``."""

BLOCK_DIM = 384
"""Width of one readout block of the embedder's features."""

_NAME_RE = re.compile(r"[a-z0-9_-]+")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------------------------
# Errors


class HeadError(Exception):
    """A head folder cannot be used."""


class ChecksumMismatch(HeadError):
    """A file of a head folder is missing, unexpected, or differs from its recorded sha256."""


class EmbedderMismatch(HeadError):
    """A head was trained on the output of another embedder version than the running one."""


# --------------------------------------------------------------------------------------------
# HeadRef


@dataclass(frozen=True, order=True)
class HeadRef:
    """Name one built head: ``region/model:version``.

    ``region`` and ``model`` match ``[a-z0-9_-]+``; ``version`` is a sortable string such as
    ``20261127T130501Z-1a2b3c`` (letters, digits, ``_ . -``; it starts with a letter or digit).
    """

    region: str
    model: str
    version: str

    def __post_init__(self) -> None:
        for what, value in (("region", self.region), ("model", self.model)):
            if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
                raise ValueError(f"bad head {what} {value!r}: use lowercase letters, digits, '_' and '-'")
        if not isinstance(self.version, str) or not _VERSION_RE.fullmatch(self.version):
            raise ValueError(
                f"bad head version {self.version!r}: use letters, digits, '_', '.' and '-', "
                "starting with a letter or digit"
            )

    @classmethod
    def parse(cls, text: str) -> HeadRef:
        """Parse ``region/model:version``; raise ``ValueError`` with the reason otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"a head ref is a string 'region/model:version', not {type(text).__name__}")
        head, sep, version = text.strip().rpartition(":")
        region, slash, model = head.partition("/")
        if not sep or not slash:
            raise ValueError(f"bad head ref {text!r}: expected 'region/model:version'")
        return cls(region, model, version)

    @property
    def key(self) -> tuple[str, str]:
        """Return ``(region, model)``: the slot this head can be active in."""
        return (self.region, self.model)

    def path(self, models_root: Path | str) -> Path:
        """Return this head's folder under ``models_root``."""
        return heads_root(models_root) / self.region / self.model / self.version

    def __str__(self) -> str:
        return f"{self.region}/{self.model}:{self.version}"


def heads_root(models_root: Path | str) -> Path:
    """Return ``<models_root>/heads``."""
    return Path(models_root) / "heads"


def new_version(now: datetime | None = None) -> str:
    """Return a new sortable version string, ``YYYYmmddTHHMMSSZ-<6 hex>`` (UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------------------------
# Label encoder


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


@dataclass(frozen=True)
class HeadPrediction:
    """The best label of one vector, its probability, and the ``top_k`` labels (best first)."""

    label: str
    probability: float
    top_k: list[tuple[str, float]]


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


# --------------------------------------------------------------------------------------------
# The forward pass


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def block_columns(readout: Sequence[str], blocks: Sequence[str]) -> np.ndarray:
    """Return the feature columns of ``blocks`` (in that order) in a readout of ``readout``."""
    missing = [b for b in blocks if b not in readout]
    if missing:
        raise HeadError(f"feature block(s) {missing} are not in the embedder's readout {list(readout)}")
    return np.concatenate([np.arange(BLOCK_DIM) + BLOCK_DIM * list(readout).index(b) for b in blocks])


class TextFeatures:
    """TF-IDF features of cleaned texts, rebuilt from JSON (vocabulary, idf, settings).

    The vocabulary and idf are the ones scikit-learn's ``TfidfVectorizer`` learned at training
    time; serving gives them back to a ``TfidfVectorizer``, so both compute the same function.

    scikit-learn's analyzers run in Python (tens of microseconds per text and vectorizer: the
    largest cost of serving a cached phrase), so each vectorizer remembers the rows of the last
    ``MEMO_ROWS`` texts it transformed, least recently used out first. Heads whose vectorizers
    are identical (the same settings, vocabulary and idf: heads trained on the same texts)
    share one instance through :meth:`shared`, hence one memo and one transform per text.
    """

    SETTINGS = ("analyzer", "ngram_range", "lowercase", "sublinear_tf", "norm", "token_pattern", "binary")
    MEMO_ROWS = 50_000
    _instances: ClassVar[weakref.WeakValueDictionary[str, TextFeatures]] = weakref.WeakValueDictionary()
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, spec: dict[str, Any], memo_rows: int | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        settings = {k: spec[k] for k in self.SETTINGS if k in spec}
        if "ngram_range" in settings:
            settings["ngram_range"] = tuple(settings["ngram_range"])
        vocab = spec["vocabulary"]
        if isinstance(vocab, list):
            vocab = {term: i for i, term in enumerate(vocab)}
        self.vectorizer = TfidfVectorizer(vocabulary=vocab, dtype=np.float32, **settings)
        self.vectorizer.idf_ = np.asarray(spec["idf"], dtype=np.float64)
        self.dim = len(vocab)
        self._memo_rows = self.MEMO_ROWS if memo_rows is None else memo_rows
        self._memo: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, spec: dict[str, Any]) -> TextFeatures:
        """Return the one live instance for this spec (kept weakly: it goes with the last head using it)."""
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode("utf-8")).hexdigest()
        with cls._instances_lock:
            found = cls._instances.get(digest)
            if found is None:
                found = cls._instances[digest] = cls(spec)
            return found

    def transform(self, texts: Sequence[str]) -> Any:
        """Return a CSR matrix ``[n, dim]`` (float32)."""
        from scipy.sparse import csr_matrix

        texts = list(texts)
        if self._memo_rows <= 0:
            return self.vectorizer.transform(texts)
        with self._lock:
            rows = [self._memo.get(t) for t in texts]
            missing = list(dict.fromkeys(t for t, r in zip(texts, rows) if r is None))
            if missing:
                fresh = self.vectorizer.transform(missing)
                for i, t in enumerate(missing):
                    lo, hi = fresh.indptr[i], fresh.indptr[i + 1]
                    self._memo[t] = (fresh.indices[lo:hi].copy(), fresh.data[lo:hi].copy())
            held: list[tuple[np.ndarray, np.ndarray]] = []
            for t in texts:
                held.append(self._memo[t])
                self._memo.move_to_end(t)
            while len(self._memo) > self._memo_rows:
                self._memo.popitem(last=False)
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum([len(r[0]) for r in held], out=indptr[1:])
        indices = np.concatenate([r[0] for r in held]) if held else np.zeros(0, dtype=np.int32)
        data = np.concatenate([r[1] for r in held]) if held else np.zeros(0, dtype=np.float32)
        return csr_matrix((data, indices, indptr), shape=(len(texts), self.dim))


@dataclass
class Member:
    """One model of a head: a linear layer, or one hidden ReLU layer then a linear layer.

    Its input is the head's dense features (optionally standardised) side by side with the
    TF-IDF blocks it names; its output, logits divided by ``temperature``, goes through a
    softmax, and the head averages its members' probabilities with their ``weight``.
    """

    name: str
    kind: str
    text_features: list[str]
    temperature: float
    weight: float
    arrays: dict[str, np.ndarray] = field(repr=False)

    def logits(self, dense: np.ndarray, text: dict[str, Any]) -> np.ndarray:
        a = self.arrays
        if self.kind == "linear":
            z = dense @ a["W"] + a["b"]
            for name in self.text_features:
                z += np.asarray(text[name] @ a[f"W_{name}"])
            return z
        if self.kind == "mlp":
            h = dense @ a["W1"] + a["b1"]
            for name in self.text_features:
                h += np.asarray(text[name] @ a[f"W1_{name}"])
            np.maximum(h, 0.0, out=h)
            return h @ a["W2"] + a["b2"]
        raise HeadError(f"member {self.name}: unknown kind {self.kind!r}")

    def proba(self, dense: np.ndarray, text: dict[str, Any]) -> np.ndarray:
        return softmax(self.logits(dense, text) / self.temperature)


class Head:
    """A loaded head: ``predict(features, texts)`` turns readouts and cleaned texts into labels.

    ``features`` is the embedder's readout, float32 ``[n, len(readout) * 384]``; ``texts`` the
    cleaned texts (needed when the head uses TF-IDF features). With an ``oos`` label and an
    ``oos_threshold``, a row is predicted ``oos`` when ``oos`` is its most probable class, or
    when its best in-scope probability is below the threshold; in the second case its
    ``probability`` is ``1 -`` that best in-scope probability.
    """

    def __init__(self, ref: HeadRef, encoder: LabelEncoder, config: dict[str, Any],
                 arrays: dict[str, np.ndarray], metadata: dict[str, Any], path: Path) -> None:
        self.ref = ref
        self.encoder = encoder
        self.config = config
        self.metadata = metadata
        self.path = path
        self.readout = tuple(config["readout"])
        self.blocks = tuple(config["blocks"])
        self.columns = block_columns(self.readout, self.blocks)
        self.feature_dim = BLOCK_DIM * len(self.readout)
        self.mean = arrays.get("dense.mean")
        self.scale = arrays.get("dense.scale")
        self.text = {name: TextFeatures.shared(spec) for name, spec in config.get("text_features", {}).items()}
        self.members = []
        for m in config["members"]:
            prefix = f"{m['name']}."
            mine = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            self.members.append(Member(m["name"], m["kind"], list(m.get("text_features", [])),
                                       float(m.get("temperature", 1.0)), float(m.get("weight", 1.0)), mine))
        self.oos_threshold = config.get("oos_threshold")
        self.oos_index = encoder.labels.index(OOS) if OOS in encoder.labels else None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.encoder.labels

    @property
    def embedder_version(self) -> str:
        return str(self.metadata.get("embedder_version", ""))

    @property
    def needs_texts(self) -> bool:
        return bool(self.text)

    def __repr__(self) -> str:
        return f"Head({self.ref}, {len(self.labels)} labels, embedder {self.embedder_version})"

    def _dense(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"head {self.ref} takes features of shape [n, {self.feature_dim}], not {x.shape}")
        dense = x[:, self.columns]
        if self.mean is not None:
            dense = dense - self.mean
        if self.scale is not None:
            dense = dense / self.scale
        return dense

    def predict_proba(self, features: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        """Return the class probabilities, ``[n, n_classes]`` (columns in ``labels`` order)."""
        dense = self._dense(features)
        if self.text and (texts is None or len(texts) != len(dense)):
            raise ValueError(f"head {self.ref} uses TF-IDF features: give the {len(dense)} cleaned texts")
        if not len(dense):
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        # (texts is not None when self.text is: checked above)
        text = {name: tf.transform(texts) for name, tf in self.text.items()} if self.text and texts is not None else {}
        total = sum(m.weight for m in self.members)
        probs = np.zeros((len(dense), len(self.labels)), dtype=np.float64)
        for m in self.members:
            probs += (m.weight / total) * m.proba(dense, text)
        return probs

    def decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the predicted class index and its reported probability for each row."""
        pred = probs.argmax(axis=1)
        conf = probs[np.arange(len(probs)), pred]
        if self.oos_index is not None and self.oos_threshold is not None and len(probs):
            best_in = np.delete(probs, self.oos_index, axis=1).max(axis=1)
            reject = (best_in < float(self.oos_threshold)) & (pred != self.oos_index)
            pred = np.where(reject, self.oos_index, pred)
            conf = np.where(reject, 1.0 - best_in, conf)
        return pred, conf

    def predict(self, features: np.ndarray, top_k: int = 3, texts: Sequence[str] | None = None) -> list[HeadPrediction]:
        """Classify each row; ``top_k`` (label, probability) pairs come best first."""
        probs = self.predict_proba(features, texts)
        pred, conf = self.decide(probs)
        k = max(1, min(int(top_k), probs.shape[1]))
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        labels = self.encoder.labels
        out: list[HeadPrediction] = []
        for row, idx, p, c in zip(probs, top, pred, conf):
            pairs = [(labels[i], float(row[i])) for i in idx]
            out.append(HeadPrediction(label=labels[int(p)], probability=float(c), top_k=pairs))
        return out


def load_head(path: Path | str, embedder_version: str | None = None) -> Head:
    """Verify and load the head in folder ``path``.

    Every checksum in ``metadata.json`` is checked first (:class:`ChecksumMismatch`). If
    ``embedder_version`` is given it must equal the one the head was trained with
    (:class:`EmbedderMismatch`).
    """
    path = Path(path)
    meta = verify_head(path)
    try:
        ref = HeadRef.parse(str(meta["ref"]))
    except (KeyError, ValueError) as e:
        raise HeadError(f"{path / METADATA_FILE}: bad or missing 'ref': {e}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise HeadError(f"head {ref} has format {meta.get('format')!r}; this version reads format "
                        f"{FORMAT_VERSION}: train it again (phrasestream train)")
    trained_with = meta.get("embedder_version")
    if embedder_version is not None and trained_with != embedder_version:
        raise EmbedderMismatch(
            f"head {ref} was trained on features of embedder version {trained_with!r}, but the running "
            f"embedder is version {embedder_version!r}; train the head again for this embedder "
            "(phrasestream train) or run the embedder it was built for"
        )
    from safetensors.numpy import load_file

    encoder = LabelEncoder.from_json((path / LABELS_FILE).read_text(encoding="utf-8"))
    try:
        config = json.loads((path / HEAD_FILE).read_text(encoding="utf-8"))
        arrays = load_file(str(path / WEIGHTS_FILE))
        head = Head(ref, encoder, config, arrays, meta, path)
    except (KeyError, ValueError, TypeError) as e:
        raise HeadError(f"head {ref}: {HEAD_FILE} or {WEIGHTS_FILE} is not usable: {e!r}") from None
    for m in head.members:
        out = m.arrays.get("b") if m.kind == "linear" else m.arrays.get("b2")
        if out is None or out.shape != (len(encoder),):
            raise HeadError(f"head {ref}: member {m.name} has no output bias of {len(encoder)} classes")
    head.predict_proba(np.zeros((1, head.feature_dim), dtype=np.float32), [""])  # fail here, not when serving
    return head
