"""The SavedModel export: where it lives, building it once, and its checksums.

The export is built once per version under ``<settings.models_root>/embedder/<version>/``
(:mod:`models.embedder.version`). ``embedder.json`` beside it names the version and holds the
SHA-256 of every file of the export; :func:`verify_checksums` checks them on every load.
:func:`ensure_int8` adds the int8 encoder to an export the first time it is wanted, and its
checksum to the manifest; :func:`export_lock` keeps two processes from adding at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.checksums import sha256_file
from models.embedder.graph import make_module
from models.embedder.int8 import INT8_FILE, QUANTISATION, convert_int8
from models.embedder.spec import DIM, DIST_NAME, MAX_SEQ_LEN, MODEL_NAME, PRECISIONS, READOUT, EmbedderError
from models.embedder.version import GRAPH_VERSION, compute_version
from models.embedder.weights import VOCAB_FILE, WEIGHTS_FILE, files_digest, load_weights, locate_model_file
from ops.logs import progress as say
from schemas.settings import Settings

log = logging.getLogger(__name__)

MANIFEST_NAME = "embedder.json"
LOCK_NAMES = (".int8.lock", ".auto.lock")
"""The files :func:`export_lock` locks, one per job (not part of the export, not checksummed).
Two, not one: the ``auto`` check converts the int8 encoder while it holds its own lock, and a
second ``flock`` of one file by the same process would wait for itself."""


def export_dir_for(settings: Settings, version: str) -> Path:
    """Return the cache folder of one export version."""
    return Path(settings.models_root) / "embedder" / version


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


def read_manifest(export_dir: Path) -> dict[str, Any]:
    """Return the export's ``embedder.json``; raise :class:`EmbedderError` if it is missing or bad."""
    path = export_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EmbedderError(f"{path} is missing: the export is incomplete; delete {export_dir}") from exc
    except ValueError as exc:
        raise EmbedderError(f"{path} is not valid JSON: {exc}") from exc
    if manifest.get("version") != export_dir.name:
        raise EmbedderError(f"{path} names version {manifest.get('version')!r}, not {export_dir.name!r}")
    return manifest


def build_embedder(settings: Settings, progress: bool = True) -> Path:
    """Build the SavedModel export if it is missing and return its folder (idempotent).

    The folder is named by :func:`~models.embedder.version.compute_version` of
    :data:`~models.embedder.version.GRAPH_VERSION` and the installed weights' digest.
    """
    weights_path = locate_model_file(WEIGHTS_FILE)
    vocab_path = locate_model_file(VOCAB_FILE)
    digest = files_digest([weights_path, vocab_path])
    version = compute_version(GRAPH_VERSION, digest)
    target = export_dir_for(settings, version)
    if (target / MANIFEST_NAME).is_file() and (target / "saved_model.pb").is_file():
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    say(log, f"building {version} from {weights_path.parent}", progress, tag="embedder")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=target.parent))
    try:
        import tensorflow as tf

        module = make_module(load_weights(weights_path), vocab_path)
        say(log, "tracing and saving the SavedModel", progress, tag="embedder")
        tf.saved_model.save(
            module,
            str(tmp),
            signatures={"serving_default": module.serve.get_concrete_function()},
        )
        manifest = {
            "version": version,
            "graph_version": GRAPH_VERSION,
            "weights_sha256": digest,
            "model": MODEL_NAME,
            "dim": DIM,
            "readout": list(READOUT),
            "feature_dim": DIM * len(READOUT),
            "precisions": [p for p in PRECISIONS if p != "int8"],  # ensure_int8 adds int8
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
    say(log, f"built {version} in {time.perf_counter() - started:.1f}s: {target}", progress, tag="embedder")
    return target


@contextlib.contextmanager
def export_lock(export_dir: Path, name: str) -> Iterator[None]:
    """Hold the exclusive lock ``name`` (one of :data:`LOCK_NAMES`) on an export folder while a file
    is added to it (other processes wait)."""
    if name not in LOCK_NAMES:
        raise ValueError(f"unknown export lock {name!r}; known: {', '.join(LOCK_NAMES)}")
    with open(export_dir / name, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def ensure_int8(export_dir: Path, progress: bool = False) -> Path:
    """Add the int8 encoder (:mod:`models.embedder.int8`) to the export if it lacks it; return its path.

    Converted from the installed weights, which must be the ones the export was built from; the
    file's SHA-256 is added to ``embedder.json`` (so :func:`verify_checksums` covers it from then
    on). Under :func:`export_lock`: a process that waited finds the file there.
    """
    target = export_dir / INT8_FILE
    with export_lock(export_dir, ".int8.lock"):
        manifest = read_manifest(export_dir)
        if INT8_FILE in (manifest.get("sha256") or {}):
            return target
        weights_path = locate_model_file(WEIGHTS_FILE)
        vocab_path = locate_model_file(VOCAB_FILE)
        if files_digest([weights_path, vocab_path]) != manifest.get("weights_sha256"):
            raise EmbedderError(f"the installed weights are not those of export {export_dir.name}: "
                                "cannot convert its int8 encoder; delete the folder to rebuild it")
        started = time.perf_counter()
        say(log, f"converting the int8 encoder of {export_dir.name}", progress, tag="embedder")
        import tensorflow as tf

        _write_atomically(target, convert_int8(load_weights(weights_path), vocab_path))
        manifest["sha256"][INT8_FILE] = sha256_file(target)
        manifest["precisions"] = [*manifest.get("precisions", []), "int8"]
        manifest["int8"] = {"file": INT8_FILE, "quantisation": QUANTISATION, "tensorflow": tf.__version__,
                            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_atomically(export_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        say(log, f"int8 encoder converted in {time.perf_counter() - started:.1f}s: {target}", progress, tag="embedder")
    return target
