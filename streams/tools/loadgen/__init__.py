"""Generate realistic phrase traffic for benchmarks and produce it to ``phrases.in``.

The traffic looks like users: a pool of phrases (by default the CLINC150 test split, which the
demo heads never trained on, deduplicated by cleaned text) drawn with Zipf popularity, some of
them typed differently (case, repeated punctuation, typographic quotes and dashes, extra
space: variants that :func:`schemas.cleaning.clean` folds back to the original's text, so they
share its cache entry), and a share of never-seen phrases made by recombining pool words.

Because the stream is known in advance, so is the hit rate an embedding cache can reach on
it: :func:`expected_hit_rate` gives it for an unbounded cache or an LRU of N entries, both
starting empty.

Steps, each usable without the CLI (the benchmark calls them directly):

- :func:`make_pool` builds the phrases, their verified variants and the words to recombine;
- :func:`generate` (or :meth:`Traffic.make`, which also keeps what each message is) draws
  ``count`` messages, deterministic for a seed, as ``(id, JSON bytes without ts)``;
- :func:`send` produces them to Kafka (127.0.0.1/localhost only unless ``allow_remote``),
  paced to ``rate`` or as fast as possible, stamping ``ts`` at send time; it stops at the end
  of the messages or at ``duration`` seconds, whichever comes first;
- :func:`run` does all three for ``phrasestream loadgen``.

The modules, by concern: ``checks`` (the bounds of a run), ``pool`` (phrases and variants),
``traffic`` (drawing, the hit rate to expect), ``sending`` (stamping, pacing, producing) and
``command`` (:func:`run`). Import from this package: the names below are its interface.

>>> pool = make_pool(["what is my balance?", "how do i reset my pin", "book a table for two"])
>>> traffic = Traffic.make(1000, pool=pool, seed=7)
>>> traffic.messages[0][0]
'lg-7-0'
>>> 0 < traffic.figures()["expected_hit_rate"] < 1
True
"""

from streams.tools.loadgen.checks import (
    MAX_COUNT,
    MAX_DURATION_S,
    MAX_RATE,
    MAX_ZIPF,
    LoadgenError,
    check_bootstrap,
    check_generation,
    check_sending,
)
from streams.tools.loadgen.command import run
from streams.tools.loadgen.pool import VARIANTS_PER_PHRASE, Pool, make_pool, make_variants
from streams.tools.loadgen.sending import PRODUCER_CONFIG, Stamp, pump, send
from streams.tools.loadgen.traffic import NewPhrases, Traffic, expected_hit_rate, generate, zipf_shares

__all__ = [
    "MAX_COUNT", "MAX_DURATION_S", "MAX_RATE", "MAX_ZIPF", "PRODUCER_CONFIG", "VARIANTS_PER_PHRASE", "LoadgenError",
    "NewPhrases", "Pool", "Stamp", "Traffic", "check_bootstrap", "check_generation", "check_sending",
    "expected_hit_rate", "generate", "make_pool", "make_variants", "pump", "run", "send", "zipf_shares",
]
