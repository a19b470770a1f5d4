"""Who may use the review page, and proof that a form was sent from it: basic auth and CSRF tokens.

- Reviewers come from ``PHRASESTREAM_REVIEW_USERS`` (``name:password,name:password``; a password
  may hold ``:`` but not ``,``). When it is empty, :func:`load_reviewers` reads
  ``<home>/review-users`` (same format), creating it with one reviewer and a random password
  (mode 0600) the first time. Passwords are never logged; only the file's path is printed.
- Every request carries HTTP basic auth; the reviewer's name is the user name.
- Every POST carries a CSRF token: HMAC-SHA256 of the reviewer's name under a secret made when
  the process starts (a page rendered before a restart needs a reload). A request with an
  ``Origin`` or ``Referer`` header must come from the page's own host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

USERS_FILE = "review-users"
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class ReviewersError(ValueError):
    """The reviewers' list cannot be used; the message says why (never the password)."""


def parse_users(text: str) -> dict[str, str]:
    """Parse ``name:password,name:password`` into {name: password}; raise :class:`ReviewersError`."""
    users: dict[str, str] = {}
    for n, entry in enumerate(part.strip() for part in text.split(",")):
        if not entry:
            continue
        name, sep, password = entry.partition(":")
        name = name.strip()
        if not sep or not password:
            raise ReviewersError(f"reviewer {n + 1} ({name or 'no name'}) has no password: write name:password")
        if not NAME_RE.match(name):
            raise ReviewersError(f"reviewer {n + 1}: the name {name!r} is not 1-64 letters, digits, _ . @ -")
        if name in users:
            raise ReviewersError(f"reviewer {name!r} is listed twice")
        users[name] = password
    return users


def load_reviewers(users_setting: str, home: Path) -> tuple[dict[str, str], Path | None]:
    """Return the reviewers, and the file they came from (None: from the setting).

    With ``users_setting`` empty, read ``<home>/review-users``, first writing one reviewer
    (``reviewer`` with a random password) into it with mode 0600.
    """
    if users_setting.strip():
        users = parse_users(users_setting)
        if not users:
            raise ReviewersError("PHRASESTREAM_REVIEW_USERS names no reviewer")
        return users, None
    path = Path(home).expanduser() / USERS_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"reviewer:{secrets.token_urlsafe(18)}\n")
    users = parse_users(path.read_text(encoding="utf-8").replace("\n", ","))
    if not users:
        raise ReviewersError(f"{path} names no reviewer; write name:password lines or delete it")
    return users, path


def check_basic(header: str | None, users: dict[str, str]) -> str | None:
    """Return the reviewer an ``Authorization: Basic`` header proves, or None.

    Every password is compared in constant time, so the answer's time does not tell a name.
    """
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, sep, password = decoded.partition(":")
    if not sep:
        return None
    found = None
    for user, expected in users.items():
        if hmac.compare_digest(password.encode(), expected.encode()) and hmac.compare_digest(name.encode(),
                                                                                           user.encode()):
            found = user
    return found


class Csrf:
    """Per-reviewer CSRF tokens: HMAC-SHA256 of the name under a per-process random secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def token(self, reviewer: str) -> str:
        """Return ``reviewer``'s token (the same for the whole life of the process)."""
        return hmac.new(self._secret, f"csrf:{reviewer}".encode(), hashlib.sha256).hexdigest()

    def check(self, reviewer: str, token: str | None) -> bool:
        """Say whether ``token`` is ``reviewer``'s."""
        return bool(token) and hmac.compare_digest(self.token(reviewer), str(token))


def same_origin(origin: str | None, referer: str | None, host: str | None) -> bool:
    """Say whether a request's ``Origin`` (else ``Referer``) names the page's own ``host`` (host:port).

    A request with neither header (a script, or a browser that hides them) passes: the CSRF
    token is the protection; this check is the second line.
    """
    source = origin if origin and origin != "null" else referer
    if origin == "null":
        return False
    if not source:
        return True
    return bool(host) and urlsplit(source).netloc.lower() == (host or "").lower()
