"""``phrasestream explain`` on a head trained here with the real embedder, on the real broker and database.

A small head (five CLINC150 intents, one linear member, a few epochs) is trained once for the
module by ``phrasestream train``; its folder holds the neighbour index under its checksums. The
tests explain a phrase by ``--version`` (text and ``--json``), by the live version after
``promote``, from the bundle stored in PostgreSQL when the local folder is gone, and check every
bad input: exit code 2 and one ``error: ...`` line.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stack, linked_models_folder, make_stack

from models.datasets import load_clinc150
from models.heads import NEIGHBORS_FILE, NEIGHBORS_ROWS_FILE, HeadRef, verify_head

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTENTS = ("balance", "transfer", "freeze_account", "pin_change", "report_fraud")
SMALL = {"head": {"max_epochs": 6, "ensemble": {"hidden": 0}}, "selection": {"candidates": [{}]}}
PHRASE = "somebody stole my card, report it as fraud"


def _cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, text=True, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _errors(res: subprocess.CompletedProcess) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def trained(base_settings, tmp_path_factory) -> Iterator[tuple[Stack, dict[str, str], str]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("explain")
    stack_gen = make_stack(base_settings, tmp, seed_registry=False)
    stack = next(stack_gen)
    models = linked_models_folder(base_settings.models_root.resolve(), tmp / "models")
    ds = load_clinc150("full")
    for name, rows in (("train.csv", ds.train), ("test.csv", ds.test)):
        with open(tmp / name, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows((t, label) for t, label in rows if label in INTENTS)
    (tmp / "config.json").write_text(json.dumps(SMALL))
    env = {**stack.env, "PHRASESTREAM_MODELS_DIR": str(models)}
    res = _cli(env, "train", "--data", str(tmp / "train.csv"), "--eval", str(tmp / "test.csv"), "--region", "acme",
               "--model", "support", "--config", str(tmp / "config.json"), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    version = json.loads(res.stdout.strip().splitlines()[-1])["version"]
    try:
        yield stack, env, version
    finally:
        stack_gen.close()


def test_the_head_stores_its_neighbour_index_under_its_checksums(trained):  # type: ignore[no-untyped-def]
    _, env, version = trained
    folder = HeadRef("acme", "support", version).path(Path(env["PHRASESTREAM_MODELS_DIR"]))
    meta = verify_head(folder)
    assert {NEIGHBORS_FILE, NEIGHBORS_ROWS_FILE} <= set(meta["files"])
    rows = json.loads((folder / NEIGHBORS_ROWS_FILE).read_text())["rows"]
    assert len(rows) == meta["training"]["n_train"] == 500


def test_explain_prints_terms_readout_and_nearest_examples(trained):  # type: ignore[no-untyped-def]
    _, env, version = trained
    res = _cli(env, "explain", "--region", "acme", "--model", "support", "--version", version, "--text", PHRASE)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    print(out)
    assert "predicted  report_fraud" in out
    for part in ("<BIAS>", "<READOUT>", "logit of report_fraud", "word:", "nearest training examples of report_fraud",
                 "(runner-up)", "leave-one-word-out", "caveat", "index stored at training"):
        assert part in out, part


def test_explain_json_is_one_object_whose_parts_sum_to_the_logit(trained):  # type: ignore[no-untyped-def]
    _, env, version = trained
    res = _cli(env, "explain", "--region", "acme", "--model", "support", "--version", version, "--text", PHRASE,
               "--label", "freeze_account", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    [line] = res.stdout.strip().splitlines()
    out = json.loads(line)
    assert out["head"] == f"acme/support:{version}"
    assert out["prediction"]["label"] == "report_fraud"
    assert [s["label"] for s in out["explained"]] == ["report_fraud", "freeze_account"]
    assert out["index"] == {"status": "stored at training", "rows": 500}
    for sec in out["explained"]:
        total = sec["bias"] + sec["readout"] + sum(v for _, v in sec["terms"])
        assert total == pytest.approx(sec["logit"], abs=2e-3)
        assert len(sec["neighbors"]) == 3 and {n[1] for n in sec["neighbors"]} == {sec["label"]}
        assert {n[1] for n in sec["neighbors_runner_up"]} == {sec["runner_up"]}
        assert [w for w, _, _ in sec["leave_one_word_out"]] == out["clean_text"].split()
    assert out["leave_one_word_out"]["passes"] == len(out["clean_text"].split())


def test_explain_uses_the_live_version_and_its_stored_bundle(trained, tmp_path):  # type: ignore[no-untyped-def]
    _, env, version = trained
    res = _cli(env, "explain", "--region", "acme", "--model", "support", "--text", PHRASE)
    assert res.returncode == 2 and _errors(res) == [
        f"error: acme/support has no live version; give --version (known: {version})"], res.stderr
    res = _cli(env, "promote", "--region", "acme", "--model", "support", "--version", version)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = HeadRef("acme", "support", version).path(Path(env["PHRASESTREAM_MODELS_DIR"]))
    moved = tmp_path / "moved"
    shutil.move(folder, moved)  # the next explain fetches the bundle stored in PostgreSQL by promote
    try:
        res = _cli(env, "explain", "--region", "acme", "--model", "support", "--text", PHRASE, "--json")
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["head"] == f"acme/support:{version}"
        assert out["index"]["status"] == "stored at training"
        assert folder.is_dir()
    finally:
        if not folder.exists():
            shutil.move(moved, folder)


@pytest.mark.parametrize(("args", "message"), [
    (("--region", "nowhere", "--model", "support"), "no head nowhere/support is built here or stored in PostgreSQL"),
    (("--region", "acme", "--model", "nothing"), "no head acme/nothing is built here or stored in PostgreSQL"),
    (("--region", "acme", "--model", "support", "--version", "v-missing"), "acme/support has no version 'v-missing'"),
    (("--region", "Bad Region!", "--model", "support"), "region"),
    (("--region", "acme", "--model", "support", "--text", "  <br> "), "--text is empty once cleaned"),
    (("--region", "acme", "--model", "support", "--label", "no_such_label"), "--label 'no_such_label' is not a label"),
    (("--region", "acme", "--model", "support", "--label", " "), "--label is empty"),
])
def test_bad_input_exits_2_with_one_error_line(trained, args, message):  # type: ignore[no-untyped-def]
    _, env, version = trained
    if "--version" not in args and "nowhere" not in args and "nothing" not in args and "Bad Region!" not in args:
        args = (*args, "--version", version)
    if "--text" not in args:
        args = (*args, "--text", PHRASE)
    res = _cli(env, "explain", *args)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = _errors(res)
    assert len(errors) == 1 and message in errors[0], res.stderr[-3000:]
    assert res.stdout == ""


def test_report_shows_the_evidence_of_the_confused_examples(trained, tmp_path):  # type: ignore[no-untyped-def]
    from retrain.train.artifacts import read_jsonl_gz

    _, env, version = trained
    folder = HeadRef("acme", "support", version).path(Path(env["PHRASESTREAM_MODELS_DIR"]))
    wrong = [r for r in read_jsonl_gz(folder / "eval_predictions.jsonl.gz") if r["label"] != r["pred"]]
    res = _cli(env, "report", "--region", "acme", "--model", "support", "--version", version,
               "--out", str(tmp_path / "report"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "warning" not in res.stderr
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    shown = html.count('<details class="evidence">')
    print(f"{len(wrong)} wrong evaluation rows, {shown} shown with their evidence")
    pairs = Counter((r["label"], r["pred"]) for r in wrong)
    assert shown == sum(min(n, 3) for _, n in pairs.most_common(25))  # up to 3 examples of each listed pair
    if wrong:
        assert "(the true label)" in html and "&lt;BIAS&gt;" in html
