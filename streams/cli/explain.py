"""``phrasestream explain``: why a head gives a label to one phrase, for an engineer at a terminal.

The head is found like ``report`` and ``promote`` find it: ``--version`` (a local folder, or the
bundle stored in PostgreSQL, fetched once), else the live version named by the registry topic.
The embedder is loaded in the precision the head was trained in. The work is
``models.heads.explain.explain``; this module checks the flags and prints the result as text
or, with ``--json``, as one JSON object.

Exit codes: 0 explained; 1 a service or a head's files failed; 2 bad input (an unknown region,
model, version or label, an empty phrase), one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from schemas.settings import Settings
from streams.cli.output import fail, say

USAGE, SERVICE = 2, 1


class _Bad(Exception):
    """Bad input: exit code 2."""


class _Broken(Exception):
    """A service or a file failed: exit code 1."""


def _folder(settings: Settings, region: str, model: str, version: str | None) -> Path:
    """Return the verified local folder of the head to explain (fetching its bundle if needed)."""
    import psycopg2

    from models.heads import HeadError, HeadRef, verify_head
    from models.registry.bundles import BundleError
    from models.registry.lifecycle import LifecycleError, head_folder, known_versions, live_ref

    try:
        ref = HeadRef(region, model, version or "v1")
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    live: HeadRef | None = None
    if version is not None:
        ref = HeadRef(region, model, version)
        local = ref.path(settings.models_root)
        if local.is_dir():
            try:
                verify_head(local)
                return local
            except HeadError:
                pass  # fetch the stored bundle below
    else:
        try:
            live = live_ref(settings, region, model)
        except LifecycleError as exc:
            raise _Broken(str(exc)) from None
        if live is not None:
            ref = live
    try:
        versions = known_versions(settings, region, model)
    except psycopg2.Error as exc:
        raise _Broken(f"PostgreSQL cannot be reached ({exc.__class__.__name__}); is it up? `phrasestream up`") from None
    if not versions:
        raise _Bad(f"no head {region}/{model} is built here or stored in PostgreSQL")
    if version is None and live is None:
        raise _Bad(f"{region}/{model} has no live version; give --version (known: {', '.join(versions)})")
    if version is not None and version not in versions:
        raise _Bad(f"{region}/{model} has no version {version!r}; known: {', '.join(versions)}")
    try:
        return head_folder(settings, ref)
    except (BundleError, HeadError, psycopg2.Error) as exc:
        raise _Broken(f"{ref}: {exc}") from None


class _Cached:
    """The embedder behind the training feature cache (``retrain.train.features``), for building an
    older head's neighbour index from its training snapshot: those texts were embedded when it was
    trained, so the index is built from disk in seconds instead of embedding every row again."""

    def __init__(self, embedder: Any, models_root: Path) -> None:
        self.embedder = embedder
        self.models_root = models_root
        self.readout = embedder.readout

    def features_batch(self, texts: Any) -> Any:
        from retrain.train.features import cached_features  # the CLI is the one door to retrain/

        return cached_features(self.embedder, list(texts), self.models_root, progress=len(texts) > 256)[0]


def explain_command(settings: Settings, args: argparse.Namespace) -> int:
    """Explain one phrase with one head; print the explanation; return the exit code."""
    from models.heads import HeadError, load_head
    from schemas.cleaning import clean

    if not clean(args.text or ""):
        return fail("--text is empty once cleaned: give a phrase with words", USAGE)
    if args.label is not None and not args.label.strip():
        return fail("--label is empty", USAGE)
    try:
        folder = _folder(settings, args.region, args.model, args.version)
        head = load_head(folder)
    except _Bad as exc:
        return fail(exc, USAGE)
    except (_Broken, HeadError) as exc:
        return fail(exc, SERVICE)
    if args.label is not None and args.label not in head.labels:
        return fail(f"--label {args.label!r} is not a label of {head.ref}; its labels: {', '.join(head.labels)}",
                    USAGE)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from models.embedder import EmbedderError, load_embedder
    from models.heads.explain import explain
    from models.heads.neighbors import has_stored_index, index_for

    try:
        embedder = load_embedder(settings, precision=head.embedder_precision, warm=False)
    except EmbedderError as exc:
        return fail(f"the embedder cannot be loaded: {exc}", SERVICE)
    if embedder.version != head.embedder_version:
        return fail(f"{head.ref} was trained on embedder version {head.embedder_version!r}, but this machine's "
                    f"embedder is {embedder.version!r}: explain it where its embedder runs", USAGE)
    try:
        if not has_stored_index(head):
            index_for(head, _Cached(embedder, settings.models_root))
        result = explain(head, embedder, args.text, args.label)
    except ValueError as exc:
        return fail(exc, USAGE)
    except HeadError as exc:
        return fail(exc, SERVICE)
    if args.json:
        say(json.dumps(result, ensure_ascii=False))
    else:
        for line in render(result):
            say(line)
    return 0


# --------------------------------------------------------------------------------------------
# the text an engineer reads

TERMS_SHOWN = 10


def _shown(term: str) -> str:
    """A term as printed: a space inside an n-gram is shown as ``␣`` (``char:␣bala`` starts a word)."""
    block, _, gram = term.partition(":")
    return f"{block}:{gram.replace(' ', '␣')}" if block == "char" else term


def _examples(title: str, rows: list[list[Any]] | None) -> list[str]:
    if rows is None:
        return [f"  {title}: none (this head has no neighbour index)"]
    out = [f"  {title}:"]
    out += [f"    {cos:6.3f}  {text!r}" for text, _, cos in rows] or ["    (no training example of that label)"]
    return out


def _section(sec: dict[str, Any], occlusion: dict[str, Any] | None) -> list[str]:
    head = (f"== {sec['label']} ({sec['why']}, probability {sec['probability']:.3f}; "
            f"runner-up {sec['runner_up']} {sec['runner_up_probability']:.3f}) ==")
    out = [head]
    if sec.get("terms") is None:
        out.append(f"  {sec.get('note', 'no term contributions')}")
    else:
        m = sec["member"]
        out.append(f"  terms of member {m['name']} (linear, weight {m['weight']:.2f} in the head's average, "
                   f"temperature {m['temperature']:.3g}); contributions to its logit for {sec['label']}:")
        terms = sec["terms"]
        for term, value in terms[:TERMS_SHOWN]:
            out.append(f"    {value:+8.4f}  {_shown(term)}")
        if len(terms) > TERMS_SHOWN:
            rest = sum(v for _, v in terms[TERMS_SHOWN:])
            out.append(f"    {rest:+8.4f}  ({len(terms) - TERMS_SHOWN} more terms)")
        out.append(f"    {sec['bias']:+8.4f}  <BIAS>")
        out.append(f"    {sec['readout']:+8.4f}  <READOUT> (the encoder readout's part)")
        out.append(f"    {'-' * 8}")
        out.append(f"    {sec['logit']:+8.4f}  logit of {sec['label']}")
        if sec.get("runner_up_logit") is not None:
            out.append(f"              ({sec['runner_up']}: {sec['runner_up_logit']:+.4f}; "
                       f"difference {sec['logit_difference']:+.4f})")
    loo = sec.get("leave_one_word_out")
    if occlusion is not None:
        if loo:
            out.append(f"  readout, leave-one-word-out (change of P({sec['label']}) without the word; cosine of "
                       "the shortened phrase to the whole):")
            out += [f"    {delta:+8.4f}  {word!r}  (cosine {cos:.3f})" for word, delta, cos in loo]
        elif occlusion.get("skipped"):
            out.append(f"  readout, leave-one-word-out: skipped ({occlusion['skipped']})")
    out += _examples(f"nearest training examples of {sec['label']}", sec.get("neighbors"))
    out += _examples(f"nearest training examples of {sec['runner_up']} (runner-up)", sec.get("neighbors_runner_up"))
    return out


def render(result: dict[str, Any]) -> list[str]:
    """Return the lines ``explain`` prints for the dict ``models.heads.explain.explain`` returns."""
    pred = result["prediction"]
    top = ", ".join(f"{label} {p:.3f}" for label, p in pred["top_k"])
    lines = [f"head       {result['head']} (embedder {result['embedder_version']}, {result['embedder_precision']})",
             f"phrase     {result['text']!r}",
             f"cleaned    {result['clean_text']!r}",
             f"predicted  {pred['label']} ({pred['probability']:.3f}); top: {top}",
             f"baseline   {result['baseline']}",
             f"examples   index {result['index']['status']}, {result['index']['rows']} training rows; cosine on "
             "the sentence embedding", ""]
    occlusion = result.get("leave_one_word_out")
    for sec in result["explained"]:
        lines += _section(sec, occlusion)
        lines.append("")
    if occlusion is not None:
        lines.append(f"caveat     {occlusion['caveat']} ({occlusion['passes']} extra encoder passes)")
    return lines
