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


def reference_redact(text: str) -> str:
    """The pure-Python definition (used by the reference backend and the tests)."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _KEY_SHAPED.sub("sk-" + REDACTED, text)
    return _BEARER.sub("Bearer " + REDACTED, text)


try:
    from ._core import redact as _native_redact
except ImportError:
    _native_redact = None


def redact(text: str) -> str:
    """``text`` with secrets replaced: the Rust implementation when the native module is there."""
    return _native_redact(text) if _native_redact is not None else reference_redact(text)
