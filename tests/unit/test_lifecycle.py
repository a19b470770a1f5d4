"""`phrasestream models`, `promote` and `rollback` on the registry (no services, no training)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from models.heads import METADATA_FILE, HeadRef
from models.registry import Registry
from streams import cli


def built(root: Path, region: str, model: str, version: str, accuracy: float) -> HeadRef:
    """A head folder with metadata only (no other files: its checksum list is empty)."""
    ref = HeadRef(region, model, version)
    folder = ref.path(root)
    folder.mkdir(parents=True)
    meta = {"format": 2, "ref": str(ref), "created_at": f"2026-11-{version[-2:]}T10:00:00+00:00", "n_classes": 3,
            "metrics": {"eval": {"accuracy": accuracy, "weighted_f1": accuracy - 0.01, "macro_f1": accuracy - 0.02}},
            "training": {"n_train": 100, "n_eval": 20}, "files": {}}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    return ref


@pytest.fixture
def home(tmp_path: Path):  # type: ignore[no-untyped-def]
    os.environ["PHRASESTREAM_HOME"] = str(tmp_path)
    yield tmp_path
    del os.environ["PHRASESTREAM_HOME"]


def run(capsys, *args: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def live(capsys, region: str = "eu") -> dict[str, str]:  # type: ignore[no-untyped-def]
    code, out, _ = run(capsys, "models", "--region", region, "--json")
    assert code == 0
    rows = json.loads(out.strip().splitlines()[-1])
    for r in rows:
        assert {"region", "model", "version", "live", "created_at", "accuracy", "weighted_f1"} <= set(r)
    return {r["model"]: r["version"] for r in rows if r["live"]}


def test_train_promote_train_promote_rollback(capsys, home: Path):  # type: ignore[no-untyped-def]
    root = home / "models"
    built(root, "eu", "support", "v20261101", 0.90)
    assert live(capsys) == {}
    assert run(capsys, "promote", "--region", "eu", "--model", "support", "--version", "v20261101")[0] == 0
    assert live(capsys) == {"support": "v20261101"}
    built(root, "eu", "support", "v20261102", 0.93)
    assert live(capsys) == {"support": "v20261101"}, "a new version is not live until promoted"
    code, out, _ = run(capsys, "promote", "--region", "eu", "--model", "support", "--version", "v20261102",
                       "--reason", "better on March data")
    assert code == 0 and "(was v20261101)" in out
    assert live(capsys) == {"support": "v20261102"}
    code, out, _ = run(capsys, "rollback", "--region", "eu", "--model", "support", "--reason", "complaints")
    assert code == 0 and "to v20261101" in out
    assert live(capsys) == {"support": "v20261101"}

    history = Registry(root).history()
    assert [(h["ref"].split(":")[1], h["action"], h["from"] and h["from"].split(":")[1], h["reason"])
            for h in history] == [("v20261101", "promote", None, None),
                                  ("v20261102", "promote", "v20261101", "better on March data"),
                                  ("v20261101", "rollback", "v20261102", "complaints")]
    assert history[1]["metrics"]["accuracy"] == 0.93


def test_two_rollbacks_step_back_twice(capsys, home: Path):  # type: ignore[no-untyped-def]
    root = home / "models"
    for i, acc in ((1, 0.8), (2, 0.85), (3, 0.9)):
        built(root, "eu", "m", f"v2026110{i}", acc)
        assert run(capsys, "promote", "--region", "eu", "--model", "m", "--version", f"v2026110{i}")[0] == 0
    assert run(capsys, "rollback", "--region", "eu", "--model", "m")[0] == 0
    assert live(capsys) == {"m": "v20261102"}
    assert run(capsys, "rollback", "--region", "eu", "--model", "m")[0] == 0
    assert live(capsys) == {"m": "v20261101"}
    code, _, err = run(capsys, "rollback", "--region", "eu", "--model", "m")
    assert code == 2 and "no earlier live version" in err
    assert run(capsys, "rollback", "--region", "eu", "--model", "m", "--to", "v20261103")[0] == 0
    assert live(capsys) == {"m": "v20261103"}


@pytest.mark.parametrize("args, message", [
    (["promote", "--region", "nowhere", "--model", "m", "--version", "v1"], "no head nowhere/m"),
    (["promote", "--region", "eu", "--model", "m", "--version", "v9"], "has no version 'v9'"),
    (["rollback", "--region", "eu", "--model", "nope"], "no head eu/nope"),
    (["rollback", "--region", "eu", "--model", "m", "--to", "v9"], "has no version 'v9'"),
    (["models", "--region", "nowhere"], "no heads in region 'nowhere'"),
])
def test_unknown_regions_models_and_versions_exit_2(capsys, home: Path, args: list[str], message: str):  # type: ignore[no-untyped-def]
    built(home / "models", "eu", "m", "v20261101", 0.8)
    run(capsys, "promote", "--region", "eu", "--model", "m", "--version", "v20261101")
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_head_whose_files_changed_is_not_promoted(capsys, home: Path):  # type: ignore[no-untyped-def]
    ref = built(home / "models", "eu", "m", "v20261101", 0.8)
    folder = ref.path(home / "models")
    meta = json.loads((folder / METADATA_FILE).read_text())
    meta["files"] = {"weights.safetensors": "0" * 64}
    (folder / METADATA_FILE).write_text(json.dumps(meta))
    (folder / "weights.safetensors").write_bytes(b"not the weights")
    code, _, err = run(capsys, "promote", "--region", "eu", "--model", "m", "--version", "v20261101")
    assert code == 2 and "sha256" in err
    assert Registry(home / "models").active_ref("eu", "m") is None


def test_produce_labeled_needs_data_region_and_model(capsys, home: Path):  # type: ignore[no-untyped-def]
    code, _, err = run(capsys, "produce", "--labeled", "--region", "eu")
    assert code == 2 and "--labeled needs --data" in err
    data = home / "d.csv"
    data.write_text("text,label,ts\nhello,greet,2026-01-01 10:00\n", encoding="utf-8")
    code, _, err = run(capsys, "produce", "--labeled", "--data", str(data), "--region", "eu", "--model", "m")
    assert code == 2 and "timezone" in err.lower(), "a ts without a time zone is refused before producing"
