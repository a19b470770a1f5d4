"""The CPU this process runs on: its flags, bfloat16, the precision chosen, TensorFlow's threads.

What runs is chosen when the export is loaded, from the CPU this process has; the
measurements behind each choice are in docs/embedder.md ("Speed", "Precisions"). ``auto``
times the precisions worth trying on this CPU against each other (:func:`choose_precision`);
``models.embedder.runtime`` runs that check once per CPU and export and remembers its result,
so that training and serving on one machine agree (a head is served only in the precision it
was trained on).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from models.embedder.spec import PRECISIONS, EmbedderError

log = logging.getLogger(__name__)

PRECISION_SETTINGS: tuple[str, ...] = ("auto", *PRECISIONS)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""``/proc/cpuinfo`` flags of the x86 CPUs that multiply bfloat16 natively (oneDNN uses them)."""
AMX_BF16_FLAG = "amx_bf16"
"""bf16 is tried by ``auto`` only with AMX: on an Intel Xeon with AVX512_BF16 but no AMX, oneDNN's
bf16 matmul was slower than float32 (x0.55-0.6); with AMX it was faster (x1.15, docs/embedder.md)."""
INT8_ON_AUTO = True
"""Whether ``auto`` tries int8. It does: it holds both bars of issue 17. Measured 2026-12-06
(docs/embedder.md, "Precisions"): the demo recipe trained on the CLINC150 train split lost 0.20
(``full``) and 0.07 (``imbalanced``) points of in-scope test accuracy on int8 features against
fp32 features (bar: 0.3; ``python -m retrain.train.precisions``), and int8's cosine to
sentence-transformers is 0.9909 at worst on the 32 reference texts (bar: 0.99;
tests/integration/test_embedder_int8.py). Whether it is also faster depends on the CPU: the
start-up check says (on a 2-core AMD EPYC with AVX512_VNNI: x3.2-3.6 at batch 1, x1.3-2.2 at
batch 32)."""
AUTO_MARGIN = 0.10
"""How much faster than fp32 another precision must be in the start-up check to be chosen (10%):
a closer call is noise on a busy machine, and fp32 is the reference."""


@dataclass(frozen=True)
class Choice:
    """The precision the embedder runs, and why (for the log line at load)."""

    precision: str
    reason: str


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """Return the flags of the first ``flags`` line of a ``/proc/cpuinfo`` text (x86)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Return this machine's CPU flags; empty where ``/proc/cpuinfo`` is missing (not Linux)."""
    return parse_cpu_flags(read_cpuinfo(path))


def cpu_has_bf16(flags: Iterable[str]) -> bool:
    """Say whether a CPU with these flags multiplies bfloat16 natively (AVX512_BF16 or AMX)."""
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def auto_candidates(flags: Iterable[str], int8_on_auto: bool | None = None) -> tuple[str, ...]:
    """Return the precisions ``auto`` times against each other on a CPU with ``flags``, fp32 first.

    fp32 always; bf16 where the CPU has AMX (:data:`AMX_BF16_FLAG`); int8 where
    :data:`INT8_ON_AUTO` (the default of ``int8_on_auto``) says its accuracy holds.
    """
    int8 = INT8_ON_AUTO if int8_on_auto is None else int8_on_auto
    return ("fp32", *(("bf16",) if AMX_BF16_FLAG in set(flags) else ()), *(("int8",) if int8 else ()))


def pick_fastest(seconds: Mapping[str, float], margin: float = AUTO_MARGIN) -> Choice:
    """Return the precision with the least ``seconds`` per batch, if it beats fp32 by ``margin``; else fp32.

    >>> pick_fastest({"fp32": 0.10, "int8": 0.05}).precision
    'int8'
    >>> pick_fastest({"fp32": 0.10, "bf16": 0.095}).precision
    'fp32'
    """
    figures = ", ".join(f"{p} {s * 1000:.0f} ms" for p, s in seconds.items())
    best = min(seconds, key=lambda p: seconds[p])
    if best != "fp32" and seconds[best] * (1 + margin) <= seconds["fp32"]:
        return Choice(best, f"auto: fastest in the start-up check, x{seconds['fp32'] / seconds[best]:.2f} "
                            f"fp32's speed (per batch: {figures})")
    return Choice("fp32", f"auto: nothing beat fp32 by {margin:.0%} in the start-up check (per batch: {figures})")


def check_setting(setting: str) -> None:
    """Raise :class:`EmbedderError` unless ``setting`` is ``auto`` or a precision."""
    if setting not in PRECISION_SETTINGS:
        raise EmbedderError(f"unknown embed precision {setting!r}; expected one of {', '.join(PRECISION_SETTINGS)}")


def choose_precision(setting: str, flags: Iterable[str],
                     time_batches: Callable[[tuple[str, ...]], Mapping[str, float]] | None = None) -> Choice:
    """Return the precision for ``PHRASESTREAM_EMBED_PRECISION`` on a CPU with ``flags``, and why.

    ``fp32``, ``bf16`` and ``int8`` force one (forced ``bf16`` on a CPU without it works,
    slowly). ``auto`` is fp32 where :func:`auto_candidates` offers nothing else; otherwise
    ``time_batches(candidates)`` gives each candidate's seconds per batch (the start-up check,
    ``models.embedder.bench.time_batches``) and :func:`pick_fastest` decides.
    """
    check_setting(setting)
    if setting != "auto":
        return Choice(setting, "set by PHRASESTREAM_EMBED_PRECISION")
    candidates = auto_candidates(flags)
    if len(candidates) == 1:
        return Choice("fp32", "auto: no other precision to try on this CPU")
    if time_batches is None:
        raise EmbedderError(f"auto precision needs the start-up check to choose among {', '.join(candidates)}")
    return pick_fastest(time_batches(candidates))


def cpu_signature(cpuinfo: str) -> str:
    """Return what names this CPU for a remembered ``auto`` choice: its model name and a digest of its flags."""
    name = next((value.strip() for key, sep, value in (line.partition(":") for line in cpuinfo.splitlines())
                 if sep and key.strip() == "model name"), "unknown CPU")
    flags = " ".join(sorted(parse_cpu_flags(cpuinfo)))
    return f"{name} [{hashlib.sha256(flags.encode()).hexdigest()[:12]}]"


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    """Return ``/proc/cpuinfo``'s text; empty where it is missing (not Linux)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def usable_cpus() -> int:
    """Return how many CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_counts(cpus: int) -> tuple[int, int]:
    """Return (intra-op, inter-op) TensorFlow threads for ``cpus`` usable CPUs.

    The encoder is a chain of ops, each of which (matmuls above all) oneDNN spreads over the
    intra-op threads; a second inter-op thread would only let two ops fight for the same CPUs.
    """
    return cpus, 1


def configure_threads(cpus: int | None = None) -> tuple[int, int] | None:
    """Size TensorFlow's thread pools for the CPUs this process may use; call before TF runs.

    Returns the (intra, inter) counts set, or None when TensorFlow already ran something in
    this process (its pools are then fixed; a warning is logged). Why: the sizes are then a
    stated choice, logged at load (:func:`thread_counts`), taken from the CPUs this process may
    use (``taskset``, a container's cpuset), instead of TensorFlow's defaults, which also run
    as many inter-op threads as CPUs, each op spreading over all of them.
    """
    import tensorflow as tf

    intra, inter = thread_counts(usable_cpus() if cpus is None else cpus)
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (intra, inter):
        return intra, inter
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as exc:  # the runtime is initialised already
        log.warning("TensorFlow threads left as they are (%s); call load_embedder before other TF work", exc)
        return None
    return intra, inter
