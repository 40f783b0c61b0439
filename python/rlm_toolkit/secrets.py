"""Redaction of secrets in console and file output (the reference for ``rust/redact.rs``).

Registered secrets (``RLM`` registers its client's API key) become ``[REDACTED]``; tokens shaped like API
keys (``sk-`` + 20 or more of ``[A-Za-z0-9_-]``, not preceded by such a character) become ``sk-[REDACTED]``;
``Bearer `` + 20 or more token characters becomes ``Bearer [REDACTED]``.
"""

from __future__ import annotations

import re
import threading

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 8
_KEY_SHAPED = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}")
_BEARER = re.compile(r"Bearer [A-Za-z0-9._~+/=-]{20,}")
_secrets: list[str] = []
_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Never write ``value`` to a log or the console from now on (values under 8 characters are ignored)."""
    if len(value) < MIN_SECRET_CHARS:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.append(value)
    try:
        from . import _core
    except ImportError:
        return
    _core.add_secret(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _KEY_SHAPED.sub("sk-" + REDACTED, text)
    return _BEARER.sub("Bearer " + REDACTED, text)
