"""The CPU this process runs on: its flags, bfloat16, the precision chosen, TensorFlow's threads.

What runs is chosen when the export is loaded, from the CPU this process has; the
measurements behind each choice are in docs/embedder.md ("Speed").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from models.embedder.spec import PRECISIONS, EmbedderError

log = logging.getLogger(__name__)

PRECISION_SETTINGS: tuple[str, ...] = ("auto", *PRECISIONS)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""``/proc/cpuinfo`` flags of the x86 CPUs that multiply bfloat16 natively (oneDNN uses them)."""
BF16_ON_AUTO = False
"""Whether ``embed_precision=auto`` picks bf16 on a CPU that has it: not yet. Measured on an
Intel Xeon with AVX512_BF16 but no AMX, bf16 was slower than fp32 (docs/embedder.md); it was
not measured on an AMX machine. bf16 agrees with fp32 (cosine >= 0.9999 per text), so
``PHRASESTREAM_EMBED_PRECISION=bf16`` is there for CPUs where it pays."""


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """Return the flags of the first ``flags`` line of a ``/proc/cpuinfo`` text (x86)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Return this machine's CPU flags; empty where ``/proc/cpuinfo`` is missing (not Linux)."""
    try:
        return parse_cpu_flags(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()


def cpu_has_bf16(flags: Iterable[str]) -> bool:
    """Say whether a CPU with these flags multiplies bfloat16 natively (AVX512_BF16 or AMX)."""
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def choose_precision(setting: str, flags: Iterable[str]) -> str:
    """Return ``fp32`` or ``bf16`` for ``PHRASESTREAM_EMBED_PRECISION`` on a CPU with ``flags``.

    ``auto`` picks ``bf16`` if the CPU has it (and :data:`BF16_ON_AUTO`), else ``fp32``;
    ``fp32`` and ``bf16`` force one (forced ``bf16`` on a CPU without it works, slowly).
    """
    if setting not in PRECISION_SETTINGS:
        raise EmbedderError(f"unknown embed precision {setting!r}; expected one of {', '.join(PRECISION_SETTINGS)}")
    if setting != "auto":
        return setting
    return "bf16" if BF16_ON_AUTO and cpu_has_bf16(flags) else "fp32"


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
