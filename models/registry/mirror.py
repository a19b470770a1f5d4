"""Which head version is active for each (region, model): ``<models_root>/heads/registry.json``.

The file is small JSON::

    {
      "format": 1,
      "active": {"global": {"intent": "global/intent:20261127T130501Z-1a2b3c", ...}, ...},
      "history": [{"ref": "global/intent:20261127T130501Z-1a2b3c", "activated_at": "2026-11-27T13:05:09+00:00",
                   "action": "promote", "from": "global/intent:20261120T...", "reason": "...",
                   "metrics": {"accuracy": ..., "weighted_f1": ..., ...}}, ...]
    }

``action`` is ``activate`` (``train --activate``, the demo heads), ``promote`` or ``rollback``;
``from`` is the version that was live before (null for the first); ``metrics`` are the new
version's evaluation metrics at the time.

Every change is a read-modify-write under an exclusive ``flock`` on ``registry.lock``, written
to a temporary file and moved into place with ``os.replace``: readers never see a partial file.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.heads import Head, HeadError, HeadRef, heads_root, load_head, read_metadata

REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"
FORMAT_VERSION = 1


class RegistryError(Exception):
    """The registry file is unreadable, or a change to it is not allowed."""


class Registry:
    """The active head per (region, model) under ``<root>/heads/``, ``root`` being ``settings.models_root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.heads_dir = heads_root(self.root)
        self.path = self.heads_dir / REGISTRY_FILE

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT_VERSION, "active": {}, "history": []}
        except json.JSONDecodeError as e:
            raise RegistryError(f"{self.path} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("active"), dict):
            raise RegistryError(f"{self.path} has no 'active' object")
        raw.setdefault("history", [])
        return raw

    def active(self) -> dict[str, dict[str, HeadRef]]:
        """Return region -> model -> active :class:`HeadRef` (empty without a registry file)."""
        out: dict[str, dict[str, HeadRef]] = {}
        for region, models in sorted(self._read()["active"].items()):
            for model, ref in sorted(models.items()):
                parsed = HeadRef.parse(ref)
                if parsed.key != (region, model):
                    raise RegistryError(f"{self.path}: {ref!r} is filed under {region}/{model}")
                out.setdefault(region, {})[model] = parsed
        return out

    def active_ref(self, region: str, model: str) -> HeadRef | None:
        """Return the active ref of one (region, model), or None."""
        return self.active().get(region, {}).get(model)

    def regions(self) -> list[str]:
        """Return the sorted regions that have at least one active head."""
        return sorted(self.active())

    def history(self) -> list[dict[str, str]]:
        """Return every activation, oldest first: ``{"ref": str, "activated_at": ISO time}``."""
        return [dict(item) for item in self._read()["history"]]

    def versions(self, region: str, model: str) -> list[HeadRef]:
        """Return the built (complete) versions of one (region, model), oldest first."""
        folder = self.heads_dir / region / model
        if not folder.is_dir():
            return []
        refs = []
        for p in sorted(folder.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and (p / "metadata.json").is_file():
                try:
                    refs.append(HeadRef(region, model, p.name))
                except ValueError:
                    continue
        return refs

    def path_of(self, ref: HeadRef) -> Path:
        """Return the folder of ``ref``."""
        return ref.path(self.root)

    # -- changing --------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.heads_dir.mkdir(parents=True, exist_ok=True)
        with open(self.heads_dir / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{REGISTRY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def activate(self, ref: HeadRef | str, *, action: str = "activate", reason: str | None = None,
                 explicit: bool = False) -> HeadRef:
        """Make ``ref`` the active head of its (region, model) and record it in the history.

        The head folder must exist and its metadata must name the same ref. (Checksums are
        verified when the head is loaded.)
        """
        ref = HeadRef.parse(ref) if isinstance(ref, str) else ref
        folder = self.path_of(ref)
        try:
            meta = read_metadata(folder)
        except HeadError as e:
            raise RegistryError(f"cannot activate {ref}: {e}") from None
        if meta.get("ref") != str(ref):
            raise RegistryError(f"cannot activate {ref}: {folder}/metadata.json names {meta.get('ref')!r}")
        with self._locked():
            data = self._read()
            data["format"] = FORMAT_VERSION
            before = data["active"].get(ref.region, {}).get(ref.model)
            data["active"].setdefault(ref.region, {})[ref.model] = str(ref)
            data["history"].append({
                "ref": str(ref), "activated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "action": action, "from": before, "reason": reason, **({"explicit": True} if explicit else {}),
                "metrics": (meta.get("metrics") or {}).get("eval") or (meta.get("metrics") or {}).get("test") or {},
            })
            self._write(data)
        return ref

    def rollback(self, region: str, model: str, to: str | None = None, reason: str | None = None) -> HeadRef:
        """Make the previous live version (or version ``to``) active again; return it.

        "Previous" is the version that was live before the current one took over, so two
        rollbacks in a row step back twice rather than toggling.
        """
        current = self.active_ref(region, model)
        if current is None:
            raise RegistryError(f"{region}/{model} has no live version to roll back")
        if to is not None:
            target = HeadRef(region, model, to)
            if target not in self.versions(region, model):
                raise RegistryError(f"{region}/{model} has no version {to!r}; built: "
                                    f"{[v.version for v in self.versions(region, model)]}")
        else:
            target = self._previous(region, model, current)
        return self.activate(target, action="rollback", reason=reason, explicit=to is not None)

    def _previous(self, region: str, model: str, current: HeadRef) -> HeadRef:
        """Replay the history as a stack (a plain rollback pops it) and return the version under the top."""
        stack: list[str] = []
        for item in self.history():
            if HeadRef.parse(item["ref"]).key != (region, model):
                continue
            if item.get("action") == "rollback" and not item.get("explicit"):
                while stack and stack[-1] != item["ref"]:
                    stack.pop()
                if not stack:
                    stack.append(item["ref"])
            else:
                stack.append(item["ref"])
        built = set(self.versions(region, model))
        for ref in reversed(stack[:-1]):
            if ref != str(current) and HeadRef.parse(ref) in built:
                return HeadRef.parse(ref)
        raise RegistryError(f"{region}/{model}: no earlier live version to roll back to")

    # -- loading ---------------------------------------------------------------------------

    def load_active(self, embedder_version: str | None = None) -> dict[str, dict[str, Head]]:
        """Verify and load every active head: region -> model -> :class:`Head`.

        With ``embedder_version``, every head must have been built for that embedder version
        (else ``models.heads.EmbedderMismatch``).
        """
        out: dict[str, dict[str, Head]] = {}
        for region, models in self.active().items():
            for model, ref in models.items():
                head = load_head(self.path_of(ref), embedder_version=embedder_version)
                if head.ref != ref:
                    raise RegistryError(f"the folder of {ref} holds head {head.ref}")
                out.setdefault(region, {})[model] = head
        return out
