"""Each label's guideline for reviewers: a one-line definition and a few examples from the head's training data.

The labels of a head version are its ``labels.json``; the examples are the first
:data:`EXAMPLES` training rows of each label in its ``train_data.jsonl.gz`` (the head folder is
fetched from its bundle when it is not on this machine: ``models.registry.lifecycle.head_folder``).

The definition comes from ``<models_root>/heads/<region>/<model>/label_definitions.json``
(``{"label": "one line"}``, shared by every version of the head) when that file exists and
names the label; otherwise it is derived from the label's name (``card_declined`` ->
"Card declined."), which is only as good as the name: write the file for labels whose
names do not say enough. A label the file defines that the head never learnt is offered to
reviewers too: that is how experts bring in a new label (the next ``retrain`` learns it).
The file is read anew when it changes.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from models.heads import HeadRef

log = logging.getLogger("phrasestream.review")

EXAMPLES = 3
DEFINITIONS_FILE = "label_definitions.json"
CACHED = 16


@dataclass(frozen=True)
class Guide:
    """One head version's labels, with each label's definition and examples."""

    ref: HeadRef
    labels: tuple[str, ...]
    definitions: dict[str, str] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    problem: str | None = None

    def definition(self, label: str) -> str:
        """Return the label's one-line definition (derived from its name when none is written)."""
        return self.definitions.get(label) or derived_definition(label)


def derived_definition(label: str) -> str:
    """Return a one-line definition made from a label's name: ``card_declined`` -> ``Card declined.``."""
    words = label.replace("_", " ").replace("-", " ").strip()
    return (words[:1].upper() + words[1:] + ".") if words else label


def load_guide(settings: Any, ref: HeadRef) -> Guide:
    """Build ``ref``'s guide from its folder; a folder that cannot be had gives a guide with no labels and the reason."""
    import psycopg2

    from models.heads import HeadError
    from models.registry.bundles import BundleError
    from models.registry.lifecycle import head_folder

    try:
        folder = head_folder(settings, ref)
        labels = tuple(json.loads((folder / "labels.json").read_text(encoding="utf-8")))
    except (BundleError, HeadError, OSError, ValueError, psycopg2.Error) as exc:
        log.warning("no guideline for %s: %s", ref, exc)
        return Guide(ref, (), problem=f"the files of {ref} cannot be read ({exc})")
    examples: dict[str, list[str]] = defaultdict(list)
    try:
        with gzip.open(folder / "train_data.jsonl.gz", "rt", encoding="utf-8") as rows:
            for line in rows:
                row = json.loads(line)
                label = row.get("label")
                if row.get("split", "train") == "train" and label and len(examples[label]) < EXAMPLES:
                    examples[label].append(str(row.get("text", "")))
    except (OSError, ValueError) as exc:
        log.warning("no training examples for %s: %s", ref, exc)
    return Guide(ref, labels, read_definitions(settings, ref.region, ref.model), dict(examples))


def definitions_path(settings: Any, region: str, model: str) -> Path:
    """Return where the written definitions of a head's labels live (shared by all its versions)."""
    return Path(settings.models_root) / "heads" / region / model / DEFINITIONS_FILE


def read_definitions(settings: Any, region: str, model: str) -> dict[str, str]:
    """Read a head's ``label_definitions.json`` ({} when there is none or it is not a JSON object of strings)."""
    path = definitions_path(settings, region, model)
    if not path.is_file():
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s is not a JSON object of label -> definition: %s", path, exc)
        return {}


class Guides:
    """The guides of the last :data:`CACHED` head versions asked for (a head version's files never change)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._cache: OrderedDict[str, Guide] = OrderedDict()
        self._defined: dict[Path, tuple[int, dict[str, str]]] = {}

    def get(self, ref: HeadRef) -> Guide:
        """Return ``ref``'s guide; its definitions are read anew whenever their file changed."""
        key = str(ref)
        guide = self._cache.get(key)
        if guide is None:
            guide = load_guide(self.settings, ref)
            if guide.problem is None:
                self._cache[key] = guide
                while len(self._cache) > CACHED:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return replace(guide, definitions=self._definitions(ref.region, ref.model))

    def _definitions(self, region: str, model: str) -> dict[str, str]:
        path = definitions_path(self.settings, region, model)
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return {}
        cached = self._defined.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, read_definitions(self.settings, region, model))
            self._defined[path] = cached
        return cached[1]
