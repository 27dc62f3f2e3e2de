"""The shape of a Capstan token secret, known to the settings (to refuse a garbage ``CAPSTAN_TOKEN`` early) and to
`capstan.auth.tokens` (which makes, hashes and redacts secrets)."""

from __future__ import annotations

import re

TOKEN_MARK = "cap_"
SECRET_CHARS = 40  # secrets.token_urlsafe(30)
_SECRET = re.compile(re.escape(TOKEN_MARK) + "[A-Za-z0-9_-]{" + str(SECRET_CHARS) + "}")


def is_token_secret(text: str) -> bool:
    """Whether ``text`` is exactly a token secret: ``cap_`` and 40 URL-safe base64 characters."""
    return _SECRET.fullmatch(text) is not None
