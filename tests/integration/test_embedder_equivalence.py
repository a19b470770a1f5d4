"""The TensorFlow MiniLM export computes the same function as sentence-transformers.

The reference embeddings in tests/fixtures/minilm_reference.json (see MINILM_REFERENCE.md) were
computed by sentence-transformers + PyTorch from the same weights. Every text, the empty one and
the one longer than 256 word pieces included, must reach cosine >= 0.999, in every precision the
embedder ships (``fp32``, and ``bf16`` where the CPU multiplies bfloat16 natively) and on every
path: a whole batch, one text at a time, and the readout ``features``.

Needs no broker or database. It tests the export the suite serves with (the one `make test`'s
`phrasestream train` built from the weights package; built into the models folder now if it is
not there yet), and changes nothing in it: the tampering test works on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.embedder import compat, cpu, export, runtime, spec, version
from models.embedder.runtime import Embedder
from schemas.settings import Settings

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings()


CPU_HAS_BF16 = cpu.cpu_has_bf16(cpu.read_cpu_flags())
NO_BF16 = ("this CPU has neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo, so embed_precision=auto "
           "never runs bf16 here; run on such a CPU to test it")
BF16 = pytest.param("bf16", marks=pytest.mark.skipif(not CPU_HAS_BF16, reason=NO_BF16))


@pytest.fixture(scope="module")
def embedder(settings: Settings) -> Embedder:
    """The float32 embedder: the reference path, whatever this CPU offers."""
    return runtime.load_embedder(settings, precision="fp32")


@pytest.fixture(scope="module", params=["fp32", BF16])
def each_precision(request: pytest.FixtureRequest, embedder: Embedder) -> Embedder:
    """The same loaded export, run in each precision the embedder ships."""
    return Embedder(version=embedder.version, path=embedder.path, model=embedder.model,
                      readout=embedder.readout, precision=request.param)


def _reference_unit(reference: dict) -> np.ndarray:
    ref = np.asarray([item["embedding"] for item in reference["items"]], dtype=np.float64)
    return ref / np.linalg.norm(ref, axis=1, keepdims=True)


def _low_cosines(texts: list[str], got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    got = got.astype(np.float64) / np.linalg.norm(got, axis=1, keepdims=True)
    cosines = (got * ref).sum(axis=1)
    return {t[:60]: round(float(c), 6) for t, c in zip(texts, cosines) if c < MIN_COSINE}


def test_fixture_covers_the_hard_cases(reference: dict) -> None:
    texts = [item["text"] for item in reference["items"]]
    assert "" in texts
    assert max(len(t) for t in texts) > 1000
    assert reference["dim"] == 384


def test_every_fixture_text_matches_the_reference_in_one_batch(each_precision: Embedder, reference: dict) -> None:
    texts = [item["text"] for item in reference["items"]]
    got = each_precision.embed_batch(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    low = _low_cosines(texts, got, _reference_unit(reference))
    assert not low, f"{each_precision.precision}: cosine below {MIN_COSINE}: {low}"


def test_every_fixture_text_matches_the_reference_one_at_a_time(each_precision: Embedder, reference: dict) -> None:
    texts = [item["text"] for item in reference["items"]]
    got = np.concatenate([each_precision.embed_batch([t]) for t in texts])
    low = _low_cosines(texts, got, _reference_unit(reference))
    assert not low, f"{each_precision.precision}: cosine below {MIN_COSINE}: {low}"


def test_every_fixture_text_matches_the_reference_in_the_readout(each_precision: Embedder, reference: dict) -> None:
    texts = [item["text"] for item in reference["items"]]
    feats = each_precision.features_batch(texts)
    low = _low_cosines(texts, feats[:, :384], _reference_unit(reference))
    assert not low, f"{each_precision.precision}: cosine below {MIN_COSINE}: {low}"


@pytest.mark.skipif(not CPU_HAS_BF16, reason=NO_BF16)
def test_bf16_readout_agrees_with_fp32_in_every_block(embedder: Embedder, reference: dict) -> None:
    from models.datasets import load_clinc150

    texts = [item["text"] for item in reference["items"]] + [t for t, _ in load_clinc150("full").test[::45]]
    bf16 = Embedder(version=embedder.version, path=embedder.path, model=embedder.model, precision="bf16")
    shape = (len(texts), len(spec.READOUT), 384)
    a = embedder.features_batch(texts).reshape(shape).astype(np.float64)
    b = bf16.features_batch(texts).reshape(shape).astype(np.float64)
    cosines = (a * b).sum(axis=2) / np.linalg.norm(a, axis=2) / np.linalg.norm(b, axis=2)
    worst = np.unravel_index(np.argmin(cosines), cosines.shape)
    assert cosines.min() >= MIN_COSINE, (
        f"bf16 block {spec.READOUT[worst[1]]} of {texts[worst[0]][:60]!r}: cosine {cosines.min():.6f} to fp32")


def test_embeddings_are_unit_norm(each_precision: Embedder, reference: dict) -> None:
    got = each_precision.embed_batch([item["text"] for item in reference["items"]])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_long_text_is_cut_to_256_pieces_and_empty_gives_cls_sep(embedder: Embedder, reference: dict) -> None:
    longest = max((item["text"] for item in reference["items"]), key=len)
    ids, mask = embedder.token_ids([longest, ""])
    assert ids.shape == (2, 256)
    assert mask[0].sum() == 256 and ids[0, 0] == spec.CLS_ID and ids[0, 255] == spec.SEP_ID
    assert mask[1].sum() == 2 and list(ids[1, :2]) == [spec.CLS_ID, spec.SEP_ID]


def test_batch_equals_one_by_one(embedder: Embedder, reference: dict) -> None:
    texts = [item["text"] for item in reference["items"]]
    batch = embedder.embed_batch(texts)
    single = np.stack([embedder.embed_batch([t])[0] for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_empty_input_gives_empty_matrix(embedder: Embedder) -> None:
    out = embedder.embed_batch([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_features_start_with_the_sentence_embedding_and_every_block_is_unit_norm(
    embedder: Embedder, reference: dict
) -> None:
    texts = [item["text"] for item in reference["items"]]
    feats = embedder.features_batch(texts)
    assert feats.shape == (len(texts), 384 * len(spec.READOUT)) and feats.dtype == np.float32
    assert embedder.readout == spec.READOUT and spec.READOUT[0] == "mean6"
    np.testing.assert_array_equal(feats, runtime.quantise(feats))  # float16-exact: the features are rounded so
    np.testing.assert_allclose(feats[:, :384], embedder.embed_batch(texts), atol=1e-3)
    norms = np.linalg.norm(feats.reshape(len(texts), len(spec.READOUT), 384), axis=2)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    ref = np.array([item["embedding"] for item in reference["items"]], dtype=np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    got = feats[:, :384] / np.linalg.norm(feats[:, :384], axis=1, keepdims=True)
    assert float(np.min(np.sum(ref * got, axis=1))) >= MIN_COSINE, "the float16 embedding block still matches"


def test_features_of_a_batch_equal_one_by_one(embedder: Embedder, reference: dict) -> None:
    texts = [item["text"] for item in reference["items"]][:8]
    batch = embedder.features_batch(texts)
    single = np.concatenate([embedder.features_batch([t]) for t in texts])
    np.testing.assert_allclose(batch, single, atol=2e-3)
    assert embedder.features_batch([]).shape == (0, embedder.feature_dim)


def test_unknown_word_piece_rate(embedder: Embedder) -> None:
    rates = embedder.unknown_rates(["what is my balance", "", "ǂǂǂ balance"])
    assert rates[0] == 0.0 and rates[1] == 0.0 and 0.0 < rates[2] <= 1.0


def test_export_loads_with_tensorflow_hub(embedder: Embedder) -> None:
    import tensorflow as tf

    hub = compat.import_hub()
    model = hub.load(str(embedder.path))
    out = model(tf.constant(["what is my account balance", ""])).numpy()
    assert out.shape == (2, 384)
    sig = model.signatures["serving_default"]
    served = sig(texts=tf.constant(["what is my account balance"]))["embeddings"].numpy()
    np.testing.assert_allclose(served[0], out[0], atol=1e-5)
    np.testing.assert_allclose(out, embedder.embed_batch(["what is my account balance", ""]), atol=1e-5)


def test_export_is_self_contained_and_cached(embedder: Embedder, settings: Settings) -> None:
    path = embedder.path
    assert path == export.export_dir_for(settings, embedder.version)
    assert (path / "assets" / "vocab.txt").is_file()
    manifest = json.loads((path / export.MANIFEST_NAME).read_text())
    assert manifest["version"] == embedder.version
    assert {"saved_model.pb", "variables/variables.index"} <= set(manifest["sha256"])
    assert manifest["precisions"][:2] == list(spec.PRECISIONS[:2]) == ["fp32", "bf16"]  # int8: once converted
    assert manifest["graph_version"] == version.GRAPH_VERSION
    assert embedder.version == version.compute_version(version.GRAPH_VERSION, manifest["weights_sha256"])
    assert callable(embedder.model.features) and callable(embedder.model.features_bf16)
    mtime = (path / "saved_model.pb").stat().st_mtime_ns
    assert export.build_embedder(settings, progress=False) == path  # idempotent: no rebuild
    assert (path / "saved_model.pb").stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_version_is_stable_across_loads_and_auto_precision_follows_the_cpu(
    embedder: Embedder, settings: Settings
) -> None:
    again = runtime.load_embedder(settings, warm=False)  # embed_precision "auto"; embeds one text
    assert again.precision == runtime.known_precision(settings, again.version)  # auto: as decided on this CPU
    assert again.version == embedder.version == version.current_version()  # precision is not part of it
    assert again.dim == embedder.dim == 384
    again_fp32 = runtime.with_precision(again, "fp32")
    np.testing.assert_allclose(again_fp32.embed_batch(["card"]), embedder.embed_batch(["card"]), atol=1e-6)


def test_tampered_export_is_refused(embedder: Embedder, tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    copy = export.export_dir_for(settings, embedder.version)
    shutil.copytree(embedder.path, copy)
    index = copy / "variables" / "variables.index"
    index.write_bytes(index.read_bytes() + b"\0")
    with pytest.raises(spec.EmbedderError, match="variables.index"):
        runtime.load_embedder(settings)


def test_word_pieces_match_tensorflow_text_bert_tokenizer_on_every_fixture_text(
    embedder: Embedder, reference: dict
) -> None:
    import tensorflow as tf
    import tensorflow_text as tf_text

    vocab = (embedder.path / "assets" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(vocab, tf.range(len(vocab), dtype=tf.int64)), default_value=-1
    )
    tokenizer = tf_text.BertTokenizer(table, lower_case=True, token_out_type=tf.int64)
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    for item in reference["items"]:
        pieces = tokenizer.tokenize([item["text"]]).merge_dims(-2, -1)[0].numpy().tolist()
        want = [cls, *pieces[:254], sep]
        ids, mask = embedder.token_ids([item["text"]])
        assert ids[0, : mask[0].sum()].tolist() == want, item["text"]
