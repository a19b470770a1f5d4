"""Pure parts of models.embedder: the version, checksums, chunking, locating the weights,
CPU flags and the precision they choose, threads, the throughput helper.

Nothing here builds or loads the TensorFlow model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.embedder import bench, cpu, export, runtime, spec, version, weights
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DIGEST = hashlib.sha256(b"weights").hexdigest()


# --------------------------------------------------------------------------- the version


def test_version_names_the_graph_version_and_the_weights_digest() -> None:
    assert version.compute_version(1, DIGEST) == "minilm-l6-v2-tf-g1-" + DIGEST[:12]
    assert version.compute_version(12, DIGEST) == "minilm-l6-v2-tf-g12-" + DIGEST[:12]


def test_bumping_the_graph_version_changes_the_version() -> None:
    assert version.compute_version(2, DIGEST) != version.compute_version(1, DIGEST)


def test_a_different_weights_digest_changes_the_version() -> None:
    other = hashlib.sha256(b"weightz").hexdigest()
    assert version.compute_version(1, other) != version.compute_version(1, DIGEST)


@pytest.mark.parametrize(("graph", "digest"), [(0, DIGEST), (True, DIGEST), ("1", DIGEST), (1, DIGEST[:12]),
                                               (1, DIGEST.upper()), (1, "")])
def test_a_bad_graph_version_or_digest_is_refused(graph: Any, digest: str) -> None:
    with pytest.raises(ValueError, match="graph version|weights digest"):
        version.compute_version(graph, digest)


def test_the_weights_digest_is_the_sha256_of_a_sha256sum_listing(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"tensors")
    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\n")
    paths = [tmp_path / "model.safetensors", tmp_path / "vocab.txt"]
    listing = (f"{hashlib.sha256(b'tensors').hexdigest()}  model.safetensors\n"
               f"{hashlib.sha256(b'[PAD]' + bytes([10])).hexdigest()}  vocab.txt\n")
    assert weights.files_digest(paths) == hashlib.sha256(listing.encode()).hexdigest()


def test_changing_either_file_changes_the_weights_digest(tmp_path: Path) -> None:
    paths = [tmp_path / "model.safetensors", tmp_path / "vocab.txt"]
    paths[0].write_bytes(b"tensors")
    paths[1].write_bytes(b"vocab")
    before = weights.files_digest(paths)
    paths[1].write_bytes(b"vocab2")  # another size, so the in-process cache sees the change
    assert weights.files_digest(paths) != before


def test_current_version_is_the_graph_version_and_the_installed_weights_digest() -> None:
    files = [weights.locate_model_file("model.safetensors"), weights.locate_model_file("vocab.txt")]
    want = version.compute_version(version.GRAPH_VERSION, weights.files_digest(files))
    assert version.current_version() == want
    assert re.fullmatch(r"minilm-l6-v2-tf-g[1-9][0-9]*-[0-9a-f]{12}", want)


def _version_of_a_copy(tmp_path: Path, edit: str, change: Any) -> str:
    """Copy models/embedder (and what it imports of models/) to ``tmp_path``, apply ``change`` to
    the text of ``edit``, and return the version a fresh interpreter computes from the copy."""
    (tmp_path / "models").mkdir()
    for name in ("__init__.py", "checksums.py"):
        shutil.copy(REPO / "models" / name, tmp_path / "models" / name)
    shutil.copytree(REPO / "models" / "embedder", tmp_path / "models" / "embedder",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "models" / "embedder" / edit
    target.write_text(change(target.read_text(encoding="utf-8")), encoding="utf-8")
    code = ("import models.embedder.graph as g, models.embedder.version as v; "
            "print(g.__file__); print(v.current_version())")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the copy (cwd) first, the rest of the repo after
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert Path(out[0]).is_relative_to(tmp_path), f"the copy was not imported: {out[0]}"
    return out[1]


def test_editing_a_comment_in_the_graph_module_keeps_the_version(tmp_path: Path) -> None:
    def comment(text: str) -> str:
        return text.replace("    import tensorflow as tf\n", "    # a comment, and a refactor\n    import tensorflow as tf\n", 1)

    assert _version_of_a_copy(tmp_path, "graph.py", comment) == version.current_version()


def test_bumping_graph_version_in_the_source_changes_the_version(tmp_path: Path) -> None:
    def bump(text: str) -> str:
        new, n = re.subn(r"^GRAPH_VERSION = (\d+)$", lambda m: f"GRAPH_VERSION = {int(m[1]) + 1}", text, flags=re.M)
        assert n == 1
        return new

    got = _version_of_a_copy(tmp_path, "version.py", bump)
    digest = weights.weights_digest()
    assert got == version.compute_version(version.GRAPH_VERSION + 1, digest) != version.current_version()


# --------------------------------------------------------------------------- files, export, chunks


def test_model_files_are_found_in_the_installed_package() -> None:
    tensors = weights.locate_model_file("model.safetensors")
    vocab = weights.locate_model_file("vocab.txt")
    assert tensors.is_file() and tensors.stat().st_size > 80_000_000
    assert vocab.read_text(encoding="utf-8").splitlines()[101:103] == ["[CLS]", "[SEP]"]


def test_missing_model_file_is_a_clear_error() -> None:
    with pytest.raises(spec.EmbedderError, match="not found"):
        weights.locate_model_file("no-such-file.bin")
    with pytest.raises(spec.EmbedderError, match="not installed"):
        weights.locate_model_file("vocab.txt", dist="no-such-distribution-xyz")


def test_export_dir_uses_models_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHRASESTREAM_MODELS_DIR", raising=False)  # the default is what this test states
    settings = Settings(models_dir=tmp_path / "m")
    assert export.export_dir_for(settings, "v1") == tmp_path / "m" / "embedder" / "v1"
    assert export.export_dir_for(Settings(home=tmp_path), "v1") == tmp_path / "models" / "embedder" / "v1"


def _fake_export(root: Path) -> dict:
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    manifest = {"version": root.name, "sha256": export.export_checksums(root)}
    (root / export.MANIFEST_NAME).write_text(json.dumps(manifest))
    return manifest


def test_checksums_cover_graph_and_variables_not_manifest(tmp_path: Path) -> None:
    manifest = _fake_export(tmp_path / "v")
    assert set(manifest["sha256"]) == {"saved_model.pb", "variables/variables.index",
                                       "variables/variables.data-00000-of-00001"}
    export.verify_checksums(tmp_path / "v", manifest)


def test_checksum_mismatch_raises(tmp_path: Path) -> None:
    manifest = _fake_export(tmp_path / "v")
    (tmp_path / "v" / "variables" / "variables.data-00000-of-00001").write_bytes(b"tampered")
    with pytest.raises(spec.EmbedderError, match="variables.data.*sha256"):
        export.verify_checksums(tmp_path / "v", manifest)


def test_missing_file_and_empty_manifest_raise(tmp_path: Path) -> None:
    manifest = _fake_export(tmp_path / "v")
    (tmp_path / "v" / "saved_model.pb").unlink()
    with pytest.raises(spec.EmbedderError, match="saved_model.pb: missing"):
        export.verify_checksums(tmp_path / "v", manifest)
    with pytest.raises(spec.EmbedderError, match="no checksums"):
        export.verify_checksums(tmp_path / "v", {"version": "v"})


def test_length_chunks_cover_all_indices_sorted_by_length() -> None:
    texts = ["ccc", "a", "", "bb", "dddd", "a"]
    chunks = runtime.length_chunks(texts, size=4)
    assert [len(c) for c in chunks] == [4, 2]
    flat = [i for c in chunks for i in c]
    assert sorted(flat) == list(range(len(texts)))
    assert [len(texts[i]) for i in flat] == sorted(len(t) for t in texts)
    assert runtime.length_chunks([], size=4) == []


# --------------------------------------------------------------------------- CPU flags, precision, threads

CPUINFO_BF16 = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
bogomips\t: 4599.99

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
"""


def test_cpu_flags_are_read_from_the_first_flags_line() -> None:
    flags = cpu.parse_cpu_flags(CPUINFO_BF16)
    assert flags == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_tile"}


def test_cpu_without_a_flags_line_has_no_flags(tmp_path: Path) -> None:
    assert cpu.parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == frozenset()  # aarch64
    assert cpu.read_cpu_flags(tmp_path / "no-cpuinfo") == frozenset()
    (tmp_path / "cpuinfo").write_text(CPUINFO_BF16)
    assert "avx512_bf16" in cpu.read_cpu_flags(tmp_path / "cpuinfo")


@pytest.mark.parametrize(("flags", "has"), [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True),
                                            ({"avx512f", "avx512_vnni", "avx2"}, False), (set(), False)])
def test_bf16_is_detected_from_avx512_bf16_or_amx_bf16(flags: set[str], has: bool) -> None:
    assert cpu.cpu_has_bf16(flags) is has


def test_a_forced_precision_is_kept_whatever_the_cpu() -> None:
    assert cpu.choose_precision("fp32", {"avx512_bf16", "amx_bf16"}).precision == "fp32"
    assert cpu.choose_precision("bf16", set()).precision == "bf16"
    assert cpu.choose_precision("int8", set()).precision == "int8"


def test_unknown_precision_is_a_clear_error() -> None:
    with pytest.raises(spec.EmbedderError, match=r"unknown embed precision 'fp16'; expected one of auto, fp32, bf16, int8"):
        cpu.choose_precision("fp16", set())
    with pytest.raises(spec.EmbedderError, match="unknown embed precision"):
        runtime.Embedder(version="v", path=Path("."), model=None, precision="auto")


def test_settings_default_to_auto_precision_and_refuse_other_values() -> None:
    from pydantic import ValidationError

    assert Settings(_env_file=None).embed_precision == "auto"
    assert Settings(embed_precision="bf16").embed_precision == "bf16"
    with pytest.raises(ValidationError, match="embed_precision"):
        Settings(embed_precision="fp16")


def test_usable_cpus_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert cpu.usable_cpus() == 3


class _FakeModel:
    """Stands in for the loaded export: each function answers with its own constant."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _answer(self, name: str, value: float) -> Any:
        def run(batch: np.ndarray) -> Any:
            self.calls.append(name)
            out = np.full((len(batch), 384 * len(spec.READOUT)), value, dtype=np.float32)
            return type("T", (), {"numpy": lambda self: out})()
        return run

    @property
    def features(self) -> Any:
        return self._answer("features", 0.25)

    @property
    def features_bf16(self) -> Any:
        return self._answer("features_bf16", 0.5)

    @property
    def features_single(self) -> Any:
        return self._answer("features_single", 0.125)


@pytest.mark.parametrize(("precision", "texts", "function", "value"), [
    ("fp32", ["a", "bb"], "features", 0.25),
    ("fp32", ["a"], "features_single", 0.125),
    ("bf16", ["a", "bb"], "features_bf16", 0.5),
    ("bf16", ["a"], "features_bf16", 0.5),
])
def test_the_embedder_runs_the_export_function_of_its_precision_and_batch_size(
    precision: str, texts: list[str], function: str, value: float
) -> None:
    model = _FakeModel()
    emb = runtime.Embedder(version="v", path=Path("."), model=model, precision=precision)
    assert emb.features_batch(texts).tolist() == [[value] * emb.feature_dim] * len(texts)
    assert emb.embed_batch(texts).tolist() == [[value] * 384] * len(texts)
    assert model.calls == [function, function]


def test_warm_up_runs_the_batch_graph_and_each_padded_length_of_the_single_text_graph() -> None:
    model = _FakeModel()
    emb = runtime.Embedder(version="v", path=Path("."), model=model, precision="fp32")
    runtime.warm_up(emb)
    assert model.calls == ["features"] + ["features_single"] * (32 // spec.SINGLE_PAD)


def test_settings_warm_the_embedder_up_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().embed_warmup is True
    monkeypatch.setenv("PHRASESTREAM_EMBED_WARMUP", "false")
    assert Settings().embed_warmup is False


class _CountingEmbedder:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return np.zeros((len(texts), 4), dtype=np.float32)


def test_measure_throughput_times_every_repeat_after_an_untimed_warm_up() -> None:
    fake = _CountingEmbedder()
    ticks = iter([0.0, 2.0, 10.0, 14.0, 20.0, 21.0])  # passes of 2 s, 4 s and 1 s
    rate = bench.measure_throughput(fake, ["x"] * 100, 32, repeats=3, clock=lambda: next(ticks))
    assert rate == 100 / 2.0  # the median pass
    assert fake.batches == [32, 32, 32] + [32, 32, 32, 4] * 3


def test_measure_throughput_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        bench.measure_throughput(_CountingEmbedder(), ["x"], 0)
    with pytest.raises(ValueError, match="texts"):
        bench.measure_throughput(_CountingEmbedder(), [], 1)


def test_threads_use_every_usable_cpu_within_an_op_and_one_op_at_a_time() -> None:
    assert cpu.thread_counts(2) == (2, 1)
    assert cpu.thread_counts(16) == (16, 1)
    assert cpu.thread_counts(1) == (1, 1)


def test_the_package_gives_every_public_name_from_its_module() -> None:
    import models.embedder as package

    for name in package.__all__:
        assert name in dir(package)
        value = getattr(package, name)
        assert any(getattr(module, name, None) is value for module in (bench, cpu, runtime, spec, version))
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name  # noqa: B018 - the attribute access is the test
