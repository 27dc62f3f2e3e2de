"""Token secrets: generation, hashing and the display prefix (pure apart from the OS random source).

Tokens carry 240 bits of randomness, so a single sha256 is enough to store them safely: unlike passwords they
cannot be guessed from a dictionary, and a fast hash keeps every authenticated request cheap.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_MARK = "cap_"
PREFIX_LEN = 12  # "cap_" and 8 random characters: enough to tell tokens apart in listings, useless to an attacker


def generate_secret() -> str:
    """A new random token secret such as ``cap_Jx3...`` (44 characters)."""
    return TOKEN_MARK + secrets.token_urlsafe(30)


def hash_secret(secret: str) -> str:
    """The hex sha256 stored in place of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The short, non-secret prefix shown by ``capstan tokens list``."""
    return secret[:PREFIX_LEN]
