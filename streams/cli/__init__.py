"""The ``phrasestream`` command: ``main`` (the console script ``streams.cli:main``, and ``python -m streams.cli``).

``parser`` builds the command line and dispatches; each group of commands has its module:
``services`` (up, status, stop, clean), ``stream`` (worker, sink, start, run, demo, produce,
consume, loadgen), ``training`` (train, report, models, promote, rollback, retrain), ``drift``
(drift-report, drift-watch) and ``bench``. A command parses its flags and calls the code that
does the work; ``output`` prints what a person reads.
"""

from streams.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
