"""The embedder's reaches past library APIs (models/embedder/compat.py), each checked against the
installed library: a test here fails when tensorflow-hub or tensorflow-text changes what it
relies on, and says what to do.

One fresh interpreter imports both libraries (TensorFlow loads once, outside pytest's process,
so ``pkg_resources`` is seen as a new process sees it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models.embedder import compat

PROBE = r"""
import importlib.util, inspect, json, sys
from models.embedder.tfenv import prepare_tensorflow
prepare_tensorflow()
from models.embedder.compat import basic_tokenizer_class, import_hub
installed = importlib.util.find_spec("pkg_resources") is not None
hub = import_hub()
left = sys.modules.get("pkg_resources")
cls = basic_tokenizer_class()
words = cls(lower_case=False, normalization_form=None).tokenize(["Hello, wörld!"])
print(json.dumps({
    "hub": hub.__version__,
    "pkg_resources_installed": installed,
    "stand_in_left": left is not None and getattr(left, "__file__", None) is None,
    "params": sorted(inspect.signature(cls.__init__).parameters),
    "words": [w.decode() for w in words.to_list()[0]],
}))
"""

@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_tensorflow_hub_imports_only_parse_version_from_pkg_resources() -> None:
    spec = importlib.util.find_spec("tensorflow_hub")
    assert spec is not None and spec.origin is not None
    used: set[str] = set()
    for path in Path(spec.origin).parent.rglob("*.py"):
        if path.name.endswith("_test.py"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for names in re.findall(r"from pkg_resources import ([\w, ]+)", text):
            used.update(n.strip() for n in names.split(","))
        used.update(re.findall(r"pkg_resources\.(\w+)", text))
    assert used, "tensorflow_hub no longer uses pkg_resources: delete the stand-in in compat.import_hub"
    assert used == compat.HUB_NEEDS, (
        f"tensorflow_hub now uses pkg_resources.{sorted(used)}; the stand-in in compat.import_hub "
        f"provides {sorted(compat.HUB_NEEDS)}")


def test_import_hub_works_whether_or_not_pkg_resources_is_installed_and_leaves_no_stand_in(
    probe: dict[str, Any]
) -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", probe["hub"])  # imported, with or without the stand-in
    assert probe["stand_in_left"] is False, "the pkg_resources stand-in stayed in sys.modules"


def test_tensorflow_text_basic_tokenizer_is_where_the_graph_takes_it_from(probe: dict[str, Any]) -> None:
    assert {"lower_case", "normalization_form"} <= set(probe["params"])
    assert probe["words"] == ["Hello", ",", "wörld", "!"]  # split on punctuation; case and accents kept
