"""Write a head's folder: every file, checksummed, renamed into place only when complete.

The layout is described in ``models.heads`` (which reads it). Nothing here pickles: arrays go
to safetensors, everything else is JSON, CSV, gzipped JSON lines or a zip of source files.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import secrets
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.checksums import sha256_file
from models.heads import (
    CODE_FILE,
    CODE_PACKAGES,
    EVAL_PREDICTIONS_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    LABELS_FILE,
    METADATA_FILE,
    REFERENCE_FILE,
    REPORT_EVAL_FILE,
    REPORT_TRAIN_FILE,
    TRAIN_DATA_FILE,
    WEIGHTS_FILE,
    HeadRef,
    LabelEncoder,
)
from models.heads.neighbors import NeighborIndex


def _source_root() -> Path:
    return Path(__file__).resolve().parents[2]


def write_code_zip(path: Path | str, packages: Sequence[str] = CODE_PACKAGES) -> list[str]:
    """Zip the ``*.py`` files of ``packages`` (fixed timestamps, sorted: same code, same bytes)."""
    root = _source_root()
    names: list[str] = []
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*.py")):
            if "__pycache__" not in p.parts:
                names.append(p.relative_to(root).as_posix())
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, (root / name).read_bytes())
    return names


def write_jsonl_gz(path: Path | str, rows: Iterable[dict[str, Any]]) -> int:
    """Write JSON lines gzipped with a fixed mtime (same rows, same bytes); return the count."""
    n = 0
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for row in rows:
            gz.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
            n += 1
    return n


def read_jsonl_gz(path: Path | str) -> list[dict[str, Any]]:
    """Read back a file written by :func:`write_jsonl_gz`."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


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


def runtime_versions() -> dict[str, str]:
    import scipy
    import sklearn

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "scikit_learn": sklearn.__version__}


def write_head(
    models_root: Path | str,
    ref: HeadRef,
    *,
    encoder: LabelEncoder,
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    reports: dict[str, Any],
    reference: dict[str, Any],
    eval_rows: Iterable[dict[str, Any]],
    data_rows: Iterable[dict[str, Any]],
    metadata: dict[str, Any],
    neighbors: NeighborIndex | None = None,
) -> Path:
    """Write the folder of ``ref`` atomically and return it.

    ``reports`` maps ``train``/``eval`` to ``retrain.train.evaluate.Report``; ``metadata`` adds to the
    fields written here (format, ref, created_at, metrics, runtime, code files, checksums).
    ``neighbors``, the nearest-example index of the training rows, is written beside them
    (``models.heads.neighbors``) and checksummed like every other file.
    """
    from safetensors.numpy import save_file

    final = ref.path(models_root)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise FileExistsError(f"head folder {final} already exists")
    tmp = parent / f".tmp-{ref.version}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write_json(tmp / HEAD_FILE, config)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / LABELS_FILE).write_text(encoder.to_json(), encoding="utf-8")
        write_json(tmp / REFERENCE_FILE, reference)
        reports["train"].to_csv(tmp / REPORT_TRAIN_FILE)
        reports["eval"].to_csv(tmp / REPORT_EVAL_FILE)
        write_jsonl_gz(tmp / EVAL_PREDICTIONS_FILE, eval_rows)
        write_jsonl_gz(tmp / TRAIN_DATA_FILE, data_rows)
        if neighbors is not None:
            neighbors.write(tmp)
        code_files = write_code_zip(tmp / CODE_FILE)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "format": FORMAT_VERSION,
            "ref": str(ref),
            "region": ref.region,
            "model": ref.model,
            "version": ref.version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "n_classes": len(encoder),
            "metrics": {name: r.summary for name, r in reports.items()},
            **metadata,
            "runtime": runtime_versions(),
            "code_files": code_files,
            "files": files,
        }
        write_json(tmp / METADATA_FILE, meta)
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
