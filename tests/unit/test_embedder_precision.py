"""Precisions: what ``auto`` tries and picks, that it is decided once per CPU, and that a head is
served only in the precision it was trained on.

No TensorFlow: the start-up check's timings are injected, the embedders are stand-ins.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import ReadoutEmbedder
from test_heads import pairs, rows, tiny_config

from models.embedder import bench, cpu, runtime
from models.embedder.spec import EmbedderError
from models.heads import EmbedderMismatch, load_head
from retrain.train.features import cache_dir, cached_features
from retrain.train.trainer import make_trainer
from schemas.messages import RegistryPointer
from schemas.settings import Settings
from streams.heads import HeadSet

AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})
CPUINFO = "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: {}\n"


# ------------------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(("flags", "int8", "expected"), [
    (AMX, True, ("fp32", "bf16", "int8")),
    (AMX, False, ("fp32", "bf16")),
    (AVX512_BF16, True, ("fp32", "int8")),  # bf16 without AMX measured slower: not tried
    (AVX512_BF16, False, ("fp32",)),
    (frozenset(), False, ("fp32",)),
])
def test_auto_tries_bf16_only_with_amx_and_int8_only_where_its_accuracy_holds(
    flags: frozenset[str], int8: bool, expected: tuple[str, ...]
) -> None:
    assert cpu.auto_candidates(flags, int8_on_auto=int8) == expected


@pytest.mark.parametrize(("seconds", "expected"), [
    ({"fp32": 0.100, "bf16": 0.080}, "bf16"),
    ({"fp32": 0.100, "bf16": 0.095}, "fp32"),  # 5% is within the margin: fp32 stays
    ({"fp32": 0.100, "bf16": 0.120}, "fp32"),
    ({"fp32": 0.100, "bf16": 0.085, "int8": 0.050}, "int8"),
    ({"fp32": 0.100, "bf16": 0.060, "int8": 0.070}, "bf16"),
    ({"fp32": 0.100, "int8": 0.150}, "fp32"),
])
def test_auto_picks_the_fastest_only_when_it_beats_fp32_by_the_margin(seconds: dict[str, float],
                                                                      expected: str) -> None:
    choice = cpu.pick_fastest(seconds, margin=0.10)
    assert choice.precision == expected
    assert all(f"{p} {s * 1000:.0f} ms" in choice.reason for p, s in seconds.items())


def test_auto_on_a_cpu_with_nothing_to_try_is_fp32_without_a_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "INT8_ON_AUTO", False)

    def never(candidates: tuple[str, ...]) -> dict[str, float]:
        raise AssertionError("no check without candidates")

    assert cpu.choose_precision("auto", AVX512_BF16, never).precision == "fp32"


def test_auto_times_the_candidates_of_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "INT8_ON_AUTO", True)
    asked: list[tuple[str, ...]] = []

    def timings(candidates: tuple[str, ...]) -> dict[str, float]:
        asked.append(candidates)
        return {"fp32": 0.1, "bf16": 0.07, "int8": 0.09}

    assert cpu.choose_precision("auto", AMX, timings).precision == "bf16"
    assert asked == [("fp32", "bf16", "int8")]
    with pytest.raises(EmbedderError, match="start-up check"):
        cpu.choose_precision("auto", AMX)


def test_settings_accept_int8() -> None:
    assert Settings(_env_file=None, embed_precision="int8").embed_precision == "int8"


# ------------------------------------------------------------------------------------- the check


class Clock:
    """A clock that each source's call moves on by that source's cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Source:
    def __init__(self, clock: Clock, cost: float, log: list[str], name: str) -> None:
        self.clock, self.cost, self.log, self.name = clock, cost, log, name

    def features_batch(self, texts: Any) -> np.ndarray:
        self.log.append(self.name)
        self.clock.now += self.cost
        return np.zeros((len(texts), 1))


def test_the_check_times_each_source_after_an_untimed_call_taking_turns_within_rounds() -> None:
    clock, calls = Clock(), []
    sources = {"fp32": Source(clock, 0.2, calls, "fp32"), "int8": Source(clock, 0.1, calls, "int8")}
    seconds = bench.time_batches(sources, ["a", "b"], rounds=3, clock=clock)
    assert seconds == pytest.approx({"fp32": 0.2, "int8": 0.1})
    assert calls == ["fp32", "int8"] * 4
    assert len(bench.CHECK_TEXTS) == 32


# ------------------------------------------------------------------------------------- remembered per CPU


def embedder_at(path: Path) -> runtime.Embedder:
    return runtime.Embedder(version=path.name, path=path, model=None)


def timer(seconds: dict[str, float], runs: list[tuple[str, ...]]) -> Any:
    def time_sources(sources: dict[str, runtime.Embedder]) -> dict[str, float]:
        runs.append(tuple(sources))
        assert {p: e.precision for p, e in sources.items()} == {p: p for p in sources}
        return {p: seconds[p] for p in sources}
    return time_sources


def test_auto_is_timed_once_per_cpu_and_then_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "INT8_ON_AUTO", False)  # candidates fp32 and bf16: no int8 file to convert
    emb = embedder_at(tmp_path)
    amx = CPUINFO.format(" ".join(sorted(AMX)))
    runs: list[tuple[str, ...]] = []
    first = runtime.auto_precision(emb, amx, timer({"fp32": 0.1, "bf16": 0.05}, runs))
    assert first.precision == "bf16" and runs == [("fp32", "bf16")]
    saved = json.loads((tmp_path / runtime.AUTO_FILE).read_text())
    assert saved[cpu.cpu_signature(amx)]["precision"] == "bf16"
    assert saved[cpu.cpu_signature(amx)]["seconds_per_batch"] == {"fp32": 0.1, "bf16": 0.05}

    # a later load (training, then the worker) reads it, even if a check would now say otherwise
    again = runtime.auto_precision(emb, amx, timer({"fp32": 0.05, "bf16": 0.1}, runs))
    assert again.precision == "bf16" and "remembered" in again.reason and len(runs) == 1

    # another CPU is timed on its own, and the first CPU's choice is kept beside it
    other = amx.replace("Some Xeon", "Another Xeon")
    assert runtime.auto_precision(emb, other, timer({"fp32": 0.05, "bf16": 0.1}, runs)).precision == "fp32"
    assert len(runs) == 2 and len(json.loads((tmp_path / runtime.AUTO_FILE).read_text())) == 2


def test_a_remembered_choice_among_other_candidates_is_timed_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    emb = embedder_at(tmp_path)
    amx = CPUINFO.format(" ".join(sorted(AMX)))
    key = cpu.cpu_signature(amx)
    (tmp_path / runtime.AUTO_FILE).write_text(json.dumps({key: {"precision": "int8", "candidates": ["fp32", "int8"]}}))
    monkeypatch.setattr(cpu, "INT8_ON_AUTO", False)
    runs: list[tuple[str, ...]] = []
    assert runtime.auto_precision(emb, amx, timer({"fp32": 0.1, "bf16": 0.2}, runs)).precision == "fp32"
    assert runs == [("fp32", "bf16")]


def test_the_precision_a_load_would_run_is_known_without_tensorflow(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "INT8_ON_AUTO", False)
    amx = CPUINFO.format(" ".join(sorted(AMX)))
    monkeypatch.setattr(runtime, "read_cpuinfo", lambda: amx)
    settings = Settings(_env_file=None, models_dir=tmp_path)
    folder = tmp_path / "embedder" / "v1"
    folder.mkdir(parents=True)
    assert runtime.known_precision(Settings(_env_file=None, models_dir=tmp_path, embed_precision="int8"), "v1") == "int8"
    assert runtime.known_precision(settings, "v1") is None  # auto, not decided on this CPU yet
    runtime.auto_precision(embedder_at(folder), amx, timer({"fp32": 0.1, "bf16": 0.05}, []))
    assert runtime.known_precision(settings, "v1") == "bf16"
    monkeypatch.setattr(runtime, "read_cpuinfo", lambda: CPUINFO.format("avx2"))
    assert runtime.known_precision(settings, "v1") == "fp32"  # nothing to try on that CPU


def test_features_of_each_precision_have_their_own_name() -> None:
    emb = embedder_at(Path("v1"))
    assert emb.features_id == "v1"
    assert runtime.with_precision(emb, "bf16").features_id == "v1-bf16"
    with pytest.raises(EmbedderError, match="int8 encoder"):
        runtime.Embedder(version="v1", path=Path("v1"), model=None, precision="int8")


# ------------------------------------------------------------------------------------- heads


class PrecisionEmbedder(ReadoutEmbedder):
    """The fake embedder, computing in a named precision (the features do not change: the labels do)."""

    def __init__(self, precision: str) -> None:
        super().__init__()
        self.precision = precision


def train(root: Path, embedder: ReadoutEmbedder) -> Path:
    trained = make_trainer(tiny_config()).train(root, embedder, rows(pairs(8, seed=1, oos=8)),
                                                rows(pairs(3, seed=2, oos=3)), progress=False)
    return trained.path


def test_a_head_records_its_precision_and_is_refused_by_an_embedder_of_another(tmp_path: Path) -> None:
    path = train(tmp_path, PrecisionEmbedder("int8"))
    assert json.loads((path / "metadata.json").read_text())["embedder_precision"] == "int8"
    assert load_head(path, embedder_version="fake-v1", embedder_precision="int8").embedder_precision == "int8"
    with pytest.raises(EmbedderMismatch, match="trained on int8 features of the embedder, but the running "
                                               "embedder computes fp32"):
        load_head(path, embedder_version="fake-v1", embedder_precision="fp32")


def test_a_head_without_a_recorded_precision_counts_as_fp32(tmp_path: Path) -> None:
    path = train(tmp_path, ReadoutEmbedder())  # a stand-in without a precision computes float32
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["embedder_precision"] == "fp32"
    del meta["embedder_precision"]  # as a head written before precisions were recorded
    (path / "metadata.json").write_text(json.dumps(meta))
    assert load_head(path, embedder_precision="fp32").embedder_precision == "fp32"
    with pytest.raises(EmbedderMismatch, match="trained on fp32 features"):
        load_head(path, embedder_precision="bf16")


def test_the_worker_refuses_a_head_of_another_precision_as_one_of_another_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = train(tmp_path, PrecisionEmbedder("fp32"))
    ref = json.loads((path / "metadata.json").read_text())["ref"]
    region_model, version = ref.split(":")
    region, model = region_model.split("/")
    pointer = RegistryPointer(region=region, model=model, version=version, action="promote", seq=1,
                              bundle_sha256="0" * 64, bundle_bytes=1)
    settings = Settings(_env_file=None, models_dir=tmp_path)

    def fetch(*_: Any) -> Path:
        return path

    with caplog.at_level(logging.ERROR, logger="phrasestream.worker"):
        assert not HeadSet(settings, "fake-v1", "int8", fetch=fetch).offer(pointer)
        assert not HeadSet(settings, "fake-v2", "fp32", fetch=fetch).offer(pointer)
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 2
    assert refusals[0].startswith(f"refused head {ref} (promote #1): head {ref} was trained on fp32 features")
    assert refusals[1].startswith(f"refused head {ref} (promote #1): head {ref} was trained on features of "
                                  "embedder version 'fake-v1'")
    assert HeadSet(settings, "fake-v1", "fp32", fetch=fetch).offer(pointer)


def test_training_features_of_two_precisions_are_cached_apart(tmp_path: Path) -> None:
    texts = ["hello there", "good bye"]
    for precision in ("fp32", "int8"):
        _, embedded_now = cached_features(PrecisionEmbedder(precision), texts, tmp_path, progress=False)
        assert embedded_now == 2, f"{precision} features were embedded, not taken from another precision's cache"
    assert cache_dir(tmp_path, "fake-v1").name == "fake-v1"  # fp32: the folder caches used before
    assert sorted(p.name for p in (tmp_path / "embcache").iterdir()) == ["fake-v1", "fake-v1-int8"]


def test_demo_heads_are_current_only_for_their_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_heads import small_demo_data

    from retrain.train import demo_heads as demo

    monkeypatch.setattr(demo, "demo_data", small_demo_data)
    configs = {(s.region, s.model): tiny_config(s.region, s.model) for s in demo.DEMO_HEADS}
    settings = Settings(_env_file=None, models_dir=tmp_path)
    demo.build_demo_heads(settings, PrecisionEmbedder("int8"), progress=False, configs=configs)
    assert demo.demo_heads_current(settings, "fake-v1", "int8")
    assert not demo.demo_heads_current(settings, "fake-v1", "fp32")
    assert not demo.demo_heads_current(settings, "fake-v1", None)  # auto undecided: load the embedder to know
    again = demo.build_demo_heads(settings, PrecisionEmbedder("fp32"), progress=False, configs=configs)
    assert not again.skipped, "int8 demo heads are trained again for an fp32 embedder"


def test_the_auto_check_converts_the_int8_encoder_while_it_holds_its_own_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check's lock and the conversion's are two files: one flock file taken twice by one
    process waits for itself (a worker hung so before they were split)."""
    import threading

    from models.embedder import export

    monkeypatch.setattr(cpu, "INT8_ON_AUTO", True)

    def convert(path: Path) -> Path:
        with export.export_lock(path, ".int8.lock"):
            return path / "encoder_int8.tflite"

    monkeypatch.setattr(runtime, "ensure_int8", convert)
    monkeypatch.setattr(runtime, "read_manifest", lambda path: {})
    monkeypatch.setattr(runtime, "verify_checksums", lambda path, manifest: None)
    monkeypatch.setattr(runtime, "Int8Encoder", lambda path, threads: object())
    avx512 = CPUINFO.format(" ".join(sorted(AVX512_BF16)))
    chosen: list[str] = []
    check = threading.Thread(target=lambda: chosen.append(runtime.auto_precision(
        embedder_at(tmp_path), avx512, timer({"fp32": 0.1, "int8": 0.05}, [])).precision), daemon=True)
    check.start()
    check.join(60)  # a hang guard, never a measure
    assert chosen == ["int8"]


@pytest.mark.parametrize(("line", "level", "hidden"), [
    ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n", 2, True),
    ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n", 0, False),
    ("WARNING: a TFLite warning\n", 2, True),
    ("ERROR: a TFLite error\n", 2, False),
    ("INFO of mine, not TFLite's\n", 2, False),
])
def test_tflite_lines_are_held_to_tensorflows_log_level(line: str, level: int, hidden: bool) -> None:
    from models.embedder import tfenv

    assert tfenv.is_hidden(line, level) is hidden
