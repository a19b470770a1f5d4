"""Checksums of artifact files (embedder export, heads): one function for both."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path | str, bufsize: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            digest.update(chunk)
    return digest.hexdigest()
