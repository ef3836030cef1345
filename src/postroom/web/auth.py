"""Who may act on the status page: the operator token, and the CSRF token of a page.

The page is read-only for everyone who can reach it. Actions (hold, release, retry, cancel,
Send/Receive, online/offline) need an operator: a request over the Unix socket (its file
permissions decide who), or one that carries the token `postroom serve http --new-token` printed,
as `Authorization: Bearer` or as the cookie the login form sets. The profile keeps only the
token's SHA-256 (a random 256-bit token needs no slow hash), in a file only its owner can read.

A browser sends the cookie with every request to the page's origin, even one a hostile page
starts, so every action from a browser also carries a CSRF token: an HMAC of the operator's
token hash under a secret this process draws at start, put into the pages it serves. A hostile
page can neither read it nor compute it. (The cookie is also SameSite=Strict and HttpOnly.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

#: The file in the profile directory that holds the operator token's hash.
TOKEN_FILE = "http-token.sha256"
COOKIE = "postroom_operator"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token(profile_dir: Path) -> str:
    """Make a new operator token, keep its hash (mode 0600) and return the token, shown once."""
    token = secrets.token_urlsafe(32)
    path = profile_dir / TOKEN_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(hash_token(token) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return token


def stored_hash(profile_dir: Path) -> str | None:
    """The operator token's hash, or None when no token was made (the page is read-only)."""
    try:
        text = (profile_dir / TOKEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) == 64 else None


class Gate:
    """Decides whether a request is the operator's, and makes and checks CSRF tokens."""

    def __init__(self, token_hash: str | None, *, trust_all: bool = False) -> None:
        self.token_hash = token_hash
        #: Served on a Unix socket: whoever can open it is the operator.
        self.trust_all = trust_all
        self._secret = secrets.token_bytes(32)

    @property
    def actions_possible(self) -> bool:
        return self.trust_all or self.token_hash is not None

    def is_operator(self, token: str | None) -> bool:
        if self.trust_all:
            return True
        if self.token_hash is None or not token:
            return False
        return hmac.compare_digest(hash_token(token), self.token_hash)

    def csrf_token(self) -> str:
        return hmac.new(self._secret, (self.token_hash or "socket").encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(str(sent), self.csrf_token())
