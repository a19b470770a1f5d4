"""Serving never imports retrain/: training writes artifacts, serving picks them up by reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every module of the worker's process, found on disk so a new one is checked too: streams/ itself
# and its kafka/, state/ and sinks/ packages (the CLI and the tools are not serving), the review page
# (a process of its own that imports no training either), and what the worker loads from models/
# when it builds the app.
SERVING = sorted(
    {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
     for folder in ("streams", "streams/kafka", "streams/state", "streams/sinks", "streams/review")
     for path in (ROOT / folder).glob("*.py")}
    | {"models.embedder", "models.heads", "models.registry.lifecycle", "models.registry.pointers",
       "models.registry.bundles"})


def test_the_list_holds_the_worker_and_its_parts() -> None:
    for name in ("streams.app", "streams.worker", "streams.heads", "streams.pipeline", "streams.decode",
                 "streams.kafka.faust_compat", "streams.kafka.continuity", "streams.state.cache"):
        assert name in SERVING


def test_importing_every_serving_module_imports_nothing_of_retrain() -> None:
    code = (f"import importlib, json, sys\nfor name in {SERVING!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'retrain' or m.startswith('retrain.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_every_test_file_has_a_name_of_its_own() -> None:
    # tests/ folders are not packages: pytest imports each file by its basename, and two files of
    # one name (a unit and an integration test) make it refuse to collect the second
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
