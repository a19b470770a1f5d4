"""Pure parts of models.embedder: version hash, checksums, chunking, locating the weights.

Nothing here builds or loads the TensorFlow model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from models import embedder as E


def test_version_format_and_determinism() -> None:
    v = E.compute_version(b"weights", b"vocab", b"source")
    assert re.fullmatch(r"minilm-l6-v2-tf-[0-9a-f]{12}", v)
    assert v == E.compute_version(b"weights", b"vocab", b"source")


def test_version_is_sha256_of_the_concatenation() -> None:
    import hashlib

    want = hashlib.sha256(b"weights" + b"vocab" + b"source").hexdigest()[:12]
    assert E.compute_version(b"weights", b"vocab", b"source") == "minilm-l6-v2-tf-" + want


@pytest.mark.parametrize("changed", [(b"weightz", b"vocab", b"source"), (b"weights", b"vocab2", b"source"),
                                     (b"weights", b"vocab", b"source\n")])
def test_version_changes_with_each_input(changed: tuple[bytes, bytes, bytes]) -> None:
    assert E.compute_version(*changed) != E.compute_version(b"weights", b"vocab", b"source")


def test_model_files_are_found_in_the_installed_package() -> None:
    weights = E.locate_model_file("model.safetensors")
    vocab = E.locate_model_file("vocab.txt")
    assert weights.is_file() and weights.stat().st_size > 80_000_000
    assert vocab.read_text(encoding="utf-8").splitlines()[101:103] == ["[CLS]", "[SEP]"]


def test_missing_model_file_is_a_clear_error() -> None:
    with pytest.raises(E.EmbedderError, match="not found"):
        E.locate_model_file("no-such-file.bin")
    with pytest.raises(E.EmbedderError, match="not installed"):
        E.locate_model_file("vocab.txt", dist="no-such-distribution-xyz")


def test_current_version_is_stable() -> None:
    assert E.current_version() == E.current_version()
    assert E.current_version().startswith(E.VERSION_PREFIX)


def test_export_dir_uses_models_root(tmp_path: Path) -> None:
    settings = E.Settings(models_dir=tmp_path / "m")
    assert E.export_dir_for(settings, "v1") == tmp_path / "m" / "embedder" / "v1"
    assert E.export_dir_for(E.Settings(home=tmp_path), "v1") == tmp_path / "models" / "embedder" / "v1"


def _fake_export(root: Path) -> dict:
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    manifest = {"version": root.name, "sha256": E.export_checksums(root)}
    (root / E.MANIFEST_NAME).write_text(json.dumps(manifest))
    return manifest


def test_checksums_cover_graph_and_variables_not_manifest(tmp_path: Path) -> None:
    manifest = _fake_export(tmp_path / "v")
    assert set(manifest["sha256"]) == {"saved_model.pb", "variables/variables.index",
                                       "variables/variables.data-00000-of-00001"}
    E.verify_checksums(tmp_path / "v", manifest)


def test_checksum_mismatch_raises(tmp_path: Path) -> None:
    manifest = _fake_export(tmp_path / "v")
    (tmp_path / "v" / "variables" / "variables.data-00000-of-00001").write_bytes(b"tampered")
    with pytest.raises(E.EmbedderError, match="variables.data.*sha256"):
        E.verify_checksums(tmp_path / "v", manifest)


def test_missing_file_and_empty_manifest_raise(tmp_path: Path) -> None:
    manifest = _fake_export(tmp_path / "v")
    (tmp_path / "v" / "saved_model.pb").unlink()
    with pytest.raises(E.EmbedderError, match="saved_model.pb: missing"):
        E.verify_checksums(tmp_path / "v", manifest)
    with pytest.raises(E.EmbedderError, match="no checksums"):
        E.verify_checksums(tmp_path / "v", {"version": "v"})


def test_length_chunks_cover_all_indices_sorted_by_length() -> None:
    texts = ["ccc", "a", "", "bb", "dddd", "a"]
    chunks = E.length_chunks(texts, size=4)
    assert [len(c) for c in chunks] == [4, 2]
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == list(range(len(texts)))
    assert [len(texts[i]) for i in flat] == sorted(len(t) for t in texts)
    assert E.length_chunks([], size=4) == []
