"""Serve a head: load a verified folder and turn readouts (and cleaned texts) into labels.

The forward pass is numpy (and a scipy sparse product for TF-IDF): no TensorFlow, cheap enough
to run beside the event loop. :func:`load_head` verifies every checksum first
(``models.heads.artifact``), then builds a :class:`Head` from ``head.json``,
``weights.safetensors`` and ``labels.json``. Training (``retrain.train.recipe``) evaluates the
candidates with this same :class:`Head`, so what is evaluated is what serving computes.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.heads.artifact import (
    FORMAT_VERSION,
    HEAD_FILE,
    LABELS_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    EmbedderMismatch,
    HeadError,
    LabelEncoder,
    embedder_precision_of,
    verify_head,
)
from models.heads.ref import HeadRef

OOS = "oos"
"""The out-of-scope label: with an ``oos_threshold``, :meth:`Head.decide` also gives it to unsure rows."""

BLOCK_DIM = 384
"""Width of one readout block of the embedder's features."""


@dataclass(frozen=True)
class HeadPrediction:
    """The best label of one vector, its probability, and the ``top_k`` labels (best first)."""

    label: str
    probability: float
    top_k: list[tuple[str, float]]


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
    def embedder_precision(self) -> str:
        return embedder_precision_of(self.metadata)

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


def load_head(path: Path | str, embedder_version: str | None = None, embedder_precision: str | None = None) -> Head:
    """Verify and load the head in folder ``path``.

    Every checksum in ``metadata.json`` is checked first (:class:`ChecksumMismatch`). If
    ``embedder_version`` is given it must equal the one the head was trained with, and if
    ``embedder_precision`` is given it must equal the precision of the features it was trained
    on (``fp32`` for a head that records none): else :class:`EmbedderMismatch`.
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
    trained_in = embedder_precision_of(meta)
    if embedder_precision is not None and trained_in != embedder_precision:
        raise EmbedderMismatch(
            f"head {ref} was trained on {trained_in} features of the embedder, but the running embedder "
            f"computes {embedder_precision}; train the head again with this precision (phrasestream train, "
            f"with the worker's PHRASESTREAM_EMBED_PRECISION) or run the worker with "
            f"PHRASESTREAM_EMBED_PRECISION={trained_in}"
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
