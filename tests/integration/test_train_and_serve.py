"""Train a head on a user's CSV with the real embedder; the live worker serves it without a restart.

Also: the demo heads never trained on CLINC150's test split, and `phrasestream report` writes
its page for a demo head.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.datasets import load_clinc150
from models.heads import TRAIN_DATA_FILE, HeadRef, heads_root, load_head
from models.registry.mirror import REGISTRY_FILE, Registry
from models.registry.pointers import read_all
from retrain.train.artifacts import read_jsonl_gz
from streams.app import READY_LINE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTENTS = ("balance", "transfer", "freeze_account", "pin_change", "report_fraud")


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["utterance", "intent"])
        w.writerows(rows)
    return path


def _clinc_csvs(folder: Path) -> tuple[Path, Path]:
    ds = load_clinc150("full")
    train = [(t, label) for t, label in ds.train if label in INTENTS]
    test = [(t, label) for t, label in ds.test if label in INTENTS]
    return _write(folder / "train.csv", train), _write(folder / "test.csv", test)


def _models_copy(base_settings, target: Path, link_models) -> Path:  # type: ignore[no-untyped-def]
    """A models folder that shares the suite's embedder, feature cache (``link_models``) and live heads (links).

    The live heads are the ones the registry topic names (the stack's topic starts as a copy
    of it, and the worker follows it), not the local mirror's: the two differ once a head was
    trained in a folder whose publish went elsewhere.
    """
    base = base_settings.models_root.resolve()
    link_models(base, target)
    for pointer in read_all(base_settings).values():
        ref = HeadRef(pointer.region, pointer.model, pointer.version)
        link = ref.path(target)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ref.path(base))
    shutil.copy(heads_root(base) / REGISTRY_FILE, heads_root(target) / REGISTRY_FILE)
    return target


def _cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, text=True, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_worker_serves_a_head_trained_on_a_csv_for_a_new_region_without_a_restart(stack, base_settings, tmp_path,
                                                                                    link_models):
    models = _models_copy(base_settings, tmp_path / "models", link_models)
    train_csv, test_csv = _clinc_csvs(tmp_path)
    stack.start("worker", READY_LINE, PHRASESTREAM_MODELS_DIR=str(models))
    env = {**stack.env, "PHRASESTREAM_MODELS_DIR": str(models)}
    phrase = {"id": "acme-1", "text": "somebody stole my card, report it as fraud", "region": "acme"}

    stack.produce(json.dumps({**phrase, "id": "before"}).encode())
    letters = stack.read(stack.settings.topic_dlq, 1)
    assert [letter["error_kind"] for letter in letters] == ["unknown_region"]

    res = _cli(env, "train", "--data", str(train_csv), "--eval", str(test_csv), "--text-col", "utterance",
               "--label-col", "intent", "--region", "acme", "--model", "support", "--activate", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["n_classes"] == len(INTENTS) and summary["n_eval"] == 150 and summary["n_train"] == 500
    assert summary["accuracy"] >= 0.9, summary
    for key in ("version", "weighted_f1", "macro_f1", "train_seconds"):
        assert key in summary
    assert Registry(models).active_ref("acme", "support").version == summary["version"]

    # the worker follows the registry topic: it says when it serves the new head, then it answers
    stack.wait_log("worker", f"now serving head acme/support:{summary['version']}")
    stack.produce(json.dumps(phrase).encode())
    found = [p for p in stack.read(stack.settings.topic_out, 1) if p["region"] == "acme"]
    assert found, f"the worker did not serve the new region\n{stack.tails()}"
    assert found[0]["model"] == "support" and found[0]["model_version"] == summary["version"]
    assert found[0]["label"] == "report_fraud"
    assert stack.procs["worker"].poll() is None, "the worker kept running"


def test_the_demo_heads_never_trained_on_the_clinc150_test_split(base_settings):
    registry = Registry(base_settings.models_root)
    active = registry.active()
    assert {"global", "eu"} <= set(active), "the demo heads are active (make train)"
    for region in ("global", "eu"):
        for model in ("intent", "domain"):
            ref = active[region][model]
            variant = "full" if region == "global" else "imbalanced"
            ds = load_clinc150(variant)
            test_texts = {t for t, _ in ds.test + ds.oos_test}
            snapshot = read_jsonl_gz(registry.path_of(ref) / TRAIN_DATA_FILE)
            trained_on = {r["text"] for r in snapshot if r["split"] in ("train", "val")}
            evaluated = {r["text"] for r in snapshot if r["split"] == "eval"}
            assert trained_on and not trained_on & test_texts, f"{ref} trained on test phrases"
            assert evaluated == test_texts, f"{ref} was evaluated on the test split"


def test_report_writes_its_page_for_a_demo_head(base_settings, tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "PHRASESTREAM_HOME": str(Path(base_settings.home).resolve())}
    res = _cli(env, "report", "--region", "global", "--model", "intent", "--out", str(out), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    page = Path(res.stdout.strip().splitlines()[-1])
    assert page == out / "index.html"
    html = page.read_text(encoding="utf-8")
    head = load_head(Registry(base_settings.models_root).path_of(
        Registry(base_settings.models_root).active_ref("global", "intent")))
    for label in ("pin_change", "oos", "freeze_account"):
        assert label in html
    assert str(head.ref) in html
    assert "confused" in html.lower() and "<table" in html and "data:image/png;base64," in html
