"""The expert-loop test's data: which CLINC150 phrases play which part, drawn once and never reused.

Two CLINC150 domains (banking, credit cards: 30 intents); four of their intents are left out of
the live head's training. Every part comes from CLINC150's own splits, and no phrase plays two parts:

- ``base``: labelled examples of the 26 known intents (train split, positions 0-29), the live
  head's training data, produced to ``phrases.labeled`` with timestamps over the past weeks (in a
  mixed order, so the time split's test slice holds every intent);
- ``traffic``: the phrases sent before the review (train split: 25 of each left-out intent from
  position 40, 5 of each known one);
- ``tail``: labelled examples of the known intents that keep arriving after the review (train
  split, positions 30-37): the newest, so ``retrain``'s time split tests on them and trains on
  every reviewed answer;
- ``shadow_traffic``: the phrases sent while the candidate runs in shadow (validation split);
- ``held_out``: the slice the live head is scored on before and after the loop (test split),
  never reviewed, never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.datasets import load_clinc150, load_domain_lists

DOMAINS = ("banking", "credit_cards")
LEFT_OUT = ("order_checks", "routing", "apr", "redeem_rewards")
"""Intents the live head never saw: they are what the review must bring in."""

Phrase = tuple[str, str, str]
"""(phrase id, raw text, true intent)."""


@dataclass(frozen=True)
class LoopData:
    intents: tuple[str, ...]
    base: list[tuple[str, str]]
    tail: list[tuple[str, str]]
    traffic: list[Phrase]
    shadow_traffic: list[Phrase]
    held_out: list[Phrase]

    @property
    def truth(self) -> dict[str, str]:
        """Phrase id -> true intent, for every phrase sent through the stream."""
        return {pid: intent for pid, _, intent in self.traffic + self.shadow_traffic + self.held_out}


def _by_intent(examples: list[tuple[str, str]], intents: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {i: [] for i in sorted(intents)}
    for text, intent in examples:
        if intent in out:
            out[intent].append(text)
    return out


def _mixed(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``rows`` in a fixed mixed order, whatever PYTHONHASHSEED is: produced in this order, the
    examples' timestamps (and so ``retrain``'s time split) do not follow the intents."""
    return sorted(rows, key=lambda r: ((sum(map(ord, r[0])) * 7919) % 1009, r[0]))


def _phrases(tag: str, by: dict[str, list[str]], start: int, left: int, known: int) -> list[Phrase]:
    """``left`` phrases of each left-out intent and ``known`` of each other one, from ``start``, interleaved."""
    rows = [(text, intent) for intent, texts in by.items()
            for text in texts[start: start + (left if intent in LEFT_OUT else known)]]
    return [(f"{tag}-{n:04d}", text, intent) for n, (text, intent) in enumerate(_mixed(rows))]


def loop_data() -> LoopData:
    """Draw the parts (deterministic)."""
    ds = load_clinc150("full")
    domains = load_domain_lists()
    intents = {i for d in DOMAINS for i in domains[d]}
    assert set(LEFT_OUT) <= intents
    train, val, test = (_by_intent(split, intents) for split in (ds.train, ds.val, ds.test))
    known = sorted(intents - set(LEFT_OUT))
    data = LoopData(
        intents=tuple(sorted(intents)),
        base=_mixed([(text, i) for i in known for text in train[i][:30]]),
        tail=_mixed([(text, i) for i in known for text in train[i][30:38]]),
        traffic=_phrases("t", train, 40, left=25, known=5),
        shadow_traffic=_phrases("s", val, 0, left=10, known=2),
        held_out=_phrases("h", test, 0, left=10, known=3),
    )
    texts = [t for t, _ in data.base + data.tail] + [t for _, t, _ in data.traffic + data.shadow_traffic + data.held_out]
    assert len(texts) == len(set(texts)), "a phrase plays two parts"
    return data
