"""What importing a module loads, asked of a fresh interpreter (the import-boundary tests)."""

from __future__ import annotations

import json
import subprocess
import sys


def loaded(module: str, roots: tuple[str, ...], also: tuple[str, ...] = ()) -> list[str]:
    """Return the modules under ``roots`` (and those named in ``also``) that ``import module`` loads."""
    code = (f"import json, sys, {module}; "
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r} or m in {also!r})))")
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
