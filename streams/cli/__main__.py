"""``python -m streams.cli``: the ``phrasestream`` command (how the daemons and the tests start it)."""
from streams.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
