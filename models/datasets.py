"""Load the vendored CLINC150 data set (``models/data/clinc150/``, CC BY 3.0; see SOURCE.md there).

Everything comes back as plain Python: lists of ``(text, intent)`` tuples and dicts. No
pickle, no third-party reader: the files are gzipped JSON.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

DATA_DIR = Path(__file__).resolve().parent / "data" / "clinc150"

OOS = "oos"
"""The out-of-scope label, both as an intent and as a domain."""

Variant = Literal["full", "imbalanced"]
VARIANTS: tuple[str, ...] = ("full", "imbalanced")
SPLITS: tuple[str, ...] = ("train", "val", "test", "oos_train", "oos_val", "oos_test")

Example = tuple[str, str]
"""One utterance and its intent."""


@dataclass(frozen=True)
class Clinc150:
    """One variant of CLINC150: six splits of ``(text, intent)`` pairs and the domain map."""

    variant: str
    train: list[Example]
    val: list[Example]
    test: list[Example]
    oos_train: list[Example]
    oos_val: list[Example]
    oos_test: list[Example]
    domains: dict[str, str] = field(repr=False)
    """intent -> domain; ``oos`` -> ``oos``."""

    def split(self, name: str) -> list[Example]:
        """Return one split by name (one of ``SPLITS``)."""
        if name not in SPLITS:
            raise KeyError(f"unknown CLINC150 split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def with_oos(self, name: Literal["train", "val", "test"]) -> list[Example]:
        """Return an in-scope split followed by its out-of-scope counterpart (``oos`` labels)."""
        return self.split(name) + self.split(f"oos_{name}")

    @property
    def intents(self) -> list[str]:
        """Return the sorted in-scope intents (150)."""
        return sorted({intent for _, intent in self.train})

    def domain_of(self, intent: str) -> str:
        """Map an intent to its domain (``oos`` stays ``oos``)."""
        try:
            return self.domains[intent]
        except KeyError:
            raise KeyError(f"intent {intent!r} is in no CLINC150 domain") from None

    def to_domains(self, examples: list[Example]) -> list[Example]:
        """Relabel ``(text, intent)`` pairs as ``(text, domain)``."""
        return [(text, self.domain_of(intent)) for text, intent in examples]


def _read_json(path: Path) -> object:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    return json.loads(path.read_text(encoding="utf-8"))


@cache
def load_domain_lists(data_dir: Path = DATA_DIR) -> dict[str, tuple[str, ...]]:
    """Return domain -> its intents, as in ``domains.json`` (10 domains of 15 intents)."""
    raw = _read_json(data_dir / "domains.json")
    if not isinstance(raw, dict):
        raise ValueError(f"{data_dir / 'domains.json'}: expected an object of domain -> intents")
    return {str(domain): tuple(str(i) for i in intents) for domain, intents in raw.items()}


def load_domain_map(data_dir: Path = DATA_DIR) -> dict[str, str]:
    """Return intent -> domain for all 150 intents, plus ``oos`` -> ``oos``."""
    mapping: dict[str, str] = {}
    for domain, intents in load_domain_lists(data_dir).items():
        for intent in intents:
            if intent in mapping:
                raise ValueError(f"intent {intent!r} is in two domains: {mapping[intent]!r} and {domain!r}")
            mapping[intent] = domain
    mapping[OOS] = OOS
    return mapping


def _pairs(raw: object, split: str, path: Path) -> list[Example]:
    if not isinstance(raw, list):
        raise ValueError(f"{path}: split {split!r} is not a list")
    out: list[Example] = []
    for row in raw:
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
            raise ValueError(f"{path}: split {split!r} has a row that is not [text, intent]: {row!r}")
        out.append((row[0], row[1]))
    return out


@cache
def _load_cached(variant: str, data_dir: Path) -> Clinc150:
    if variant not in VARIANTS:
        raise ValueError(f"unknown CLINC150 variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    path = data_dir / f"data_{variant}.json.gz"
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object of split -> rows")
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise ValueError(f"{path}: missing splits {missing}")
    splits = {s: _pairs(raw[s], s, path) for s in SPLITS}
    return Clinc150(variant=variant, domains=load_domain_map(data_dir), **splits)


def load_clinc150(variant: Variant = "full", data_dir: Path | None = None) -> Clinc150:
    """Load one variant (``full`` or ``imbalanced``) of CLINC150.

    The result is cached per process; its lists are shared, so copy before mutating.
    """
    return _load_cached(variant, Path(data_dir) if data_dir is not None else DATA_DIR)
