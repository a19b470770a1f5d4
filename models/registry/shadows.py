"""Shadow runs and review rules in the registry pointer: start or stop a shadow, change a review rule.

Both are changes of the live pointer that keep the live version (``lifecycle.change`` with the
same version, ``seq + 1``), so every worker follows them the way it follows a promotion:

- :func:`start_shadow` (``promote --shadow``, action ``shadow``) stores the candidate's bundle in
  PostgreSQL (any worker can fetch it) and writes ``shadow=ShadowSpec(version, percent, sha256,
  size)``; :func:`stop_shadow` (``promote --shadow --stop``) writes ``shadow=None``.
- :func:`set_review_rule` (``review-rule``, action ``configure``) writes the pointer's ``review``
  (None: back to the head's training rule).

Every refusal is a :class:`ShadowRefused` (an unknown version is ``lifecycle.UnknownHead``),
checked again under the head's lock, so two commands at once cannot both pass a stale check.
"""

from __future__ import annotations

from typing import Any

from models.heads import HeadRef
from models.registry.bundles import BundleError, BundleStore
from models.registry.lifecycle import (
    KEEP,
    Change,
    LifecycleError,
    RefusedHead,
    _bundle_facts,
    _check_known,
    change,
    live_pointers,
)
from schemas.messages import RegistryPointer
from schemas.review import ReviewRule, ShadowSpec


class ShadowRefused(LifecycleError):
    """A shadow or review-rule change that cannot be made as asked (the message says why)."""


def check_percent(percent: float | None) -> float:
    """Return the share of phrases a shadow runs on (default 100); refuse one outside (0, 100]."""
    if percent is None:
        return 100.0
    if not 0 < percent <= 100:
        raise ShadowRefused(f"--percent must be in (0, 100], got {percent:g}")
    return float(percent)


def _live(settings: Any, region: str, model: str) -> RegistryPointer:
    old = live_pointers(settings).get((region, model))
    if old is None:
        live = ", ".join(f"{r}/{m}" for r, m in sorted(live_pointers(settings))) or "none"
        raise ShadowRefused(f"{region}/{model} has no live version; promote one first (live heads: {live})")
    return old


def start_shadow(settings: Any, region: str, model: str, version: str, percent: float | None = None,
                 reason: str | None = None) -> Change:
    """Run ``version`` beside the live version of (region, model) on every worker; return the change.

    Refused: no live version, an unknown version, the live version itself, ``percent`` outside
    (0, 100]. Starting a shadow while another runs replaces it.
    """
    share = check_percent(percent)
    ref = HeadRef(region, model, version)
    old = _live(settings, region, model)
    store = BundleStore(settings)
    try:
        _check_known(settings, ref, store)
        if old.version == version:
            raise ShadowRefused(f"{ref} is already live; a shadow runs a version beside the live one")
        sha, size, meta = _bundle_facts(settings, ref, store, upload=True)
    except BundleError as exc:
        raise RefusedHead(str(exc)) from None
    if meta.get("ref") != str(ref):
        raise RefusedHead(f"the files of {ref} name head {meta.get('ref')!r}")
    spec = ShadowSpec(version=version, percent=share, bundle_sha256=sha, bundle_bytes=size)

    def still_valid(current: RegistryPointer | None) -> None:
        if current is None:
            raise ShadowRefused(f"{region}/{model} has no live version; promote one first")
        if current.version == version:
            raise ShadowRefused(f"{ref} is already live; a shadow runs a version beside the live one")

    return change(settings, HeadRef(region, model, old.version), action="shadow", store=store,
                  reason=reason or f"shadow {version} on {share:g}% of phrases", shadow=spec, review=KEEP,
                  check=still_valid)


def stop_shadow(settings: Any, region: str, model: str, reason: str | None = None) -> tuple[Change, ShadowSpec]:
    """End the shadow of (region, model) on every worker; return the change and the shadow it ended."""
    old = _live(settings, region, model)
    if old.shadow is None:
        raise ShadowRefused(f"{region}/{model} runs no shadow (live: {old.version}); nothing to stop")
    ended = old.shadow

    def still_running(current: RegistryPointer | None) -> None:
        if current is None or current.shadow is None:
            raise ShadowRefused(f"{region}/{model} runs no shadow; nothing to stop")

    done = change(settings, HeadRef(region, model, old.version), action="shadow",
                  reason=reason or f"shadow {ended.version} stopped", shadow=None, review=KEEP, check=still_running)
    return done, ended


def rule_in_force(settings: Any, region: str, model: str) -> tuple[ReviewRule, str, RegistryPointer]:
    """Return (the review rule in force, where it comes from, the live pointer) of (region, model).

    The pointer's ``review`` when set ("registry"), else the live head's training rule
    ("training": ``models.heads.rule.review_rule`` of its metadata, the default rule for a head
    that records none).
    """
    from models.heads.rule import review_rule

    old = _live(settings, region, model)
    if old.review is not None:
        return old.review, "registry", old
    meta = _head_metadata(settings, HeadRef(region, model, old.version))
    return review_rule(meta), "training", old


def _head_metadata(settings: Any, ref: HeadRef) -> dict[str, Any]:
    store = BundleStore(settings)
    try:
        return _bundle_facts(settings, ref, store, upload=False)[2]
    except BundleError as exc:
        raise RefusedHead(str(exc)) from None


def set_review_rule(settings: Any, region: str, model: str, rule: ReviewRule | None,
                    reason: str | None = None) -> Change:
    """Write ``rule`` as the review rule in force for (region, model) on every worker (None: the training rule)."""
    old = _live(settings, region, model)
    what = "review rule reset to the head's training rule" if rule is None else "review rule changed"
    return change(settings, HeadRef(region, model, old.version), action="configure", reason=reason or what,
                  shadow=KEEP, review=rule)
