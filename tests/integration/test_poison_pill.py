"""A poison pill end to end: a phrase that makes a live head raise is dead-lettered as ``internal``,
and the phrases of its batch are served.

The fault is real, not a test hook: the head ``global/fragile`` is a copy of the suite's live
``global/domain`` whose word TF-IDF ``ngram_range`` reads ``[1, 2.5]`` instead of ``[1, 2]``. Its
files are consistent (checksums recomputed), so it passes ``load_head``'s checks, whose trial
prediction is of an empty text; but scikit-learn then raises ``TypeError`` ("'float' object cannot
be interpreted as an integer") for any text of three words or more, while texts of one or two
words are classified normally. It is promoted like any head (bundle in PostgreSQL, pointer on the
registry topic) and the worker serves it beside the healthy heads.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from models.checksums import sha256_file
from models.heads import HEAD_FILE, METADATA_FILE, Head, HeadRef, load_head, new_version
from models.registry import lifecycle
from models.registry.pointers import read_all
from schemas.messages import CleanedPhrase
from schemas.settings import Settings
from streams.app import READY_LINE

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.integration

SHORT = ["balance", "freeze card", "pin", "transfer money", "weather", "book table", "jokes", "exchange rate",
         "my balance", "play jazz", "alarm", "shopping list", "card", "payday", "flights"]
POISON = {"poison-1": "please freeze my card now", "poison-2": "what is the exchange rate for euros today"}


def fragile_copy(source: Path, models_root: Path) -> HeadRef:
    """Copy the head folder ``source`` as ``global/fragile`` with a word n-gram range of ``[1, 2.5]``."""
    ref = HeadRef("global", "fragile", new_version())
    folder = ref.path(models_root)
    shutil.copytree(source, folder)
    config = json.loads((folder / HEAD_FILE).read_text())
    config["text_features"]["word"]["ngram_range"] = [1, 2.5]
    (folder / HEAD_FILE).write_text(json.dumps(config))
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta.update(ref=str(ref), region=ref.region, model=ref.model, version=ref.version)
    meta["files"][HEAD_FILE] = sha256_file(folder / HEAD_FILE)
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=1))
    return ref


@pytest.fixture
def fragile(stack: Stack, base_settings: Settings, link_models: Callable[[Path, Path], Path],
            tmp_path: Path) -> tuple[Path, HeadRef]:
    """A models folder with ``global/fragile`` in it, promoted on this stack's registry; return (folder, ref)."""
    domain = read_all(base_settings).get(("global", "domain"))
    if domain is None:
        pytest.fail("no live global/domain head: run `make train` (the test set-up does)")
    root = link_models(base_settings.models_root.resolve(), tmp_path / "models")
    for (region, model), pointer in read_all(base_settings).items():  # the live heads' files, linked
        live = HeadRef(region, model, pointer.version)
        live.path(root).parent.mkdir(parents=True, exist_ok=True)
        live.path(root).symlink_to(live.path(base_settings.models_root.resolve()))
    ref = fragile_copy(HeadRef("global", "domain", domain.version).path(base_settings.models_root), root)
    head = load_head(ref.path(root))  # the worker's own checks pass ...
    head.predict(head_input(head, 2), texts=["freeze card", "pin"])
    with pytest.raises(TypeError, match="cannot be interpreted as an integer"):  # ... and three words raise
        head.predict(head_input(head, 1), texts=["freeze my card"])
    lifecycle.promote(stack.settings.model_copy(update={"models_dir": root}), ref, reason="a poison-pill test")
    return root, ref


def head_input(head: Head, rows: int) -> np.ndarray:
    return np.zeros((rows, head.feature_dim), dtype=np.float32)


def test_a_phrase_that_makes_a_head_raise_is_dead_lettered_as_internal_and_its_batch_mates_are_served(
        stack: Stack, fragile: tuple[Path, HeadRef]) -> None:
    root, ref = fragile
    settings = stack.settings
    mates = {f"mate-{i}": text for i, text in enumerate(SHORT)}
    bodies = [{"id": pid, "text": text, "region": "global"} for pid, text in [*mates.items(), *POISON.items()]]
    # all waiting before the worker starts, so that they meet in the worker's first batches
    stack.produce(*(json.dumps(body).encode() for body in bodies))
    worker = stack.start("worker", READY_LINE, PHRASESTREAM_MODELS_DIR=str(root))

    heads = sorted(m for (region, m) in read_all(settings) if region == "global")
    assert "fragile" in heads
    letters = stack.read(settings.topic_dlq, len(POISON))
    predictions = stack.read(settings.topic_out, len(mates) * len(heads))
    stack.produce(json.dumps({"id": "after", "text": "balance", "region": "global"}).encode())
    after = stack.read(settings.topic_out, len(mates) * len(heads) + len(heads))

    # the poison pills: one letter each, internal, with the head's error and the cleaned phrase
    assert sorted(x["id"] for x in letters) == sorted(POISON)
    for letter in letters:
        assert letter["error_kind"] == "internal"
        assert "cannot be interpreted as an integer" in letter["reason"], letter["reason"]
        assert letter["source_topic"] == f"{settings.app_id}-phrases.cleaned"
        phrase = CleanedPhrase.from_bytes(base64.b64decode(letter["original_b64"]))
        assert phrase.id == letter["id"] and phrase.clean_text == POISON[letter["id"]]
        assert phrase.models == heads
    # their batch-mates: one prediction by each head, the fragile one included; the pills get none
    got = Counter((p["id"], p["model"]) for p in predictions)
    assert got == Counter({(pid, m): 1 for pid in mates for m in heads})
    assert {p["model_version"] for p in predictions if p["model"] == "fragile"} == {ref.version}
    assert {(p["id"], p["model"]) for p in after} - set(got) == {("after", m) for m in heads}, "the worker goes on"

    log = (stack.logs / "worker.log").read_text(errors="replace")
    split = [int(n) for n in re.findall(r"a batch of (\d+) failed", log)]
    assert split and all(n >= 2 for n in split), f"a pill shared a batch with others: {split}"
    for pid in POISON:
        assert f"embedding or classification failed for phrase {pid}" in log
    assert worker.poll() is None
    print(json.dumps({"poison_pill": {"pills": len(POISON), "mates": len(mates), "heads": heads,
                                      "dead_lettered_internal": len(letters), "predictions": len(predictions),
                                      "failed_batches": split}}))
