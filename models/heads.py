"""Classifier heads: small tf-keras models on the 384-d sentence embedding, one per (region, model).

A head is built by :func:`train_head` and lives in its own folder::

    <models_root>/heads/<region>/<model>/<version>/
        model.keras            tf-keras native format (a zip of JSON config + HDF5 weights; no pickle)
        labels.json            the ordered list of class labels (index i = output unit i)
        report_train.csv       per-class precision/recall/F1/support on the training split
        report_test.csv        the same on the held-out test split
        train_data.jsonl.gz    the rows it was trained (split=train) and early-stopped (split=val) on
        code.zip               the Python sources of models/, retrain/ and schemas/ that built it
        metadata.json          ref, created_at, embedder_version, metrics, training params and the
                               sha256 of every other file in the folder

The folder is written under a temporary name and renamed into place, so a reader never sees a
half-written head. :func:`load_head` verifies every checksum before it loads anything.

TensorFlow is imported only when a model is built or loaded, so :class:`HeadRef`, the metrics
and the registry stay cheap to import.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
import secrets
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.checksums import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras  # lazy: TensorFlow takes seconds to import

FORMAT_VERSION = 1
OOS = "oos"

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
REPORT_TRAIN_FILE = "report_train.csv"
REPORT_TEST_FILE = "report_test.csv"
TRAIN_DATA_FILE = "train_data.jsonl.gz"
CODE_FILE = "code.zip"
METADATA_FILE = "metadata.json"

CODE_PACKAGES = ("models", "retrain", "schemas")
"""The packages whose sources go into ``code.zip``."""

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
# Metrics (numpy only)


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one labelled set. Zero divisions count as 0, as sklearn's default does."""

    labels: list[str]
    per_class: list[ClassMetrics]
    n: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    in_scope_accuracy: float | None = None
    """Accuracy on the rows whose true label is not the out-of-scope label (None without it)."""
    oos_recall: float | None = None
    oos_precision: float | None = None
    in_scope_weighted_f1: float | None = None
    """Weighted F1 over the in-scope rows only (the figure usually quoted for CLINC150)."""

    def summary(self) -> dict[str, float | int | None]:
        """Return the headline numbers as a JSON-ready dict."""
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "weighted_f1": self.weighted_f1,
            "weighted_precision": self.weighted_precision,
            "weighted_recall": self.weighted_recall,
            "macro_f1": self.macro_f1,
            "in_scope_accuracy": self.in_scope_accuracy,
            "in_scope_weighted_f1": self.in_scope_weighted_f1,
            "oos_recall": self.oos_recall,
            "oos_precision": self.oos_precision,
        }

    def to_csv(self, path: Path | str) -> None:
        """Write one row per class, then ``accuracy``, ``macro avg`` and ``weighted avg`` rows."""
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(self.to_csv_text())

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["label", "precision", "recall", "f1", "support"])
        for c in self.per_class:
            w.writerow([c.label, _fmt(c.precision), _fmt(c.recall), _fmt(c.f1), c.support])
        w.writerow(["accuracy", "", "", _fmt(self.accuracy), self.n])
        w.writerow(["macro avg", _fmt(self.macro_precision), _fmt(self.macro_recall), _fmt(self.macro_f1), self.n])
        w.writerow(
            ["weighted avg", _fmt(self.weighted_precision), _fmt(self.weighted_recall), _fmt(self.weighted_f1), self.n]
        )
        return buf.getvalue()


def _fmt(x: float) -> str:
    return f"{x:.6f}"


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Return the ``[n_classes, n_classes]`` count matrix, rows = true class, columns = predicted."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape} vs {p.shape}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str] | None = None,
    oos_label: str | None = OOS,
) -> ClassificationReport:
    """Compute accuracy, per-class precision/recall/F1/support and macro/weighted averages.

    ``labels`` fixes the classes and their order (default: the sorted union of both lists);
    macro averages run over all of them, weighted ones weight each class by its support.
    When ``oos_label`` is among the labels, the report also has the in-scope accuracy and the
    out-of-scope precision and recall.
    """
    y_true = list(y_true)
    y_pred = list(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    labels = list(labels) if labels is not None else sorted(set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError("labels has duplicates")
    unknown = sorted((set(y_true) | set(y_pred)) - index.keys())
    if unknown:
        raise ValueError(f"labels not in the label list: {unknown[:5]}")
    k = len(labels)
    t = np.array([index[y] for y in y_true], dtype=np.int64)
    p = np.array([index[y] for y in y_pred], dtype=np.int64)
    cm = confusion_matrix(t, p, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = len(t)
    weights = _safe_div(support, np.array(n))

    in_scope = oos_recall = oos_precision = in_scope_f1 = None
    if oos_label is not None and oos_label in index:
        o = index[oos_label]
        mask = t != o
        in_scope = float((t[mask] == p[mask]).mean()) if mask.any() else 0.0
        in_scope_f1 = classification_report(
            [y for y, m in zip(y_true, mask) if m], [y for y, m in zip(y_pred, mask) if m], labels, oos_label=None
        ).weighted_f1
        oos_recall = float(recall[o])
        oos_precision = float(precision[o])

    return ClassificationReport(
        labels=labels,
        per_class=[
            ClassMetrics(label, float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, label in enumerate(labels)
        ],
        n=n,
        accuracy=float((t == p).mean()) if n else 0.0,
        macro_precision=float(precision.mean()) if k else 0.0,
        macro_recall=float(recall.mean()) if k else 0.0,
        macro_f1=float(f1.mean()) if k else 0.0,
        weighted_precision=float((precision * weights).sum()),
        weighted_recall=float((recall * weights).sum()),
        weighted_f1=float((f1 * weights).sum()),
        in_scope_accuracy=in_scope,
        oos_recall=oos_recall,
        oos_precision=oos_precision,
        in_scope_weighted_f1=in_scope_f1,
    )


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


# --------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainParams:
    """How a head is built and trained. Stored in ``metadata.json``.

    The defaults were chosen on the CLINC150 validation split (never on test) with the frozen
    all-MiniLM-L6-v2 embedding: one hidden layer of 512 ReLU units with dropout 0.5, early
    stopping on validation accuracy (patience 10) and the ``oos`` class weighted 3x gave the
    best validation accuracy of the variants tried (softmax regression, 1024 units, label
    smoothing 0.1, input scaling, early stopping on validation loss, ``sqrt`` class weights).
    """

    hidden_units: int = 512
    """Width of the one hidden ReLU layer; 0 makes the head a plain softmax regression."""
    dropout: float = 0.5
    input_scale: float = 1.0
    """Multiply the (L2-normalised) embedding by this before the first layer."""
    learning_rate: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 10
    """Early stopping: epochs without a better ``monitor`` before stopping (best weights kept)."""
    monitor: str = "val_accuracy"
    label_smoothing: float = 0.0
    l2: float = 0.0
    class_weight: str = "balanced"
    """``balanced`` (n / (k * count)), ``sqrt`` (square root of balanced) or ``none``."""
    oos_weight: float = 3.0
    """Extra factor on the class weight of the out-of-scope label (``oos``), if there is one."""
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.class_weight not in ("balanced", "sqrt", "none"):
            raise ValueError(f"class_weight is 'balanced', 'sqrt' or 'none', not {self.class_weight!r}")
        if self.monitor not in ("val_loss", "val_accuracy"):
            raise ValueError(f"monitor is 'val_loss' or 'val_accuracy', not {self.monitor!r}")
        bad = (
            self.hidden_units < 0
            or not 0.0 <= self.dropout < 1.0
            or self.max_epochs < 1
            or self.batch_size < 1
            or self.patience < 0
            or self.oos_weight <= 0
            or not 0.0 <= self.label_smoothing < 1.0
        )
        if bad:
            raise ValueError(f"bad training parameters: {self}")


@dataclass(frozen=True)
class LabeledVectors:
    """Texts, their labels and their embeddings (row ``i`` of ``vectors`` embeds ``texts[i]``)."""

    texts: list[str]
    labels: list[str]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.texts) == len(self.labels) == len(self.vectors)):
            raise ValueError(
                f"texts, labels and vectors differ in length: {len(self.texts)}, {len(self.labels)}, "
                f"{len(self.vectors)}"
            )
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-d, not of shape {self.vectors.shape}")

    def __len__(self) -> int:
        return len(self.texts)


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> dict[int, float] | None:
    """Return keras ``class_weight`` for integer labels ``y``, or None for ``mode='none'``.

    ``balanced`` gives class c the weight ``n / (k * count_c)`` over the k classes present;
    ``sqrt`` its square root (a milder correction). Absent classes get 1.
    """
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.ones(n_classes, dtype=np.float64)
    w[present] = counts.sum() / (present.sum() * counts[present])
    if mode == "sqrt":
        w = np.sqrt(w)
    elif mode != "balanced":
        raise ValueError(f"unknown class weight mode {mode!r}")
    return {i: float(w[i]) for i in range(n_classes)}


def _weights_with_oos(
    weights: dict[int, float] | None, encoder: LabelEncoder, oos_weight: float
) -> dict[int, float] | None:
    if oos_weight == 1.0 or OOS not in encoder.labels:
        return weights
    weights = dict(weights) if weights is not None else {i: 1.0 for i in range(len(encoder))}
    o = encoder.labels.index(OOS)
    weights[o] *= oos_weight
    return weights


def _keras():
    import tf_keras

    return tf_keras


def build_model(input_dim: int, n_classes: int, params: TrainParams) -> tf_keras.Model:
    """Build and compile the head network (not yet trained)."""
    keras = _keras()
    reg = keras.regularizers.L2(params.l2) if params.l2 > 0 else None
    inputs = keras.Input(shape=(input_dim,), dtype="float32", name="embedding")
    x = inputs
    if params.input_scale != 1.0:
        x = keras.layers.Rescaling(params.input_scale, name="scale")(x)
    if params.hidden_units > 0:
        x = keras.layers.Dense(params.hidden_units, activation="relu", kernel_regularizer=reg, name="hidden")(x)
        if params.dropout > 0:
            x = keras.layers.Dropout(params.dropout, seed=params.seed, name="dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=reg, name="probs")(x)
    model = keras.Model(inputs, outputs, name="head")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=params.label_smoothing),
        metrics=["accuracy"],
    )
    return model


@dataclass
class FitResult:
    model: Any
    encoder: LabelEncoder
    epochs_run: int
    best_epoch: int
    history: dict[str, list[float]]
    seconds: float


def fit_model(
    train: LabeledVectors,
    val: LabeledVectors,
    params: TrainParams = TrainParams(),
    labels: Sequence[str] | None = None,
    verbose: int = 0,
) -> FitResult:
    """Train a head network on ``train``, early-stopped on ``val``. No files are written.

    ``labels`` fixes the classes and their order (default: sorted labels of ``train``).
    """
    keras = _keras()
    encoder = LabelEncoder(tuple(labels)) if labels is not None else LabelEncoder.fit(train.labels)
    k = len(encoder)
    keras.utils.set_random_seed(params.seed)
    y_train = encoder.encode(train.labels)
    y_val = encoder.encode(val.labels)
    eye = np.eye(k, dtype=np.float32)
    model = build_model(int(train.vectors.shape[1]), k, params)
    stop = keras.callbacks.EarlyStopping(
        monitor=params.monitor,
        mode="min" if params.monitor == "val_loss" else "max",
        patience=params.patience,
        restore_best_weights=True,
    )
    t0 = time.perf_counter()
    hist = model.fit(
        np.asarray(train.vectors, dtype=np.float32),
        eye[y_train],
        validation_data=(np.asarray(val.vectors, dtype=np.float32), eye[y_val]),
        epochs=params.max_epochs,
        batch_size=params.batch_size,
        class_weight=_weights_with_oos(class_weights(y_train, k, params.class_weight), encoder, params.oos_weight),
        callbacks=[stop],
        shuffle=True,
        verbose=verbose,
    )
    seconds = time.perf_counter() - t0
    history = {key: [float(v) for v in values] for key, values in hist.history.items()}
    epochs_run = len(history.get("loss", []))
    series = history.get(params.monitor, [])
    if series:
        best = int(np.argmin(series) if params.monitor == "val_loss" else np.argmax(series)) + 1
    else:
        best = epochs_run
    return FitResult(model, encoder, epochs_run, best, history, seconds)


def predict_proba(model: Any, vectors: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Run ``model`` on ``vectors`` in batches (direct call, no ``.predict()``); float32 ``[n, k]``."""
    x = np.asarray(vectors, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype=np.float32)
    parts = [np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------------------------
# Saving


def _source_root() -> Path:
    return Path(__file__).resolve().parent.parent


def write_code_zip(path: Path | str, packages: Sequence[str] = CODE_PACKAGES) -> list[str]:
    """Zip the ``*.py`` files of ``packages`` (fixed timestamps, sorted: same code, same bytes)."""
    root = _source_root()
    names: list[str] = []
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            names.append(p.relative_to(root).as_posix())
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, (root / name).read_bytes())
    return names


def write_train_data(path: Path | str, splits: dict[str, LabeledVectors]) -> int:
    """Write ``{"text", "label", "split"}`` JSON lines, gzipped with a fixed mtime; return the row count."""
    rows = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for split, data in splits.items():
            for text, label in zip(data.texts, data.labels):
                line = json.dumps({"text": text, "label": label, "split": split}, ensure_ascii=False)
                gz.write(line.encode("utf-8") + b"\n")
                rows += 1
    return rows


def read_train_data(path: Path | str) -> list[dict[str, str]]:
    """Read back a ``train_data.jsonl.gz`` snapshot."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class TrainedHead:
    """What :func:`train_head` built: where, and how well it does."""

    ref: HeadRef
    path: Path
    metrics: dict[str, dict[str, float | int | None]]
    train_seconds: float
    epochs_run: int


def train_head(
    models_root: Path | str,
    region: str,
    model: str,
    *,
    embedder_version: str,
    train: LabeledVectors,
    val: LabeledVectors,
    test: LabeledVectors,
    params: TrainParams = TrainParams(),
    labels: Sequence[str] | None = None,
    version: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
    verbose: int = 0,
) -> TrainedHead:
    """Train one head and write its folder atomically; return its ref, path and metrics.

    ``val`` drives early stopping; ``test`` is never trained on and only gives
    ``report_test.csv`` and the test metrics. The head is not activated: see ``models.registry``.
    """
    ref = HeadRef(region, model, version or new_version())
    dim = int(train.vectors.shape[1])
    for name, split in (("val", val), ("test", test)):
        if split.vectors.shape[1] != dim:
            raise ValueError(f"{name} vectors have dimension {split.vectors.shape[1]}, train has {dim}")
    fit = fit_model(train, val, params, labels=labels, verbose=verbose)
    enc = fit.encoder
    reports: dict[str, ClassificationReport] = {}
    for name, split in (("train", train), ("val", val), ("test", test)):
        probs = predict_proba(fit.model, split.vectors)
        pred = enc.decode(np.argmax(probs, axis=1)) if len(split) else []
        reports[name] = classification_report(split.labels, pred, labels=enc.labels)

    final = ref.path(models_root)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise FileExistsError(f"head folder {final} already exists")
    tmp = parent / f".tmp-{ref.version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        fit.model.save(tmp / MODEL_FILE)
        (tmp / LABELS_FILE).write_text(enc.to_json(), encoding="utf-8")
        reports["train"].to_csv(tmp / REPORT_TRAIN_FILE)
        reports["test"].to_csv(tmp / REPORT_TEST_FILE)
        write_train_data(tmp / TRAIN_DATA_FILE, {"train": train, "val": val})
        code_files = write_code_zip(tmp / CODE_FILE)
        val_losses = fit.history.get("val_loss") or []
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        metadata = {
            "format": FORMAT_VERSION,
            "ref": str(ref),
            "region": ref.region,
            "model": ref.model,
            "version": ref.version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "embedder_version": embedder_version,
            "embedding_dim": dim,
            "n_classes": len(enc),
            "metrics": {name: r.summary() for name, r in reports.items()},
            "training": {
                "params": asdict(params),
                "n_train": len(train),
                "n_val": len(val),
                "n_test": len(test),
                "epochs_run": fit.epochs_run,
                "best_epoch": fit.best_epoch,
                "seconds": round(fit.seconds, 3),
                "best_val_loss": val_losses[fit.best_epoch - 1] if val_losses else None,
            },
            "runtime": _runtime_versions(),
            "code_files": code_files,
            "extra": extra_metadata or {},
            "files": files,
        }
        _write_json(tmp / METADATA_FILE, metadata)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainedHead(
        ref=ref,
        path=final,
        metrics=metadata["metrics"],
        train_seconds=fit.seconds,
        epochs_run=fit.epochs_run,
    )


def _runtime_versions() -> dict[str, str]:
    import platform

    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "tf_keras": _keras().__version__,
    }


# --------------------------------------------------------------------------------------------
# Loading and predicting


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


class Head:
    """A loaded head: ``predict`` turns embeddings into labels."""

    def __init__(self, ref: HeadRef, model: Any, encoder: LabelEncoder, metadata: dict[str, Any], path: Path):
        self.ref = ref
        self.model = model
        self.encoder = encoder
        self.metadata = metadata
        self.path = path
        self.dim = int(metadata.get("embedding_dim") or model.inputs[0].shape[-1])

    @property
    def labels(self) -> tuple[str, ...]:
        return self.encoder.labels

    @property
    def embedder_version(self) -> str:
        return str(self.metadata.get("embedder_version", ""))

    def __repr__(self) -> str:
        return f"Head({self.ref}, {len(self.labels)} labels, embedder {self.embedder_version})"

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Return the class probabilities, float32 ``[n, n_classes]`` (columns in ``labels`` order)."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"head {self.ref} takes vectors of shape [n, {self.dim}], not {x.shape}")
        return predict_proba(self.model, x)

    def predict(self, vectors: np.ndarray, top_k: int = 3) -> list[HeadPrediction]:
        """Classify each row of ``vectors`` (``[n, dim]``; one 1-d vector is taken as ``[1, dim]``)."""
        probs = self.predict_proba(vectors)
        k = max(1, min(int(top_k), probs.shape[1]))
        if k < probs.shape[1]:
            part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(probs, part, axis=1).argsort(axis=1)[:, ::-1]
            top = np.take_along_axis(part, order, axis=1)
        else:
            top = np.argsort(-probs, axis=1, kind="stable")
        labels = self.encoder.labels
        out: list[HeadPrediction] = []
        for row, idx in zip(probs, top):
            pairs = [(labels[i], float(row[i])) for i in idx]
            out.append(HeadPrediction(label=pairs[0][0], probability=pairs[0][1], top_k=pairs))
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
    trained_with = meta.get("embedder_version")
    if embedder_version is not None and trained_with != embedder_version:
        raise EmbedderMismatch(
            f"head {ref} was trained on embeddings of embedder version {trained_with!r}, but the running "
            f"embedder is version {embedder_version!r}; retrain the head for this embedder "
            "(python -m retrain.demo) or run the embedder it was built for"
        )
    encoder = LabelEncoder.from_json((path / LABELS_FILE).read_text(encoding="utf-8"))
    keras = _keras()
    model = keras.models.load_model(path / MODEL_FILE, compile=False, safe_mode=True)
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(encoder) or meta.get("n_classes", n_out) != n_out:
        raise HeadError(
            f"head {ref}: the model has {n_out} outputs, labels.json {len(encoder)} labels, "
            f"metadata n_classes={meta.get('n_classes')}"
        )
    head = Head(ref, model, encoder, meta, path)
    head.predict_proba(np.zeros((1, head.dim), dtype=np.float32))  # build the call graph once
    return head
