"""Token secrets: generation, hashing, the display prefix and redaction (pure apart from the OS random source).

Tokens carry 240 bits of randomness, so a single sha256 is enough to store them safely: unlike passwords they
cannot be guessed from a dictionary, and a fast hash keeps every authenticated request cheap.

A secret is ``cap_`` followed by 40 URL-safe base64 characters. Anything that looks like one (``cap_`` and at least
`REDACT_MIN_CHARS` such characters) is cut down to its display prefix by `redact_secrets` before it reaches the
audit log or the access log, so a secret pasted into a URL or a request body is never stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from capstan.token_format import TOKEN_MARK

PREFIX_LEN = 12  # "cap_" and 8 random characters: enough to tell tokens apart in listings, useless to an attacker
REDACT_MIN_CHARS = 16  # longer than any display prefix, far shorter than a secret: a truncated paste is caught too
REDACTED = "...[redacted]"
_SECRET_SHAPED = re.compile(re.escape(TOKEN_MARK) + "[A-Za-z0-9_-]{" + str(REDACT_MIN_CHARS) + ",}")


def generate_secret() -> str:
    """A new random token secret such as ``cap_Jx3...`` (44 characters)."""
    return TOKEN_MARK + secrets.token_urlsafe(30)


def hash_secret(secret: str) -> str:
    """The hex sha256 stored in place of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The short, non-secret prefix shown by ``capstan tokens list``."""
    return secret[:PREFIX_LEN]


def looks_like_secret(text: str) -> bool:
    """True when ``text`` is (or contains) something shaped like a token secret, not an id or a prefix."""
    return _SECRET_SHAPED.search(text) is not None


def redact_secrets(text: str) -> str:
    """``text`` with every token-shaped substring replaced by its display prefix and ``...[redacted]``."""
    if TOKEN_MARK not in text:  # the common case costs one substring scan
        return text
    return _SECRET_SHAPED.sub(lambda match: display_prefix(match.group(0)) + REDACTED, text)
