"""Pure parts of models.embedder: version hash, checksums, chunking, locating the weights,
CPU flags and the precision they choose, threads, the throughput helper.

Nothing here builds or loads the TensorFlow model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


# --------------------------------------------------------------------------- CPU flags, precision, threads

CPUINFO_BF16 = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
bogomips\t: 4599.99

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
"""


def test_cpu_flags_are_read_from_the_first_flags_line() -> None:
    flags = E.parse_cpu_flags(CPUINFO_BF16)
    assert flags == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_tile"}


def test_cpu_without_a_flags_line_has_no_flags(tmp_path: Path) -> None:
    assert E.parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == frozenset()  # aarch64
    assert E.read_cpu_flags(tmp_path / "no-cpuinfo") == frozenset()
    (tmp_path / "cpuinfo").write_text(CPUINFO_BF16)
    assert "avx512_bf16" in E.read_cpu_flags(tmp_path / "cpuinfo")


@pytest.mark.parametrize(("flags", "has"), [({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True),
                                            ({"avx512f", "avx512_vnni", "avx2"}, False), (set(), False)])
def test_bf16_is_detected_from_avx512_bf16_or_amx_bf16(flags: set[str], has: bool) -> None:
    assert E.cpu_has_bf16(flags) is has


def test_auto_precision_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E, "BF16_ON_AUTO", True)
    assert E.choose_precision("auto", {"avx512f", "avx512_bf16"}) == "bf16"
    assert E.choose_precision("auto", {"avx512f"}) == "fp32"
    monkeypatch.setattr(E, "BF16_ON_AUTO", False)
    assert E.choose_precision("auto", {"avx512f", "avx512_bf16"}) == "fp32"


def test_a_forced_precision_is_kept_whatever_the_cpu() -> None:
    assert E.choose_precision("fp32", {"avx512_bf16"}) == "fp32"
    assert E.choose_precision("bf16", set()) == "bf16"


def test_unknown_precision_is_a_clear_error() -> None:
    with pytest.raises(E.EmbedderError, match=r"unknown embed precision 'fp16'; expected one of auto, fp32, bf16"):
        E.choose_precision("fp16", set())
    with pytest.raises(E.EmbedderError, match="unknown embed precision"):
        E.Embedder(version="v", path=Path("."), model=None, precision="auto")


def test_settings_default_to_auto_precision_and_refuse_other_values() -> None:
    from pydantic import ValidationError

    assert E.Settings(_env_file=None).embed_precision == "auto"
    assert E.Settings(embed_precision="bf16").embed_precision == "bf16"
    with pytest.raises(ValidationError, match="embed_precision"):
        E.Settings(embed_precision="fp16")


def test_usable_cpus_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(E.os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert E.usable_cpus() == 3


class _FakeModel:
    """Stands in for the loaded export: each function answers with its own constant."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _answer(self, name: str, value: float) -> Any:
        def run(batch: np.ndarray) -> Any:
            self.calls.append(name)
            out = np.full((len(batch), 384 * len(E.READOUT)), value, dtype=np.float32)
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
    emb = E.Embedder(version="v", path=Path("."), model=model, precision=precision)
    assert emb.features_batch(texts).tolist() == [[value] * emb.feature_dim] * len(texts)
    assert emb.embed_batch(texts).tolist() == [[value] * 384] * len(texts)
    assert model.calls == [function, function]


class _CountingEmbedder:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def features_batch(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(len(texts))
        return np.zeros((len(texts), 4), dtype=np.float32)


def test_measure_throughput_times_every_repeat_after_an_untimed_warm_up() -> None:
    fake = _CountingEmbedder()
    ticks = iter([0.0, 2.0, 10.0, 14.0, 20.0, 21.0])  # passes of 2 s, 4 s and 1 s
    rate = E.measure_throughput(fake, ["x"] * 100, 32, repeats=3, clock=lambda: next(ticks))
    assert rate == 100 / 2.0  # the median pass
    assert fake.batches == [32, 32, 32] + [32, 32, 32, 4] * 3


def test_measure_throughput_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        E.measure_throughput(_CountingEmbedder(), ["x"], 0)
    with pytest.raises(ValueError, match="texts"):
        E.measure_throughput(_CountingEmbedder(), [], 1)


def test_threads_use_every_usable_cpu_within_an_op_and_one_op_at_a_time() -> None:
    assert E.thread_counts(2) == (2, 1)
    assert E.thread_counts(16) == (16, 1)
    assert E.thread_counts(1) == (1, 1)
