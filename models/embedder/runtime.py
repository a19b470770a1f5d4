"""The loaded embedder: :func:`load_embedder` gives the :class:`Embedder` the stream and training call.

>>> embedder = load_embedder(Settings())  # doctest: +SKIP
>>> embedder.features_batch(["what is my balance"]).shape  # doctest: +SKIP
(1, 1920)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.embedder.bench import FeatureSource, time_batches
from models.embedder.compat import import_hub
from models.embedder.cpu import (
    Choice,
    auto_candidates,
    check_setting,
    choose_precision,
    configure_threads,
    cpu_signature,
    parse_cpu_flags,
    read_cpuinfo,
    usable_cpus,
)
from models.embedder.export import (
    build_embedder,
    ensure_int8,
    export_dir_for,
    export_lock,
    read_manifest,
    verify_checksums,
)
from models.embedder.int8 import Int8Encoder
from models.embedder.spec import CHUNK, DIM, PRECISIONS, READOUT, SINGLE_PAD, UNK_ID, EmbedderError
from models.embedder.tfenv import native_log_filter
from schemas.settings import Settings

log = logging.getLogger(__name__)


def quantise(features: np.ndarray) -> np.ndarray:
    """Round float32 features to the nearest float16 values (kept as float32).

    Every feature vector the heads see, in training and in serving, is float16-exact, so the
    embedding cache stores float16 (half the memory) and a cache hit equals a fresh miss.
    """
    return np.asarray(features, dtype=np.float32).astype(np.float16).astype(np.float32)


def length_chunks(texts: Sequence[str], size: int = CHUNK) -> list[list[int]]:
    """Return indices of ``texts`` sorted by length (stable) and cut into chunks of ``size``."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i : i + size] for i in range(0, len(order), size)]


@dataclass
class Embedder:
    """The loaded export: ``embed_batch(texts)`` gives float32 ``[n, 384]`` unit vectors.

    ``features_batch(texts)`` gives the heads' input, float32 ``[n, feature_dim]``: the blocks
    of ``readout`` side by side, the first 384 columns being the sentence embedding. Both run the
    export's function for ``precision`` and the batch: ``fp32`` runs ``features`` (packed
    tokens), or ``features_single`` (XLA) for one text alone; ``bf16`` runs ``features_bf16``;
    ``int8`` runs the export's ``tokenize`` and then the int8 encoder (``int8``).
    """

    version: str
    path: Path
    model: Any = field(repr=False)
    dim: int = DIM
    chunk_size: int = CHUNK
    readout: tuple[str, ...] = READOUT
    precision: str = "fp32"
    int8: Int8Encoder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EmbedderError(f"unknown embed precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.precision == "int8" and self.int8 is None:
            raise EmbedderError("precision int8 needs the int8 encoder (load_embedder loads it)")

    @property
    def feature_dim(self) -> int:
        return self.dim * len(self.readout)

    @property
    def features_id(self) -> str:
        """Name the features this embedder computes: the version, with the precision unless fp32.

        Two embedders with one ``features_id`` give the same features (to float noise); a cache
        of features keyed by it never mixes precisions. fp32 keeps the bare version, which
        caches written before precisions were told apart used.
        """
        return features_id_for(self.version, self.precision)

    def _features(self, batch: np.ndarray) -> np.ndarray:
        """Run the export function for this precision and batch size (see ``features_single``)."""
        if self.precision == "int8" and self.int8 is not None:
            tokens = self.model.tokenize(batch)
            return self.int8(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())
        if self.precision == "bf16":
            run = self.model.features_bf16
        elif len(batch) == 1:
            run = self.model.features_single
        else:
            run = self.model.features
        return run(batch).numpy()

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Return the readout of ``texts`` in input order; ``n == 0`` gives ``(0, feature_dim)``."""
        return self._in_chunks(texts, self.feature_dim, lambda batch: quantise(self._features(batch)))

    def _in_chunks(self, texts: Sequence[str], width: int, run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Run ``run`` on length-sorted chunks of ``texts`` (as UTF-8); return rows in input order."""
        texts = list(texts)
        out = np.empty((len(texts), width), dtype=np.float32)
        for idx in length_chunks(texts, self.chunk_size):
            out[idx] = run(np.array([texts[i].encode("utf-8", "replace") for i in idx], dtype=object))
        return out

    def unknown_rates(self, texts: Sequence[str]) -> np.ndarray:
        """Return, per text, the share of its word pieces that are ``[UNK]`` (0 for no pieces)."""
        out = np.zeros(len(texts), dtype=np.float64)
        for idx in length_chunks(list(texts), 256):
            ids, mask = self.token_ids([texts[i] for i in idx])
            pieces = mask.sum(axis=1) - 2  # without [CLS] and [SEP]
            unk = (ids == UNK_ID).sum(axis=1)
            out[idx] = np.where(pieces > 0, unk / np.maximum(pieces, 1), 0.0)
        return out

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``; rows are L2-normalised and in input order; ``n == 0`` gives (0, 384)."""
        return self._in_chunks(texts, self.dim, lambda batch: self._features(batch)[:, : self.dim])

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return the padded word-piece ids and attention mask the export computes (for checks)."""
        batch = np.array([t.encode("utf-8", "replace") for t in texts], dtype=object)
        res = self.model.tokenize(batch)
        return res["input_ids"].numpy(), res["attention_mask"].numpy()


def load_embedder(settings: Settings, precision: str | None = None, warm: bool | None = None) -> Embedder:
    """Build the export if it is missing, verify its checksums and load it with tensorflow_hub.

    TensorFlow's threads are sized first (:func:`~models.embedder.cpu.configure_threads`).
    ``precision`` (``auto``, ``fp32``, ``bf16``, ``int8``) defaults to
    ``settings.embed_precision`` (``PHRASESTREAM_EMBED_PRECISION``); ``auto`` is decided by
    :func:`auto_precision` (a timed check, once per CPU and export). int8 converts the int8
    encoder into the export the first time (:func:`~models.embedder.export.ensure_int8`,
    10-20 s). The choice and its reason are logged. ``warm`` (default
    ``settings.embed_warmup``) runs :func:`warm_up`: serving wants it; training, which embeds
    batches only, does not (its batch graph compiles at its first batch).
    """
    threads = configure_threads()
    cpuinfo = read_cpuinfo()
    setting: str = precision or settings.embed_precision
    check_setting(setting)  # before any work
    export_dir = build_embedder(settings, progress=False)
    manifest = read_manifest(export_dir)
    verify_checksums(export_dir, manifest)
    import tensorflow_text  # noqa: F401  registers the ops the graph uses

    model = import_hub().load(str(export_dir))
    readout = tuple(manifest.get("readout") or ("mean6",))
    fp32 = Embedder(version=manifest["version"], path=export_dir, model=model, readout=readout)
    if setting == "auto":
        choice = auto_precision(fp32, cpuinfo)
    else:
        choice = choose_precision(setting, parse_cpu_flags(cpuinfo))
    embedder = with_precision(fp32, choice.precision)
    log.info("embedder %s: precision %s (%s); TensorFlow threads (intra, inter) %s",
             embedder.version, choice.precision, choice.reason, threads or "as they were")
    if settings.embed_warmup if warm is None else warm:
        warm_up(embedder)
    return embedder


def with_precision(embedder: Embedder, precision: str) -> Embedder:
    """Return ``embedder`` (the same loaded export) running in ``precision``; int8 loads its encoder."""
    if precision != "int8":
        return dataclasses.replace(embedder, precision=precision, int8=None)
    if embedder.int8 is None:
        path = ensure_int8(embedder.path)
        verify_checksums(embedder.path, read_manifest(embedder.path))  # the int8 file included
        return dataclasses.replace(embedder, precision="int8", int8=Int8Encoder(path, usable_cpus()))
    return dataclasses.replace(embedder, precision="int8")


AUTO_FILE = "auto-precision.json"
"""In the export folder: ``auto``'s choice per CPU (:func:`~models.embedder.cpu.cpu_signature`)."""


def auto_precision(embedder: Embedder, cpuinfo: str,
                   time_sources: Callable[[Mapping[str, FeatureSource]], Mapping[str, float]] = time_batches) -> Choice:
    """Return ``auto``'s precision on this CPU: remembered in the export folder, else timed now.

    The first load on a CPU times one batch of each candidate (:func:`~models.embedder.cpu.
    auto_candidates`) against the others (:func:`~models.embedder.bench.time_batches`, 1-3 s)
    and writes the result to :data:`AUTO_FILE`; later loads on a CPU of the same signature, with
    the same candidates, read it. Why remembered: a head is served only in the precision it
    was trained on, so the training command and the worker must not choose differently because
    one check ran on a busier machine than the other. Delete the file to time again.
    """
    flags = parse_cpu_flags(cpuinfo)
    candidates = auto_candidates(flags)
    if len(candidates) == 1:
        return choose_precision("auto", flags)
    path = embedder.path / AUTO_FILE
    with export_lock(embedder.path, ".auto.lock"):
        known = _read_auto_file(path)
        saved = _remembered(known, cpuinfo, candidates)
        if saved is not None:
            return Choice(saved["precision"], f"{saved.get('reason')}; remembered from {saved.get('measured_at')} "
                                              f"in {path}")
        seconds = dict(time_sources({p: with_precision(embedder, p) for p in candidates}))
        choice = choose_precision("auto", flags, lambda names: seconds)
        known[cpu_signature(cpuinfo)] = {
            "precision": choice.precision, "reason": choice.reason, "candidates": list(candidates),
            "seconds_per_batch": {p: round(s, 4) for p, s in seconds.items()},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = path.with_name(f".{AUTO_FILE}.tmp")
        tmp.write_text(json.dumps(known, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return choice


def features_id_for(version: str, precision: str) -> str:
    """Return :attr:`Embedder.features_id` of export ``version`` run in ``precision`` (no TensorFlow)."""
    return version if precision == "fp32" else f"{version}-{precision}"


def known_precision(settings: Settings, version: str) -> str | None:
    """Return the precision ``load_embedder(settings)`` would run for export ``version``, without
    TensorFlow; None when ``auto`` has not been decided on this CPU yet (loading decides it)."""
    setting = settings.embed_precision
    check_setting(setting)
    if setting != "auto":
        return setting
    cpuinfo = read_cpuinfo()
    flags = parse_cpu_flags(cpuinfo)
    candidates = auto_candidates(flags)
    if len(candidates) == 1:
        return choose_precision("auto", flags).precision
    saved = _remembered(_read_auto_file(export_dir_for(settings, version) / AUTO_FILE), cpuinfo, candidates)
    return None if saved is None else saved["precision"]


def _read_auto_file(path: Path) -> dict[str, Any]:
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _remembered(known: dict[str, Any], cpuinfo: str, candidates: tuple[str, ...]) -> dict[str, Any] | None:
    """Return the choice :data:`AUTO_FILE` holds for this CPU among these candidates, or None."""
    saved = known.get(cpu_signature(cpuinfo))
    if isinstance(saved, dict) and saved.get("candidates") == list(candidates) and saved.get("precision") in candidates:
        return saved
    return None


def warm_up(embedder: Embedder) -> None:
    """Run the embedder once per graph that serving uses, so that serving does not stall on them.

    The first call of a function optimises its graph (~1 s), and the single-text path compiles
    each padded length once: this calls it for a batch and for one text of each padded length
    up to 32 pieces (99.9% of CLINC150's phrases). ``PHRASESTREAM_EMBED_WARMUP=false`` leaves it
    to the first phrases (each graph then compiles when first used).
    (Filtered: oneDNN's rewrite logs a false alarm as an error then; tfenv.FALSE_ALARMS.)
    """
    with native_log_filter():
        embedder.features_batch(["warm up", "warm up"])
        for pieces in range(SINGLE_PAD, 33, SINGLE_PAD):
            embedder.features_batch([" ".join(["a"] * (pieces - 2))])
