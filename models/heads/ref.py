"""Name a head: ``HeadRef(region, model, version)``, its folder, and new version strings.

A head is addressed by a small value that parses and prints itself (``region/model:version``);
where its files come from (this disk, a registry bundle) is the loader's business.

>>> ref = HeadRef.parse("eu/intent:20261127T130501Z-1a2b3c")
>>> (ref.key, str(ref))
(('eu', 'intent'), 'eu/intent:20261127T130501Z-1a2b3c')
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_NAME_RE = re.compile(r"[a-z0-9_-]+")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, order=True)
class HeadRef:
    """Name one built head: ``region/model:version``.

    ``region`` and ``model`` match ``[a-z0-9_-]+``; ``version`` is a sortable string such as
    ``20261127T130501Z-1a2b3c`` (letters, digits, ``_ . -``; it starts with a letter or digit).
    """

    region: str
    model: str
    version: str

    def __post_init__(self) -> None:
        for what, value in (("region", self.region), ("model", self.model)):
            if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
                raise ValueError(f"bad head {what} {value!r}: use lowercase letters, digits, '_' and '-'")
        if not isinstance(self.version, str) or not _VERSION_RE.fullmatch(self.version):
            raise ValueError(
                f"bad head version {self.version!r}: use letters, digits, '_', '.' and '-', "
                "starting with a letter or digit"
            )

    @classmethod
    def parse(cls, text: str) -> HeadRef:
        """Parse ``region/model:version``; raise ``ValueError`` with the reason otherwise."""
        if not isinstance(text, str):
            raise ValueError(f"a head ref is a string 'region/model:version', not {type(text).__name__}")
        head, sep, version = text.strip().rpartition(":")
        region, slash, model = head.partition("/")
        if not sep or not slash:
            raise ValueError(f"bad head ref {text!r}: expected 'region/model:version'")
        return cls(region, model, version)

    @property
    def key(self) -> tuple[str, str]:
        """Return ``(region, model)``: the slot this head can be active in."""
        return (self.region, self.model)

    def path(self, models_root: Path | str) -> Path:
        """Return this head's folder under ``models_root``."""
        return heads_root(models_root) / self.region / self.model / self.version

    def __str__(self) -> str:
        return f"{self.region}/{self.model}:{self.version}"


def heads_root(models_root: Path | str) -> Path:
    """Return ``<models_root>/heads``."""
    return Path(models_root) / "heads"


def new_version(now: datetime | None = None) -> str:
    """Return a new sortable version string, ``YYYYmmddTHHMMSSZ-<6 hex>`` (UTC)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
