"""What the ``phrasestream`` commands print for a person: status lines on stdout, errors on stderr.

Not logging: these lines are the command's own output (the log goes to stderr through
``ops.logs``), so they keep their plain form whatever ``PHRASESTREAM_LOG_FORMAT`` says.
"""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """Print a status line on stdout; a closed terminal or pipe (Ctrl-C through `| tee`) is no error."""
    try:
        print(line, flush=True)
    except OSError:
        pass


def fail(message: object, status: int) -> int:
    """Print ``error: <message>`` on stderr and return ``status``, the command's exit status."""
    print(f"error: {message}", file=sys.stderr)
    return status
